"""Approximate-time synchronisation with the semantics of message_filters.ApproximateTimeSynchronizer
(per-stream queues of `queue_size`, a set is emitted when one message per stream lies within `slop`,
preferring the candidates closest to the newest message; emitted messages leave their queues).

One implementation for the ROS nodes (when message_filters is not importable) and the offline tools that
synchronise recorded data. Stamps are integer nanoseconds. Drops are counted with their reason.
"""
from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Any


class ApproximateTimeSync:
    def __init__(self, streams: Sequence[Hashable], slop_s: float, queue_size: int = 10,
                 callback: Callable[[dict[Hashable, Any]], None] | None = None) -> None:
        if not streams:
            raise ValueError("synchroniser needs at least one stream")
        if not slop_s > 0:
            raise ValueError(f"slop_s={slop_s} must be > 0")
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size} must be >= 1")
        self.streams = list(streams)
        self.slop_ns = int(slop_s * 1e9)
        self.queue_size = queue_size
        self.callback = callback
        self.queues: dict[Hashable, dict[int, Any]] = {s: {} for s in self.streams}
        self.drops: Counter[str] = Counter()
        self.emitted = 0
        self.last_emitted_ns: int | None = None
        self._lock = threading.Lock()

    def add(self, stream: Hashable, stamp_ns: int, msg: Any) -> dict[Hashable, Any] | None:
        """Offer one message; returns (and passes to the callback) a synchronised set when one completes."""
        if stream not in self.queues:
            raise KeyError(f"unknown stream {stream!r}")
        with self._lock:
            if self.last_emitted_ns is not None and stamp_ns < self.last_emitted_ns - self.slop_ns:
                self.drops[f"{stream}: older than the last emitted set"] += 1
                return None
            q = self.queues[stream]
            if stamp_ns in q:
                self.drops[f"{stream}: duplicate stamp"] += 1
            q[stamp_ns] = msg
            while len(q) > self.queue_size:
                del q[min(q)]
                self.drops[f"{stream}: queue overflow (no partner within slop)"] += 1
            match = self._match(stream, stamp_ns)
            if match is None:
                return None
            out = {s: self.queues[s].pop(t) for s, t in match.items()}
            self.emitted += 1
            self.last_emitted_ns = max(match.values())
            # anything older than the emitted set can never be matched any more
            for s in self.streams:
                for t in [t for t in self.queues[s] if t < min(match.values()) - self.slop_ns]:
                    del self.queues[s][t]
                    self.drops[f"{s}: superseded by a newer set"] += 1
        if self.callback is not None:
            self.callback(out)
        return out

    def _match(self, stream: Hashable, stamp_ns: int) -> dict[Hashable, int] | None:
        candidates = []
        for s in self.streams:
            if s == stream:
                continue
            near = sorted((t for t in self.queues[s] if abs(t - stamp_ns) <= self.slop_ns), key=lambda t: abs(t - stamp_ns))
            if not near:
                return None
            candidates.append((s, near))
        names = [s for s, _ in candidates]
        for combo in itertools.product(*[near for _, near in candidates]):
            stamps = [*combo, stamp_ns]
            if max(stamps) - min(stamps) <= self.slop_ns:
                return {stream: stamp_ns, **dict(zip(names, combo))}
        return None

    def stats(self) -> dict[str, int]:
        return {"emitted": self.emitted, "dropped": sum(self.drops.values()), **dict(self.drops)}


def make_synchronizer(streams: Sequence[Hashable], slop_s: float, queue_size: int = 10,
                      callback: Callable[[dict[Hashable, Any]], None] | None = None) -> ApproximateTimeSync:
    """The synchroniser used everywhere; message_filters' own is used by ROS nodes only when importable."""
    return ApproximateTimeSync(streams, slop_s, queue_size, callback)
