"""A tiny ray-cast tabletop scene for demos and tests: RGB-D images seen from any camera pose.

World frame = base_link: origin on the table surface between the arms, x forward, y left, z up
(metres). The table is the plane z = 0 with a checker texture; objects are axis-aligned boxes.
Images follow the stack's conventions: RGB uint8 HxWx3, depth float32 metres along the optical z axis
(0 where nothing is hit), pixel (i, j) centred at (u, v) = (i, j).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.raymap import raymap


@dataclass
class Box:
    """Axis-aligned box in base_link: centre (3,) and size (3,) in metres, colour RGB 0..255."""

    centre: np.ndarray
    size: np.ndarray
    colour: tuple[int, int, int]


@dataclass
class TabletopScene:
    boxes: list[Box] = field(default_factory=list)
    table_extent: float = 1.5  # metres from the origin in x and y
    checker: float = 0.1  # checker square size, metres

    @classmethod
    def default(cls) -> TabletopScene:
        return cls(boxes=[Box(np.array([0.35, 0.10, 0.03]), np.array([0.06, 0.06, 0.06]), (220, 40, 40)),
                          Box(np.array([0.40, -0.15, 0.02]), np.array([0.10, 0.05, 0.04]), (40, 90, 220))])

    def render(self, T_base_cam: np.ndarray, intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
        """RGB (HxWx3 uint8) and depth (HxW float32 metres, optical z) seen by a camera at T_base_cam."""
        rays_cam = raymap(intr).reshape(-1, 3).astype(np.float64)  # z = 1: t along the ray is the depth
        R, o = T_base_cam[:3, :3], T_base_cam[:3, 3]
        d = rays_cam @ R.T
        n = d.shape[0]
        t_best = np.full(n, np.inf)
        rgb = np.zeros((n, 3), np.uint8)
        rgb[:] = (135, 170, 200)  # background "wall"
        # table plane z = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t_plane = -o[2] / d[:, 2]
        hit = (t_plane > 0) & np.isfinite(t_plane)
        p = o + t_plane[:, None] * d
        hit &= (np.abs(p[:, 0]) < self.table_extent) & (np.abs(p[:, 1]) < self.table_extent)
        t_best[hit] = t_plane[hit]
        parity = (np.floor(p[:, 0] / self.checker) + np.floor(p[:, 1] / self.checker)) % 2
        rgb[hit] = np.where(parity[hit, None] > 0, (200, 190, 170), (150, 140, 120)).astype(np.uint8)
        for box in self.boxes:
            lo, hi = box.centre - box.size / 2, box.centre + box.size / 2
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = (lo - o) / d, (hi - o) / d
            t_near = np.nanmax(np.minimum(t1, t2), axis=1)
            t_far = np.nanmin(np.maximum(t1, t2), axis=1)
            box_hit = (t_near <= t_far) & (t_near > 0) & (t_near < t_best)
            t_best[box_hit] = t_near[box_hit]
            # shade by which face was hit, so edges are visible
            q = o + t_near[box_hit, None] * d[box_hit]
            face = np.argmin(np.minimum(np.abs(q - lo), np.abs(q - hi)), axis=1)
            shade = np.array([0.8, 0.65, 1.0])[face]
            rgb[box_hit] = (np.array(box.colour)[None, :] * shade[:, None]).astype(np.uint8)
        depth = np.where(np.isfinite(t_best), t_best, 0.0).astype(np.float32)
        return rgb.reshape(intr.height, intr.width, 3), depth.reshape(intr.height, intr.width)
