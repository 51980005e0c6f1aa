"""Pipelined policy serving: preprocessing and the host -> device copy of observation n+1 overlap the model call
of observation n.

`PipelinedRunner` has the contract of `posevla.serving.AsyncPolicyRunner` (submit never blocks, the newest
observation wins, failures are counted, `min_period_s` between model calls) but splits the work over two
threads around an inference engine (`posevla.model.engines`):

  staging thread   newest submitted observation -> Batcher arrays (resize/pad, raymaps, depth) -> engine.stage:
                   a free slot of pinned host buffers, its copy queued on the engine's CUDA copy stream with an
                   event recorded (on the CPU: the same code, the copy is a plain one)
  model thread     newest staged observation -> engine.execute (the compute stream waits on the event, never the
                   host) -> engine.postprocess -> on_chunk (publish)

While the model is busy, staging starts *just in time*: at the model call's expected end minus 1.5 x the
expected staging time (running averages), with the newest observation then; so the model gets an observation
as fresh as the sequential runner would give it, one staging time earlier, and frames arriving meanwhile are
not preprocessed only to be replaced (on a CPU that work would slow the model itself). A staged observation
that a newer one replaces before the model took it is released unrun (counted in `superseded`). With `pipelined=False` one thread runs the same stages back to back: the sequential reference
the pipelined path is tested against. Times are seconds; stamps are ROS-time nanoseconds.

Per chunk (`StageTiming`, and p50/p90 over the last 500 chunks in `stats()`): queue (submit -> staging
starts), preprocess (arrays + stage), handoff (staged -> the model takes it: the time the pipeline hides),
model (execute), postprocess (actions -> ActionChunk), publish (on_chunk), obs_age (capture stamp -> chunk
handed to on_chunk).
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from posevla.serving import ChunkTiming
from posevla.types import ActionChunk, Observation

if TYPE_CHECKING:  # importing this module needs no torch (a remote-engine client may not have it)
    from posevla.model.engines.base import Engine

STAGES = ("queue", "preprocess", "handoff", "model", "postprocess", "publish", "obs_age")


@dataclass
class StageTiming(ChunkTiming):
    """ChunkTiming (queued, model, obs_age_at_publish) plus the pipeline's other stages, seconds."""

    preprocess: float
    handoff: float
    postprocess: float


def _inference_mode() -> contextlib.AbstractContextManager:
    """torch.inference_mode() when torch is loaded (a torch engine), else nothing (a torch-free remote engine)."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


def _ema(average: float | None, value: float, alpha: float = 0.2) -> float:
    return value if average is None else (1 - alpha) * average + alpha * value


@dataclass
class _Job:
    obs: Observation
    t_submit: float
    t_stage0: float = 0.0
    t_staged: float = 0.0
    staged: Any = None  # Engine.stage's Staged (or a remote engine's request)


class PipelinedRunner:
    """Runs engine.stage on one thread and engine.execute + postprocess + on_chunk on another (pipelined=True).

    modalities: a string, or a callable read per observation (the node's parameter may change at run time).
    noise_seed: observation -> seed of the flow noise (None: fresh noise every call, as the robot runs).
    """

    def __init__(self, engine: Engine, on_chunk: Callable[[ActionChunk, StageTiming], None],
                 now_ns: Callable[[], int] = time.time_ns, min_period_s: float = 0.0,
                 on_error: Callable[[Observation, Exception], None] | None = None,
                 modalities: str | Callable[[], str] = "full",
                 noise_seed: Callable[[Observation], int | None] | None = None, pipelined: bool = True,
                 just_in_time: bool = True, history: int = 500) -> None:
        if min_period_s < 0:
            raise ValueError(f"min_period_s={min_period_s} must be >= 0")
        self.engine, self._on_chunk, self._on_error = engine, on_chunk, on_error
        self._now_ns, self._min_period_s = now_ns, min_period_s
        self._modalities = modalities if callable(modalities) else (lambda m=modalities: m)
        self._noise_seed = noise_seed or (lambda obs: None)
        self.pipelined, self.just_in_time = pipelined, just_in_time
        self._model_est: float | None = None  # running averages (s) of the model call and of staging
        self._stage_est: float | None = None
        self._model_t0 = 0.0
        self._cond = threading.Condition()
        self._pending: _Job | None = None  # submitted, not yet staged
        self._staged: _Job | None = None  # staged, not yet taken by the model thread
        self._running = True
        self.submitted = self.superseded = self.completed = self.failed = 0
        self.overlapped = 0  # chunks whose staging ran while the model thread was executing another
        self._executing = False
        self.last_error = ""
        self.times: dict[str, deque[float]] = {k: deque(maxlen=history) for k in STAGES}
        self._times_lock = threading.Lock()
        targets = [("policy-stage", self._stage_loop), ("policy-model", self._model_loop)] if pipelined else \
            [("policy-sequential", self._sequential_loop)]
        self._threads = [threading.Thread(target=fn, name=name, daemon=True) for name, fn in targets]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ input
    def submit(self, obs: Observation) -> None:
        """Offer an observation; replaces (and counts) any observation still waiting. Never blocks on the model."""
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
            self._pending = _Job(obs, time.perf_counter())
            self.submitted += 1
            self._cond.notify_all()

    @property
    def waiting(self) -> bool:
        """An observation is submitted and not yet taken by the staging thread."""
        with self._cond:
            return self._pending is not None

    @property
    def staged_waiting(self) -> bool:
        """An observation is staged and not yet taken by the model thread."""
        with self._cond:
            return self._staged is not None

    # ------------------------------------------------------------------ stages
    def _fail(self, obs: Observation, exc: Exception) -> None:
        with self._cond:  # both threads count failures
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        if self._on_error:
            self._on_error(obs, exc)

    def _take_pending(self) -> _Job | None:
        """Wait for a submitted observation (called with the condition held); None when closing."""
        while self._running and self._pending is None:
            self._cond.wait()
        if not self._running:
            return None
        job, self._pending = self._pending, None
        return job

    def _stage(self, job: _Job) -> bool:
        job.t_stage0 = time.perf_counter()
        try:
            job.staged = self.engine.preprocess(job.obs, self._modalities(), self._noise_seed(job.obs))
        except Exception as exc:  # noqa: BLE001 - bad observation: reported, the runner goes on
            self._fail(job.obs, exc)
            return False
        job.t_staged = time.perf_counter()
        self._stage_est = _ema(self._stage_est, job.t_staged - job.t_stage0)
        return True

    def _stage_delay(self) -> float:
        """Seconds the staging thread still waits (condition held): until the running model call's expected end
        minus 1.5 x the expected staging time; 0 when the model is idle or nothing has been timed yet."""
        if not self.just_in_time or not self._executing or self._model_est is None or self._stage_est is None:
            return 0.0
        return self._model_t0 + self._model_est - 1.5 * self._stage_est - time.perf_counter()

    def _run_model(self, job: _Job, last_start: list[float]) -> None:
        assert job.staged is not None  # _stage succeeded
        t0 = time.perf_counter()
        last_start[0] = t0
        try:
            with _inference_mode():
                actions = self.engine.execute(job.staged)
            t1 = time.perf_counter()
            self._model_est = _ema(self._model_est, t1 - t0)
            chunk = self.engine.postprocess(actions, job.obs)
        except Exception as exc:  # noqa: BLE001 - the node reports it; the robot simply gets no new chunk
            self._fail(job.obs, exc)
            return
        t2 = time.perf_counter()
        timing = StageTiming(queued=job.t_stage0 - job.t_submit, model=t1 - t0,
                             obs_age_at_publish=(self._now_ns() - job.obs.stamp_ns) * 1e-9,
                             preprocess=job.t_staged - job.t_stage0, handoff=t0 - job.t_staged, postprocess=t2 - t1)
        try:
            self._on_chunk(chunk, timing)
        except Exception as exc:  # noqa: BLE001 - a failed publish is reported like a failed model call
            self._fail(job.obs, exc)
            return
        publish = time.perf_counter() - t2
        with self._times_lock:
            for name, value in (("queue", timing.queued), ("preprocess", timing.preprocess),
                                ("handoff", timing.handoff), ("model", timing.model),
                                ("postprocess", timing.postprocess), ("publish", publish),
                                ("obs_age", timing.obs_age_at_publish)):
                self.times[name].append(value)
        self.completed += 1  # last: a caller that sees the count also sees the chunk published and timed

    def _wait_period(self, last_start: float) -> bool:
        """Respect min_period_s between model starts (called with the condition held); False when closing."""
        while self._running and (wait := self._min_period_s - (time.perf_counter() - last_start)) > 0:
            self._cond.wait(timeout=wait)
        return self._running

    def _stage_loop(self) -> None:
        while True:
            with self._cond:
                while self._running and (self._pending is None or (wait := self._stage_delay()) > 0):
                    self._cond.wait(None if self._pending is None else wait)
                job = self._take_pending()
                if job is None:
                    return
                busy = self._executing
            if not self._stage(job):
                continue
            with self._cond:
                if busy or self._executing:
                    self.overlapped += 1
                if self._staged is not None and self._staged.staged is not None:  # newer replaces it (model busy)
                    self.engine.release(self._staged.staged)
                    self.superseded += 1
                self._staged = job
                self._cond.notify_all()

    def _model_loop(self) -> None:
        last_start = [-np.inf]
        while True:
            with self._cond:
                while self._running and self._staged is None:
                    self._cond.wait()
                if not self._wait_period(last_start[0]) or self._staged is None:
                    if not self._running:
                        return
                    continue
                job, self._staged = self._staged, None
                self._executing = True
                self._model_t0 = time.perf_counter()
            try:
                self._run_model(job, last_start)
            finally:
                with self._cond:
                    self._executing = False
                    self._cond.notify_all()  # a staging thread waiting for the model's end goes now

    def _sequential_loop(self) -> None:
        last_start = [-np.inf]
        while True:
            with self._cond:
                job = self._take_pending_after_period(last_start[0])
                if job is None:
                    return
                self._pending = None
            if self._stage(job):
                self._run_model(job, last_start)

    def _take_pending_after_period(self, last_start: float) -> _Job | None:
        while self._running and self._pending is None:
            self._cond.wait()
        if not self._wait_period(last_start):
            return None
        return self._pending

    # ------------------------------------------------------------------ output
    def stats(self) -> dict[str, float]:
        """Counts, and p50/p90/max seconds of every stage over the recent chunks (nan before the first)."""
        with self._times_lock:
            recent = {k: list(v) for k, v in self.times.items()}
        out: dict[str, float] = {"submitted": self.submitted, "superseded": self.superseded,
                                 "completed": self.completed, "failed": self.failed, "overlapped": self.overlapped}
        for name, xs in recent.items():
            for label, q in (("p50", 50), ("p90", 90), ("max", 100)):
                out[f"{name}_{label}_s"] = float(np.percentile(xs, q)) if xs else float("nan")
        return out

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout_s)
        with self._cond:
            for job in (self._staged,):
                if job is not None and job.staged is not None:
                    self.engine.release(job.staged)
            self._staged = None
