"""`posevla doctor` against the simulators: the X-Trainer TCP simulator (controllers), simulated Dynamixel leaders
(pseudo-terminals answering the real dynamixel_sdk), the shipped calibration and a tiny checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from posevla.cli import main as posevla_main
from posevla.paths import config_dir
from posevla.robot.simulator import XTrainerSimulator
from posevla.tools import doctor


@pytest.fixture
def sim_robot(tmp_path: Path):
    sim = XTrainerSimulator({"left": "127.0.0.1", "right": "127.0.0.1"}, lag_s=0.03)
    cfg = yaml.safe_load((config_dir() / "xtrainer_sim_robot.yaml").read_text())
    cfg.pop("grippers", None)
    for arm in ("left", "right"):
        ep = sim.endpoint(arm)
        cfg["arms"][arm].update(host=ep["host"], dashboard_port=ep["dashboard_port"], motion_port=ep["motion_port"],
                                feedback_port=ep["feedback_port"])
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield sim, path
    sim.close()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from posevla.model.policy import PoseVLAPolicy
    from posevla.paths import models_dir

    out = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    policy = PoseVLAPolicy.from_config(models_dir() / "tiny.yaml", seed=0, device="cpu")
    policy.save_pretrained(out)
    return out


def _doctor(capsys, *args: str) -> tuple[int, list[str]]:
    rc = posevla_main(["doctor", "--timeout", "5", *args])
    return rc, capsys.readouterr().out.splitlines()


def test_sim_setup_passes_with_numbers(capsys, sim_robot, tiny_checkpoint) -> None:
    _, robot_yaml = sim_robot
    rc, lines = _doctor(capsys, "--setup", "sim", "--robot-config", str(robot_yaml), "--checkpoint", str(tiny_checkpoint))
    text = "\n".join(lines)
    assert rc == 0, text
    controllers = [ln for ln in lines if "controllers" in ln]
    assert len(controllers) == 2 and all(ln.startswith("[  ok]") and "reachable, mode" in ln for ln in controllers), text
    # the shipped calibration describes the simulator: a warning, never silently "ok"
    calib = [ln for ln in lines if "calibration" in ln and ln.startswith("[")]
    assert len(calib) == 3 and all(ln.startswith("[warn]") and "calibrate before using the robot" in ln for ln in calib)
    # parameter count from the safetensors header equals the tensors' element count read by safetensors itself
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="numpy") as f:
        n_params = sum(f.get_tensor(k).size for k in f.keys())
    line = next(ln for ln in lines if " checkpoint " in ln)
    assert f"{n_params / 1e6:.1f} M parameters" in line, line
    assert doctor.safetensors_summary(tiny_checkpoint / "model.safetensors")[1] == n_params
    assert lines[-1].startswith("ready (")


def test_unreachable_controller_is_the_first_thing_to_fix(capsys, sim_robot, tmp_path) -> None:
    sim, robot_yaml = sim_robot
    sim.close()
    rc, lines = _doctor(capsys, "--setup", "sim", "--robot-config", str(robot_yaml))
    assert rc == 1
    assert lines[-1].startswith("first thing to fix: controllers: left controller unreachable: "), lines[-1]
    assert "127.0.0.1:" in lines[-1] and str(robot_yaml) in lines[-1]


def test_bad_residuals_fail_calibration(capsys, tmp_path) -> None:
    from posevla.paths import calibration_dir

    folder = tmp_path / "calib"
    folder.mkdir()
    for p in calibration_dir().glob("*.yaml"):
        data = yaml.safe_load(p.read_text())
        if p.name == "left_wrist_camera.yaml":
            data["residuals"] = {"translation_mm": 7.5, "rotation_deg": 0.2, "samples": 20}
            data["date"] = "2020-01-01"
        (folder / p.name).write_text(yaml.safe_dump(data))
    args = doctor_args("--calibration-dir", str(folder))
    results = doctor.check_calibration(args)
    bad = [r for r in results if r.status == doctor.FAIL]
    assert len(bad) == 1 and "left_wrist_camera.yaml" in bad[0].detail and "7.5 mm" in bad[0].detail
    assert "older than 90 days" in bad[0].detail


def doctor_args(*extra: str):
    import argparse

    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    return parser.parse_args(list(extra))


def test_leaders_against_simulated_dynamixel_chains(capsys, tmp_path) -> None:
    from posevla.teleop.dxl_sim import DynamixelChainSim
    from posevla.teleop.gello import LeaderConfig

    cfg = LeaderConfig.from_yaml(config_dir() / "gello_xtrainer.yaml")
    sims = {}
    try:
        for name, c in cfg.arms.items():
            ids = list(c.all_ids) + ([c.buttons_id] if c.buttons_id is not None else [])
            sims[name] = DynamixelChainSim(ids)
            for i in c.joint_ids:
                sims[name].set_position(i, 2048)
        ports = [f"--leader-port={n}={s.port}" for n, s in sims.items()]
        results = doctor.check_leaders(doctor_args(*ports))
        assert [r.status for r in results] == [doctor.OK, doctor.OK], results
        assert all("servos answer" in r.detail for r in results)
        # one leader unplugged: its port is named
        missing = doctor.check_leaders(doctor_args(f"--leader-port=left={tmp_path / 'nope'}",
                                                   f"--leader-port=right={sims['right'].port}"))
        assert missing[0].status == doctor.FAIL and str(tmp_path / "nope") in missing[0].detail
        assert missing[1].status == doctor.OK
    finally:
        for s in sims.values():
            s.close()


def test_cameras_report_what_librealsense_sees(capsys) -> None:
    results = doctor.check_cameras(doctor_args())
    import pyrealsense2 as rs

    n = len(rs.context().query_devices())
    if n == 0:
        assert results[0].status == doctor.FAIL and "no RealSense camera found" in results[0].detail
    else:
        assert sum("serial" in r.detail and "firmware" in r.detail for r in results) == n


def test_estop_check_is_skipped_without_a_graph(capsys) -> None:
    results = doctor.check_estop(doctor_args("--estop", "--timeout", "1"))
    assert results[0].status == doctor.SKIP and "start the graph" in results[0].detail


@pytest.mark.parametrize("args,match", [(["--skip", "camras"], "--skip"), (["--cameras", "head,top"], "--cameras"),
                                        (["--serial", "head"], "--serial")])
def test_bad_arguments_exit_2(capsys, args, match) -> None:
    rc = posevla_main(["doctor", *args])
    err = capsys.readouterr().err
    assert rc == 2 and match in err


@pytest.mark.slow
def test_estop_round_trip_through_the_real_executor_and_driver(tmp_path: Path) -> None:
    """doctor --estop against the running simulator, driver and executor: both stop, both are released."""
    pytest.importorskip("rclpy")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from posevla_ros.graph import NodeSpec
    from posevla_ros.run_graph import GraphRunner
    from ros_helpers import sim_robot_yaml

    path = sim_robot_yaml(tmp_path)
    runner = GraphRunner([NodeSpec("xtrainer_sim", "xtrainer_sim", [], {"robot_config": str(path)}),
                          NodeSpec("xtrainer_driver_node", "xtrainer_driver", ["xtrainer.yaml"], {"robot_config": str(path)}),
                          NodeSpec("executor_node", "executor", ["executor.yaml"], {"robot_config": str(path)})])
    runner.start(delay_s=1.0)
    try:
        args = doctor_args("--estop", "--timeout", "20")
        results = doctor.check_estop(args)
        assert not runner.dead(), runner.dead()
    finally:
        runner.stop()
    assert len(results) == 1 and results[0].status == doctor.OK, results
    detail = results[0].detail
    print(detail)
    assert "executor" in detail and "xtrainer_driver/left" in detail and "xtrainer_driver/right" in detail, detail
    assert "released and reset" in detail
    seconds = float(detail.split(" in ")[1].split(" s ")[0])
    assert 0 < seconds < 20
