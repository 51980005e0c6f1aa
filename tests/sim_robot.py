"""Test helper: a copy of the simulated X-Trainer's robot YAML on free loopback ports, so several ROS tests
(and a developer's running demo) never fight over the simulator's sockets."""
from __future__ import annotations

import socket
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
    path = Path(folder) / "robot.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
