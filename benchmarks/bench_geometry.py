"""Raymaps + depth priors for three 224x224 views versus the raw numpy floor (one np.stack of three arrays)."""
from __future__ import annotations

import time

import numpy as np

from posevla.geometry.depth import depth_prior
from posevla.geometry.image_ops import plan_resize_with_pad
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.raymap import raymap

S = 224


def _timeit(fn, repeat: int = 300) -> np.ndarray:
    fn()
    out = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    raw = [CameraIntrinsics(386.0, 386.0, 320.0, 240.0, 640, 480),
           CameraIntrinsics(432.0, 431.0, 318.0, 242.0, 640, 480),
           CameraIntrinsics(433.0, 433.0, 322.0, 236.0, 640, 480)]
    intrs = [plan_resize_with_pad(640, 480, S, S).apply_intrinsics(k) for k in raw]
    depths = [rng.uniform(0.1, 2.0, (S, S)).astype(np.float32) for _ in range(3)]
    for d in depths:
        d[rng.random(d.shape) < 0.1] = np.nan

    def build() -> list:
        return [(raymap(k), depth_prior(d)) for k, d in zip(intrs, depths)]

    same = [rng.random((S, S, 5), dtype=np.float32) for _ in range(3)]
    floor = _timeit(lambda: np.stack(same))
    ours = _timeit(build)
    print(f"raymaps + depth priors, 3 views {S}x{S}: p50 {np.median(ours):8.1f} us  p99 {np.percentile(ours, 99):8.1f} us")
    print(f"floor np.stack of three {S}x{S}x5 f32:     p50 {np.median(floor):8.1f} us  p99 {np.percentile(floor, 99):8.1f} us")
    print(f"ratio (p50): {np.median(ours) / np.median(floor):.2f}x  (goal: <= 2x)")
    print("(raymaps are cached per intrinsics; depth priors are computed every call)")


if __name__ == "__main__":
    main()
