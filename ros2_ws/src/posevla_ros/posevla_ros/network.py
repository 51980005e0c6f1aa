"""Network exposure of the stack's nodes: DDS discovery stays on this machine unless the operator opts in.

Any DDS participant that discovers the nodes can publish on their topics (chunks, servo commands, e-stop
resets). By default every node of this package therefore sets `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`
before rclpy starts. A robot whose nodes run on several machines opts in with `POSEVLA_ROBOT_NETWORK=1`
(then ROS's own settings apply: `ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`, `ROS_STATIC_PEERS`, ...), and should
enable SROS2 (README, "Safety": `ROS_SECURITY_ENABLE=true`, `ROS_SECURITY_STRATEGY=Enforce`, an enclave per
node) so that only nodes holding the project's keys can join.
"""
from __future__ import annotations

import os

OPT_IN = "POSEVLA_ROBOT_NETWORK"


def apply_network_policy(environ: dict[str, str] | None = None) -> str:
    """Set the discovery range for this process (before rclpy.init); returns the range in force."""
    env = os.environ if environ is None else environ
    if env.get(OPT_IN, "") not in ("1", "true", "yes"):
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
