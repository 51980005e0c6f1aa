"""Oriented 3D boxes in a camera optical frame and their exact intersection-over-union.

A box is T_cam_obj (4x4: the box centre and axes in the camera frame, metres) and its full extents along its
own x, y, z axes (metres). Omni3D stores `dimensions` as [width, height, length] with length along the
object's x axis, height along y and width along z (cubercnn `get_cuboid_verts_faces`), so
size_xyz = (length, height, width) = dimensions[::-1]. Corner order follows Omni3D's `bbox3D_cam` diagram:
v0..v3 at z = -w/2 (v0 (-x,-y), v1 (+x,-y), v2 (+x,+y), v3 (-x,+y)), v4..v7 the same at z = +w/2.

The IoU is exact up to floating point: the intersection of two boxes is the convex polyhedron bounded by their
12 half-spaces; qhull (scipy) intersects them around an interior point found by linear programming (the
Chebyshev centre), and the volume is that of its convex hull. No sampling, no 2D-projection shortcut.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

_CORNER_SIGNS = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                          [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)


@dataclass
class Box3D:
    """An oriented box: T_cam_obj (4x4, camera optical frame <- box frame at its centre), size_xyz (3,) metres."""

    T_cam_obj: np.ndarray
    size_xyz: np.ndarray

    def __post_init__(self) -> None:
        self.T_cam_obj = np.asarray(self.T_cam_obj, dtype=np.float64)
        self.size_xyz = np.asarray(self.size_xyz, dtype=np.float64).reshape(3)
        if self.T_cam_obj.shape != (4, 4) or not np.all(np.isfinite(self.T_cam_obj)):
            raise ValueError("box pose T_cam_obj must be a finite 4x4 matrix")
        if not np.all(np.isfinite(self.size_xyz)) or np.any(self.size_xyz < 0):
            raise ValueError(f"box size {self.size_xyz.tolist()} must be finite and >= 0 (metres)")

    @property
    def centre(self) -> np.ndarray:
        return self.T_cam_obj[:3, 3]

    @property
    def volume(self) -> float:
        return float(np.prod(self.size_xyz))

    def corners(self) -> np.ndarray:
        """(8, 3) corners in the camera frame, Omni3D's bbox3D_cam order."""
        local = _CORNER_SIGNS * (self.size_xyz / 2.0)
        return local @ self.T_cam_obj[:3, :3].T + self.T_cam_obj[:3, 3]

    def halfspaces(self) -> np.ndarray:
        """(6, 4) rows [n, d] with n . p + d <= 0 inside the box (n unit normals, camera frame)."""
        R, c, h = self.T_cam_obj[:3, :3], self.T_cam_obj[:3, 3], self.size_xyz / 2.0
        rows = []
        for i in range(3):
            for s in (1.0, -1.0):
                n = s * R[:, i]
                rows.append(np.r_[n, -n @ c - h[i]])
        return np.asarray(rows)


def omni3d_size_xyz(dimensions: np.ndarray) -> np.ndarray:
    """Omni3D `dimensions` [width, height, length] -> extents along the object's x, y, z axes."""
    w, h, length = np.asarray(dimensions, dtype=np.float64).reshape(3)
    return np.array([length, h, w])


def omni3d_dimensions(size_xyz: np.ndarray) -> np.ndarray:
    """Extents along the object's x, y, z axes -> Omni3D `dimensions` [width, height, length]."""
    x, y, z = np.asarray(size_xyz, dtype=np.float64).reshape(3)
    return np.array([z, y, x])


def intersection_volume(a: Box3D, b: Box3D) -> float:
    """Exact volume (m^3) of the intersection of two oriented boxes."""
    if a.volume <= 0.0 or b.volume <= 0.0:
        return 0.0
    ra, rb = np.linalg.norm(a.size_xyz) / 2, np.linalg.norm(b.size_xyz) / 2
    if np.linalg.norm(a.centre - b.centre) >= ra + rb:  # bounding spheres apart
        return 0.0
    hs = np.vstack([a.halfspaces(), b.halfspaces()])
    normals, offsets = hs[:, :3], hs[:, 3]
    # Chebyshev centre: the point deepest inside both boxes; radius 0 means they only touch (or miss)
    res = linprog(c=[0.0, 0.0, 0.0, -1.0], A_ub=np.c_[normals, np.ones(len(hs))], b_ub=-offsets,
                  bounds=[(None, None)] * 3 + [(0.0, None)], method="highs")
    scale = min(a.size_xyz.min(), b.size_xyz.min())
    if res.status != 0 or res.x[3] <= 1e-9 * scale:
        return 0.0
    try:
        pts = HalfspaceIntersection(hs, res.x[:3]).intersections
        return float(ConvexHull(pts).volume)
    except QhullError:  # a sliver thinner than qhull resolves: no measurable overlap
        return 0.0


def box_iou_3d(a: Box3D, b: Box3D) -> float:
    """Intersection over union of two oriented boxes (0..1)."""
    inter = intersection_volume(a, b)
    union = a.volume + b.volume - inter
    return 0.0 if union <= 0.0 else float(min(1.0, inter / union))


def iou_matrix(preds: list[Box3D], gts: list[Box3D]) -> np.ndarray:
    """(len(preds), len(gts)) IoU matrix."""
    out = np.zeros((len(preds), len(gts)))
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            out[i, j] = box_iou_3d(p, g)
    return out
