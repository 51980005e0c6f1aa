"""Built training samples kept in RAM, stored compactly and returned bit-identical (`posevla train --cache-gb`).

Building a sample (decode the colour video and the depth of each view the model reads, resize, raymap, depth
prior, camera poses, the target chunk) costs ~10-13 ms on one core; the tiny model's forward and backward pass
costs ~10 ms per sample. On a 2-core machine the builder processes and the model share the cores, so later
epochs re-decode frames the run has already built. The cache keeps each built sample once:

- colour: the model-size uint8 image as built;
- raymap: one array per distinct camera model (intrinsics after resize/crop and image size), shared by every
  sample of that camera (a raymap depends on nothing else);
- depth prior [D, M]: D as uint16 depth units when `float32(k) * float32(scale)` gives D back exactly for one of
  the dataset's depth scales (it does for recorded depth: the builder resizes it by nearest neighbour), else
  float32; M as bool;
- everything else (robot state, camera poses, target chunk) by reference.

At 168 px with two views that is ~0.34 MB per sample instead of ~1.3 MB. `decode(encode(s))` equals `s`
exactly (tests/test_sample_cache.py); past `max_bytes` further samples are built every time, never evicted.
Randomly augmented samples (`aug_crop_scale`, `aug_color`) differ on every draw and are never cached.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from posevla.model.batching import TrainingSample
from posevla.types import ModelView


@dataclasses.dataclass
class _View:
    view: ModelView  # rgb, raymap and depth_prior replaced by None; everything else by reference
    rgb: np.ndarray
    raymap_key: tuple
    depth_units: np.ndarray | None  # uint16 (scale below) or float32 metres
    depth_scale: float | None
    depth_valid: np.ndarray | None  # bool


class SampleCache:
    """An indexable dataset (len, [i]) over `data` that keeps every built sample up to `max_bytes`."""

    def __init__(self, data, max_bytes: int, depth_scales: Sequence[float] = (1e-3, 1e-4)) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.data, self.max_bytes = data, int(max_bytes)
        self.depth_scales = [float(s) for s in depth_scales]
        self._items: dict[int, tuple[list[_View], TrainingSample]] = {}
        self._raymaps: dict[tuple, np.ndarray] = {}
        self.bytes = 0
        self.hits = self.misses = self.full = 0

    def __len__(self) -> int:
        return len(self.data)

    @property
    def augments(self) -> bool:
        return False  # see posevla.training.loader.BatchBuilder: cached samples are never re-drawn

    def __getitem__(self, i: int) -> TrainingSample:
        i = int(i)
        item = self._items.get(i)
        if item is not None:
            self.hits += 1
            return self._decode(*item)
        self.misses += 1
        sample = self.data[i]
        if self.bytes < self.max_bytes:
            views, shell, n = self._encode(sample)
            self._items[i] = (views, shell)
            self.bytes += n
        else:
            self.full += 1
        return sample

    def line(self) -> str:
        total = self.hits + self.misses
        return (f"sample cache {self.bytes / 1e9:.2f} GB, {len(self._items)} of {len(self)} samples kept, "
                f"{100.0 * self.hits / max(total, 1):.0f} % of draws from RAM")

    # -- codec -------------------------------------------------------------------------------------------------
    def _depth(self, d: np.ndarray) -> tuple[np.ndarray, float | None]:
        for s in self.depth_scales:
            k = np.rint(d / np.float32(s))
            if k.min() < 0 or k.max() > np.iinfo(np.uint16).max:
                continue
            units = k.astype(np.uint16)
            if np.array_equal(units.astype(np.float32) * np.float32(s), d):
                return units, s
        return np.ascontiguousarray(d, np.float32), None

    def _encode(self, sample: TrainingSample) -> tuple[list[_View], TrainingSample, int]:
        views, n = [], 0
        for v in sample.observation.views.values():
            key: tuple = (v.raymap.shape, v.intrinsics.width, v.intrinsics.height, v.intrinsics.fx, v.intrinsics.fy,
                   v.intrinsics.cx, v.intrinsics.cy)
            known = self._raymaps.get(key)
            if known is None or not np.array_equal(known, v.raymap):
                key = key + (len(self._raymaps),) if known is not None else key
                self._raymaps[key] = np.array(v.raymap)
                self._raymaps[key].flags.writeable = False
                n += v.raymap.nbytes
            rgb = np.array(v.rgb)
            rgb.flags.writeable = False
            units = scale = valid = None
            if v.depth_prior is not None:
                units, scale = self._depth(v.depth_prior[..., 0])
                valid = v.depth_prior[..., 1] != 0
                if not np.array_equal(valid.astype(np.float32), v.depth_prior[..., 1]):
                    raise ValueError(f"view {v.name}: the depth prior's mask channel holds values other than 0 and 1")
                n += units.nbytes + valid.nbytes
            n += rgb.nbytes
            hollow = dataclasses.replace(v, rgb=None, raymap=None, depth_prior=None)  # type: ignore[arg-type]
            views.append(_View(hollow, rgb, key, units,
                               scale, valid))
        shell = dataclasses.replace(sample, observation=dataclasses.replace(sample.observation, views={}))
        return views, shell, n

    def _decode(self, views: list[_View], shell: TrainingSample) -> TrainingSample:
        out = {}
        for c in views:
            prior = None
            if c.depth_units is not None:
                prior = np.empty((2, *c.depth_units.shape), np.float32).transpose(1, 2, 0)  # as depth_prior lays it out
                d = c.depth_units.astype(np.float32)
                if c.depth_scale is not None:
                    d *= np.float32(c.depth_scale)
                prior[..., 0] = d
                prior[..., 1] = c.depth_valid
            out[c.view.name] = dataclasses.replace(c.view, rgb=c.rgb, raymap=self._raymaps[c.raymap_key],
                                                   depth_prior=prior)
        return dataclasses.replace(shell, observation=dataclasses.replace(shell.observation, views=out))
