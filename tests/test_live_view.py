"""The live view (`posevla view` / live_view node): predicted chunks projected into the head and wrist images with
the CameraInfo K and the hand-eye calibration (checked against pixels computed here by hand), TCP traces, e-stop
and executor refusals, logged headless to a .rrd that is read back with rerun's own reader."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rr = pytest.importorskip("rerun")
from rerun.chunk import RrdReader  # noqa: E402
from ros_helpers import spin  # noqa: E402

from posevla.calibration.files import load_calibrations  # noqa: E402
from posevla.geometry.intrinsics import CameraIntrinsics  # noqa: E402
from posevla.types import ActionChunk, ArmChunk  # noqa: E402
from posevla.viewer import LiveView, close_recording, open_recording, project_chunk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INTR = CameraIntrinsics(60.0, 62.0, 31.5, 23.5, 64, 48)  # small images: fast to publish and log
T_BASE_LEFT_TCP = np.array([[1.0, 0, 0, 0.35], [0, -1.0, 0, 0.18], [0, 0, -1.0, 0.22], [0, 0, 0, 1]])  # tool down


def read_rrd(path: Path) -> dict[str, dict[str, list]]:
    """entity path -> component column -> values in logging order (static and temporal rows alike)."""
    out: dict[str, dict[str, list]] = {}
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        cols = out.setdefault(chunk.entity_path, {})
        for name in batch.schema.names:
            if ":" in name:
                cols.setdefault(name, []).extend(batch.column(name).to_pylist())
    return out


def _pixels(p_cam: np.ndarray) -> np.ndarray:
    """Pinhole by hand: u = fx x / z + cx, v = fy y / z + cy."""
    return np.stack([INTR.fx * p_cam[:, 0] / p_cam[:, 2] + INTR.cx, INTR.fy * p_cam[:, 1] / p_cam[:, 2] + INTR.cy], 1)


def _scene() -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Calibrations; the left chunk (head frame) 0.25-0.35 m in front of the left wrist camera, the right chunk
    0.5-0.7 m in front of the head camera; and the pixels each should land on, computed here by hand."""
    calib = load_calibrations(REPO / "calibration")
    T_base_head = calib["head_camera_color_optical_frame"].T_parent_child
    T_tcp_wrist = calib["left_wrist_camera_color_optical_frame"].T_parent_child
    p_wrist = np.array([[0.01, 0.0, 0.25], [0.02, 0.01, 0.30], [0.03, 0.02, 0.35]])
    T_head_wrist = np.linalg.inv(T_base_head) @ T_BASE_LEFT_TCP @ T_tcp_wrist
    left_head = (T_head_wrist[:3, :3] @ p_wrist.T).T + T_head_wrist[:3, 3]
    right_head = np.array([[0.05, 0.02, 0.5], [0.0, 0.05, 0.6], [-0.05, 0.08, 0.7]])
    assert np.all(left_head[:, 2] > 0), "the wrist-camera points must also be in front of the head camera"
    return calib, left_head, right_head, _pixels(p_wrist), _pixels(np.vstack([left_head, right_head]))


def _chunk(stamp_ns: int, left_head: np.ndarray, right_head: np.ndarray) -> ActionChunk:
    arms = {}
    for arm, pts in (("left", left_head), ("right", right_head)):
        T = np.tile(np.eye(4), (len(pts), 1, 1))
        T[:, :3, 3] = pts
        arms[arm] = ArmChunk(T=T, gripper=np.full(len(pts), 0.5))
    return ActionChunk("head_camera_color_optical_frame", stamp_ns, 0.1, arms)


def test_projection_by_hand_and_invisible_points_split_the_path() -> None:
    T_base_cam = np.eye(4)
    pts = np.array([[0.1, -0.05, 0.5], [0.0, 0.1, 0.4],  # in front
                    [0.0, 0.0, -0.3],  # behind the camera
                    [0.02, 0.03, 0.03],  # in front, below the image (v = 85.5 px): within one image height, drawn
                    [0.2, 0.0, 0.021],  # barely in front of the image plane: u = 603 px, far outside
                    [0.0, 0.0, 1.0], [-0.1, 0.05, 1.0]])  # in front, on the optical axis and beside it
    runs = project_chunk(pts, T_base_cam, INTR)
    assert [len(r) for r in runs] == [2, 1, 2]
    np.testing.assert_allclose(runs[0], [[60 * 0.2 + 31.5, 62 * -0.1 + 23.5], [31.5, 62 * 0.25 + 23.5]])
    np.testing.assert_allclose(runs[1], [[60 * 0.02 / 0.03 + 31.5, 62 * 1.0 + 23.5]])
    np.testing.assert_allclose(runs[2], [[31.5, 23.5], [60 * -0.1 + 31.5, 62 * 0.05 + 23.5]])


def test_live_view_core_logs_projected_chunk_trace_and_safety(tmp_path: Path) -> None:
    calib, left_head, right_head, wrist_px, head_px = _scene()
    path = tmp_path / "core.rrd"
    rec = open_recording("posevla_live_test", "core", save=path)
    view = LiveView(rec, calib, ("head", "left_wrist"), image_period_s=0.0)
    t0 = 1_700_000_000_000_000_000
    for k in range(5):  # the left TCP rests; its history covers the image stamps
        view.tcp("left", T_BASE_LEFT_TCP + _shift(k * 0.01), t0 + k * 20_000_000)
    for cam in ("head", "left_wrist"):
        view.camera_info(cam, INTR)
        if cam == "head":  # depth before its colour image (the topics are independent): held, then logged with it
            view.depth(cam, np.full((48, 64), 400, np.uint16), 1000.0, t0 + 80_000_000)
            assert view.stats["depth"] == 0
        view.image(cam, np.full((48, 64, 3), 128, np.uint8), t0 + 80_000_000)
        if cam == "left_wrist":
            view.depth(cam, np.full((48, 64), 400, np.uint16), 1000.0, t0 + 80_000_000)
    view.depth("head", np.full((48, 64), 999, np.uint16), 1000.0, t0 + 10_000_000)  # no colour image of that stamp: not logged
    assert view.stats["depth"] == 2 and view.stats["images"] == 2
    view.tcp("left", T_BASE_LEFT_TCP + _shift(0.05), t0 + 100_000_000)
    for k in range(3):  # set-points 10 ms apart, logged every 33 ms: the first one only, then the trace on the next
        view.command("left", T_BASE_LEFT_TCP + _shift(0.001 * k), t0 + k * 10_000_000)
    view.command("left", T_BASE_LEFT_TCP + _shift(0.004), t0 + 40_000_000)
    view.command("middle", T_BASE_LEFT_TCP, t0)  # not an arm: ignored
    for _ in range(2):  # a second camera driver on the same topic: reported once
        view.camera_info("head", CameraIntrinsics(120.0, 124.0, 63.5, 47.5, 128, 96))
        view.camera_info("head", INTR)
    assert view.chunk(_chunk(t0 + 80_000_000, left_head, right_head))
    assert not view.chunk(ActionChunk("top_camera_color_optical_frame", t0, 0.1, _chunk(t0, left_head, right_head).arms))
    view.diagnostics("executor", 2, "e-stop latched", {"estop_latched": "True", "holds": "12", "last_refusal":
                                                       "chunk is 2.700 s old"}, t0 + 90_000_000)
    view.diagnostics("camera_head", 0, "ok", {"fps": "30"}, t0)  # not a safety source: ignored
    view.diagnostics("policy_node", 0, "running", {"source_sync_('head', 'depth'): queue overflow": "3"}, t0)
    view.estop_topic(True, t0 + 95_000_000)
    close_recording(rec, saved=True)
    data = read_rrd(path)
    # the wrist camera lives under its TCP; the TCP at the image stamp (t0 + 80 ms) was 0.04 m along x from rest
    wrist = "/world/base_link/left_tcp/left_wrist"
    left_px = np.array(data[f"{wrist}/chunk/left"]["LineStrips2D:strips"][-1][0])
    shifted = _shifted_wrist_pixels(calib, left_head, 0.04)
    np.testing.assert_allclose(left_px, shifted, atol=1e-6)
    head_left = np.array(data["/world/base_link/head/chunk/left"]["LineStrips2D:strips"][-1][0])
    head_right = np.array(data["/world/base_link/head/chunk/right"]["LineStrips2D:strips"][-1][0])
    np.testing.assert_allclose(np.vstack([head_left, head_right]), head_px, atol=1e-6)
    assert np.all((head_px >= 0) & (head_px < [64, 48])), head_px
    assert data[f"{wrist}/depth"]["DepthImage:meter"][-1] == [1000.0]
    assert len(data["/world/base_link/head/depth"]["DepthImage:buffer"]) == 1
    assert "EncodedImage:blob" in data[f"{wrist}/rgb"] and "Pinhole:image_from_camera" in data[wrist]
    trace = np.array(data["/world/base_link/left_tcp_trace"]["LineStrips3D:strips"][-1][0])
    # logged at most every 33 ms (t0, +40, +80 ms): the last drawn trace holds every pose up to +80 ms
    np.testing.assert_allclose(trace[:, 0], 0.35 + np.array([0.0, 0.01, 0.02, 0.03, 0.04]))
    assert view.stats["tcp"] == 3 and len(view.traces["world/base_link/left_tcp_trace"]) == 6
    command = np.array(data["/world/base_link/left_command_trace"]["LineStrips3D:strips"][-1][0])
    np.testing.assert_allclose(command[:, 0], 0.35 + np.array([0.0, 0.001, 0.002, 0.004]))
    np.testing.assert_allclose(np.concatenate(data["/robot/left/command_x"]["Scalars:scalars"]), [0.35, 0.354])
    assert view.stats["commands"] == 2 and not any("middle" in e for e in data)
    assert data["/safety/estop"]["Scalars:scalars"][-1] == [1.0]
    assert data["/safety/executor/estop_latched"]["Scalars:scalars"][-1] == [1.0]
    assert data["/safety/executor/holds"]["Scalars:scalars"][-1] == [12.0]
    log = [t[0] for t in data["/safety/log"]["TextLog:text"]]
    assert any("top_camera_color_optical_frame" in t and "not drawn" in t for t in log), log
    assert "executor: chunk refused: chunk is 2.700 s old" in log and "E-STOP: /estop is true" in log, log
    assert sum("head: camera_info changed from 64x48 fx 60.0 to 128x96 fx 120.0" in t for t in log) == 1, log
    assert not any(e.startswith("/safety/camera_head") for e in data)
    odd = [e for e in data if e.startswith("/safety/policy_node/source_sync")]  # one escaped path part
    assert len(odd) == 1 and data[odd[0]]["Scalars:scalars"] == [[3.0]] and odd[0].count("/") == 3, odd
    assert view.stats["chunks"] == 1 and view.stats["chunk_refused"] == 1


def _shift(dx: float) -> np.ndarray:
    S = np.zeros((4, 4))
    S[0, 3] = dx
    return S


def _shifted_wrist_pixels(calib: dict, left_head: np.ndarray, dx: float) -> np.ndarray:
    """The head-frame points seen by the left wrist camera when its TCP sits dx along base x."""
    T_base_head = calib["head_camera_color_optical_frame"].T_parent_child
    T_tcp_wrist = calib["left_wrist_camera_color_optical_frame"].T_parent_child
    T_wrist_head = np.linalg.inv((T_BASE_LEFT_TCP + _shift(dx)) @ T_tcp_wrist) @ T_base_head
    return _pixels((T_wrist_head[:3, :3] @ left_head.T).T + T_wrist_head[:3, 3])


def _start_view(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posevla.cli", "view", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_bad_view_options_exit_2_with_one_line(tmp_path: Path) -> None:
    proc = _start_view(["--save", str(tmp_path / "v.rrd"), "--cameras", "head,top"])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out
    assert "parameter cameras" in out and "top" in out and "Traceback" not in out, out
    proc = _start_view(["--save", str(tmp_path / "missing" / "v.rrd")])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "parameter save" in out and "Traceback" not in out, out


def test_posevla_view_records_the_live_topics_headless(tmp_path: Path, rclpy_context) -> None:
    """`posevla view --save` against topics published here with real rclpy and DDS: head and left wrist RGB-D with
    CameraInfo, TCP poses, a head-frame chunk on /policy/chunk, executor diagnostics and a default-QoS /estop."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseStamped
    from posevla_ros.msg_conv import (
        T_to_pose_stamped,
        chunk_to_msg,
        image_to_msg,
        intrinsics_to_msg,
        ns_to_time,
        servo_command_to_msg,
    )
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import MultiDOFJointTrajectory

    calib, left_head, right_head, wrist_px, head_px = _scene()
    path = tmp_path / "live.rrd"
    proc = _start_view(["--save", str(path), "--cameras", "head,left_wrist", "--image-rate", "20"])
    node = rclpy.create_node("live_view_probe", context=rclpy_context)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    pubs = {cam: (node.create_publisher(Image, f"/{cam}/color/image_raw", qos_profile_sensor_data),
                  node.create_publisher(Image, f"/{cam}/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
                  node.create_publisher(CameraInfo, f"/{cam}/color/camera_info", qos_profile_sensor_data))
            for cam in ("head", "left_wrist")}
    tcp_pub = node.create_publisher(PoseStamped, "/left_arm/tcp_pose", 50)
    chunk_pub = node.create_publisher(MultiDOFJointTrajectory, "/policy/chunk", 10)
    diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    estop_pub = node.create_publisher(Bool, "/estop", 10)  # ROS's default QoS (reliable, volatile)
    command_pub = node.create_publisher(MultiDOFJointTrajectory, "/xtrainer/servo_command", 10)
    seen: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name == "live_view":
                seen.update({kv.key: kv.value for kv in st.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)

    def done() -> bool:
        return (int(seen.get("images", 0)) >= 6 and int(seen.get("projected", 0)) >= 9
                and int(seen.get("diagnostics", 0)) >= 1 and int(seen.get("estop", 0)) >= 1
                and int(seen.get("commands", 0)) >= 1)

    rgb, depth = np.full((48, 64, 3), (200, 40, 40), np.uint8), np.full((48, 64), 450, np.uint16)
    try:
        deadline = time.monotonic() + 120  # the viewer's start (rclpy, rerun) under load, then a few seconds of data
        while time.monotonic() < deadline and not done() and proc.poll() is None:
            now = node.get_clock().now().nanoseconds
            tcp_pub.publish(T_to_pose_stamped(T_BASE_LEFT_TCP, now, "base_link"))  # the left TCP rests
            command_pub.publish(servo_command_to_msg(now, {"left": T_BASE_LEFT_TCP + _shift(0.01)}, {"left": 0.5}))
            t_img = now - 100_000_000  # images 0.1 s old: the TCP history covers their stamps on arrival
            for cam, (p_rgb, p_depth, p_info) in pubs.items():
                frame = f"{cam}_camera_color_optical_frame"
                p_info.publish(intrinsics_to_msg(INTR, t_img, frame))
                p_rgb.publish(image_to_msg(rgb, "rgb8", t_img, frame))
                p_depth.publish(image_to_msg(depth, "16UC1", t_img, frame))
            chunk_pub.publish(chunk_to_msg(_chunk(t_img, left_head, right_head)))
            st = DiagnosticStatus(name="executor", message="e-stop latched", level=DiagnosticStatus.ERROR)
            st.values = [KeyValue(key="estop_latched", value="True"), KeyValue(key="refused", value="3")]
            diag = DiagnosticArray(status=[st])
            diag.header.stamp = ns_to_time(now)
            diag_pub.publish(diag)
            estop_pub.publish(Bool(data=True))
            spin(ex, 0.1)
        assert done(), f"live_view counts {seen} (exit {proc.poll()})"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
        node.destroy_node()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and f"wrote {path}" in out, out
    data = read_rrd(path)
    wrist = "/world/base_link/left_tcp/left_wrist"
    for strips in data[f"{wrist}/chunk/left"]["LineStrips2D:strips"]:
        np.testing.assert_allclose(np.array(strips[0]), wrist_px, atol=1e-6)  # the TCP rests: every frame alike
    heads = data["/world/base_link/head/chunk/left"]["LineStrips2D:strips"]
    rights = data["/world/base_link/head/chunk/right"]["LineStrips2D:strips"]
    np.testing.assert_allclose(np.vstack([heads[-1][0], rights[-1][0]]), head_px, atol=1e-6)
    assert np.all((head_px >= 0) & (head_px < [64, 48])) and np.all((wrist_px >= 0) & (wrist_px < [64, 48]))
    assert len(data["/world/base_link/head/rgb"]["EncodedImage:blob"]) >= 1  # 6 images in all, split by the load
    assert data["/world/base_link/head/depth"]["DepthImage:meter"][-1] == [1000.0]
    np.testing.assert_allclose(np.array(data["/world/base_link/head"]["Pinhole:image_from_camera"][-1]).reshape(3, 3).T,
                               INTR.K)
    np.testing.assert_allclose(data["/robot/left/tcp_x"]["Scalars:scalars"][-1], [0.35])
    np.testing.assert_allclose(data["/robot/left/command_x"]["Scalars:scalars"][-1], [0.36])
    assert data["/safety/estop"]["Scalars:scalars"][-1] == [1.0]
    assert data["/safety/executor/estop_latched"]["Scalars:scalars"][-1] == [1.0]
    assert data["/safety/executor/refused"]["Scalars:scalars"][-1] == [3.0]
    log = [t[0] for t in data["/safety/log"]["TextLog:text"]]
    assert "E-STOP: /estop is true" in log and "executor: e-stop latched" in log, log
