"""How old is the robot state a busy subscriber holds when an image arrives? (`benchmarks/bench_state_lag.py`,
`tests/test_state_qos.py`; why: `posevla_ros.qos`.)

A publisher process sends a TCP pose at `tcp_hz` and a small image at `image_hz` from one loop, both stamped with
the same clock (like the driver and a camera on one PC). The subscriber keeps its executor busy for `busy_s` per
cycle (a policy or executor node converting images, synchronising, logging) and, for every image it takes, notes
image stamp - newest TCP stamp it has taken: positive means the state it holds is older than the image. The
observation builder refuses a wrist view whose TCP pose is more than 100 ms older than the image.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np

_PUBLISHER = textwrap.dedent("""
    import sys, time, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image
    prefix, seconds, tcp_hz, image_hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rclpy.init()
    node = rclpy.create_node("state_lag_publisher")
    tcp = node.create_publisher(PoseStamped, prefix + "/tcp_pose", 10)
    img = node.create_publisher(Image, prefix + "/image", qos_profile_sensor_data)
    t0 = time.monotonic()
    next_tcp = next_img = t0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        stamp = node.get_clock().now().to_msg()
        if now >= next_tcp:
            m = PoseStamped(); m.header.stamp = stamp; tcp.publish(m); next_tcp += 1.0 / tcp_hz
        if now >= next_img:
            m = Image(height=48, width=64, encoding="rgb8", step=192, data=bytes(48 * 192)); m.header.stamp = stamp
            img.publish(m); next_img += 1.0 / image_hz
        time.sleep(max(0.0, min(next_tcp, next_img) - time.monotonic()))
    """)


@dataclass
class LagResult:
    depth: int  # the TCP subscription's queue depth
    lag_ms: np.ndarray  # per image taken: image stamp - newest TCP stamp held (ms)
    tcp_taken: int
    images_taken: int

    def summary(self) -> str:
        lag = self.lag_ms
        return (f"TCP queue depth {self.depth:2d}: state older than the image by p50 {np.median(lag):6.0f} ms, p90 "
                f"{np.percentile(lag, 90):6.0f} ms, max {lag.max():6.0f} ms; {np.mean(lag > 100) * 100:5.1f} % of "
                f"{lag.size} images over the 100 ms tolerance ({self.tcp_taken} TCP poses taken)")


def measure(context, qos, seconds: float = 6.0, busy_s: float = 0.02, tcp_hz: float = 100.0,
            image_hz: float = 30.0, settle_s: float = 1.5) -> LagResult:
    """Run the publisher process and a busy subscriber (TCP subscription with `qos`, an int depth or a QoSProfile)
    in `context`; the first `settle_s` of images (discovery, queues filling) are not counted."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    prefix = f"/state_lag_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    node = rclpy.create_node("state_lag_subscriber", context=context)
    newest = {"tcp": 0, "n": 0}
    lags: list[tuple[float, float]] = []
    t_start = time.monotonic()

    def on_tcp(m: PoseStamped) -> None:
        newest["tcp"] = max(newest["tcp"], m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)
        newest["n"] += 1

    def on_image(m: Image) -> None:
        if newest["tcp"]:
            stamp = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
            lags.append((time.monotonic() - t_start, (stamp - newest["tcp"]) * 1e-6))

    def busy() -> None:
        t = time.perf_counter()
        while time.perf_counter() - t < busy_s:
            pass

    node.create_subscription(PoseStamped, prefix + "/tcp_pose", on_tcp, qos)
    node.create_subscription(Image, prefix + "/image", on_image, qos_profile_sensor_data)
    node.create_timer(0.001, busy)
    ex = rclpy.executors.SingleThreadedExecutor(context=context)
    ex.add_node(node)
    pub = subprocess.Popen([sys.executable, "-c", _PUBLISHER, prefix, str(seconds + 30.0), str(tcp_hz), str(image_hz)])
    try:
        # readiness, not a fixed wait: the clock starts with the first image beside a TCP pose
        deadline = time.monotonic() + 60.0
        while not lags and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        if not lags:
            raise RuntimeError("state_lag: no image with a TCP pose within 60 s (publisher process not seen)")
        t_start = time.monotonic()
        lags.clear()
        end = t_start + seconds
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
    finally:
        pub.kill()
        pub.wait(10)
        ex.remove_node(node)
        ex.shutdown()
        node.destroy_node()
    kept = np.array([lag for t, lag in lags if t >= settle_s])
    depth = qos if isinstance(qos, int) else int(qos.depth)
    return LagResult(depth, kept if kept.size else np.array([np.nan]), newest["n"], len(lags))
