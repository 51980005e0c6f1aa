"""Sampling a chunk at an arbitrary time: linear in position, spherical-linear in rotation."""
from __future__ import annotations

import numpy as np

from posevla.geometry import se3
from posevla.types import ActionChunk


def sample_chunk(chunk: ActionChunk, arm: str, t_ns: int) -> tuple[np.ndarray, float]:
    """Pose (4x4) and gripper of `arm` at time t_ns; clamped to the first/last point outside the chunk."""
    c = chunk.arms[arm]
    n = c.T.shape[0]
    if n == 1 or chunk.dt <= 0:
        return c.T[0], float(c.gripper[0])
    x = (t_ns - chunk.stamp_ns) * 1e-9 / chunk.dt
    if x <= 0:
        return c.T[0], float(c.gripper[0])
    if x >= n - 1:
        return c.T[-1], float(c.gripper[-1])
    k = int(np.floor(x))
    s = x - k
    return se3.slerp_T(c.T[k], c.T[k + 1], s), float((1 - s) * c.gripper[k] + s * c.gripper[k + 1])
