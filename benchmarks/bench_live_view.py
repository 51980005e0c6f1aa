"""Live view (posevla.viewer.LiveView, what `posevla view` runs per message): CPU time per logged item with
640 x 480 RealSense-sized images, and the CPU share of the viewer at its default rates (three cameras at
10 images/s, two TCP streams logged at 30 Hz, a 50-step chunk every 100 ms), written to a .rrd file sink.

CPU time, not wall time (a shared machine's scheduler would dominate wall time): per item the calling thread's
time (time.thread_time), and for the share the whole process (time.process_time: rerun's own threads too)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from posevla.calibration.files import load_calibrations
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ActionChunk, ArmChunk
from posevla.viewer import LiveView, close_recording, open_recording

REPO = Path(__file__).resolve().parents[1]


def _ms(xs: list[float]) -> str:
    a = np.asarray(xs) * 1e3
    return f"p50 {np.median(a):.2f} ms  p90 {np.percentile(a, 90):.2f} ms"


def main(n: int = 60) -> None:
    calib = load_calibrations(REPO / "calibration")
    intr = CameraIntrinsics(386.0, 386.0, 319.5, 239.5, 640, 480)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    rgb[::8] = 40  # some structure, so JPEG does not see pure noise only
    depth = rng.integers(300, 1500, (480, 640), dtype=np.uint16)
    T_tcp = np.array([[1.0, 0, 0, 0.35], [0, -1.0, 0, 0.18], [0, 0, -1.0, 0.22], [0, 0, 0, 1]])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.rrd"
        rec = open_recording("posevla_bench", "bench", save=path)
        view = LiveView(rec, calib, image_period_s=0.0, tcp_period_s=0.0)
        for cam in ("head", "left_wrist", "right_wrist"):
            view.camera_info(cam, intr)
        t0 = 1_700_000_000_000_000_000
        for k in range(20):
            view.tcp("left", T_tcp, t0 + k * 10_000_000)
            view.tcp("right", T_tcp, t0 + k * 10_000_000)
        pts = np.tile(np.eye(4), (50, 1, 1))
        pts[:, :3, 3] = np.linspace([0.0, 0.0, 0.5], [0.1, 0.05, 0.7], 50)
        chunk = ActionChunk("head_camera_color_optical_frame", t0, 0.02,
                            {a: ArmChunk(pts.copy(), np.full(50, 0.5)) for a in ("left", "right")})
        view.chunk(chunk)
        image_s, depth_s, tcp_s, chunk_s = [], [], [], []
        clock = time.thread_time
        cpu0 = time.process_time()
        for i in range(n):
            stamp = t0 + 200_000_000 + i * 10_000_000
            view.tcp("left", T_tcp, stamp)  # TCP history covers the image stamp (wrist projection)
            a = clock()
            view.image("left_wrist", rgb, stamp)  # colour + the chunk projected into it
            b = clock()
            view.depth("left_wrist", depth, 1000.0, stamp)
            c = clock()
            view.tcp("right", T_tcp, stamp)
            d = clock()
            if i % 5 == 0:
                chunk.stamp_ns = stamp
                view.chunk(chunk)  # 3D + reprojection into the logged images
            e = clock()
            image_s.append(b - a)
            depth_s.append(c - b)
            tcp_s.append(d - c)
            if i % 5 == 0:
                chunk_s.append(e - d)
        close_recording(rec, saved=True)
        process_s = time.process_time() - cpu0  # every thread, the file sink's writing included
        size = path.stat().st_size
    print(f"640x480 colour image (JPEG q90) + chunk projected into it: {_ms(image_s)}")
    print(f"640x480 16-bit depth image: {_ms(depth_s)}")
    print(f"TCP pose + trace: {_ms(tcp_s)}")
    print(f"50-step two-arm chunk (3D + reprojection into 3 cameras): {_ms(chunk_s)}")
    per_frame = process_s / n  # one colour + depth + one TCP log (+ a fifth of a chunk), all threads
    # 30 frames/s hold 30 of the 60 TCP logs and 6 of the 10 chunks; add the rest
    per_s = 30 * per_frame + 30 * np.median(tcp_s) + (10 - 6) * np.median(chunk_s)
    print(f"process CPU per logged colour+depth frame (all threads, incl. the .rrd writer): {per_frame * 1e3:.2f} ms")
    print(f"default rates (3 cameras x 10 images/s with depth, 2 x 30 TCP logs/s, 10 chunks/s): about "
          f"{per_s * 1e3:.0f} ms CPU per second = {per_s * 100:.0f} % of one core; .rrd {size / n / 1e6:.2f} MB "
          f"per colour+depth frame ({30 * size / n / 1e6:.0f} MB/s at these rates)")


if __name__ == "__main__":
    main()
