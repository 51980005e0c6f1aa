"""observation_node over real DDS: three cameras published from another process with jittered stamps and
deliberately dropped frames; every emitted observation has its views within the slop, drops are counted."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from posevla_ros.msg_conv import time_to_ns  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

pytestmark = pytest.mark.slow

PUBLISHER = textwrap.dedent("""
    import time, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, CameraInfo
    from posevla.geometry.intrinsics import CameraIntrinsics
    from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg
    rclpy.init()
    node = rclpy.create_node("fake_cameras")
    cams = ["head", "left_wrist", "right_wrist"]
    pubs = {c: (node.create_publisher(Image, f"/{c}/color/image_raw", qos_profile_sensor_data),
                node.create_publisher(Image, f"/{c}/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
                node.create_publisher(CameraInfo, f"/{c}/color/camera_info", qos_profile_sensor_data)) for c in cams}
    intr = CameraIntrinsics(193.0, 193.0, 159.5, 119.5, 320, 240)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    depth = np.full((240, 320), 800, np.uint16)
    depth[:20] = 0
    end = time.monotonic() + 30  # start once the observation node is matched on every topic (discovery lag)
    while time.monotonic() < end and not all(p.get_subscription_count() > 0 for ps in pubs.values() for p in ps):
        time.sleep(0.05)
    for k in range(90):
        base = node.get_clock().now().nanoseconds
        for c in cams:
            if c == "right_wrist" and k % 10 == 5:
                continue  # deliberately dropped frame
            stamp = base + int(rng.integers(-4_000_000, 4_000_000))
            color, d, info = pubs[c]
            fid = f"{c}_camera_color_optical_frame"
            info.publish(intrinsics_to_msg(intr, stamp, fid))
            color.publish(image_to_msg(rgb, "rgb8", stamp, fid))
            d.publish(image_to_msg(depth, "16UC1", stamp, fid))
        time.sleep(1 / 15)
    """)


def test_observation_node_emits_synchronised_views_and_counts_drops(rclpy_context) -> None:
    env = os.environ.copy()
    obs_proc = subprocess.Popen([sys.executable, "-m", "posevla_ros.observation_node", "--ros-args",
                                 "-p", "image_size:=112", "-p", "slop_s:=0.01", "-p", "max_age_s:=1.0"], env=env)
    node = rclpy.create_node("observation_probe", context=rclpy_context)
    got: dict[str, list[int]] = {"head": [], "left_wrist": [], "right_wrist": []}
    shapes = set()
    diags = {}
    for cam in got:
        node.create_subscription(Image, f"/observation/{cam}/image",
                                 lambda m, c=cam: (got[c].append(time_to_ns(m.header.stamp)), shapes.add((m.height, m.width))), 50)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diags.update({kv.key: kv.value for s in m.status for kv in s.values}), 10)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    end = time.monotonic() + 60  # the node imports torch: slow on a loaded machine; wait until it is up
    while time.monotonic() < end and node.count_publishers("/observation/right_wrist/image") == 0:
        ex.spin_once(timeout_sec=0.05)
    assert node.count_publishers("/observation/right_wrist/image") > 0, "observation_node did not come up"
    end = time.monotonic() + 2  # let discovery of its subscriptions settle
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=env)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and pub.poll() is None:
            ex.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
    finally:
        pub.kill()
        obs_proc.terminate()
        obs_proc.wait(10)
    n = len(got["head"])
    # 81 complete sets at 15 Hz; a CPU-starved node supersedes sets (counted below) instead of falling behind,
    # so on a loaded 2-core machine fewer come out (27-33 seen beside other test runs, ~80 when quiet)
    assert n >= 20, f"only {n} observations"
    assert shapes == {(112, 112)}
    # views of the same observation are published together; pair them by order and check the spread
    m = min(len(v) for v in got.values())
    spread = np.ptp(np.array([got[c][:m] for c in got]), axis=0)
    assert spread.max() <= 10_000_000
    assert 0 < m <= 90 - 9 + 1  # the 9 instants with a dropped right-wrist frame cannot make observations
    dropped = sum(int(v) for k, v in diags.items() if k.startswith("sync_") and "superseded" in k or "overflow" in k)
    assert dropped >= 9, diags
    node.destroy_node()
