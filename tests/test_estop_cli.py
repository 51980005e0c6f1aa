"""`posevla estop` and the e-stop subscriptions: both QoS kinds get through, the stop is latched for late joiners,
the trigger/reset services are called, and --release clears the topic."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from posevla_ros.estop import RECEIVER_QOS, SENDER_QOS, TOPIC, subscribe_estop  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from ros_helpers import spin  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

pytestmark = pytest.mark.ros


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posevla.cli", "estop", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def _run_while_spinning(ex, proc: subprocess.Popen, timeout_s: float = 120.0) -> tuple[int, str]:
    spin(ex, timeout_s, until=lambda: proc.poll() is not None)
    out = proc.communicate(timeout=30)[0]
    return proc.returncode, out


@pytest.fixture
def node_ex(rclpy_context):
    node = rclpy.create_node("estop_probe", context=rclpy_context)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    yield node, ex
    node.destroy_node()


def test_receiver_qos_covers_every_sender_kind() -> None:
    kinds = {(q.reliability, q.durability) for q in RECEIVER_QOS}
    assert (QoSReliabilityPolicy.RELIABLE, QoSDurabilityPolicy.TRANSIENT_LOCAL) in kinds
    assert (QoSReliabilityPolicy.RELIABLE, QoSDurabilityPolicy.VOLATILE) in kinds
    assert (QoSReliabilityPolicy.BEST_EFFORT, QoSDurabilityPolicy.VOLATILE) in kinds
    assert SENDER_QOS.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL and SENDER_QOS.depth == 1


@pytest.mark.parametrize("qos", [QoSProfile(depth=10),  # ROS's default: reliable, volatile
                                 QoSProfile(depth=10, reliability=QoSReliabilityPolicy.BEST_EFFORT),
                                 SENDER_QOS])
def test_estop_subscription_accepts_default_and_latched_publishers(node_ex, qos) -> None:
    node, ex = node_ex
    got: list[bool] = []
    subscribe_estop(node, lambda m: got.append(m.data))
    # the old receiver (transient-local only) next to it, to show what the issue was about
    old: list[bool] = []
    node.create_subscription(Bool, TOPIC, lambda m: old.append(m.data), SENDER_QOS)
    pub = node.create_publisher(Bool, TOPIC, qos)
    # subscriptions each publisher kind matches: reliable+TL all 4; reliable+volatile 2; best effort 1
    matched = {QoSReliabilityPolicy.BEST_EFFORT: 1}.get(qos.reliability,
                                                       4 if qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL else 2)
    spin(ex, 20.0, until=lambda: pub.get_subscription_count() >= matched)
    assert pub.get_subscription_count() == matched
    deadline = time.monotonic() + 20.0
    while not got and time.monotonic() < deadline:  # best effort may lose the first message during discovery
        pub.publish(Bool(data=True))
        spin(ex, 0.5, until=lambda: bool(got))
    assert got and all(got), f"e-stop with {qos} not received"
    if qos.durability == QoSDurabilityPolicy.VOLATILE:
        assert old == [], "a transient-local-only subscription should not match a volatile publisher"


def test_cli_stops_latches_for_late_joiners_and_calls_services(node_ex) -> None:
    node, ex = node_ex
    calls: list[str] = []

    def service(name: str):
        def handler(req, res):
            calls.append(name)
            res.success, res.message = True, f"{name} done"
            return res
        return handler

    for s in ("/executor/estop/trigger", "/xtrainer/estop/trigger", "/executor/estop/reset", "/xtrainer/estop/reset"):
        node.create_service(Trigger, s, service(s))
    early: list[bool] = []
    subscribe_estop(node, lambda m: early.append(m.data))
    proc = _cli("--timeout", "20", "--hold", "10")
    # the CLI prints its report before holding the latched message for --hold seconds: join late meanwhile
    spin(ex, 120.0, until=lambda: len(calls) >= 2 or proc.poll() is not None)
    late: list[bool] = []
    subscribe_estop(node, lambda m: late.append(m.data))
    spin(ex, 20.0, until=lambda: bool(late))
    rc, out = _run_while_spinning(ex, proc)
    assert rc == 0, out
    assert "executor: STOPPED" in out and "xtrainer_driver: STOPPED" in out, out
    assert "delivered to" in out, out
    assert early and all(early)
    assert late == [True] * len(late) and late, "a subscriber that joined after the stop did not see it latched"
    assert calls[:2] == ["/executor/estop/trigger", "/xtrainer/estop/trigger"]

    got: list[bool] = []
    subscribe_estop(node, lambda m: got.append(m.data))
    rc, out = _run_while_spinning(ex, _cli("--release", "--timeout", "20", "--hold", "0"))
    assert rc == 0, out
    assert "executor: reset" in out and "xtrainer_driver: reset" in out, out
    spin(ex, 5.0, until=lambda: False in got)
    assert False in got
    assert calls[2:] == ["/executor/estop/reset", "/xtrainer/estop/reset"]


def test_cli_without_any_receiver_says_so_and_fails() -> None:
    proc = _cli("--timeout", "1", "--hold", "0")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    assert "no subscriber acknowledged" in out and "not available" in out, out
    assert "Traceback" not in out


def test_cli_rejects_bad_arguments() -> None:
    proc = _cli("--timeout", "0")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "--timeout" in out and "Traceback" not in out, out


def test_keys_mode_stops_on_space_and_quits_on_q(node_ex) -> None:
    """`posevla estop --keys` on a terminal (a pty here; a USB foot pedal types the same keys)."""
    import pty

    node, ex = node_ex
    got: list[bool] = []
    subscribe_estop(node, lambda m: got.append(m.data))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "posevla.cli", "estop", "--keys", "--timeout", "2", "--hold", "0"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    os.close(slave)
    try:
        spin(ex, 60, until=lambda: proc.poll() is not None or _cli_publisher_up(node))
        prompt = proc.stdout.readline()  # printed once the terminal reads key by key
        assert "e-stop keys" in prompt, prompt
        os.write(master, b" ")
        spin(ex, 60, until=lambda: bool(got) or proc.poll() is not None)
        assert got and got[0] is True
        os.write(master, b"q")
        rc, out = _run_while_spinning(ex, proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert rc == 0, out
    out = prompt + out
    assert "SPACE, ENTER or s stops the robot" in out and "delivered to" in out, out


def _cli_publisher_up(node) -> bool:
    """True once the CLI's latched e-stop publisher has appeared on the graph."""
    return node.count_publishers(TOPIC) > 0
