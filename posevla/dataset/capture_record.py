"""Capture and record in one process: the camera objects feed the recorder directly, no DDS in between.

Why: on a 2-core PC, camera process -> DDS -> Python recorder node loses frames in the Python subscription path
(issue 17: 38-66 % of 640x480 frames per topic reached a subscriber that only counted them). Here each camera
(`posevla.perception.realsense.RealSenseCamera`, or any object with its connect / read / raw_depth_mm /
disconnect interface, e.g. `posevla.dataset.shm_camera.SharedMemoryCamera`) has a capture thread that puts every
new frame into the `Recorder`'s latest samples; the recorder ticks on complete sets instead of on a timer:

- every camera's new frames wait in a short queue (`max_pending`); a *set* is complete when every queue holds a
  frame, and takes the oldest frame of each whose capture stamps lie within half a frame period of each other,
  so scheduling jitter of the capture threads loses nothing, and with cameras at the recording rate every
  frame of every camera is recorded exactly once; the set is recorded at once (stamp: the newest in the set);
- a frame with no partner within half a period (unsynchronised cameras drifting apart), or pushed out of a full
  queue (a camera stalled for `max_pending` frames), is *superseded*: counted per camera, never silent;
- if no set completes for `stream_timeout_s`, a watchdog ticks anyway, which stops the episode with the
  recorder's stream-loss reason.

Everything else (robot state, actions, episode control, crash-safe writer, status) is the unchanged `Recorder`.
`preview` (optional) receives one frame per camera at `preview_hz` for ROS topics or a display; it runs on the
capture thread, so it must be quick. All recorder calls go through `lock` (the ROS executor thread calls start
/ stop through it too).

Per-camera figures (`summary()`): frames captured, recorded in an episode, superseded (while recording), dropped
by the source since the last episode started (frame-number gaps the camera object reports), capture-to-writer
latency, capture thread CPU, sets recorded.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from posevla.dataset.recorder import Recorder
from posevla.types import CameraFrame


class CaptureCamera(Protocol):
    """What the capture threads need of a camera object (RealSenseCamera, SharedMemoryCamera)."""

    pipeline: Any  # None until connected
    serial: str

    def connect(self) -> None: ...

    def read(self, timeout_ms: int = ...) -> CameraFrame | None: ...

    def disconnect(self) -> None: ...

    def raw_depth_mm(self, frame: CameraFrame) -> np.ndarray: ...


@dataclass
class CameraStats:
    captured: int = 0  # new frames read from the camera
    recorded: int = 0  # frames that went into an episode
    superseded: int = 0  # frames replaced by a newer one of the same camera before their set was recorded
    reconnects: int = 0
    cpu_s: float = 0.0  # capture thread CPU time: read, depth conversion, set assembly, preview
    latency_ns: list[int] = field(default_factory=list)  # capture stamp -> handed to the writer (recorded frames)


class CaptureRecorder:
    """Camera threads + set assembly around one `Recorder` (see the module doc)."""

    def __init__(self, recorder: Recorder, cameras: dict[str, CaptureCamera], preview_hz: float = 0.0,
                 preview: Callable[[str, CameraFrame, np.ndarray], None] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, keep_latency: int = 100_000, max_pending: int = 8) -> None:
        missing = [c for c in recorder.cfg.cameras if c not in cameras]
        if missing:
            raise ValueError(f"capture+record: no camera object for recorder camera(s) {missing}")
        if max_pending < 1:
            raise ValueError(f"capture+record max_pending={max_pending}: must be >= 1")
        if recorder.cfg.writer_queue_frames < 2 * max_pending:  # a stalled camera catching up completes a burst
            raise ValueError(f"capture+record max_pending={max_pending} needs the recorder's writer_queue_frames >= "
                             f"{2 * max_pending} (it is {recorder.cfg.writer_queue_frames}): the sets a stalled "
                             "camera completes when it catches up arrive at the writer at once")
        if preview_hz < 0:
            raise ValueError(f"capture+record preview_hz={preview_hz}: must be >= 0")
        self.rec, self.cameras = recorder, {c: cameras[c] for c in recorder.cfg.cameras}
        self.preview_hz, self.preview, self.clock_ns = preview_hz, preview, clock_ns
        self.keep_latency = keep_latency
        self.lock = threading.RLock()
        self.stats = {c: CameraStats() for c in self.cameras}
        self.sets_recorded = 0
        self.sets_completed = 0
        self.status = {c: "starting" for c in self.cameras}
        self.max_pending = max_pending
        self._episode_writer: object | None = None
        self._dropped_base = {c: 0 for c in self.cameras}
        self._pending: dict[str, deque[tuple[CameraFrame, np.ndarray]]] = {c: deque() for c in self.cameras}
        self._last_set = time.monotonic()
        self._last_preview = {c: 0.0 for c in self.cameras}
        self._running = False
        self._threads: list[threading.Thread] = []
        self.messages: list[str] = []  # what the recorder said when an episode had to stop

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._running = True
        for c in self.cameras:
            t = threading.Thread(target=self._capture, args=(c,), name=f"capture-{c}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._watchdog, name="capture-watchdog", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._running = False
        for t in self._threads:
            t.join(5.0)
        self._threads = []
        for cam in self.cameras.values():
            cam.disconnect()

    def control(self, fn: Callable[[], str]) -> str:
        """Run a recorder control call (start, stop_and_save, discard, ...) under the lock. The capture threads
        wait meanwhile (opening a writer can take a while): frames the cameras drop then are before the episode's
        first frame, so the source's drop counts are taken from each episode's start."""
        with self.lock:
            out = fn()
            if self.rec.writer is not None and self.rec.writer is not self._episode_writer:
                self._episode_writer = self.rec.writer
                self._dropped_base = {c: int(getattr(cam, "dropped", 0)) for c, cam in self.cameras.items()}
            return out

    # ------------------------------------------------------------------ threads
    def _capture(self, name: str) -> None:
        cam, st = self.cameras[name], self.stats[name]
        cpu0 = time.thread_time()
        while self._running:
            st.cpu_s = time.thread_time() - cpu0
            if cam.pipeline is None:
                try:
                    cam.connect()
                    self.status[name] = f"streaming ({cam.serial})"
                except ConnectionError as exc:
                    self.status[name] = str(exc)
                    time.sleep(0.5)
                    continue
            try:
                frame = cam.read(200)
            except ConnectionError as exc:
                self.status[name] = f"lost: {exc}; reconnecting"
                cam.disconnect()
                st.reconnects += 1
                continue
            if frame is None:
                continue
            raw = cam.raw_depth_mm(frame)
            self._on_frame(name, frame, raw)
            if self.preview is not None and self.preview_hz > 0:
                now = time.monotonic()
                if now - self._last_preview[name] >= 1.0 / self.preview_hz:
                    self._last_preview[name] = now
                    self.preview(name, frame, raw)

    def _on_frame(self, name: str, frame: CameraFrame, raw_depth: np.ndarray) -> None:
        with self.lock:
            self.stats[name].captured += 1
            self.rec.latest.info[name] = frame.intrinsics
            self.rec.note_arrival(f"{name}/color")
            self.rec.note_arrival(f"{name}/depth")
            q = self._pending[name]
            q.append((frame, raw_depth))
            if len(q) > self.max_pending:  # far ahead of another camera: its oldest frame will never be in a set
                q.popleft()
                self._supersede(name)
            self._assemble()

    def _supersede(self, name: str) -> None:
        if self.rec.state == "recording":
            self.stats[name].superseded += 1

    def _assemble(self) -> None:
        """Record every complete set: one frame per camera, the oldest pending ones, matched within half a period."""
        half_period_ns = 0.5e9 / self.rec.cfg.fps
        while all(self._pending.values()):
            ref = max(q[0][0].stamp_ns for q in self._pending.values())
            stale = False
            for c, q in self._pending.items():  # older than the set by more than half a period: no partner left
                while q and q[0][0].stamp_ns < ref - half_period_ns:
                    q.popleft()
                    self._supersede(c)
                    stale = True
            if stale:
                continue
            chosen = {c: q.popleft() for c, q in self._pending.items()}
            self._record(chosen)

    def _record(self, chosen: dict[str, tuple[CameraFrame, np.ndarray]]) -> None:
        L = self.rec.latest
        for c, (frame, raw) in chosen.items():
            L.color[c] = (frame.stamp_ns, frame.rgb)
            L.depth[c] = (frame.stamp_ns, raw)
        self.sets_completed += 1
        self._last_set = time.monotonic()
        writer, before = self.rec.writer, self.rec.frames_queued
        msg = self.rec.tick(max(f.stamp_ns for f, _ in chosen.values()))
        if msg:
            self.messages.append(msg)
        if writer is not None and self.rec.writer is writer and self.rec.frames_queued > before:
            self.sets_recorded += 1
            now = self.clock_ns()
            for c, (frame, _) in chosen.items():
                cs = self.stats[c]
                cs.recorded += 1
                if len(cs.latency_ns) < self.keep_latency:
                    cs.latency_ns.append(now - frame.stamp_ns)

    def _watchdog(self) -> None:
        """Tick when no set completed for stream_timeout_s, so a dead camera stops the episode with a reason."""
        timeout = self.rec.cfg.stream_timeout_s
        while self._running:
            time.sleep(min(0.05, timeout / 4))
            with self.lock:
                if self.rec.state != "recording" and self.rec.state != "reset":
                    continue
                if time.monotonic() - self._last_set > timeout:
                    msg = self.rec.tick(self.clock_ns())
                    self._last_set = time.monotonic()
                    if msg:
                        self.messages.append(msg)

    # ------------------------------------------------------------------ figures
    def summary(self) -> dict:
        """Per-camera counts and capture-to-writer latency percentiles (ms)."""
        out: dict = {"sets_completed": self.sets_completed, "sets_recorded": self.sets_recorded, "cameras": {}}
        for c, st in self.stats.items():
            cam = self.cameras[c]
            lat = np.asarray(st.latency_ns, np.float64) / 1e6
            out["cameras"][c] = {
                "captured": st.captured, "recorded": st.recorded, "superseded": st.superseded,
                "dropped_at_source": int(getattr(cam, "dropped", 0)) - self._dropped_base[c], "reconnects": st.reconnects,
                "capture_cpu_ms_per_frame": 1e3 * st.cpu_s / max(st.captured, 1),
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                "latency_ms_p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
                "latency_ms_max": float(lat.max()) if lat.size else float("nan")}
        return out
