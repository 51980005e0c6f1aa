"""Realistic synthetic RGB-D camera streams for the dataset benchmark and tests.

The ray-cast tabletop (`posevla.tools.synthetic_scene`) gives geometry; on top of it this adds what makes
real streams hard to compress, so that sizes measured on it mean something:
- a texture fixed to the world (cloth/wood-like grain on the table and objects, 3 mm cells), which moves
  with the scene as the camera moves;
- colour sensor noise (Gaussian, sigma 1.5 grey levels per channel);
- depth noise of a RealSense stereo camera: RMS z^2 * subpixel / (f * baseline) with the D455/D405 spec
  subpixel RMS 0.08 px, spatially correlated over the stereo matching window (blurred over ~2 px, re-scaled
  to the same RMS), quantised to `depth_scale` (1 mm), with invalid (0) pixels in small clusters (~1 %).
Depth is uint16 in `depth_scale` units (raw camera format); colour RGB uint8 HxWx3.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.raymap import raymap
from posevla.tools.synthetic_scene import TabletopScene

# base_link <- camera optical frame of the shipped simulated head camera (calibration/head_camera.yaml)
T_BASE_HEAD = np.array([[0.0, -0.766044443119, 0.642787609687, -0.25],
                        [-1.0, 0.0, 0.0, 0.0],
                        [0.0, -0.642787609687, -0.766044443119, 0.7],
                        [0.0, 0.0, 0.0, 1.0]])
SUBPIXEL_RMS = 0.08  # RealSense D4xx depth RMS error spec, in disparity pixels
BASELINE_M = {"head": 0.095, "left_wrist": 0.018, "right_wrist": 0.018}  # D455, D405


@dataclass
class StreamConfig:
    width: int = 640
    height: int = 480
    fps: float = 30.0
    depth_scale: float = 0.001  # metres per depth unit
    colour_noise: float = 1.5  # grey levels (sigma)
    hole_fraction: float = 0.01


def camera_poses(name: str, t: float) -> np.ndarray:
    """T_base_cam of camera `name` at time t (s): the head sways by a few cm, wrists move over the table."""
    T = T_BASE_HEAD.copy()
    if name == "head":
        T[:3, 3] += [0.03 * np.sin(t), 0.02 * np.sin(0.7 * t), 0.0]
        return T
    side = 1.0 if name == "left_wrist" else -1.0
    # a wrist camera looking down at the table from 0.35 m, moving slowly
    c, s = np.cos(0.2 * t), np.sin(0.2 * t)
    R = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = [0.35 + 0.05 * np.sin(0.5 * t), side * (0.12 + 0.03 * np.sin(0.3 * t)), 0.35]
    return T


class SyntheticRGBD:
    """Frame generator for one camera; `frames(n)` yields (rgb, depth_raw) pairs at cfg.fps."""

    def __init__(self, name: str, cfg: StreamConfig = StreamConfig(), seed: int = 0) -> None:
        self.name, self.cfg = name, cfg
        s = cfg.width / 640.0
        f = 386.0 if name == "head" else 433.0
        self.intrinsics = CameraIntrinsics(f * s, f * s, (cfg.width - 1) / 2, (cfg.height - 1) / 2, cfg.width, cfg.height)
        self.scene = TabletopScene.default()
        self.rng = np.random.default_rng(seed)
        grain = self.rng.normal(0, 1, (1024, 1024)).astype(np.float32)
        self.texture = cv2.GaussianBlur(grain, (0, 0), 2.0) * 3.0  # world texture, 3 mm cells, ~unit RMS
        self.rays = raymap(self.intrinsics).reshape(-1, 3)
        self._banks: dict[str, list[np.ndarray]] = {}

    def clean(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free textured colour (float32 HxWx3, 0..255) and depth (float32 HxW metres, 0 = no hit) at t (s)."""
        cfg = self.cfg
        T = camera_poses(self.name, t)
        rgb, depth = self.scene.render(T, self.intrinsics)
        p = (self.rays * depth.reshape(-1, 1)) @ T[:3, :3].T + T[:3, 3]  # hit points in base_link
        ij = ((p[:, :2] + 1.5) / 0.003).astype(np.int64) % self.texture.shape[0]
        tex = self.texture[ij[:, 0], ij[:, 1]].reshape(cfg.height, cfg.width)
        return (rgb * (1.0 + 0.12 * tex)[..., None]).astype(np.float32), depth

    def _noise(self, kind: str, shape: tuple[int, ...], make) -> np.ndarray:
        """A fresh-looking noise field: one of a few pre-drawn fields, shifted by a random offset (cheap)."""
        bank = self._banks.get(kind)
        if bank is None:
            bank = self._banks[kind] = [make() for _ in range(4)]
        field = bank[int(self.rng.integers(len(bank)))]
        return np.roll(field, (int(self.rng.integers(shape[0])), int(self.rng.integers(shape[1]))), axis=(0, 1))

    def sensor(self, colour: np.ndarray, depth_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the camera delivers from a clean frame: (rgb uint8 HxWx3, depth uint16 HxW in depth_scale units)."""
        cfg, rng = self.cfg, self.rng
        noise = self._noise("colour", colour.shape, lambda: rng.normal(0, cfg.colour_noise, colour.shape).astype(np.float32))
        rgb = np.clip(colour + noise, 0, 255).astype(np.uint8)

        def correlated() -> np.ndarray:  # correlated over the stereo matching window, unit RMS
            white = cv2.GaussianBlur(rng.normal(0, 1, depth_m.shape).astype(np.float32), (0, 0), 1.0)
            return white / (white.std() + 1e-12)
        sigma = depth_m ** 2 * np.float32(SUBPIXEL_RMS / (self.intrinsics.fx * BASELINE_M.get(self.name, 0.05)))
        d = np.where(depth_m > 0, np.round((depth_m + sigma * self._noise("depth", depth_m.shape, correlated))
                                           / cfg.depth_scale), 0)
        holes = self._noise("holes", depth_m.shape, lambda: cv2.dilate(
            (rng.random(depth_m.shape) < cfg.hole_fraction / 9).astype(np.uint8), np.ones((3, 3), np.uint8)))
        d[holes > 0] = 0  # invalid pixels in 3x3 clusters
        return rgb, d.clip(0, 65535).astype(np.uint16)

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, depth uint16 HxW in depth_scale units) at time t (s)."""
        return self.sensor(*self.clean(t))

    def frames(self, n: int, unique: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """n frames at cfg.fps; with `unique`, only that many scene renders are made and played back and forth
        (each frame still gets fresh sensor noise), which keeps long benchmark episodes cheap to generate."""
        unique = n if unique is None else max(1, min(unique, n))
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        period = max(1, 2 * unique - 2)
        for k in range(n):
            j = k % period
            j = j if j < unique else period - j
            if j not in cache:
                cache[j] = self.clean(j / self.cfg.fps)
            yield self.sensor(*cache[j])
