"""Parameters are declared with descriptions/ranges and invalid values are refused by name."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")
from posevla_ros.params import declare_checked  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

SPECS = {
    "rate_hz": (50.0, "control rate", (1.0, 500.0)),
    "mode": ("full", "modalities", ("rgb", "full")),
    "name": ("", "free text", None),
}


def _node(ctx, overrides):
    return rclpy.create_node("params_test", context=ctx, parameter_overrides=overrides)


def test_defaults_and_descriptors(rclpy_context) -> None:
    node = _node(rclpy_context, [])
    values = declare_checked(node, SPECS)
    assert values == {"rate_hz": 50.0, "mode": "full", "name": ""}
    desc = node.describe_parameter("rate_hz")
    assert desc.description == "control rate"
    assert desc.floating_point_range[0].to_value == 500.0
    node.destroy_node()


@pytest.mark.parametrize("override,match", [(Parameter("rate_hz", value=1000.0), "rate_hz"),
                                            (Parameter("mode", value="depth"), "mode")])
def test_invalid_values_are_refused_by_name(rclpy_context, override, match) -> None:
    node = _node(rclpy_context, [override])
    with pytest.raises(ValueError, match=match):
        declare_checked(node, SPECS)
    node.destroy_node()


# ---------------------------------------------------------------- one parameter truth (params.py, node_main.py)
import dataclasses  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from posevla_ros.params import (  # noqa: E402
    check_params_files,
    describe,
    reject_unknown,
    spec_from_dataclass,
)


def test_unknown_override_is_refused_with_a_suggestion(rclpy_context) -> None:
    node = _node(rclpy_context, [Parameter("rate_h", value=20.0)])
    declare_checked(node, SPECS)
    with pytest.raises(ValueError, match=r"unknown parameter rate_h \(did you mean rate_hz\?\)"):
        reject_unknown(node)
    node.destroy_node()


def test_digit_only_string_stays_a_string_and_read_only_is_enforced(rclpy_context) -> None:
    node = _node(rclpy_context, [Parameter("name", value=123456789)])  # what `-p name:=123456789` gives
    values = declare_checked(node, SPECS, dynamic=("mode",))
    assert values["name"] == "123456789"
    assert node.describe_parameter("name").read_only
    assert not node.set_parameters([Parameter("rate_hz", value=20.0)])[0].successful
    assert node.set_parameters([Parameter("mode", value="rgb")])[0].successful
    node.destroy_node()


@pytest.mark.parametrize("section,ok", [("/**", True), ("/executor", True), ("executor", True), ("/*", True),
                                        ("executor_node", False), ("/robot1/executor", False)])
def test_params_file_needs_a_section_for_the_node(rclpy_context, tmp_path: Path, section: str, ok: bool) -> None:
    node = rclpy.create_node("executor", context=rclpy_context)
    path = tmp_path / "p.yaml"
    path.write_text(f"{section}:\n  ros__parameters:\n    watchdog_s: 0.2\n")
    if ok:
        check_params_files(node, ["--ros-args", "--params-file", str(path)])
    else:
        with pytest.raises(ValueError, match=r"p\.yaml: no section for node /executor"):
            check_params_files(node, ["--ros-args", "--params-file", str(path)])
    node.destroy_node()


def test_spec_from_a_config_dataclass_and_help_table() -> None:
    @dataclasses.dataclass
    class Cfg:
        rate_hz: float = dataclasses.field(default=30.0, metadata={"description": "rate (Hz)", "range": (1.0, 90.0)})
        cameras: tuple[str, ...] = ("head",)

    spec = spec_from_dataclass(Cfg)
    assert spec == {"rate_hz": (30.0, "rate (Hz)", (1.0, 90.0)), "cameras": (["head"], "cameras", None)}
    table = describe(spec)
    assert "rate_hz" in table and "[1.0, 90.0]" in table and "rate (Hz)" in table


def _run(args: list[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout_s,
                          env=os.environ.copy())


def test_node_refuses_a_typo_with_exit_2_and_one_line() -> None:
    out = _run(["posevla_ros.teleop_node", "--ros-args", "-p", "rate:=5.0"])
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "unknown parameter rate (did you mean rate_hz?)" in text and "Traceback" not in text, text


def test_node_help_lists_parameters_without_starting() -> None:
    out = _run(["posevla_ros.replay_node", "--help"])
    assert out.returncode == 0
    assert "stamp_mode" in out.stdout and "one of ['now', 'original']" in out.stdout
    assert "[INFO]" not in out.stdout + out.stderr  # no node was started


def _wait_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not any(needle in ln for ln in lines):
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        elif proc.poll() is not None:
            break
    return lines


def _alive_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_run_graph_forwards_sigterm_and_keeps_serials_strings() -> None:
    serial = "0" + str(random.randrange(10**10, 10**11))  # digit-only with a leading zero, unique to this run
    code = ("import sys\n"
            "import posevla_ros.run_graph as rg\n"
            "from posevla_ros.graph import NodeSpec\n"
            f"rg.bringup = lambda *a, **k: [NodeSpec('camera_node', 'head_camera', ['camera_head.yaml'], "
            f"{{'camera_name': 'head', 'serial': '{serial}'}})]\n"
            "sys.exit(rg.main(['robot']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    try:
        lines = _wait_line(proc, "parameters in force", 120)
        assert any(f"serial='{serial}'" in ln for ln in lines), "".join(lines)
        assert _alive_with(serial), "the camera node is not running"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, "".join(lines) + out
    assert "SIGTERM: stopping the graph" in out
    assert "Traceback" not in out and "RCLError" not in out, out
    deadline = time.monotonic() + 10
    while _alive_with(serial) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive_with(serial), "run_graph left its node running after SIGTERM"


def test_one_recorder_per_dataset_folder(tmp_path: Path) -> None:
    args = ["posevla_ros.recorder_node", "--ros-args", "-p", f"root:={tmp_path}", "-p", "task:=stack",
            "-p", "instruction:=stack the cups", "-p", "sound_cues:=false"]
    first = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=os.environ.copy())
    try:
        lines = _wait_line(first, "parameters in force", 120)
        assert first.poll() is None, "".join(lines)
        second = _run(args)
        text = second.stdout + second.stderr
        assert second.returncode == 2, text
        assert f"dataset folder {tmp_path / 'stack'} is in use by another recorder" in text, text
        assert f"pid {first.pid}" in text and "Traceback" not in text, text
        other_task = _run([*args[:-4], "-p", "task:=other", "-p", "instruction:=x", "-p", "sound_cues:=false",
                           "-p", "target_episodes:=0"])  # a different folder is not locked (and 0 is out of range)
        assert other_task.returncode == 2 and "target_episodes" in other_task.stdout + other_task.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0
    # the lock went with the process: a new recorder starts
    again = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=os.environ.copy())
    try:
        lines = _wait_line(again, "parameters in force", 120)
        assert again.poll() is None, "".join(lines)
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=60)


def test_node_defaults_come_from_the_config_dataclasses() -> None:
    from posevla_ros.camera_node import CameraNode
    from posevla_ros.recorder_node import RecorderNode
    from posevla_ros.teleop_node import TeleopNode

    from posevla.dataset.recorder import RecorderConfig
    from posevla.perception.realsense import RealSenseConfig
    from posevla.teleop.controller import TeleopLimits

    for node_cls, cfg_cls, names in ((CameraNode, RealSenseConfig, ["serial", "width", "height", "fps"]),
                                     (TeleopNode, TeleopLimits, ["align_speed", "max_speed", "leader_timeout_s"]),
                                     (RecorderNode, RecorderConfig, ["fps", "stream_timeout_s", "cameras"])):
        fields = {f.name: f.default for f in dataclasses.fields(cfg_cls)}
        for n in names:
            default = fields[n]
            assert node_cls.PARAMS[n][0] == (list(default) if isinstance(default, tuple) else default), (node_cls, n)
    with pytest.raises(ValueError, match="has no field 'nope'"):
        spec_from_dataclass(TeleopLimits, {"nope": ("x", None)})
