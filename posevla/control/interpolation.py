"""Sampling a chunk at an arbitrary time: linear in position, spherical-linear in rotation (pure numpy)."""
from __future__ import annotations

import numpy as np

from posevla.geometry import se3
from posevla.types import ActionChunk


class ChunkSampler:
    """A chunk prepared for fast sampling in the control loop (quaternions computed once)."""

    def __init__(self, chunk: ActionChunk) -> None:
        self.chunk = chunk
        self.quats = {arm: se3.quat_from_matrix(c.T[:, :3, :3]) for arm, c in chunk.arms.items()}

    def sample(self, arm: str, t_ns: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Position (3,), quaternion xyzw (4,) and gripper of `arm` at t_ns (clamped to the chunk's ends)."""
        c, q = self.chunk.arms[arm], self.quats[arm]
        n = c.T.shape[0]
        x = 0.0 if n == 1 or self.chunk.dt <= 0 else (t_ns - self.chunk.stamp_ns) * 1e-9 / self.chunk.dt
        if x <= 0 or n == 1:
            return c.T[0, :3, 3], q[0], float(c.gripper[0])
        if x >= n - 1:
            return c.T[-1, :3, 3], q[-1], float(c.gripper[-1])
        k = int(x)
        s = x - k
        p = (1 - s) * c.T[k, :3, 3] + s * c.T[k + 1, :3, 3]
        return p, se3.quat_slerp(q[k], q[k + 1], s), float((1 - s) * c.gripper[k] + s * c.gripper[k + 1])


def sample_chunk(chunk: ActionChunk, arm: str, t_ns: int) -> tuple[np.ndarray, float]:
    """Pose (4x4) and gripper of `arm` at time t_ns; clamped to the first/last point outside the chunk."""
    p, q, g = ChunkSampler(chunk).sample(arm, t_ns)
    return se3.make_T(se3.matrix_from_quat(q), p), g
