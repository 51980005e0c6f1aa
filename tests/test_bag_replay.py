"""rosbag2 replay: MCAP recordings written with real CDR (rclpy serialisation) are read back by BagSource
and republished by replay_node over DDS bit-exactly, with original or shifted stamps."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rosbags")
from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg, msg_to_image, time_to_ns  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from posevla.geometry.intrinsics import CameraIntrinsics  # noqa: E402
from posevla.perception.bag_replay import BagSource, is_rosbag2  # noqa: E402

T0 = 1_700_000_000_000_000_000
N = 20
DEPTH = "/head/aligned_depth_to_color/image_raw"
INFO = "/head/color/camera_info"


def _stamp(k: int) -> int:
    return T0 + k * 50_000_000 + (k % 3) * 1_000_000  # 20 Hz with jitter


def write_bag(path: Path) -> Path:
    ts = get_typestore(Stores.ROS2_KILTED)
    intr = CameraIntrinsics(60.0, 61.0, 31.5, 23.5, 64, 48)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        depth = w.add_connection(DEPTH, "sensor_msgs/msg/Image", typestore=ts)
        info = w.add_connection(INFO, "sensor_msgs/msg/CameraInfo", typestore=ts)
        note = w.add_connection("/operator_note", "std_msgs/msg/String", typestore=ts)
        for k in range(N):
            stamp, fid = _stamp(k), "head_camera_color_optical_frame"
            d = np.full((48, 64), 500 + k, np.uint16)
            d[0, 0] = 65535
            w.write(depth, stamp + 5_000_000, serialize_message(image_to_msg(d, "16UC1", stamp, fid)))
            w.write(info, stamp + 5_000_000, serialize_message(intrinsics_to_msg(intr, stamp, fid)))
        w.write(note, T0, serialize_message(String(data="hello")))
    return path


def test_bag_source_reads_in_log_order_and_names_bad_input(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag")
    assert is_rosbag2(bag) and not is_rosbag2(tmp_path)
    [mcap] = list(bag.glob("*.mcap"))
    with BagSource(mcap, [DEPTH]) as src:  # the .mcap file itself works too
        assert src.message_count == N and src.types[INFO] == "sensor_msgs/msg/CameraInfo"
        sched = list(src.schedule(rate=2.0))
    assert [m.topic for _, m in sched] == [DEPTH] * N
    np.testing.assert_allclose([d for d, _ in sched], [(_stamp(k) - _stamp(0)) / 1e9 / 2.0 for k in range(N)])
    with pytest.raises(ValueError, match=r"topics \['/nope'\] are not in the recording"):
        BagSource(bag, ["/nope"])
    with pytest.raises(ValueError, match="not a rosbag2 recording"):
        BagSource(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.yaml").write_text("rosbag2_bagfile_information: [")
    with pytest.raises(ValueError, match="cannot open rosbag2 recording"):
        BagSource(tmp_path / "broken")


@pytest.mark.slow
@pytest.mark.parametrize("stamp_mode", ["original", "now"])
def test_replay_node_republishes_bag_bit_exactly(tmp_path: Path, rclpy_context, stamp_mode: str) -> None:
    bag = write_bag(tmp_path / "bag")
    node = rclpy.create_node("bag_probe", context=rclpy_context)
    got: list[tuple[int, np.ndarray, int]] = []  # (stamp, depth, receive time)
    infos: list[CameraInfo] = []
    node.create_subscription(Image, DEPTH, lambda m: got.append(
        (time_to_ns(m.header.stamp), np.array(msg_to_image(m, DEPTH)), time.time_ns())), qos_profile_sensor_data)
    node.create_subscription(CameraInfo, INFO, infos.append, qos_profile_sensor_data)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    proc = subprocess.Popen([sys.executable, "-m", "posevla_ros.replay_node", "--ros-args", "-p", f"episode:={bag}",
                             "-p", f"stamp_mode:={stamp_mode}", "-p", "loop:=true", "-p", "rate:=2.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(got) < 3 * N:
            ex.spin_once(timeout_sec=0.05)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
        node.destroy_node()
    assert len(got) >= 3 * N, out
    assert "not replayed (unsupported types): ['/operator_note']" in out
    recorded = {_stamp(k): k for k in range(N)}
    if stamp_mode == "original":
        for stamp, d, _ in got:
            k = recorded[stamp]
            assert d[0, 0] == 65535 and np.all(d.ravel()[1:] == 500 + k)  # bit-exact
    else:
        # one constant shift per playback: recorded spacing kept, and stamped about when received
        for (s0, d0, _), (s1, d1, _) in zip(got, got[1:]):
            k0, k1 = int(d0[1, 1]) - 500, int(d1[1, 1]) - 500
            if k1 == k0 + 1:
                assert s1 - s0 == _stamp(k1) - _stamp(k0)
        lag = np.array([(r - s) / 1e9 for s, _, r in got])
        assert np.all(np.abs(lag) < 1.0), lag
    assert infos and infos[-1].k[0] == 60.0 and infos[-1].k[4] == 61.0
