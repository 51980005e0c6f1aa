"""Exact crop -> resize -> pad plans applied identically to RGB, depth and intrinsics.

RGB is resampled with area/bilinear filtering; depth with nearest neighbour only (each output pixel
copies exactly one input pixel, so valid and invalid depth never mix). Pixel convention as in
`posevla.geometry.intrinsics` (pixel centres at integer coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics


@dataclass(frozen=True)
class ViewTransform:
    """Crop (x0, y0, crop_w, crop_h) of a src_w x src_h image, resize to resize_w x resize_h, then pad."""

    src_w: int
    src_h: int
    crop: tuple[int, int, int, int]
    resize_w: int
    resize_h: int
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, right, bottom

    def __post_init__(self) -> None:
        x0, y0, w, h = self.crop
        if x0 < 0 or y0 < 0 or w <= 0 or h <= 0 or x0 + w > self.src_w or y0 + h > self.src_h:
            raise ValueError(f"crop {self.crop} is outside the {self.src_w}x{self.src_h} image")
        if self.resize_w <= 0 or self.resize_h <= 0:
            raise ValueError(f"resize {self.resize_w}x{self.resize_h} must be positive")
        if min(self.pad) < 0:
            raise ValueError(f"pad {self.pad} must be >= 0")

    @property
    def out_w(self) -> int:
        return self.resize_w + self.pad[0] + self.pad[2]

    @property
    def out_h(self) -> int:
        return self.resize_h + self.pad[1] + self.pad[3]

    # ------------------------------------------------------------------ intrinsics
    def apply_intrinsics(self, intr: CameraIntrinsics) -> CameraIntrinsics:
        if (intr.width, intr.height) != (self.src_w, self.src_h):
            raise ValueError(f"intrinsics are for {intr.width}x{intr.height} but this transform expects "
                             f"{self.src_w}x{self.src_h}")
        x0, y0, w, h = self.crop
        return intr.cropped(x0, y0, w, h).resized(self.resize_w, self.resize_h).padded(*self.pad)

    # ------------------------------------------------------------------ images
    def _check(self, img: np.ndarray, what: str) -> None:
        if img.ndim < 2 or img.shape[0] != self.src_h or img.shape[1] != self.src_w:
            raise ValueError(f"{what} has shape {img.shape}, expected ({self.src_h}, {self.src_w}, ...)")

    def _cropped(self, img: np.ndarray) -> np.ndarray:
        x0, y0, w, h = self.crop
        return img[y0:y0 + h, x0:x0 + w]

    def apply_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> out_h x out_w x 3 uint8 (area filter when shrinking, bilinear when growing; pad black)."""
        self._check(rgb, "rgb image")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"rgb image must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
        img = self._cropped(rgb)
        if img.shape[1] != self.resize_w or img.shape[0] != self.resize_h:
            shrink = self.resize_w < img.shape[1] and self.resize_h < img.shape[0]
            img = cv2.resize(np.ascontiguousarray(img), (self.resize_w, self.resize_h),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if any(self.pad):
            left, top, right, bottom = self.pad
            img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return np.ascontiguousarray(img)

    @cached_property
    def _nearest_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Source row/col of each resized pixel: the source pixel containing the output pixel's centre."""
        x0, y0, w, h = self.crop
        cols = np.minimum(((np.arange(self.resize_w) + 0.5) * (w / self.resize_w)).astype(np.intp), w - 1) + x0
        rows = np.minimum(((np.arange(self.resize_h) + 0.5) * (h / self.resize_h)).astype(np.intp), h - 1) + y0
        return rows, cols

    def apply_depth(self, depth: np.ndarray) -> np.ndarray:
        """HxW depth (any dtype; 0 = invalid) -> out_h x out_w, nearest neighbour, pad with 0 (invalid)."""
        self._check(depth, "depth image")
        if depth.ndim != 2:
            raise ValueError(f"depth image must be HxW, got shape {depth.shape}")
        rows, cols = self._nearest_index
        left, top, right, bottom = self.pad
        out = np.zeros((self.out_h, self.out_w), dtype=depth.dtype)
        out[top:top + self.resize_h, left:left + self.resize_w] = depth[rows[:, None], cols[None, :]]
        return out


def plan_resize_with_pad(src_w: int, src_h: int, out_w: int, out_h: int) -> ViewTransform:
    """Keep the whole image, scale it to fit out_w x out_h with the aspect ratio kept, pad (centred) the rest."""
    scale = min(out_w / src_w, out_h / src_h)
    rw, rh = max(1, min(out_w, round(src_w * scale))), max(1, min(out_h, round(src_h * scale)))
    pw, ph = out_w - rw, out_h - rh
    return ViewTransform(src_w, src_h, (0, 0, src_w, src_h), rw, rh, (pw // 2, ph // 2, pw - pw // 2, ph - ph // 2))


def plan_region_resize_with_pad(src_w: int, src_h: int, region: tuple[float, float, float, float], out_w: int,
                                out_h: int) -> ViewTransform:
    """Crop the region [x0, y0, x1, y1] (fractions of the image width and height, rounded to whole pixels), scale
    it to fit out_w x out_h with its aspect ratio kept, pad (centred) the rest."""
    x0, y0, x1, y1 = region
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"crop region {list(region)} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    px0, py0 = int(round(x0 * src_w)), int(round(y0 * src_h))
    cw, ch = max(1, int(round(x1 * src_w)) - px0), max(1, int(round(y1 * src_h)) - py0)
    scale = min(out_w / cw, out_h / ch)
    rw, rh = max(1, min(out_w, round(cw * scale))), max(1, min(out_h, round(ch * scale)))
    pw, ph = out_w - rw, out_h - rh
    return ViewTransform(src_w, src_h, (px0, py0, cw, ch), rw, rh, (pw // 2, ph // 2, pw - pw // 2, ph - ph // 2))


def plan_center_crop_resize(src_w: int, src_h: int, out_w: int, out_h: int) -> ViewTransform:
    """Crop the largest centred region with the output's aspect ratio, then resize it to out_w x out_h."""
    scale = min(src_w / out_w, src_h / out_h)
    cw, ch = min(src_w, round(out_w * scale)), min(src_h, round(out_h * scale))
    return ViewTransform(src_w, src_h, ((src_w - cw) // 2, (src_h - ch) // 2, cw, ch), out_w, out_h)


def plan(mode: str, src_w: int, src_h: int, out_w: int, out_h: int) -> ViewTransform:
    """Named plans: 'resize_with_pad' (default for the model, keeps the full field of view) or 'center_crop'."""
    if mode == "resize_with_pad":
        return plan_resize_with_pad(src_w, src_h, out_w, out_h)
    if mode == "center_crop":
        return plan_center_crop_resize(src_w, src_h, out_w, out_h)
    raise ValueError(f"unknown resize mode {mode!r} (expected 'resize_with_pad' or 'center_crop')")
