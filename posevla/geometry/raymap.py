"""Raymaps: the per-pixel ray direction r = K^-1 [u, v, 1] in the camera optical frame (unit z, not normalised).

Evaluated at pixel centres of the image the model sees (pixel (i, j) at (u, v) = (i, j)). Raymaps depend only
on the intrinsics, so they are cached; the returned array is read-only.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics


@lru_cache(maxsize=64)
def _raymap_cached(fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> np.ndarray:
    chw = np.empty((3, height, width), dtype=np.float32)  # channel-first storage, HxWx3 view
    chw[0] = ((np.arange(width, dtype=np.float64) - cx) / fx)[None, :]
    chw[1] = ((np.arange(height, dtype=np.float64) - cy) / fy)[:, None]
    chw[2] = 1.0
    chw.setflags(write=False)
    return chw.transpose(1, 2, 0)


def raymap(intr: CameraIntrinsics) -> np.ndarray:
    """(H, W, 3) float32 raymap of an image with intrinsics `intr` (read-only, cached).

    A view of channel-first storage: `torch.from_numpy(r).permute(2, 0, 1)` is contiguous and free.
    """
    return _raymap_cached(float(intr.fx), float(intr.fy), float(intr.cx), float(intr.cy), intr.width, intr.height)
