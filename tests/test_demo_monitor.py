"""The demo's monitor: refusals and holds derived from what crossed the graph, and one-line start-up failures."""
from __future__ import annotations

from collections import deque

import pytest

rclpy = pytest.importorskip("rclpy")
from posevla_ros import demo_graph  # noqa: E402


class FakeRunner:
    def __init__(self, dead: dict[str, int], tail: dict[str, list[str]]) -> None:
        self._dead = dead
        self.tail = {k: deque(v) for k, v in tail.items()}

    def dead(self) -> dict[str, int]:
        return self._dead


@pytest.fixture
def monitor():
    rclpy.init()  # the default context, as demo_graph.main uses
    mon = demo_graph.DemoMonitor()
    yield mon
    mon.destroy_node()
    rclpy.try_shutdown()


def test_refusals_and_holds(monitor) -> None:
    t0 = 1000.0
    monitor.chunks = [(t0 + 0.1, 1, "head"), (t0 + 0.5, 2, "head"), (t0 + 0.9, 3, "head")]
    monitor.accepted = {1: t0 + 0.12, 3: t0 + 0.92}
    assert monitor.refused() == [t0 + 0.5]
    # commands every 20 ms, then a 0.5 s gap (a hold), then again
    monitor.commands = [t0 + 0.02 * k for k in range(10)] + [t0 + 0.68 + 0.02 * k for k in range(5)]
    holds = monitor.holds(t0, t0 + 0.76 + 0.02)
    assert holds == [(pytest.approx(t0 + 0.18), pytest.approx(t0 + 0.68))]


def test_start_up_failure_is_one_line_naming_the_node(monitor) -> None:
    runner = FakeRunner({"policy": 2}, {"policy": ["[INFO] loading\n",
                                                   "policy_node: parameter checkpoint='' is not a checkpoint directory\n"]})
    why = demo_graph.wait_ready(monitor, runner, timeout_s=30)
    assert why == ("node policy exited with status 2 during start-up: "
                   "policy_node: parameter checkpoint='' is not a checkpoint directory")


def test_no_feedback_within_the_timeout_is_explained(monitor) -> None:
    runner = FakeRunner({}, {"xtrainer_driver": ["cannot connect to Dobot controller 127.0.0.1:29999\n"]})
    why = demo_graph.wait_ready(monitor, runner, timeout_s=0.3)
    assert why.startswith("no TCP feedback from the simulated arms within 0 s")
    assert "cannot connect to Dobot controller" in why and "\n" not in why
