"""Training data pipeline: a seeded, resumable batch order and a DataLoader whose worker processes build batches.

Building a batch (JPEG and depth decoding, resize, raymaps, depth priors, normalisation, collation) runs in
`--workers` processes (`EpisodeChunkDataset.__getitem__` + `Batcher.collate`), so the training process only
moves tensors to the device and steps the model.

Order: batch number b of a run is batch (b mod n) of epoch (b div n), n = len(indices) // batch_size, and
epoch k is the permutation of `indices` drawn by numpy's default_rng([seed, k]). The stream depends on the seed
alone, never on the number of workers, and starting at batch b gives exactly the batches an uninterrupted run
sees from b on: resuming needs only the step count.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from posevla.model.batching import Batcher, TrainingSample


class EpochBatchOrder(Sampler):
    """Batches of dataset indices for batch numbers start, start + 1, ..., start + count - 1."""

    def __init__(self, indices: Sequence[int] | np.ndarray, batch_size: int, seed: int, start: int = 0,
                 count: int | None = None) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed, self.start = int(batch_size), int(seed), int(start)
        self.per_epoch = len(self.indices) // self.batch_size
        if self.per_epoch < 1:
            raise ValueError(f"{len(self.indices)} training samples, fewer than --batch-size {batch_size}")
        self.count = count
        self._epoch: tuple[int, np.ndarray] | None = None

    def batch(self, b: int) -> list[int]:
        epoch, k = divmod(int(b), self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.indices))
        return [int(i) for i in self._epoch[1][k * self.batch_size:(k + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        while self.count is None or b < self.start + self.count:
            yield self.batch(b)
            b += 1

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an endless batch order has no length")
        return self.count


class SampleSource(Protocol):
    """What BatchBuilder indexes: EpisodeChunkDataset, SampleCache, pre-training mixtures (len, [i]); those that
    augment also have `augments` and `augmented(i, key)`."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> TrainingSample: ...


class BatchBuilder(Dataset):
    """Index list -> collated CPU batch (float32 tensors), plus 'build_s': the seconds this batch took to build."""

    def __init__(self, data: SampleSource, batcher: Batcher) -> None:
        self.data, self.batcher = data, batcher

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int] | tuple[int, list[int]]) -> dict[str, torch.Tensor]:
        """idx: the batch's dataset indices, or (batch number, indices) from make_loader: then a dataset that
        augments (`augments`, `augmented(i, key)`) draws sample k of batch b with key b * len(indices) + k."""
        t0 = time.perf_counter()
        if isinstance(idx, tuple):
            b, idx = idx
            if getattr(self.data, "augments", False):
                augmented = self.data.augmented  # type: ignore[attr-defined]  # `augments` says it has one
                samples = [augmented(i, b * len(idx) + k) for k, i in enumerate(idx)]
            else:
                samples = [self.data[i] for i in idx]
        else:
            samples = [self.data[i] for i in idx]
        arrays = self.batcher.collate(samples)
        out = Batcher.to_torch(arrays, torch.device("cpu"), torch.float32)
        out["build_s"] = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
        return out


class NumberedBatches(Sampler):
    """`order`'s batches as (batch number, indices), so the batch builder can key per-draw randomness on them."""

    def __init__(self, order: EpochBatchOrder) -> None:
        self.order = order

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        for k, batch in enumerate(self.order):
            yield self.order.start + k, batch

    def __len__(self) -> int:
        return len(self.order)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker builds one batch at a time; no thread oversubscription


def make_loader(builder: BatchBuilder, order: EpochBatchOrder, workers: int, pin_memory: bool = False,
                prefetch: int = 4) -> DataLoader:
    """DataLoader over `order` with `workers` processes (0: build in the training process). It never draws from
    the global torch RNG (own generator), so the model's random stream is the same with or without workers."""
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    return DataLoader(builder, sampler=NumberedBatches(order), batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=prefetch if workers > 0 else None,
                      worker_init_fn=_worker_init if workers > 0 else None,
                      generator=torch.Generator().manual_seed(order.seed))


class ThroughputMeter:
    """Data vs model throughput: seconds spent building batches (in the workers), waiting for them (in the
    training process) and stepping the model."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.build_s = self.wait_s = self.step_s = 0.0
        self.samples = self.batches = 0

    def add(self, batch_size: int, build_s: float, wait_s: float, step_s: float) -> None:
        self.samples += batch_size
        self.batches += 1
        self.build_s += build_s
        self.wait_s += wait_s
        self.step_s += step_s

    def rates(self) -> dict[str, float]:
        """loader_sps: samples/s the loader can deliver (workers building in parallel); model_sps: samples/s of
        the model step alone; wait_fraction: share of the training loop spent waiting for data."""
        n = max(self.samples, 1)
        loader = n * self.workers / self.build_s if self.build_s > 0 else float("inf")
        model = n / self.step_s if self.step_s > 0 else float("inf")
        total = self.wait_s + self.step_s
        return {"loader_sps": loader, "model_sps": model, "wait_fraction": self.wait_s / total if total else 0.0}

    def line(self) -> str:
        r = self.rates()
        limit = "data" if r["loader_sps"] < r["model_sps"] else "model"
        return (f"data {r['loader_sps']:.1f} samples/s ({self.workers} worker(s)), model {r['model_sps']:.1f} "
                f"samples/s, waiting for data {100 * r['wait_fraction']:.0f} % of the loop: {limit} limits")
