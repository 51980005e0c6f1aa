"""Round trips between ROS messages and posevla types."""
from __future__ import annotations

import numpy as np
import pytest

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ActionChunk, ArmChunk

mc = pytest.importorskip("posevla_ros.msg_conv")


def test_stamps_round_trip() -> None:
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        assert mc.time_to_ns(mc.ns_to_time(ns)) == ns


@pytest.mark.parametrize("enc,shape,dtype", [("rgb8", (4, 5, 3), np.uint8), ("16UC1", (4, 5), np.uint16),
                                              ("32FC1", (3, 2), np.float32)])
def test_image_round_trip(enc: str, shape: tuple, dtype: type) -> None:
    a = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    msg = mc.image_to_msg(a, enc, 123, "cam")
    assert msg.header.frame_id == "cam" and mc.time_to_ns(msg.header.stamp) == 123
    np.testing.assert_array_equal(mc.msg_to_image(msg), a)


def test_bad_image_names_topic() -> None:
    msg = mc.image_to_msg(np.zeros((4, 4, 3), np.uint8), "rgb8", 0, "cam")
    msg.height = 5
    with pytest.raises(ValueError, match="/head/color/image_raw"):
        mc.msg_to_image(msg, "/head/color/image_raw")
    msg.encoding = "yuv422"
    with pytest.raises(ValueError, match="encoding"):
        mc.msg_to_image(msg, "/head/color/image_raw")


def test_camera_info_round_trip_and_error() -> None:
    intr = CameraIntrinsics(600.0, 601.0, 320.5, 240.5, 640, 480, distortion=(0.1, 0, 0, 0, 0))
    msg = mc.intrinsics_to_msg(intr, 5, "cam")
    assert mc.msg_to_intrinsics(msg) == intr
    msg.k[0] = 0.0
    with pytest.raises(ValueError, match="/head/color/camera_info.*fx"):
        mc.msg_to_intrinsics(msg, "/head/color/camera_info")


def test_chunk_and_servo_round_trip() -> None:
    rng = np.random.default_rng(1)
    T = se3.T_from_xyz_rpy(rng.normal(size=(5, 3)), rng.uniform(-3, 3, (5, 3)))
    chunk = ActionChunk("head_camera_color_optical_frame", 10**18, 0.02,
                        {"left": ArmChunk(T, np.linspace(0, 1, 5)), "right": ArmChunk(T[::-1].copy(), np.ones(5))})
    back = mc.msg_to_chunk(mc.chunk_to_msg(chunk))
    assert back.frame_id == chunk.frame_id and back.stamp_ns == chunk.stamp_ns
    assert back.dt == pytest.approx(0.02)
    for arm in ("left", "right"):
        np.testing.assert_allclose(back.arms[arm].T, chunk.arms[arm].T, atol=1e-12)
        np.testing.assert_allclose(back.arms[arm].gripper, chunk.arms[arm].gripper)
    stamp, poses, grip = mc.msg_to_servo_command(mc.servo_command_to_msg(7, {"left": T[0]}, {"left": 0.3}))
    assert stamp == 7 and grip == {"left": 0.3}
    np.testing.assert_allclose(poses["left"], T[0], atol=1e-12)
    bad = mc.servo_command_to_msg(7, {"left": T[0]}, {})
    bad.joint_names = ["left_elbow"]
    with pytest.raises(ValueError, match="/xtrainer/servo_command.*left_elbow"):
        mc.msg_to_servo_command(bad)


def test_static_transforms_of_the_shipped_calibration(rclpy_context) -> None:
    """/tf_static content: mountings and hand-eye results with DESIGN.md frame names, values exact; without
    tf2_ros (this machine) the node says so and carries on."""
    import rclpy
    from posevla_ros.graph import config_dir
    from posevla_ros.static_tf import broadcast_static, static_transforms

    from posevla.calibration.files import load_calibrations
    from posevla.robot.driver import XTrainerConfig

    calibs = load_calibrations(config_dir().parent / "calibration")
    robot = XTrainerConfig.from_yaml(config_dir() / "xtrainer_sim_robot.yaml")
    tfs = static_transforms(calibs, {a: c.T_base_armbase for a, c in robot.arms.items()}, 123_000_000_456)
    pairs = {(t.header.frame_id, t.child_frame_id): t for t in tfs}
    assert set(pairs) == {("base_link", "left_arm_base"), ("base_link", "right_arm_base"),
                          ("base_link", "head_camera_color_optical_frame"),
                          ("left_tcp", "left_wrist_camera_color_optical_frame"),
                          ("right_tcp", "right_wrist_camera_color_optical_frame")}
    for c in calibs.values():
        t = pairs[(c.parent_frame, c.child_frame)]
        np.testing.assert_allclose(mc.transform_to_T(t.transform), c.T_parent_child, atol=1e-12)
        assert mc.time_to_ns(t.header.stamp) == 123_000_000_456
    np.testing.assert_allclose(mc.transform_to_T(pairs[("base_link", "right_arm_base")].transform),
                               robot.arms["right"].T_base_armbase, atol=1e-12)
    node = rclpy.create_node("static_tf_probe", context=rclpy_context)
    try:
        try:
            import tf2_ros  # noqa: F401
            has_tf2 = True
        except ImportError:
            has_tf2 = False
        assert broadcast_static(node, tfs) is has_tf2
    finally:
        node.destroy_node()
