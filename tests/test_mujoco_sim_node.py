"""mujoco_sim_node over DDS: the three cameras (rgb8, 16UC1 aligned depth, CameraInfo from fovy) at the configured
size, /sim/reset -> /sim/episode with the seed's placement, /sim/success; and a bad parameter exits 2 naming it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mujoco")
from posevla_ros.graph import graph  # noqa: E402
from posevla_ros.run_graph import GraphRunner  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from ros_helpers import sim_robot_yaml, spin  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Bool, Int64, String  # noqa: E402

from posevla.sim.task import PickLiftTask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_mujoco_sim_publishes_cameras_and_resets(tmp_path: Path, rclpy_context) -> None:
    robot = sim_robot_yaml(tmp_path)
    specs = [s for s in graph("sim_mujoco", overrides={"mujoco_sim": {"robot_config": str(robot), "width": 96,
                                                                      "height": 72, "rate_hz": 5.0}})
             if s.name == "mujoco_sim"]
    node = rclpy.create_node("mujoco_probe", context=rclpy_context)
    got: dict[str, object] = {}
    episodes: list[dict] = []
    success: list[bool] = []
    for cam in ("head", "left_wrist", "right_wrist"):
        node.create_subscription(Image, f"/{cam}/color/image_raw", lambda m, c=cam: got.__setitem__(f"{c}/color", m),
                                 qos_profile_sensor_data)
        node.create_subscription(Image, f"/{cam}/aligned_depth_to_color/image_raw",
                                 lambda m, c=cam: got.__setitem__(f"{c}/depth", m), qos_profile_sensor_data)
        node.create_subscription(CameraInfo, f"/{cam}/color/camera_info", lambda m, c=cam: got.__setitem__(f"{c}/info", m),
                                 qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(String, "/sim/episode", lambda m: episodes.append(json.loads(m.data)), latched)
    node.create_subscription(Bool, "/sim/success", lambda m: success.append(m.data), 10)
    reset = node.create_publisher(Int64, "/sim/reset", 10)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    runner = GraphRunner(specs)
    try:
        runner.start()
        spin(ex, 120.0, until=lambda: len(got) == 9 and episodes and success)
        assert len(got) == 9 and episodes, (sorted(got), runner.dead())
        color, depth, info = got["head/color"], got["head/depth"], got["head/info"]
        assert (color.width, color.height, color.encoding) == (96, 72, "rgb8")
        assert (depth.width, depth.height, depth.encoding) == (96, 72, "16UC1")
        assert color.header.frame_id == "head_camera_color_optical_frame"
        fy = 36.0 / np.tan(np.radians(30.0))
        assert np.allclose(np.array(info.k).reshape(3, 3), [[fy, 0, 47.5], [0, fy, 35.5], [0, 0, 1]])
        d = np.frombuffer(bytes(depth.data), np.uint16).reshape(72, 96)
        assert 500 < np.median(d) < 1500  # the table, 0.5-1.5 m from the head camera (millimetres)
        assert success[-1] is False
        spin(ex, 60.0, until=lambda: reset.get_subscription_count() > 0)
        reset.publish(Int64(data=42))
        spin(ex, 60.0, until=lambda: episodes[-1]["seed"] == 42)
        ep = episodes[-1]
        assert ep["seed"] == 42 and ep["resets"] >= 2 and ep["task"] == "pick_cube"
        assert np.allclose(ep["cube_xy"], PickLiftTask().sample(42).cube_xy)
        assert not runner.dead(), runner.dead()
    finally:
        node.destroy_node()
        runner.stop()


@pytest.mark.parametrize(("param", "message"), [("cameras:=[head, nose]", "parameter cameras: ['nose']"),
                                                ("task:=stack", "parameter task='stack' must be one of "
                                                                "['pick_cube', 'pick_cube_overview', 'hand_over']")])
def test_mujoco_sim_refuses_bad_parameter(tmp_path: Path, param: str, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "posevla_ros.mujoco_sim_node", "--ros-args", "-p",
                          f"robot_config:={sim_robot_yaml(tmp_path)}", "-p", param],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert message in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr


def test_mujoco_graphs_replace_simulator_and_replay() -> None:
    sim = graph("sim_mujoco", checkpoint="/ckpt", instruction="pick")
    assert [s.name for s in sim] == ["mujoco_sim", "xtrainer_driver", "policy", "executor"]
    collect = graph("collect_mujoco", instruction="pick", task="pick_cube", overrides={"recorder": {"fps": 5.0}})
    assert [s.name for s in collect] == ["mujoco_sim", "xtrainer_driver", "recorder"]  # the scripted leader streams
    assert [s.name for s in graph("collect_mujoco", instruction="x", leader_dir="/tmp/l")][2] == "teleop"
    rec = collect[-1]
    assert rec.parameters["fps"] == 5.0 and rec.parameters["sound_cues"] is False
    for spec in sim + collect:  # the lag model's file is not loaded; every robot node serves / reads the sim robot
        assert "xtrainer_sim.yaml" not in spec.param_files
        assert all(p.exists() for p in spec.param_paths())
    with pytest.raises(ValueError, match="unknown node"):
        graph("sim_mujoco", overrides={"nope": {}})
