"""Recording three 640x480 RGB-D streams at 30 Hz for 30 s on this machine: frames received vs written per
stream, and real-time headroom (encode + write time per frame / frame period; < 1 means it keeps up)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ArmState, RobotState

CAMS = ("head", "left_wrist", "right_wrist")


def main(seconds: float = 30.0, fps: float = 30.0) -> None:
    intr = CameraIntrinsics(386.0, 386.0, 319.5, 239.5, 640, 480)
    yy, xx = np.mgrid[0:480, 0:640]
    rng = np.random.default_rng(0)
    base = (np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1)).astype(np.uint8)
    depth = (800 + 200 * np.sin(xx / 40.0) * np.cos(yy / 30.0)).astype(np.uint16)
    state = RobotState({a: ArmState(se3.T_from_xyz_rpy([0.4, 0.3, 0.2], [3.1, 0, 0]), np.zeros(6), 0.5, 0)
                        for a in ("left", "right")}, 0)
    with tempfile.TemporaryDirectory() as tmp:
        w = EpisodeWriter(Path(tmp), "bench", {"instruction": "bench", "fps": fps}, {c: intr for c in CAMS},
                          min_free_bytes=256 * 1024 * 1024)
        n = int(seconds * fps)
        offered = accepted = 0
        t0 = time.perf_counter()
        for k in range(n):
            noise = rng.integers(0, 3, (480, 640, 1), dtype=np.uint8)  # sensor noise, so frames differ
            stamp = time.time_ns()
            rec = FrameRecord(stamp, {c: base + noise for c in CAMS}, {c: depth + k for c in CAMS},
                              {c: stamp for c in CAMS}, state, np.zeros(14))
            offered += 1
            accepted += w.add_frame(rec)
            time.sleep(max(0.0, t0 + (k + 1) / fps - time.perf_counter()))
        wall = time.perf_counter() - t0
        path = w.finish(True)
        size = path.stat().st_size
    period = 1.0 / fps
    per_frame = w.encode_s / max(w.frames_written, 1)
    print(f"{seconds:.0f} s at {fps:.0f} Hz, 3 x 640x480 RGB-D: per stream {offered} frames received, "
          f"{w.frames_written} written, {w.frames_rejected} refused by the full queue (reported, not silent)")
    print(f"encode + write per frame (3 cameras): {per_frame * 1e3:.1f} ms; headroom {per_frame / period:.2f} of the "
          f"{period * 1e3:.1f} ms period ({'keeps up' if per_frame < period else 'FALLS BEHIND'}); wall {wall:.1f} s")
    print(f"episode size {size / 1e6:.0f} MB ({size / 1e6 / seconds:.1f} MB/s)")


if __name__ == "__main__":
    main()
