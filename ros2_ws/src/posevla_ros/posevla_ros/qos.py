"""QoS of the robot-state streams (/joint_states, /<arm>_arm/tcp_pose, the leader's command) for subscribers that
act on the arm's *current* state.

`LATEST_STATE`: reliable, keep the newest message only. rclpy's executor takes one message per subscription per
wait cycle, so a subscriber whose cycle is slower than the stream's period (the driver publishes at 100 Hz; a
policy node's executor also converts images and runs the synchroniser) works through its queue oldest first: with
a queue of 50 every state it sees is ~50 periods old. Measured here (`benchmarks/bench_state_lag.py`, a 100 Hz
publisher process and an executor busy 20 ms per cycle): the newest TCP pose the subscriber held was p50 573 ms
old with depth 50 and 36 ms with depth 1; under CI load the policy node refused observations because its TCP
poses lagged the wrist images by 0.5-1.2 s. Subscribers that need every message (trace recorders) keep a queue.
"""
from __future__ import annotations

from rclpy.qos import QoSProfile, ReliabilityPolicy

LATEST_STATE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
