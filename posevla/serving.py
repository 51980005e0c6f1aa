"""Asynchronous policy serving: the newest observation in, chunks out, never blocking the caller.

The ROS policy node feeds every synchronised observation to `AsyncPolicyRunner.submit` (cheap: it only
replaces the pending slot). One worker thread runs the model on the newest pending observation, so the
next chunk is being prepared while the executor plays the current one, and a slow model call drops stale
observations instead of queueing them. Times are seconds; stamps are ROS-time nanoseconds.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from posevla.types import ActionChunk, Observation


@dataclass
class ChunkTiming:
    """Per-stage latency of one chunk (seconds)."""

    queued: float  # submit -> model start
    model: float  # model call
    obs_age_at_publish: float  # capture stamp -> chunk handed out (needs now_ns)


class AsyncPolicyRunner:
    """Runs `predict(observation) -> ActionChunk` on a worker thread, newest observation first."""

    def __init__(self, predict: Callable[[Observation], ActionChunk],
                 on_chunk: Callable[[ActionChunk, ChunkTiming], None],
                 now_ns: Callable[[], int] = time.time_ns, min_period_s: float = 0.0,
                 on_error: Callable[[Observation, Exception], None] | None = None) -> None:
        if min_period_s < 0:
            raise ValueError(f"min_period_s={min_period_s} must be >= 0")
        self._predict, self._on_chunk, self._on_error = predict, on_chunk, on_error
        self._now_ns, self._min_period_s = now_ns, min_period_s
        self._cond = threading.Condition()
        self._pending: tuple[Observation, float] | None = None
        self._running = True
        self.submitted = self.superseded = self.completed = self.failed = 0
        self.model_times: deque[float] = deque(maxlen=500)
        self.ages: deque[float] = deque(maxlen=500)
        self.last_error: str = ""
        self._thread = threading.Thread(target=self._loop, name="policy-worker", daemon=True)
        self._thread.start()

    def submit(self, obs: Observation) -> None:
        """Offer an observation; replaces (and counts) any observation still waiting. Never blocks on the model."""
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
            self._pending = (obs, time.perf_counter())
            self.submitted += 1
            self._cond.notify()

    def _loop(self) -> None:
        last_start = -np.inf
        while True:
            with self._cond:
                while self._running and self._pending is None:
                    self._cond.wait()
                if not self._running:
                    return
                # respect the minimum period; newer observations may replace the pending one meanwhile
                while self._running and (wait := self._min_period_s - (time.perf_counter() - last_start)) > 0:
                    self._cond.wait(timeout=wait)
                if not self._running:
                    return
                pending = self._pending
                if pending is None:  # taken by stop()
                    continue
                obs, t_submit = pending
                self._pending = None
            t0 = time.perf_counter()
            last_start = t0
            try:
                chunk = self._predict(obs)
            except Exception as exc:  # the node reports it; the robot simply gets no new chunk
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._on_error:
                    self._on_error(obs, exc)
                continue
            t1 = time.perf_counter()
            timing = ChunkTiming(queued=t0 - t_submit, model=t1 - t0,
                                 obs_age_at_publish=(self._now_ns() - obs.stamp_ns) * 1e-9)
            self.model_times.append(timing.model)
            self.ages.append(timing.obs_age_at_publish)
            self.completed += 1
            self._on_chunk(chunk, timing)

    def stats(self) -> dict[str, float]:
        def pct(xs: deque[float], q: float) -> float:
            return float(np.percentile(list(xs), q)) if xs else float("nan")

        return {"submitted": self.submitted, "superseded": self.superseded, "completed": self.completed,
                "failed": self.failed, "model_p50_s": pct(self.model_times, 50), "model_p99_s": pct(self.model_times, 99),
                "obs_age_p50_s": pct(self.ages, 50), "obs_age_p99_s": pct(self.ages, 99)}

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(timeout_s)
