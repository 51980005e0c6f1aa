"""Episode checks: missing frames, timestamp gaps, NaNs, frozen cameras, missing calibration, the depth rate."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posevla.dataset import format as F
from posevla.dataset.reader import EpisodeReader


@dataclass
class EpisodeReport:
    path: Path
    num_frames: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_episode(path: Path, gap_factor: float = 2.0, frozen_frames: int = 10) -> EpisodeReport:
    rep = EpisodeReport(Path(path))
    try:
        ep = EpisodeReader(path)
    except ValueError as exc:
        rep.problems.append(str(exc))
        return rep
    try:
        with ep:
            _check(ep, rep, gap_factor, frozen_frames)
    except (OSError, KeyError, ValueError) as exc:  # a truncated or damaged file
        rep.problems.append(f"cannot be read: {exc}")
    return rep


def _check(ep: EpisodeReader, rep: EpisodeReport, gap_factor: float, frozen_frames: int) -> None:
    rep.num_frames = ep.num_frames
    meta = ep.meta
    if not meta.get("complete", False):
        rep.problems.append("episode is marked incomplete")
    if meta.get("num_frames") not in (None, ep.num_frames):
        rep.problems.append(f"meta says {meta.get('num_frames')} frames, file has {ep.num_frames}")
    if not meta.get("calibration"):
        rep.problems.append("no calibration recorded in meta")
    if not meta.get("instruction"):
        rep.problems.append("no language instruction in meta")
    fps = float(meta.get("fps") or 0)
    for key in ("action", "observations/qpos", "observations/tcp_pose/left", "observations/tcp_pose/right"):
        arr = ep.array(key)
        if arr.shape[0] != ep.num_frames:
            rep.problems.append(f"{key}: {arr.shape[0]} rows for {ep.num_frames} frames (missing frames)")
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            rep.problems.append(f"{key}: NaN/inf in {rows.size} frames (first {rows[0]})")
    stamps = {"frame": ep.array("stamps/frame"), "robot": ep.array("stamps/robot"),
              **{c: ep.camera_stamps(c) for c in ep.camera_names}}
    for name, st in stamps.items():
        if st.shape[0] != ep.num_frames:
            rep.problems.append(f"stamps/{name}: {st.shape[0]} stamps for {ep.num_frames} frames (missing frames)")
            continue
        d = np.diff(st)
        if np.any(d <= 0) and name == "frame":
            rep.problems.append(f"stamps/{name}: not strictly increasing")
        if fps > 0 and d.size and np.any(d > gap_factor * 1e9 / fps):
            rep.problems.append(f"stamps/{name}: {int(np.sum(d > gap_factor * 1e9 / fps))} gaps longer than "
                                f"{gap_factor:g} frame periods (max {d.max() * 1e-6:.0f} ms)")
    lengths = ep.stream_lengths()
    short = {k: n for k, n in lengths.items() if n != ep.num_frames}
    for key, n in sorted(short.items()):
        if not key.startswith(("action", "observations/qpos", "observations/tcp_pose", "stamps/")):  # reported above
            rep.problems.append(f"{key}: {n} rows for {ep.num_frames} frames (missing frames)")
    _check_depth_rate(ep, rep)
    for cam in ep.camera_names:
        digests = ep.frame_digests(cam)
        run, longest = 1, 1
        for i in range(1, digests.shape[0]):
            run = run + 1 if digests[i] == digests[i - 1] else 1
            longest = max(longest, run)
        if longest >= frozen_frames:
            rep.problems.append(f"camera {cam}: frozen for {longest} identical frames")


def _check_depth_rate(ep: EpisodeReader, rep: EpisodeReport) -> None:
    """Episodes with depth_every k > 1: a depth packet at every multiple of k and none between, and the rate the
    metadata names. (Reads the packets; done only for such episodes, whose depth is small.)"""
    storage = ep.meta.get("storage") if isinstance(ep.meta.get("storage"), dict) else {}
    meta_k = int(storage.get("depth_every", 1))
    for cam in ep.camera_names:
        k = ep.depth_every.get(cam, 1)
        if k != meta_k:
            rep.problems.append(f"camera {cam}: depth stored every {k} frames, meta.storage.depth_every says {meta_k}")
        if k == 1:
            continue
        ds = ep._h[f"observations/depth/{F.CAMERA_KEYS.get(cam, cam)}"]
        stored = np.array([len(p) > 0 for s in range(0, ds.shape[0], 256) for p in ds[s:s + 256]], bool)
        expected = np.arange(stored.size) % k == 0
        missing, extra = np.flatnonzero(expected & ~stored), np.flatnonzero(~expected & stored)
        if missing.size:
            rep.problems.append(f"camera {cam}: {missing.size} frames that must store depth (depth_every {k}) have "
                                f"none (first {int(missing[0])})")
        if extra.size:
            rep.problems.append(f"camera {cam}: {extra.size} frames between stored depth have a depth packet "
                                f"(first {int(extra[0])})")

