"""Recorder logic (no ROS): sample the latest message of every stream at a fixed rate into an EpisodeWriter,
with episode control and the checks that stop an episode with a reason instead of recording a short one.

Nothing recorded is ever deleted: "discard" and "re-record" move episodes to `<task>/.discarded/` (unique
names), and the next episode takes the freed number, so a task folder stays numbered 0..N-1.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from posevla.calibration.files import episode_calibration_meta
from posevla.dataset import format as F
from posevla.dataset.video import ColourCodec
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ArmState, RobotState


class Refusal(str):
    """The answer to a control request the recorder declined; the text says why (a plain str means done)."""


@dataclass
class RecorderConfig:
    root: Path
    task: str
    instruction: str
    cameras: tuple[str, ...] = ("head", "left_wrist", "right_wrist")
    operator: str = ""
    fps: float = 30.0
    stream_timeout_s: float = 0.5
    target_episodes: int = 100
    reset_period_s: float = 5.0
    calibration_files: tuple[Path, ...] = ()
    camera_serials: dict[str, str] = field(default_factory=dict)
    require_action: bool = True  # the leader/command stream must be alive (teleoperation); False: observe only
    storage: str = "video"  # episode storage format: "video" (H.264 + FFV1) or "jpeg" (format.py)
    writer_queue_frames: int = 64  # frame sets the writer buffers while encoding catches up (more are refused)
    colour_preset: str = ColourCodec.preset  # x264 preset of the colour streams (storage "video")
    colour_crf: int = ColourCodec.crf  # x264 constant quality (lower: better and larger)
    colour_tune: str = ColourCodec.tune  # x264 tuning ("psnr": smaller at the same PSNR, more CPU)
    colour_gop: int = ColourCodec.gop  # frames between keyframes (random access decodes at most this many)
    depth_every: int = 1  # store depth with every k-th frame only (1: all; docs/datasets.md "Smaller episodes")

    def __post_init__(self) -> None:
        if self.storage not in F.STORAGE_FORMATS:
            raise ValueError(f"recorder storage={self.storage!r}: one of {list(F.STORAGE_FORMATS)}")
        if self.writer_queue_frames < 1:
            raise ValueError(f"recorder writer_queue_frames={self.writer_queue_frames}: must be >= 1")
        try:
            self.colour_codec()
        except ValueError as exc:
            raise ValueError(f"recorder: {exc}") from None
        if not 1 <= self.depth_every <= 30:
            raise ValueError(f"recorder depth_every={self.depth_every}: an integer in 1..30 (1: depth with every frame)")
        if self.depth_every > 1 and self.storage != "video":
            raise ValueError(f"recorder depth_every={self.depth_every}: needs storage 'video' (got {self.storage!r})")

    def colour_codec(self) -> ColourCodec:
        return ColourCodec(preset=self.colour_preset, crf=self.colour_crf, tune=self.colour_tune, gop=self.colour_gop)


@dataclass
class Latest:
    """The newest sample of each stream with its original stamp (ns) and the host time it arrived."""

    color: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    depth: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    info: dict[str, CameraIntrinsics] = field(default_factory=dict)
    tcp: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    joints: dict[str, tuple[int, np.ndarray, float]] = field(default_factory=dict)
    action: tuple[int, np.ndarray] | None = None
    arrival: dict[str, float] = field(default_factory=dict)


class Recorder:
    def __init__(self, cfg: RecorderConfig) -> None:
        self.cfg = cfg
        self.task_dir = Path(cfg.root) / cfg.task
        self.task_dir.mkdir(parents=True, exist_ok=True)
        self.latest = Latest()
        self.writer: EpisodeWriter | None = None
        self.state = "idle"
        self.last_saved: Path | None = None
        self.last_duration_s = 0.0
        self.last_reason = ""
        self.episode_start = 0.0
        self.reset_until = 0.0
        self.counts: dict[str, int] = {}
        self.repeated: dict[str, int] = {}  # ticks of this episode that found no new frame from a camera
        self._last_cam_stamp: dict[str, int] = {}
        self.frames_queued = 0  # frames of this episode handed to the writer
        self._rate_snapshot: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self.incomplete_on_start = F.list_incomplete(self.task_dir)

    # ------------------------------------------------------------------ status
    @property
    def episodes_done(self) -> int:
        return len(F.list_episodes(self.task_dir))

    def streams(self) -> list[str]:
        return ([f"{c}/{k}" for c in self.cfg.cameras for k in ("color", "depth")] + ["robot"]
                + (["action"] if self.cfg.require_action else []))

    def note_arrival(self, stream: str) -> None:
        self.latest.arrival[stream] = time.monotonic()
        self.counts[stream] = self.counts.get(stream, 0) + 1

    def stale_streams(self, now: float, since: float = -1e9) -> list[str]:
        """Streams silent for more than stream_timeout_s (counted from `since` at the earliest)."""
        return [s for s in self.streams()
                if now - max(self.latest.arrival.get(s, -1e9), since) > self.cfg.stream_timeout_s]

    def stream_rates(self, now: float | None = None) -> dict[str, float]:
        """Messages per second of every stream since the previous call (Hz)."""
        now = time.monotonic() if now is None else now
        t_prev, prev = self._rate_snapshot
        self._rate_snapshot = (now, dict(self.counts))
        dt = now - t_prev
        return {s: (self.counts.get(s, 0) - prev.get(s, 0)) / dt if dt > 0 else 0.0 for s in self.streams()}

    def status_line(self, now: float | None = None) -> str:
        """One line for the operator: state, episodes/target, stream rates (Hz), repeated and rejected frames, disk."""
        now = time.monotonic() if now is None else now
        free = shutil.disk_usage(self.task_dir).free / 1e9
        rec = f"REC {now - self.episode_start:5.1f}s" if self.state == "recording" else self.state.upper()
        done, target = self.episodes_done, self.cfg.target_episodes
        rates = self.stream_rates(now)
        hz = " ".join(f"{c} {rates[f'{c}/color']:.0f}/{rates[f'{c}/depth']:.0f}" for c in self.cfg.cameras)
        parts = [f"[{self.cfg.task}] {rec}", f"episodes {done}/{target} ({100 * done / target:.0f}%)",
                 f"last {self.last_duration_s:.1f}s", f"Hz {hz} robot {rates['robot']:.0f}" + (f" action {rates['action']:.0f}" if "action" in rates else ""),
                 f"disk {free:.1f} GB free"]
        repeated = sum(self.repeated.values())
        if self.writer or repeated:
            parts.append(f"repeated {repeated} rejected {self.writer.frames_rejected if self.writer else 0}"
                         f" backlog {self.writer.backlog if self.writer else 0}")
        if self.last_reason:
            parts.append(self.last_reason)
        return " | ".join(parts)

    # ------------------------------------------------------------------ control
    def start(self) -> str:
        if self.state == "recording":
            return Refusal("already recording")
        if time.monotonic() < self.reset_until:
            return Refusal(f"reset period: wait {self.reset_until - time.monotonic():.1f} s")
        stale = self.stale_streams(time.monotonic())
        if stale:
            return Refusal(f"cannot start: no data on {stale}")
        missing = [c for c in self.cfg.cameras if c not in self.latest.info]
        if missing:
            return Refusal(f"cannot start: no camera_info for {missing}")
        calib = episode_calibration_meta(self.cfg.calibration_files)
        meta = {"instruction": self.cfg.instruction, "operator": self.cfg.operator, "fps": self.cfg.fps,
                "cameras": {c: self.cfg.camera_serials.get(c, "") for c in self.cfg.cameras}, "calibration": calib,
                "software_version": "posevla 0.1.0", "start_time_ns": time.time_ns()}
        try:
            self.writer = EpisodeWriter(self.cfg.root, self.cfg.task, meta,
                                        {c: self.latest.info[c] for c in self.cfg.cameras}, storage=self.cfg.storage,
                                        queue_size=self.cfg.writer_queue_frames, colour_codec=self.cfg.colour_codec(),
                                        depth_every=self.cfg.depth_every)
        except OSError as exc:
            self.last_reason = str(exc)
            return Refusal(f"cannot start: {exc}")
        self.state, self.episode_start, self.last_reason = "recording", time.monotonic(), ""
        self.repeated, self._last_cam_stamp = {c: 0 for c in self.cfg.cameras}, {}
        self.frames_queued = 0
        return f"recording episode {self.writer.index}"

    def stop_and_save(self, success: bool = True) -> str:
        if self.writer is None:
            return Refusal("not recording")
        w, self.writer = self.writer, None
        self.last_duration_s = time.monotonic() - self.episode_start
        try:
            self.last_saved = w.finish(success)
            msg = f"saved {self.last_saved.name} ({w.frames_written} frames, {self.last_duration_s:.1f} s)"
        except OSError as exc:
            msg = Refusal(f"NOT saved: {exc}")
            self.last_reason = msg
        self.state, self.reset_until = "reset", time.monotonic() + self.cfg.reset_period_s
        return msg

    def toggle(self) -> str:
        """Start/stop button: stop and save when recording, else start."""
        return self.stop_and_save(True) if self.state == "recording" else self.start()

    def abort(self, reason: str) -> str:
        if self.writer is None:
            return Refusal("not recording")
        w, self.writer = self.writer, None
        kept = w.abort(reason)
        self.last_reason = f"episode stopped: {reason} (partial kept at {kept})"
        self.state, self.reset_until = "reset", time.monotonic() + self.cfg.reset_period_s
        return self.last_reason

    def _move_aside(self, path: Path) -> Path:
        dest = self.task_dir / F.DISCARDED_DIR
        dest.mkdir(exist_ok=True)
        stem = f"{path.stem}_{time.strftime('%Y%m%d-%H%M%S')}"
        target, n = dest / f"{stem}{path.suffix}", 1
        while target.exists():  # two in the same second: never overwrite one with the other
            target, n = dest / f"{stem}-{n}{path.suffix}", n + 1
        os.replace(path, target)
        return target

    def discard(self) -> str:
        if self.writer is not None:
            w, self.writer = self.writer, None
            kept = w.abort("discarded by the operator")
            moved = self._move_aside(kept)
            self.state = "idle"
            return f"discarded the current episode (kept at {moved})"
        return Refusal("not recording")

    def rerecord_last(self) -> str:
        if self.writer is not None:
            return Refusal("stop the current episode first")
        if self.last_saved is None or not self.last_saved.exists():
            return Refusal("no episode saved in this session")
        moved = self._move_aside(self.last_saved)
        self.last_saved = None
        self.reset_until = 0.0
        started = self.start()
        msg = f"moved {moved.name} aside; {started}"
        return Refusal(msg) if isinstance(started, Refusal) else msg

    def mark(self, success: bool) -> str:
        if self.last_saved is None or not self.last_saved.exists():
            return Refusal("no saved episode to mark")
        with h5py.File(self.last_saved, "r+") as h:
            meta = json.loads(h.attrs["meta"])
            meta["success"] = success
            h.attrs["meta"] = json.dumps(meta)
        return f"{self.last_saved.name} marked {'success' if success else 'failure'}"

    # ------------------------------------------------------------------ the fixed-rate tick
    def tick(self, now_ns: int) -> str | None:
        """Record one frame if recording; returns a message when the episode had to stop."""
        if self.state == "reset" and time.monotonic() >= self.reset_until:
            self.state = "idle"
        if self.state != "recording" or self.writer is None:
            return None
        # from the episode's start at the earliest: opening the writer may have kept the callbacks waiting
        stale = self.stale_streams(time.monotonic(), since=self.episode_start)
        if stale:
            return self.abort(f"stream(s) {stale} stopped for more than {self.cfg.stream_timeout_s} s")
        if self.writer.error:
            return self.abort(self.writer.error)
        L = self.latest
        for c in self.cfg.cameras:  # a camera slower than the recording rate: the same frame is stored again
            if self._last_cam_stamp.get(c) == L.color[c][0]:
                self.repeated[c] += 1
            self._last_cam_stamp[c] = L.color[c][0]
        arms = {}
        for arm, (stamp, T) in list(L.tcp.items()):  # another thread may add an arm meanwhile
            _, q, g = L.joints.get(arm, (stamp, np.full(6, np.nan), float("nan")))
            arms[arm] = ArmState(T, q, g, stamp)
        robot_stamp = max((a.stamp_ns for a in arms.values()), default=0)
        action = L.action[1] if L.action is not None else np.full(F.QPOS_DIM, np.nan)
        rec = FrameRecord(now_ns, {c: L.color[c][1] for c in self.cfg.cameras}, {c: L.depth[c][1] for c in self.cfg.cameras},
                          {c: L.color[c][0] for c in self.cfg.cameras}, RobotState(arms, robot_stamp), action)
        if self.writer.add_frame(rec):
            self.frames_queued += 1
        else:
            self.last_reason = f"writer behind: {self.writer.frames_rejected} frames could not be queued"
            if self.writer.frames_rejected > self.cfg.fps:  # a second's worth: stop rather than record gaps
                return self.abort(self.last_reason)
        return None
