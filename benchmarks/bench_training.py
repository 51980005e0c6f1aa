"""Training throughput on the tiny config on CPU: the DataLoader (worker processes decoding JPEG and depth,
resizing, building raymaps and collating) vs the model step (fp32 AdamW, forward + backward), in samples/s.

The loader must outrun the step, or the GPU (here: the CPU) waits for data. Episodes: synthetic 320x240
recordings of three RGB-D cameras at 15 fps, written to a temporary folder.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posevla.model.normalization import NormStats
from posevla.model.policy import PoseVLAPolicy
from posevla.tools.synthetic_episode import write_demo_episode
from posevla.training.episode_dataset import EpisodeChunkDataset
from posevla.training.loader import BatchBuilder, EpochBatchOrder, make_loader
from posevla.training.sample_cache import SampleCache

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
WORKERS = 2


def main() -> None:
    torch.set_num_threads(1)  # one core for the model step (the workers take the others); stable under load
    with tempfile.TemporaryDirectory() as tmp:
        episodes = [write_demo_episode(Path(tmp) / "data", seconds=2.0, fps=15.0)]
        policy = PoseVLAPolicy.from_config(REPO / "models" / "tiny.yaml", device="cpu", dtype=torch.float32)
        data = EpisodeChunkDataset(episodes, policy.config)
        policy.set_norm_stats(NormStats.fit(*data.state_and_action_rows()))
        builder = BatchBuilder(data, policy.batcher)
        print(f"tiny config ({sum(p.numel() for p in policy.model.parameters()) / 1e6:.2f} M parameters, "
              f"{policy.config.image_size} px, {len(policy.config.views)} views), {len(data)} samples, batch {BATCH}")

        # one process building batches: the cost per sample
        order = EpochBatchOrder(np.arange(len(data)), BATCH, seed=0)
        builder[order.batch(0)]
        build = []
        for b in range(1, 6):
            t0 = time.perf_counter()
            builder[order.batch(b)]
            build.append(time.perf_counter() - t0)
        per_sample_ms = 1e3 * float(np.median(build)) / BATCH

        # the same batches from the sample cache (posevla train --cache-gb, --workers 0): built once, then from RAM
        cache = SampleCache(data, 2 * 10**9, data.depth_scales())
        cached = BatchBuilder(cache, policy.batcher)
        for b in range(1, 6):
            cached[order.batch(b)]
        hits = []
        for b in range(1, 6):
            t0 = time.perf_counter()
            cached[order.batch(b)]
            hits.append(time.perf_counter() - t0)
        cached_ms = 1e3 * float(np.median(hits)) / BATCH
        cache_mb = cache.bytes / 1e6 / max(len(cache._items), 1)

        # the DataLoader with worker processes, as training uses it (first batch = start-up, not counted)
        n = 12
        loader = make_loader(builder, EpochBatchOrder(np.arange(len(data)), BATCH, seed=0, count=n + 1), WORKERS)
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        loader_sps = n * BATCH / (time.perf_counter() - t0)
        del it, loader

        # the model step on a ready batch
        batch = builder[order.batch(0)]
        batch.pop("build_s")
        model = policy.model
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        steps = []
        for k in range(6):
            t0 = time.perf_counter()
            loss = model(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k:  # the first step allocates optimizer state
                steps.append(time.perf_counter() - t0)
        step_s = float(np.median(steps))
        model_sps = BATCH / step_s
        data.close()
    print(f"  batch building, 1 process  : {per_sample_ms:6.1f} ms/sample ({1e3 / per_sample_ms:6.1f} samples/s)")
    print(f"  from the sample cache       : {cached_ms:6.2f} ms/sample ({1e3 / cached_ms:6.0f} samples/s, "
          f"{cache_mb:.2f} MB per sample in RAM; --cache-gb, in the training process)")
    print(f"  DataLoader, {WORKERS} workers     : {loader_sps:6.1f} samples/s")
    print(f"  model step, fp32 AdamW, 1 thread: {1e3 * step_s:6.1f} ms/batch ({model_sps:6.1f} samples/s)")
    print(f"  -> loader / model = {loader_sps / model_sps:.2f}x: "
          f"{'the loader keeps up' if loader_sps > model_sps else 'DATA-BOUND: add --workers'}")


if __name__ == "__main__":
    main()
