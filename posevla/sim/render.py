"""Headless RGB + aligned depth from the twin's cameras, with the pinhole intrinsics that match them.

One OpenGL context per process (EGL or OSMesa, chosen by MUJOCO_GL, see `posevla.sim`); create the
renderer on the thread that renders. One pass per camera reads colour and depth together. Depth is the
distance along the optical axis in metres (float32); pixels that see no geometry read the far plane and
become 0 (invalid), as the stack's depth convention says. Intrinsics follow from the vertical field of view:
fy = (H/2) / tan(fovy/2), fx = fy, cx = (W-1)/2, cy = (H-1)/2 (pixel centres at integer coordinates).
"""
from __future__ import annotations

import importlib
import math
import os

import numpy as np

import posevla.sim  # noqa: F401  (sets MUJOCO_GL before mujoco loads)

import mujoco  # isort: skip

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.sim.world import TwinWorld


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> CameraIntrinsics:
    fy = (height / 2.0) / math.tan(math.radians(fovy_deg) / 2.0)
    return CameraIntrinsics(fy, fy, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def _gl_context_class():
    """The GL context of MUJOCO_GL (egl | osmesa | glfw), even when mujoco was imported before it was set."""
    backend = os.environ.get("MUJOCO_GL", "egl").lower()
    if backend not in ("egl", "osmesa", "glfw"):
        raise ValueError(f"MUJOCO_GL={backend!r}: expected egl, osmesa or glfw")
    return importlib.import_module(f"mujoco.{backend}").GLContext


class TwinRenderer:
    """Renders named cameras of a `TwinWorld` at width x height (at most 1280 x 960)."""

    def __init__(self, world: TwinWorld, width: int, height: int) -> None:
        m = world.model
        if not (8 <= width <= m.vis.global_.offwidth and 8 <= height <= m.vis.global_.offheight):
            raise ValueError(f"image size {width}x{height} must lie within 8x8 .. "
                             f"{m.vis.global_.offwidth}x{m.vis.global_.offheight}")
        self.world, self.width, self.height = world, int(width), int(height)
        self._gl = _gl_context_class()(m.vis.global_.offwidth, m.vis.global_.offheight)
        self._gl.make_current()
        self._con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scene = mujoco.MjvScene(m, maxgeom=2000)
        self._opt = mujoco.MjvOption()
        self._pert = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._depth = np.empty((self.height, self.width), np.float32)
        extent = float(m.stat.extent)
        self._near, self._far = float(m.vis.map.znear) * extent, float(m.vis.map.zfar) * extent
        self.camera_ids = {m.camera(i).name: i for i in range(m.ncam)}

    def intrinsics(self, camera: str) -> CameraIntrinsics:
        return intrinsics_from_fovy(float(self.world.model.cam_fovy[self.camera_ids[camera]]), self.width, self.height)

    def render(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, depth float32 HxW metres, 0 = no geometry) of the current physics state."""
        if camera not in self.camera_ids:
            raise ValueError(f"camera {camera!r} is not in the twin (has {sorted(self.camera_ids)})")
        self._cam.fixedcamid = self.camera_ids[camera]
        with self.world.lock:
            mujoco.mjv_updateScene(self.world.model, self.world.data, self._opt, self._pert, self._cam,
                                   mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._con)
        mujoco.mjr_readPixels(self._rgb, self._depth, self._rect, self._con)
        rgb = np.flipud(self._rgb).copy()  # OpenGL rows start at the bottom
        d = np.flipud(self._depth)
        near, far = self._near, self._far
        depth = (near / (1.0 - d * (1.0 - near / far))).astype(np.float32)
        depth[d >= 1.0 - 1e-7] = 0.0
        return rgb, depth

    def close(self) -> None:
        self._con.free()
        self._gl.free()
