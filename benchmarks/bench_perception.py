"""Observation building for three 640x480 RGB-D views: builder time vs the raw-copy floor, and the latency from
the last input message (the synchroniser completing a set) to the observation being ready (p50/p99)."""
from __future__ import annotations

import time

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder
from posevla.perception.sync import ApproximateTimeSync
from posevla.tools.latency_plot import save_latency_plot
from posevla.types import CameraFrame

VIEWS = ("head", "left_wrist", "right_wrist")


def main() -> None:
    rng = np.random.default_rng(0)
    intr = CameraIntrinsics(386.0, 386.0, 319.5, 239.5, 640, 480)
    rgb = {v: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for v in VIEWS}
    depth = {v: rng.uniform(0.2, 2.0, (480, 640)).astype(np.float32) for v in VIEWS}
    builder = ObservationBuilder(BuilderConfig(image_size=224, max_age_s=10.0, slop_s=0.02))
    latencies, build_times, copy_times = [], [], []

    def on_set(msgs: dict) -> None:
        t0 = time.perf_counter()
        frames = {v: CameraFrame(v, msgs[(v, "color")][0], msgs[(v, "depth")][0], intr, msgs[(v, "color")][1],
                                 f"{v}_camera_color_optical_frame") for v in VIEWS}
        builder.build(frames, None, "pick", time.time_ns())
        t1 = time.perf_counter()
        build_times.append(t1 - t0)
        latencies.append(t1 - last_input[0])

    sync = ApproximateTimeSync([(v, k) for v in VIEWS for k in ("color", "depth")], 0.01, 10, on_set)
    last_input = [0.0]
    for _ in range(200):
        stamp = time.time_ns()
        for v in VIEWS:
            for kind in ("color", "depth"):
                last_input[0] = time.perf_counter()
                sync.add((v, kind), stamp + int(rng.integers(-2_000_000, 2_000_000)),
                         (rgb[v] if kind == "color" else depth[v], stamp))
        t0 = time.perf_counter()
        _ = {v: (rgb[v].copy(), depth[v].copy()) for v in VIEWS}
        copy_times.append(time.perf_counter() - t0)
    ms = lambda x: np.asarray(x) * 1e3  # noqa: E731
    print(f"observations built: {len(build_times)} of 200 input sets")
    print(f"last input -> observation ready: p50 {np.median(ms(latencies)):.2f} ms  p99 {np.percentile(ms(latencies), 99):.2f} ms")
    print(f"observation builder alone (3 views): p50 {np.median(ms(build_times)):.2f} ms  p99 {np.percentile(ms(build_times), 99):.2f} ms")
    print(f"raw-copy floor (3 x RGB + depth copies): p50 {np.median(ms(copy_times)):.2f} ms")
    print(f"builder / floor: {np.median(build_times) / np.median(copy_times):.1f}x")
    path = save_latency_plot({"last input -> observation": ms(latencies), "builder alone": ms(build_times),
                              "raw-copy floor": ms(copy_times)}, "perception", "three 640x480 RGB-D views")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
