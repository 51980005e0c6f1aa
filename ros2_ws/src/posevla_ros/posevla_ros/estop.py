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
from std_srvs.srv import Trigger

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


class EstopLatch:
    """One stopping node's e-stop plumbing: the /estop subscriptions (every QoS kind) and its trigger/reset
    services from `NODE_SERVICES[node_key]`. `latch()` stops the node's output; `release()` clears its latch and
    is refused while /estop is still true."""

    def __init__(self, node: Node, node_key: str, latch: Callable[[], None], release: Callable[[], None]) -> None:
        self.node, self._latch, self._release = node, latch, release
        self.topic_true = False  # last value on /estop
        trigger, reset = NODE_SERVICES[node_key]
        self.subscriptions = subscribe_estop(node, self._on_topic)
        node.create_service(Trigger, trigger, self._srv_trigger)
        node.create_service(Trigger, reset, self._srv_reset)

    def _on_topic(self, msg: Bool) -> None:
        self.topic_true = bool(msg.data)
        if msg.data:
            self._latch()
            self.node.get_logger().error("E-STOP latched (/estop)")

    def _srv_trigger(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._latch()
        response.success, response.message = True, "e-stop latched"
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.topic_true:
            response.success = False
            response.message = "refused: /estop is still true (release it first: posevla estop --release)"
            return response
        self._release()
        response.success, response.message = True, "e-stop reset"
        return response
