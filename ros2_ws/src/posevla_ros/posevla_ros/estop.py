"""The e-stop topic, once: its name, the QoS a sender uses, and the subscriptions every stopping node creates.

Sender (`posevla estop`, a pedal, a GUI): publish std_msgs/Bool `true` on `estop` with `SENDER_QOS` (reliable,
transient-local, depth 1), so a node that starts later still sees the latched value while the sender lives.

Receivers (executor, driver, ...): `subscribe_estop(node, callback)` creates one subscription per QoS kind a
sender may offer, so that no publisher is ever "offering incompatible QoS":

- reliable + transient-local: the latched value from `SENDER_QOS` publishers, including one sent before this
  node started;
- reliable + volatile: ROS's default QoS (`ros2 topic pub /estop std_msgs/msg/Bool "{data: true}"`, rclpy's
  `create_publisher(Bool, "/estop", 10)`), which a transient-local subscription refuses;
- best-effort + volatile: any publisher at all (sensor-data QoS, a microcontroller pedal).

A message can therefore arrive up to three times; stopping is idempotent, and a `false` never resets anything
by itself (each node is reset by its own service, see docs/operator.md).
"""
from __future__ import annotations

from collections.abc import Callable

from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from rclpy.subscription import Subscription
from std_msgs.msg import Bool

TOPIC = "/estop"  # absolute: one e-stop for the whole robot, whatever namespace the nodes run in

SENDER_QOS = QoSProfile(depth=1, history=QoSHistoryPolicy.KEEP_LAST, reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)

RECEIVER_QOS: tuple[QoSProfile, ...] = (
    SENDER_QOS,
    QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE),
    QoSProfile(depth=10, reliability=QoSReliabilityPolicy.BEST_EFFORT, durability=QoSDurabilityPolicy.VOLATILE),
)

# services of the nodes that latch an e-stop: (trigger, reset)
NODE_SERVICES = {"executor": ("/executor/estop/trigger", "/executor/estop/reset"),
                 "xtrainer_driver": ("/xtrainer/estop/trigger", "/xtrainer/estop/reset")}


def subscribe_estop(node: Node, callback: Callable[[Bool], None], topic: str = TOPIC) -> list[Subscription]:
    """Subscribe `callback` to the e-stop topic with every QoS kind a sender may use (see the module docstring)."""
    return [node.create_subscription(Bool, topic, callback, qos) for qos in RECEIVER_QOS]


def create_sender(node: Node, topic: str = TOPIC):
    """The e-stop publisher (reliable, transient-local: latched for late joiners while the node lives)."""
    return node.create_publisher(Bool, topic, SENDER_QOS)
