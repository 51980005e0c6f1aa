"""The policy node reports failed policy calls at most once a second, counting the ones it did not print (a
gripper bus dropout fails every observation for its length: ~10 ERROR lines a second before)."""
from __future__ import annotations

from types import SimpleNamespace

from posevla_ros import policy_node
from posevla_ros.policy_node import PolicyNode


def test_failed_calls_are_logged_once_a_second_with_a_count(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(policy_node.time, "monotonic", lambda: clock[0])
    logs: list[str] = []
    node = SimpleNamespace(_error_logged_at=-1e9, _errors_unlogged=0,
                           get_logger=lambda: SimpleNamespace(error=logs.append))
    exc = ValueError("robot state: left gripper opening is not measured (NaN: its bus reading is missing or stale)")
    for k in range(10):  # 10 failures within 0.9 s
        PolicyNode._on_error(node, SimpleNamespace(stamp_ns=k), exc)
        clock[0] += 0.1
    assert len(logs) == 1 and logs[0].startswith("policy call failed on observation stamped 0: robot state: left")
    clock[0] += 0.2  # 1.2 s after the first report
    PolicyNode._on_error(node, SimpleNamespace(stamp_ns=10), exc)
    assert len(logs) == 2 and logs[1].endswith("(9 more since the last report)"), logs[1]
