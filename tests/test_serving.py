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


# ---------------------------------------------------------------------------------------------------------------
# PipelinedRunner (posevla.model.serving): staging of observation n+1 overlaps the model call of observation n
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny.yaml"
DEADLINE_S = 120.0  # generous: a loaded 2-core machine


@pytest.fixture(scope="module")
def tiny_policy():
    torch = pytest.importorskip("torch")
    from posevla.model.policy import PoseVLAPolicy

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pol = PoseVLAPolicy.from_config(TINY, seed=5, device="cpu")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-zero geometry outputs: the modalities matter
        for lin in (pol.model.geometry.ray.out, pol.model.geometry.depth.out):
            lin.weight.copy_(0.05 * torch.randn(lin.weight.shape, generator=gen))
    yield pol
    torch.set_num_threads(before)


def _real_obs(policy, stamp_ns: int, instruction: str = "pick up the red cube") -> Observation:
    obs = policy.synthetic_observation(instruction)
    obs.stamp_ns = stamp_ns
    rng = np.random.default_rng(stamp_ns)  # every observation a different image
    for view in obs.views.values():
        view.rgb = rng.integers(0, 255, size=view.rgb.shape, dtype=np.uint8)
    return obs


def _collect(runner_cls_kwargs: dict, engine, observations: list[Observation], wait_each: bool):
    """Feed the observations (each once the previous one was taken for staging; wait_each: once its chunk is out)."""
    from posevla.model.serving import PipelinedRunner

    got: dict[int, ActionChunk] = {}
    arrived = threading.Condition()

    def on_chunk(chunk: ActionChunk, timing) -> None:
        with arrived:
            got[chunk.stamp_ns] = chunk
            arrived.notify_all()

    runner = PipelinedRunner(engine, on_chunk, noise_seed=lambda o: o.stamp_ns, now_ns=lambda: 50 * 10**9,
                             **runner_cls_kwargs)
    try:
        for obs in observations:
            runner.submit(obs)
            if wait_each:
                with arrived:
                    assert arrived.wait_for(lambda s=obs.stamp_ns: s in got, timeout=DEADLINE_S)
            deadline = time.perf_counter() + DEADLINE_S
            while runner.waiting and time.perf_counter() < deadline:
                time.sleep(0.002)
        with arrived:  # the last observation is never superseded
            assert arrived.wait_for(lambda: observations[-1].stamp_ns in got, timeout=DEADLINE_S)
    finally:
        runner.close()
    return runner, got


@pytest.mark.parametrize("engine_name", ["torch_graphs", "torch"])
def test_pipelined_gives_the_sequential_actions_and_reports_stage_times(tiny_policy, engine_name) -> None:
    from posevla.model.engines import make_engine
    from posevla.model.serving import STAGES

    engine = make_engine(tiny_policy, engine_name)
    observations = [_real_obs(tiny_policy, s) for s in range(1, 7)]
    # pipelined, observations fed back to back (some are superseded), and the sequential runner one at a time
    runner, piped = _collect({"pipelined": True}, engine, observations, wait_each=False)
    _, sequential = _collect({"pipelined": False}, engine, observations, wait_each=True)
    assert len(sequential) == 6 and len(piped) >= 2
    assert runner.completed == len(piped) and runner.failed == 0
    assert runner.completed + runner.superseded == runner.submitted == 6
    for stamp, chunk in piped.items():  # every pipelined chunk equals the sequential one of the same observation
        ref = sequential[stamp]
        for arm in tiny_policy.config.arms:
            np.testing.assert_allclose(chunk.arms[arm].T, ref.arms[arm].T, rtol=0, atol=1e-9)
            np.testing.assert_allclose(chunk.arms[arm].gripper, ref.arms[arm].gripper, rtol=0, atol=1e-9)
    # and both equal the engine's own predict (the reference path of test_engines) for that seed
    direct = engine.predict(observations[-1], noise_seed=observations[-1].stamp_ns)
    np.testing.assert_allclose(piped[6].arms["left"].T, direct.arms["left"].T, rtol=0, atol=1e-9)
    # different observations give different chunks (the comparison is not vacuous)
    assert np.abs(sequential[1].arms["left"].T - sequential[2].arms["left"].T).max() > 1e-6
    stats = runner.stats()
    for stage in STAGES:
        if stage == "obs_age":
            assert 49.9 < stats["obs_age_p50_s"] <= stats["obs_age_max_s"] <= 50.0
            continue
        p50, p90, top = stats[f"{stage}_p50_s"], stats[f"{stage}_p90_s"], stats[f"{stage}_max_s"]
        assert 0.0 <= p50 <= p90 <= top < DEADLINE_S, (stage, p50, p90, top)
    assert stats["model_p50_s"] > 0 and stats["preprocess_p50_s"] > 0 and stats["completed"] == len(piped)
    # superseded staged slots were released: at most one executing + one waiting + one being staged
    from posevla.model.engines.base import MAX_SLOTS

    assert all(engine.slots(k) <= MAX_SLOTS for k in list(engine._made))
    engine.close()


def _gated_engine(engine, stage_timeout_s: float):
    """Wraps execute: the model call of observation 1 waits until observation 2 has been staged (or the timeout)."""
    staged_two = threading.Event()
    waited: dict[int, bool] = {}
    stamp_of: dict[int, int] = {}
    execute = engine.execute

    class Gated:
        def __getattr__(self, name):
            return getattr(engine, name)

        def preprocess(self, obs, modalities="full", noise_seed=None):
            st = engine.preprocess(obs, modalities, noise_seed)
            stamp_of[id(st)] = obs.stamp_ns
            if obs.stamp_ns == 2:
                staged_two.set()
            return st

        def execute(self, st):
            if stamp_of.get(id(st)) == 1:
                waited[1] = staged_two.wait(stage_timeout_s)
            return execute(st)

    return Gated(), waited


def test_staging_runs_while_the_model_is_busy(tiny_policy) -> None:
    """Observation 2 is staged while observation 1's model call is still running (the model thread blocks until
    it is); the sequential runner cannot do that (its wait times out)."""
    from posevla.model.engines import make_engine
    from posevla.model.serving import PipelinedRunner

    for pipelined in (True, False):
        engine = make_engine(tiny_policy, "torch_graphs")
        gated, waited = _gated_engine(engine, DEADLINE_S if pipelined else 1.0)
        got: list[int] = []
        done = threading.Event()
        runner = PipelinedRunner(gated, lambda c, t, got=got, done=done: (got.append(c.stamp_ns),
                                                                          c.stamp_ns == 2 and done.set()),
                                 pipelined=pipelined)
        runner.submit(_real_obs(tiny_policy, 1))
        deadline = time.perf_counter() + DEADLINE_S
        while runner.waiting and time.perf_counter() < deadline:
            time.sleep(0.01)  # observation 1 has been taken by the staging thread
        time.sleep(0.05)
        runner.submit(_real_obs(tiny_policy, 2))
        assert done.wait(DEADLINE_S)
        runner.close()
        assert got == [1, 2]
        assert waited[1] is pipelined  # pipelined: staged during the model call; sequential: only after it
        assert (runner.overlapped >= 1) is pipelined
        engine.close()


def test_pipelined_runner_reports_bad_observations_and_goes_on(tiny_policy) -> None:
    from posevla.model.engines import make_engine
    from posevla.model.serving import PipelinedRunner

    engine = make_engine(tiny_policy, "torch_graphs")
    errors: list[str] = []
    got: list[int] = []
    ok = threading.Event()
    runner = PipelinedRunner(engine, lambda c, t: (got.append(c.stamp_ns), ok.set()),
                             on_error=lambda o, e: errors.append(f"{o.stamp_ns}: {e}"))
    bad = _real_obs(tiny_policy, 1)
    bad.views = {}  # no view at all
    runner.submit(bad)
    deadline = time.perf_counter() + DEADLINE_S
    while not errors and time.perf_counter() < deadline:
        time.sleep(0.01)
    runner.submit(_real_obs(tiny_policy, 2))
    assert ok.wait(DEADLINE_S)
    runner.close()
    assert got == [2] and runner.failed == 1 and len(errors) == 1 and errors[0].startswith("1: ")
    assert runner.last_error
    with pytest.raises(ValueError, match="min_period_s"):
        PipelinedRunner(engine, lambda c, t: None, min_period_s=-1.0)
    engine.close()


def test_staging_waits_until_just_before_the_model_call_ends() -> None:
    """While the model is busy, staging starts at its expected end minus 1.5 x the staging time, not at once."""
    from posevla.model.serving import PipelinedRunner

    for jit, low, high in ((True, 0.08, 0.0851), (False, 0.0, 0.0)):
        runner = PipelinedRunner(object(), lambda c, t: None, just_in_time=jit)  # type: ignore[arg-type]
        try:
            assert runner._stage_delay() == 0.0  # nothing timed yet: stage at once
            with runner._cond:
                runner._executing, runner._model_t0 = True, time.perf_counter()
                runner._model_est, runner._stage_est = 0.1, 0.01
                delay = runner._stage_delay()
                runner._executing = False
                idle = runner._stage_delay()
            assert low <= delay <= high and idle == 0.0
        finally:
            runner.close()
