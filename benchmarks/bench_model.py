"""CPU latency of PoseVLAPolicy.predict on the tiny config: 1 and 3 views, 10 flow steps, with and without
reusing the prefix KV cache across flow steps."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from posevla.model.policy import PoseVLAPolicy
from posevla.tools.latency_plot import save_latency_plot

REPO = Path(__file__).resolve().parents[1]


def _time(fn, repeat: int) -> np.ndarray:
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def main() -> None:
    torch.set_num_threads(2)
    policy = PoseVLAPolicy.from_config(REPO / "models" / "tiny.yaml", device="cpu")
    n_params = sum(p.numel() for p in policy.model.parameters())
    print(f"tiny config: {n_params / 1e6:.2f} M parameters, image {policy.config.image_size} px, "
          f"{policy.config.tokens_per_view} tokens/view, chunk {policy.config.chunk_length}, "
          f"{policy.config.flow_steps} flow steps, device {policy.device}")
    full = policy.synthetic_observation("pick up the red cube")
    series = {}
    for views in (("head",), ("head", "left_wrist", "right_wrist")):
        obs = policy.synthetic_observation("pick up the red cube")
        obs.views = {k: v for k, v in full.views.items() if k in views}
        rows = {}
        for reuse in (True, False):
            ms = _time(lambda o=obs, r=reuse: policy.predict(o, noise_seed=0, reuse_prefix_cache=r), 20)
            rows[reuse] = ms
            series[f"{len(views)} view(s), KV reuse {'on' if reuse else 'off'}"] = ms
            print(f"  {len(views)} view(s), KV reuse {'on ' if reuse else 'off'}: p50 {np.median(ms):7.1f} ms  "
                  f"p99 {np.percentile(ms, 99):7.1f} ms")
        print(f"  -> reuse speed-up {np.median(rows[False]) / np.median(rows[True]):.2f}x")
    print(f"plot: {save_latency_plot(series, 'model', f'tiny Pose-VLA predict on {policy.device}')}")


if __name__ == "__main__":
    main()
