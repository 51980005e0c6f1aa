"""Replay schedule of a recorded episode: which message to publish when, with which stamp.

Stamps: 'original' keeps the recorded capture stamps; 'now' shifts every stamp by one constant so the first
frame is stamped at the start of playback (relative timing, including the inter-camera offsets, is kept).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from posevla.dataset.reader import DatasetFrame, EpisodeReader


@dataclass
class ReplayItem:
    due_s: float  # seconds after playback start
    index: int
    frame: DatasetFrame
    stamp_shift_ns: int


def replay_schedule(reader: EpisodeReader, start_ns: int, rate: float = 1.0, stamp_mode: str = "now"
                    ) -> Iterator[ReplayItem]:
    if rate <= 0:
        raise ValueError(f"replay rate={rate} must be > 0")
    if stamp_mode not in ("now", "original"):
        raise ValueError(f"stamp_mode={stamp_mode!r} must be 'now' or 'original'")
    first = reader.frame(0)
    t0 = first.stamp_ns
    shift = start_ns - t0 if stamp_mode == "now" else 0
    for i in range(reader.num_frames):
        frame = first if i == 0 else reader.frame(i)
        yield ReplayItem((frame.stamp_ns - t0) * 1e-9 / rate, i, frame, shift)
