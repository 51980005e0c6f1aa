"""The async policy runner: newest observation wins, submit never blocks, failures are counted."""
from __future__ import annotations

import threading
import time

import numpy as np

from posevla.serving import AsyncPolicyRunner
from posevla.types import ActionChunk, ArmChunk, Observation


def _obs(stamp_ns: int) -> Observation:
    return Observation(views={}, state=None, instruction="pick", stamp_ns=stamp_ns)


def _chunk_for(obs: Observation) -> ActionChunk:
    return ActionChunk("head_camera_color_optical_frame", obs.stamp_ns, 0.02,
                       {"left": ArmChunk(np.tile(np.eye(4), (3, 1, 1)), np.zeros(3))})


def test_slow_model_processes_newest_observation_and_submit_does_not_block() -> None:
    gate = threading.Event()
    seen: list[int] = []
    done = threading.Event()

    def predict(obs: Observation) -> ActionChunk:
        if obs.stamp_ns == 1:
            gate.wait(5)
        return _chunk_for(obs)

    def on_chunk(chunk: ActionChunk, timing) -> None:
        seen.append(chunk.stamp_ns)
        if chunk.stamp_ns == 5:
            done.set()

    runner = AsyncPolicyRunner(predict, on_chunk)
    runner.submit(_obs(1))
    time.sleep(0.1)  # the worker is now stuck in predict(1)
    t0 = time.perf_counter()
    for s in (2, 3, 4, 5):
        runner.submit(_obs(s))
    assert time.perf_counter() - t0 < 0.05  # submit returned while the model was busy
    gate.set()
    assert done.wait(5)
    runner.close()
    assert seen == [1, 5]  # 2, 3, 4 were superseded by 5
    assert runner.superseded == 3 and runner.completed == 2


def test_failures_are_counted_and_reported_and_runner_keeps_going() -> None:
    errors: list[str] = []
    out: list[int] = []
    ok = threading.Event()

    def predict(obs: Observation) -> ActionChunk:
        if obs.stamp_ns == 1:
            raise ValueError("depth has NaN")
        return _chunk_for(obs)

    runner = AsyncPolicyRunner(predict, lambda c, t: (out.append(c.stamp_ns), ok.set()),
                               on_error=lambda o, e: errors.append(str(e)))
    runner.submit(_obs(1))
    time.sleep(0.1)
    runner.submit(_obs(2))
    assert ok.wait(5)
    runner.close()
    assert errors == ["depth has NaN"] and out == [2]
    assert runner.failed == 1 and "NaN" in runner.last_error


def test_min_period_limits_the_call_rate() -> None:
    starts: list[float] = []

    def predict(obs: Observation) -> ActionChunk:
        starts.append(time.perf_counter())
        return _chunk_for(obs)

    runner = AsyncPolicyRunner(predict, lambda c, t: None, min_period_s=0.1)
    t_end = time.perf_counter() + 0.55
    i = 0
    while time.perf_counter() < t_end:
        runner.submit(_obs(i))
        i += 1
        time.sleep(0.005)
    runner.close()
    gaps = np.diff(starts)
    assert len(starts) >= 4 and gaps.min() >= 0.095
