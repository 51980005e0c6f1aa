"""The ROS 2 installation itself: DDS between two processes, and colcon building the workspace."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
REPO = Path(__file__).resolve().parents[1]

PUBLISHER = textwrap.dedent("""
    import sys, time, rclpy
    from std_msgs.msg import String
    rclpy.init()
    node = rclpy.create_node("foundation_pub")
    pub = node.create_publisher(String, "/foundation/chatter", 10)
    deadline = time.monotonic() + 30
    i = 0
    while time.monotonic() < deadline:
        pub.publish(String(data=f"hello {i}"))
        i += 1
        rclpy.spin_once(node, timeout_sec=0.05)
    """)


def test_publish_subscribe_between_two_processes(rclpy_context) -> None:
    from std_msgs.msg import String

    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=os.environ.copy())
    try:
        node = rclpy.create_node("foundation_sub", context=rclpy_context)
        got: list[str] = []
        node.create_subscription(String, "/foundation/chatter", lambda m: got.append(m.data), 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
        executor.add_node(node)
        deadline = time.monotonic() + 25
        while len(got) < 5 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert len(got) >= 5, "no messages crossed DDS between two processes"
        assert all(m.startswith("hello ") for m in got)
        numbers = [int(m.split()[1]) for m in got]
        assert numbers == sorted(numbers)
        node.destroy_node()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_colcon_builds_the_workspace(tmp_path: Path) -> None:
    colcon = shutil.which("colcon") or str(Path(sys.executable).parent / "colcon")
    if not Path(colcon).exists():
        pytest.fail("colcon is not installed (colcon-common-extensions is in requirements.txt)")
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    result = subprocess.run(
        [colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(REPO / "ros2_ws" / "src"),
         str(REPO), "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Summary: 2 packages finished" in result.stdout, result.stdout[-2000:]
    install = tmp_path / "install"
    assert (install / "posevla_ros" / "lib" / "posevla_ros" / "policy_node").exists()
    assert (install / "posevla" / "share" / "ament_index" / "resource_index" / "packages" / "posevla").exists()
