"""Pinhole projection and unprojection in the camera optical frame (metres, pixels; no distortion)."""
from __future__ import annotations

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics


def project(points_cam: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """(...,3) points in the optical frame -> (...,2) pixel coordinates (u = fx x / z + cx). Needs z > 0."""
    p = np.asarray(points_cam, dtype=float)
    z = p[..., 2]
    if np.any(z <= 0):
        raise ValueError("cannot project points with z <= 0 (behind the camera)")
    return np.stack([intr.fx * p[..., 0] / z + intr.cx, intr.fy * p[..., 1] / z + intr.cy], axis=-1)


def unproject(uv: np.ndarray, depth: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Pixel coordinates (...,2) and depth along z (...) metres -> (...,3) points in the optical frame."""
    uv = np.asarray(uv, dtype=float)
    z = np.asarray(depth, dtype=float)
    return np.stack([(uv[..., 0] - intr.cx) / intr.fx * z, (uv[..., 1] - intr.cy) / intr.fy * z, z], axis=-1)


def depth_to_points(depth_m: np.ndarray, intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Back-project an HxW depth image (metres, 0 = invalid) -> (N,3) points and the (N,2) pixel indices used."""
    intr.check_image(depth_m.shape, "depth image")
    v, u = np.nonzero(np.isfinite(depth_m) & (depth_m > 0))
    pts = unproject(np.stack([u, v], axis=-1), depth_m[v, u], intr)
    return pts, np.stack([u, v], axis=-1)
