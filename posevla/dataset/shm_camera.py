"""A camera in another process, through shared memory: the stand-in for RealSense hardware in the capture+record
measurements and tests.

A RealSense camera produces frames on its own clock whether or not the host keeps up; librealsense hands them
over with a frame number, so a consumer that fell behind sees the gap. `SharedMemoryCameraSource` does the same
from an independent process: it writes RGB-D frames at `fps` into a ring of `slots` frames in POSIX shared
memory, each with its frame number and capture stamp (host `time.time_ns()`, ns). `SharedMemoryCamera` reads
them in order with the interface of `posevla.perception.realsense.RealSenseCamera` (connect / read /
raw_depth_mm / disconnect, `serial`, `stale`, `frames`, `domain`) and counts `dropped`: frames the source wrote
that were overwritten before this reader took them (a reader more than `slots` frames behind).

Ring layout (little-endian): header int64[8] = magic, width, height, slots, head (number of the newest complete
frame, -1 before the first), fps x 1000, closed flag, depth_scale x 1e9; then per slot int64[2] = frame number
(-1 while being written), stamp_ns, then rgb uint8 HxWx3, then depth uint16 HxW (raw depth_scale units).
A slot is a seqlock: the writer sets the number to -1, writes the pixels, then the number; the reader copies
and accepts the copy only if the number is the same before and after.

    python -m posevla.dataset.shm_camera --help   (run a source from the command line)
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from multiprocessing import shared_memory

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import CameraFrame, optical_frame

MAGIC = 0x5045564C41434D31  # "PEVLACM1"
HEADER = 8  # int64 fields
SLOT_HEADER = 2


def segment_name(prefix: str, camera: str) -> str:
    """The shared-memory segment of one camera of a source (`/dev/shm/<prefix>_<camera>`)."""
    return f"{prefix}_{camera}"


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open an existing segment without handing it to this process's resource tracker (before Python 3.13 an
    attaching process registers it too, and its tracker would unlink the source's segment when it exits)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, track=False)
    from multiprocessing import resource_tracker

    shm = shared_memory.SharedMemory(name)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def _layout(width: int, height: int, slots: int) -> tuple[int, int, int]:
    """(bytes per slot, offset of slot 0, total bytes)."""
    slot = 8 * SLOT_HEADER + width * height * 3 + width * height * 2
    slot = (slot + 63) // 64 * 64
    return slot, 8 * HEADER, 8 * HEADER + slots * slot


class _Ring:
    def __init__(self, shm: shared_memory.SharedMemory, width: int, height: int, slots: int) -> None:
        self.shm, self.width, self.height, self.slots = shm, width, height, slots
        self.slot_bytes, self.base, _ = _layout(width, height, slots)
        buf = shm.buf
        self.header = np.ndarray((HEADER,), np.int64, buf, 0)
        self.meta = [np.ndarray((SLOT_HEADER,), np.int64, buf, self.base + k * self.slot_bytes) for k in range(slots)]
        n_rgb = width * height * 3
        self.rgb = [np.ndarray((height, width, 3), np.uint8, buf, self.base + k * self.slot_bytes + 8 * SLOT_HEADER)
                    for k in range(slots)]
        self.depth = [np.ndarray((height, width), np.uint16, buf,
                                 self.base + k * self.slot_bytes + 8 * SLOT_HEADER + n_rgb) for k in range(slots)]

    def release(self) -> None:
        self.header = self.meta = self.rgb = self.depth = None  # type: ignore[assignment]


class SharedMemoryCameraSource:
    """Writer side (the 'camera'): create the ring and publish frames into it."""

    def __init__(self, name: str, width: int, height: int, slots: int = 8, fps: float = 30.0,
                 depth_scale: float = 0.001) -> None:
        if slots < 2:
            raise ValueError(f"shared-memory camera slots={slots}: at least 2")
        _, _, total = _layout(width, height, slots)
        try:
            self.shm = shared_memory.SharedMemory(name, create=True, size=total)
        except FileExistsError:  # a source that died without cleaning up: take its name over
            old = shared_memory.SharedMemory(name)
            old.close()
            old.unlink()
            self.shm = shared_memory.SharedMemory(name, create=True, size=total)
        self.ring = _Ring(self.shm, width, height, slots)
        self.ring.header[:] = [MAGIC, width, height, slots, -1, int(round(fps * 1000)), 0, int(round(depth_scale * 1e9))]
        for m in self.ring.meta:
            m[:] = [-2, 0]
        self.n = 0

    def write(self, rgb: np.ndarray, depth: np.ndarray, stamp_ns: int | None = None) -> int:
        """Publish the next frame; returns its frame number."""
        r, k = self.ring, self.n % self.ring.slots
        r.meta[k][0] = -1
        r.rgb[k][...] = rgb
        r.depth[k][...] = depth
        r.meta[k][1] = time.time_ns() if stamp_ns is None else stamp_ns
        r.meta[k][0] = self.n
        r.header[4] = self.n
        self.n += 1
        return self.n - 1

    def close(self) -> None:
        """Mark the stream ended (readers see a lost camera) and remove the segment."""
        if self.ring.header is not None:
            self.ring.header[6] = 1
        self.ring.release()
        self.shm.close()
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class SharedMemoryCamera:
    """Reader side, with RealSenseCamera's interface; every frame in order, gaps counted in `dropped`."""

    def __init__(self, name: str, segment: str, intrinsics: CameraIntrinsics | None = None,
                 timeout_ms: int = 1000, poll_s: float = 0.002) -> None:
        self.name, self.segment, self.timeout_ms, self.poll_s = name, segment, timeout_ms, poll_s
        self._intrinsics = intrinsics
        self.ring: _Ring | None = None
        self.pipeline: object | None = None  # RealSenseCamera's "connected" marker
        self.serial = f"shm:{segment}"
        self.domain = "system_time"
        self.depth_scale = 0.001
        self.next_number = -1  # the frame number this reader takes next (-1: the newest at connect)
        self.frames = self.stale = self.dropped = 0

    def connect(self) -> None:
        try:
            shm = _attach(self.segment)
        except FileNotFoundError:
            raise ConnectionError(f"camera {self.name}: no shared-memory camera {self.segment!r} (is the source running?)") from None
        header = np.ndarray((HEADER,), np.int64, shm.buf, 0).copy()
        if header[0] != MAGIC:
            shm.close()
            raise ConnectionError(f"camera {self.name}: shared memory {self.segment!r} is not a camera ring")
        self.ring = _Ring(shm, int(header[1]), int(header[2]), int(header[3]))
        self.depth_scale = float(header[7]) / 1e9
        w, h = self.ring.width, self.ring.height
        if self._intrinsics is None:
            f = 386.0 * w / 640.0
            self._intrinsics = CameraIntrinsics(f, f, (w - 1) / 2, (h - 1) / 2, w, h)
        self.pipeline = self.ring
        self.next_number = -1

    def read(self, timeout_ms: int | None = None) -> CameraFrame | None:
        """The next frame in order (waiting up to timeout_ms); None on timeout. ConnectionError when the source ended."""
        r = self.ring
        if r is None:
            raise ConnectionError(f"camera {self.name}: not connected")
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1e3
        while True:
            if r.header[6]:
                raise ConnectionError(f"camera {self.name}: source {self.segment!r} ended")
            head = int(r.header[4])
            if self.next_number < 0 and head >= 0:
                self.next_number = head
            if head >= self.next_number >= 0:
                if head - self.next_number >= r.slots - 1:  # overwritten (or about to be): skip to the oldest safe one
                    skip = head - (r.slots - 2)
                    self.dropped += skip - self.next_number
                    self.next_number = skip
                k = self.next_number % r.slots
                if int(r.meta[k][0]) == self.next_number:
                    stamp = int(r.meta[k][1])
                    rgb, depth = r.rgb[k].copy(), r.depth[k].copy()
                    if int(r.meta[k][0]) == self.next_number:  # not overwritten while copying
                        self.next_number += 1
                        self.frames += 1
                        depth_m = depth.astype(np.float32) * np.float32(self.depth_scale)  # as RealSenseCamera.read
                        assert self._intrinsics is not None  # set by connect()
                        return CameraFrame(self.name, rgb, depth_m, self._intrinsics, stamp, optical_frame(self.name))
                self.stale += 1  # overwritten while copying: try again from the current head
                continue
            if time.monotonic() > deadline:
                return None
            time.sleep(self.poll_s)

    def raw_depth_mm(self, frame: CameraFrame) -> np.ndarray:
        """Depth as realsense2_camera publishes it: uint16 millimetres (0 = invalid), as RealSenseCamera.raw_depth_mm."""
        d = frame.depth
        if d is None:
            raise ValueError(f"camera {self.name}: frame without depth")
        return np.where(np.isfinite(d) & (d > 0), np.round(d * 1000.0), 0).clip(0, 65535).astype(np.uint16)

    def disconnect(self) -> None:
        if self.ring is not None:
            shm = self.ring.shm
            self.ring.release()
            self.ring = None
            shm.close()
        self.pipeline = None


# ---------------------------------------------------------------------------------------------- source process
def run_source(prefix: str, cameras: list[str], width: int, height: int, fps: float, seconds: float,
               unique: int = 4, slots: int = 8, ready_file: str = "") -> dict:
    """Write synthetic RGB-D frames (posevla.dataset.synthetic_streams: textured tabletop, sensor noise) for every
    camera at `fps` on this process's own clock for `seconds` (0: until killed). Frames are pre-rendered (`unique`
    scene renders per camera, 2 x unique noisy frames played in a loop) so this process costs little CPU, like
    camera hardware. Returns per-camera frames written and late ticks."""
    from pathlib import Path

    from posevla.dataset.synthetic_streams import StreamConfig, SyntheticRGBD

    bank = {}
    for i, c in enumerate(cameras):
        g = SyntheticRGBD(c, StreamConfig(width, height, fps), seed=i)
        bank[c] = list(g.frames(2 * unique, unique=unique))
    sources = {c: SharedMemoryCameraSource(segment_name(prefix, c), width, height, slots, fps) for c in cameras}
    if ready_file:
        Path(ready_file).write_text("ready\n")
    period, late, k = 1.0 / fps, 0, 0
    t0 = time.monotonic()
    try:
        while seconds <= 0 or k < int(round(seconds * fps)):
            stamp = time.time_ns()
            for c, s in sources.items():
                rgb, depth = bank[c][k % len(bank[c])]
                s.write(rgb, depth, stamp)
            k += 1
            wait = t0 + k * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late += 1
    except KeyboardInterrupt:
        pass
    finally:
        for s in sources.values():
            s.close()
    return {"frames": k, "late_ticks": late, "seconds": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posevla.dataset.shm_camera",
                                 description="Run synthetic RGB-D cameras that publish into shared memory at a fixed "
                                             "rate (the camera stand-in for capture+record measurements).")
    ap.add_argument("--prefix", default="posevla_cam", help="shared-memory name prefix (segments <prefix>_<camera>)")
    ap.add_argument("--cameras", nargs="+", default=["head", "left_wrist", "right_wrist"])
    ap.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until interrupted)")
    ap.add_argument("--unique", type=int, default=4, help="scene renders per camera (slow: ~1 s each at 640x480)")
    ap.add_argument("--slots", type=int, default=8, help="frames a reader may fall behind before it drops one")
    ap.add_argument("--ready-file", default="", help="write this file once the cameras are publishing")
    a = ap.parse_args(argv)
    for name, value, lo, hi in (("--fps", a.fps, 1, 240), ("--unique", a.unique, 1, 1000), ("--slots", a.slots, 2, 1024),
                                ("--size W", a.size[0], 16, 4096), ("--size H", a.size[1], 16, 4096)):
        if not lo <= value <= hi:
            print(f"shm_camera: {name}={value}: must be in {lo}..{hi}", file=sys.stderr)
            return 2
    if a.seconds < 0:
        print(f"shm_camera: --seconds={a.seconds}: must be >= 0", file=sys.stderr)
        return 2
    def _stop(signum, frame) -> None:
        raise KeyboardInterrupt  # SIGTERM ends the loop like Ctrl-C: segments closed and unlinked

    signal.signal(signal.SIGTERM, _stop)
    out = run_source(a.prefix, a.cameras, a.size[0], a.size[1], a.fps, a.seconds, a.unique, a.slots, a.ready_file)
    print(f"shm_camera: {out['frames']} frames per camera in {out['seconds']:.1f} s, {out['late_ticks']} late ticks", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
