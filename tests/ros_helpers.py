"""Helpers of the ROS tests: the simulated X-Trainer's robot YAML on free loopback ports (so tests and a
running demo never fight over the simulator's sockets), spinning an executor, calling Trigger services."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def sim_robot_yaml(folder: Path) -> Path:
    """config/xtrainer_sim_robot.yaml with fresh dashboard/motion/feedback ports per arm, written to folder."""
    cfg = yaml.safe_load((REPO / "config" / "xtrainer_sim_robot.yaml").read_text())
    ports = free_ports(6)
    for i, arm in enumerate(("left", "right")):
        cfg["arms"][arm].update(dashboard_port=ports[3 * i], motion_port=ports[3 * i + 1], feedback_port=ports[3 * i + 2])
        cfg["grippers"][arm]["port"] = str(Path(folder) / f"{arm}_gripper")  # this test's own simulated bus
    path = Path(folder) / "robot.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def spin(ex, seconds: float, until=None, step_s: float = 0.02) -> None:
    """Spin an executor for up to `seconds`, returning early once `until()` is true."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (until and until()):
        ex.spin_once(timeout_sec=step_s)


_CLIENTS: dict = {}


def call_trigger(node, ex, name: str, timeout_s: float = 10.0):
    """Call a std_srvs/Trigger service and return its response (None if it did not answer in time)."""
    from std_srvs.srv import Trigger

    # one client per node and service: a client created just before the call can lose the reply while the
    # server is still discovering it (the request arrives, the response has nowhere to go)
    key = (id(node), name)
    cli = _CLIENTS.get(key)
    if cli is None:
        cli = _CLIENTS[key] = node.create_client(Trigger, name)
    assert cli.wait_for_service(timeout_s), f"service {name} not available"
    fut = cli.call_async(Trigger.Request())
    spin(ex, timeout_s, until=fut.done)
    return fut.result()
