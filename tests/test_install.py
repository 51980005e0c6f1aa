"""Bring-up from an install: after a colcon build, the installed entry points start with the installed defaults
(config/, calibration/, models/ under share/posevla) with the source tree off the import path; the launch file
is installed; declared dependencies agree with requirements.txt."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements if r.strip()}


def test_declared_dependencies_agree() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    lines = [ln.split("#")[0] for ln in (REPO / "requirements.txt").read_text().splitlines()]
    pinned = _names([ln for ln in lines if ln.strip()])
    # torch is installed by the Makefile (CPU wheel here, TORCH_SPEC on GPU machines), not from requirements.txt
    assert declared - {"torch"} <= pinned, f"in pyproject.toml but not requirements.txt: {declared - {'torch'} - pinned}"
    for name in ("numpy", "scipy", "pyyaml", "transformers", "safetensors", "h5py", "pyrealsense2", "torch"):
        assert name in declared, name
    keys = {e.text for e in ET.parse(REPO / "package.xml").getroot().iter("exec_depend")}
    assert {"python3-numpy", "python3-scipy", "python3-yaml", "python3-torch", "python3-h5py", "python3-opencv"} <= keys
    ros_keys = {e.text for e in ET.parse(REPO / "ros2_ws" / "src" / "posevla_ros" / "package.xml").getroot().iter("exec_depend")}
    assert {"posevla", "rclpy", "launch_ros", "std_srvs", "diagnostic_msgs"} <= ros_keys


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    colcon = shutil.which("colcon") or str(Path(sys.executable).parent / "colcon")
    if not Path(colcon).exists():
        pytest.fail("colcon is not installed (colcon-common-extensions is in requirements.txt)")
    base = tmp_path_factory.mktemp("colcon")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [colcon, "--log-base", str(base / "log"), "build", "--base-paths", str(REPO / "ros2_ws" / "src"), str(REPO),
         "--build-base", str(base / "build"), "--install-base", str(base / "install")],
        cwd=base, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base / "install"


def _env(install: Path, tmp_path: Path) -> dict[str, str]:
    """The install's paths first; the venv's editable finders for posevla / posevla_ros shadowed by no-ops, so
    nothing can be imported from the source tree."""
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    for pkg in ("posevla", "posevla_ros"):
        (shadow / f"__editable___{pkg}_0_1_0_finder.py").write_text("def install():\n    pass\n")
    site = [install / pkg / "lib" / PY / "site-packages" for pkg in ("posevla_ros", "posevla")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "POSEVLA_SHARE")}
    env.update(PYTHONPATH=os.pathsep.join(map(str, [shadow, *site])),
               AMENT_PREFIX_PATH=os.pathsep.join(str(install / p) for p in ("posevla", "posevla_ros")),
               PATH=f"{install / 'posevla' / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONUNBUFFERED="1")
    return env


def test_installed_share_has_configs_calibration_models_and_launch(install: Path) -> None:
    share = install / "posevla" / "share" / "posevla"
    for sub, names in (("config", ["executor.yaml", "xtrainer_robot.yaml", "camera_head.yaml", "recorder.yaml"]),
                       ("calibration", ["head_camera.yaml", "left_wrist_camera.yaml", "right_wrist_camera.yaml"]),
                       ("models", ["tiny.yaml", "posevla_3b.yaml"])):
        for n in names:
            assert (share / sub / n).read_bytes() == (REPO / sub / n).read_bytes(), f"{sub}/{n}"
    launch = install / "posevla_ros" / "share" / "posevla_ros" / "launch" / "posevla.launch.py"
    assert launch.read_bytes() == (REPO / "launch" / "posevla.launch.py").read_bytes()


def test_imports_resolve_inside_the_install(install: Path, tmp_path: Path) -> None:
    code = ("import posevla, posevla_ros, posevla.paths as p\n"
            "from posevla_ros.bringup import bringup, BringupArgs\n"
            "print(posevla.__file__); print(posevla_ros.__file__); print(p.source_root()); print(p.share_dir())\n"
            "specs = bringup('robot', args=BringupArgs(serials={'head': '0123456789'}, cameras=['head', 'left_wrist']))\n"
            "print(sorted({str(x.parent) for s in specs for x in s.param_paths()}))\n"
            "print([s.name for s in specs])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(install, tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(install / "posevla")) and lines[1].startswith(str(install / "posevla_ros")), lines
    assert lines[2] == "None"
    share = install / "posevla" / "share" / "posevla"
    assert lines[3] == str(share)
    assert lines[4] == str([str(share / "config")])
    assert "right_wrist_camera" not in lines[5] and "head_camera" in lines[5] and "left_wrist_camera" in lines[5]


def _start(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


def _wait_for(proc: subprocess.Popen, pattern: str, timeout_s: float) -> list[str]:
    """Read lines until one matches (or the process exits / the deadline passes); returns the lines read."""
    import selectors

    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not sel.select(timeout=1.0):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            break
    return lines


def test_installed_nodes_start_with_installed_defaults(install: Path, tmp_path: Path) -> None:
    env = _env(install, tmp_path)
    lib = install / "posevla_ros" / "lib" / "posevla_ros"
    share = install / "posevla" / "share" / "posevla"
    # --help: the parameter table, without starting ROS
    out = subprocess.run([str(lib / "recorder_node"), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "stream_timeout_s" in out.stdout and "[0.05, 10.0]" in out.stdout, out.stdout
    # the recorder with its installed defaults: calibration from share/posevla/calibration
    rec = _start([str(lib / "recorder_node"), "--ros-args", "--params-file", str(share / "config" / "recorder.yaml"),
                  "-p", "instruction:=stack the cups", "-p", f"root:={tmp_path}", "-p", "sound_cues:=false"], env, tmp_path)
    try:
        lines = _wait_for(rec, r"parameters in force", 120)
        assert any("parameters in force" in ln for ln in lines), "".join(lines)
        assert rec.poll() is None, "".join(lines)
    finally:
        rec.send_signal(signal.SIGINT)
        tail = rec.communicate(timeout=60)[0]
    assert rec.returncode == 0, "".join(lines) + tail
    assert "Traceback" not in "".join(lines) + tail
    # the executor: robot YAML and calibration from the install, nothing to connect to
    ex = _start([str(lib / "executor_node"), "--ros-args", "--params-file", str(share / "config" / "executor.yaml")],
                env, tmp_path)
    try:
        lines = _wait_for(ex, r"parameters in force", 120)
        assert ex.poll() is None and any("parameters in force" in ln for ln in lines), "".join(lines)
    finally:
        ex.send_signal(signal.SIGINT)
        tail = ex.communicate(timeout=60)[0]
    assert "Traceback" not in "".join(lines) + tail
    # the posevla CLI: doctor reads the installed calibration
    out = subprocess.run([str(install / "posevla" / "bin" / "posevla"), "doctor", "--setup", "sim", "--skip", "controllers",
                          "--skip", "gpu", "--skip", "estop", "--skip", "checkpoint"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sum("calibration" in ln and "_camera.yaml" in ln for ln in out.stdout.splitlines()) == 3, out.stdout


def test_bringup_arguments_reach_the_right_nodes() -> None:
    from posevla_ros.bringup import BringupArgs, bringup, parse_cameras
    from posevla_ros.run_graph import node_command

    assert parse_cameras("[head, left_wrist]") == parse_cameras("head,left_wrist") == ["head", "left_wrist"]
    specs = bringup("robot", checkpoint="/ckpt", instruction="stack the cups",
                    args=BringupArgs(calibration_dir="/data/calib", serials={"head": "012345678901"},
                                     cameras=["head", "left_wrist"]))
    by_name = {s.name: s for s in specs}
    assert sorted(by_name) == ["executor", "head_camera", "left_wrist_camera", "policy", "xtrainer_driver"]
    assert by_name["head_camera"].parameters["serial"] == "012345678901"
    assert "serial" not in by_name["left_wrist_camera"].parameters  # the YAML's serial stands
    for name in ("executor", "policy"):
        assert by_name[name].parameters["calibration_dir"] == "/data/calib"
    assert by_name["policy"].parameters["cameras"] == ["head", "left_wrist"]
    cmd = node_command(by_name["head_camera"])
    assert 'serial:="012345678901"' in cmd  # quoted: rcl would read a bare 012345678901 as a number
    remote = {s.name: s for s in bringup("robot", args=BringupArgs(remote="192.168.1.20:5555"))}
    assert remote["policy"].parameters == {"remote": "192.168.1.20:5555"}
    assert 'remote:="192.168.1.20:5555"' in node_command(remote["policy"])
    collect = {s.name: s for s in bringup("collect", task="t", instruction="x",
                                          args=BringupArgs(calibration_dir="/c", cameras=["head"]))}
    assert collect["recorder"].parameters["calibration_dir"] == "/c" and collect["recorder"].parameters["cameras"] == ["head"]
    with pytest.raises(ValueError, match="unknown camera"):
        bringup("robot", args=BringupArgs(cameras=["head", "top"]))


def test_installed_cli_defaults_point_into_the_install(install: Path, tmp_path: Path) -> None:
    """calibrate, teleop and train take their default files from share/posevla (posevla.paths), not from a source
    tree; the synthetic episode writer reads the installed robot YAML and calibration."""
    env = _env(install, tmp_path)
    share = install / "posevla" / "share" / "posevla"
    posevla = str(install / "posevla" / "bin" / "posevla")
    for words, expected in ((["calibrate", "verify", "--help"], share / "calibration" / "<camera>_camera.yaml"),
                            (["calibrate", "handeye", "--help"], share / "calibration" / "<camera>_camera.yaml"),
                            (["teleop", "read", "--help"], share / "config" / "gello_xtrainer.yaml"),
                            (["train", "--help"], share / "models" / "tiny.yaml")):
        out = subprocess.run([posevla, *words], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        text = re.sub(r"\s*\n\s*", "", out.stdout)  # argparse wraps long paths mid-word
        assert str(expected) in text, (words, out.stdout)
        assert str(REPO) not in text, (words, out.stdout)
    # the installed teleop default is a real, loadable leader config
    code = ("from posevla.teleop.cli import DEFAULT_CONFIG\nfrom posevla.teleop.gello import LeaderConfig\n"
            "print(DEFAULT_CONFIG); print(sorted(LeaderConfig.from_yaml(DEFAULT_CONFIG).arms))\n"
            "from posevla.tools.synthetic_episode import write_demo_episode\n"
            f"print(write_demo_episode(__import__('pathlib').Path({str(tmp_path / 'data')!r}), seconds=0.4, fps=5.0))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(share / "config" / "gello_xtrainer.yaml")
    assert lines[1] == "['left', 'right']"
    assert Path(lines[2]).is_file() and Path(lines[2]).is_relative_to(tmp_path)


def test_trial_graph_definition_and_runner_parameters(tmp_path: Path) -> None:
    """setup trial: the robot graph, an observe-only recorder and trial_runner, whose parameters become exactly the
    `posevla trial` options; bad options are refused by name before anything starts."""
    import argparse

    from posevla_ros.bringup import BringupArgs, bringup
    from posevla_ros.graph import graph
    from posevla_ros.run_graph import node_command
    from posevla_ros.trial_runner import PARAMS, trial_argv, trial_options

    from posevla.tools import trial as trial_cli

    opts = trial_options("4", "30", "full:modalities=full;rgb_only:modalities=rgb", "", "", "7")
    assert opts == {"trials": 4, "time_limit_s": 30.0, "seed": 7,
                    "conditions": ["full:modalities=full", "rgb_only:modalities=rgb"]}
    specs = bringup("trial", checkpoint="/ckpt", instruction="stack the cups", task="stack_cups",
                    args=BringupArgs(calibration_dir="/c", cameras=["head", "left_wrist"]), trial=opts)
    by_name = {s.name: s for s in specs}
    assert [s.name for s in specs] == ["head_camera", "left_wrist_camera", "xtrainer_driver", "policy", "executor",
                                       "recorder", "trial_runner"]
    assert by_name["policy"].parameters == {"checkpoint": "/ckpt", "calibration_dir": "/c", "cameras": ["head", "left_wrist"]}
    assert "instruction" not in by_name["policy"].parameters  # the runner sets it at each start, clears it after
    rec = by_name["recorder"].parameters
    assert rec["require_action"] is False and rec["task"] == "stack_cups" and rec["root"] == "data"
    assert rec["calibration_dir"] == "/c" and rec["cameras"] == ["head", "left_wrist"]
    runner = by_name["trial_runner"]
    assert runner.executable == "trial_runner" and runner.param_files == []
    cmd = node_command(runner)
    assert 'conditions:=["full:modalities=full", "rgb_only:modalities=rgb"]' in cmd
    assert 'instruction:="stack the cups"' in cmd
    # the node's parameters -> posevla trial's own parser
    parser = argparse.ArgumentParser()
    trial_cli.add_arguments(parser)
    ns = parser.parse_args(trial_argv({**{k: v[0] for k, v in PARAMS.items()}, **runner.parameters}))
    assert (ns.task, ns.instruction, ns.trials, ns.time_limit, ns.seed) == ("stack_cups", "stack the cups", 4, 30.0, 7)
    assert ns.condition == ["full:modalities=full", "rgb_only:modalities=rgb"] and ns.record and not ns.sim
    assert ns.out == Path("runs/trials/stack_cups") and ns.data_root == Path("data") and ns.policy_node == "policy"
    no_rec = graph("trial", instruction="x", task="t", trial={"record": False, "data_root": "/d"})
    assert [s.name for s in no_rec][-2:] == ["executor", "trial_runner"]
    for bad, match in (({"trails": 3}, r"unknown trial option\(s\) \['trails'\]"),
                       ({"task": "other"}, "task and instruction are arguments")):
        with pytest.raises(ValueError, match=match):
            graph("trial", instruction="x", task="t", trial=bad)
    with pytest.raises(ValueError, match="needs task and instruction"):
        graph("trial", task="t")
    with pytest.raises(ValueError, match="for setup trial"):
        graph("robot", trial={"trials": 3})
    for args, match in ((("4.5", "", "", "", "", ""), "trials:='4.5' is not an integer"),
                        (("", "", "", "", "yes", ""), "record:='yes'")):
        with pytest.raises(ValueError, match=match):
            trial_options(*args)


def test_trial_runner_and_run_graph_trial_refuse_bad_input(tmp_path: Path) -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, timeout=120,  # noqa: E731
                                    cwd=tmp_path)
    out = run("posevla_ros.trial_runner", "--help")
    assert out.returncode == 0 and "time_limit_s" in out.stdout and "/trial/start" in out.stdout, out.stdout + out.stderr
    for params, expected in ((["-p", "instruction:=x"], "trial_runner: parameter task is required"),
                             (["-p", "task:=t", "-p", "instruction:=x", "-p", "trails:=3"],
                              "trial_runner: unknown parameter trails (did you mean trials?)"),
                             (["-p", "task:=t", "-p", "instruction:=x", "-p", "trials:=0"], "trial_runner: parameter trials")):
        out = run("posevla_ros.trial_runner", "--ros-args", *params)
        lines = (out.stdout + out.stderr).strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), (params, lines)
    out = run("posevla_ros.run_graph", "trial", "--task", "t", "--trials", "x")
    assert out.returncode == 2 and "run_graph: trials:='x' is not an integer" in out.stderr, out.stderr
    out = run("posevla_ros.run_graph", "trial", "--task", "t")
    assert out.returncode == 2 and "setup trial needs task and instruction" in out.stderr, out.stderr
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_installed_live_view_and_trial_runner(install: Path, tmp_path: Path) -> None:
    """The new entry points are installed: --help without starting ROS, and live_view records headless for its
    duration with the installed calibration (no source tree), then exits 0 with a complete .rrd."""
    env = _env(install, tmp_path)
    lib = install / "posevla_ros" / "lib" / "posevla_ros"
    for exe, word in (("live_view", "image_rate_hz"), ("trial_runner", "time_limit_s")):
        out = subprocess.run([str(lib / exe), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and word in out.stdout, out.stdout + out.stderr
    rrd = tmp_path / "live.rrd"
    out = subprocess.run([str(lib / "live_view"), "--ros-args", "-p", f"save:={rrd}", "-p", "duration_s:=1.0"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "parameters in force" in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
    assert rrd.read_bytes()[:4] == b"RRF2"
