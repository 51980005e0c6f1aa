"""Pinhole camera intrinsics and their exact update under resize, crop and pad.

Pixel convention: pixel (i, j) has its centre at (u, v) = (i, j) (OpenCV, ROS CameraInfo, librealsense).
A resize by scale s maps the continuous coordinate u to s * (u + 0.5) - 0.5, so
fx' = s fx and cx' = s (cx + 0.5) - 0.5. A crop at (x0, y0) shifts cx' = cx - x0; a pad of
`left` pixels shifts cx' = cx + left. The same holds for y with fy, cy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

KNOWN_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant", "none",
                           "inverse_brown_conrady", "brown_conrady", "kannala_brandt4")

# How far outside the image the principal point may lie (as a fraction of the size) before we call it wrong.
_PRINCIPAL_POINT_MARGIN = 0.5


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of one image: focal lengths and principal point in pixels, image size in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = field(default=(0.0, 0.0, 0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
                raise ValueError(f"intrinsics field {name}={value!r} must be a finite number")
        for name in ("width", "height"):
            value = getattr(self, name)
            if int(value) != value or int(value) <= 0:
                raise ValueError(f"intrinsics field {name}={value!r} must be a positive integer")
        if self.fx <= 0:
            raise ValueError(f"intrinsics field fx={self.fx} must be > 0 (focal length in pixels)")
        if self.fy <= 0:
            raise ValueError(f"intrinsics field fy={self.fy} must be > 0 (focal length in pixels)")
        mx, my = _PRINCIPAL_POINT_MARGIN * self.width, _PRINCIPAL_POINT_MARGIN * self.height
        if not (-mx <= self.cx <= self.width + mx):
            raise ValueError(f"intrinsics field cx={self.cx} is far outside the image (width {self.width})")
        if not (-my <= self.cy <= self.height + my):
            raise ValueError(f"intrinsics field cy={self.cy} is far outside the image (height {self.height})")
        if not all(math.isfinite(float(d)) for d in self.distortion):
            raise ValueError(f"intrinsics field distortion={self.distortion!r} has a non-finite value")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "distortion", tuple(float(d) for d in self.distortion))

    # ---------------------------------------------------------------- construction
    @property
    def K(self) -> np.ndarray:
        """3x3 camera matrix (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def K_inv(self) -> np.ndarray:
        return np.array([[1.0 / self.fx, 0.0, -self.cx / self.fx], [0.0, 1.0 / self.fy, -self.cy / self.fy],
                         [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K: Sequence[Sequence[float]] | np.ndarray, width: int, height: int, **kw: Any) -> CameraIntrinsics:
        K = np.asarray(K, dtype=float)
        if K.shape != (3, 3):
            raise ValueError(f"intrinsics field K has shape {K.shape}, expected (3, 3)")
        if abs(K[0, 1]) > 1e-9 or abs(K[1, 0]) > 1e-9 or np.any(np.abs(K[2] - [0, 0, 1]) > 1e-9):
            raise ValueError(f"intrinsics field K={K.tolist()} is not a pinhole matrix [[fx,0,cx],[0,fy,cy],[0,0,1]]")
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), width, height, **kw)

    @classmethod
    def from_camera_info(cls, info: Mapping[str, Any]) -> CameraIntrinsics:
        """From a sensor_msgs/CameraInfo-like mapping (keys k, d, width, height, distortion_model; K/D accepted)."""
        k = info.get("k", info.get("K"))
        if k is None:
            raise ValueError("camera_info field k is missing")
        k = np.asarray(k, dtype=float).reshape(-1)
        if k.size != 9:
            raise ValueError(f"camera_info field k has {k.size} values, expected 9")
        for key in ("width", "height"):
            if key not in info:
                raise ValueError(f"camera_info field {key} is missing")
        d = info.get("d", info.get("D", ())) or ()
        model = info.get("distortion_model") or ("plumb_bob" if len(d) else "none")
        return cls.from_K(k.reshape(3, 3), int(info["width"]), int(info["height"]),
                          distortion_model=str(model), distortion=tuple(float(x) for x in d))

    def to_camera_info(self) -> dict[str, Any]:
        """The sensor_msgs/CameraInfo fields (ROS names) as a plain dict."""
        p = [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return {"width": self.width, "height": self.height, "distortion_model": self.distortion_model,
                "d": list(self.distortion), "k": self.K.reshape(-1).tolist(),
                "r": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "p": p}

    @classmethod
    def from_realsense(cls, intr: Any) -> CameraIntrinsics:
        """From a `pyrealsense2.intrinsics` (fx, fy, ppx, ppy, width, height, model, coeffs)."""
        model_name = str(getattr(intr, "model", "none")).split(".")[-1].lower()
        ros_model = {"brown_conrady": "plumb_bob", "none": "plumb_bob", "inverse_brown_conrady": "plumb_bob",
                     "modified_brown_conrady": "plumb_bob", "kannala_brandt4": "equidistant",
                     "ftheta": "equidistant"}.get(model_name, model_name)
        return cls(float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy), int(intr.width),
                   int(intr.height), distortion_model=ros_model, distortion=tuple(float(c) for c in intr.coeffs))

    # ---------------------------------------------------------------- exact updates
    def resized(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of this image resized (edge-aligned, like cv2.resize) to width x height."""
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"resize target {width}x{height} must be positive")
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=sx * (self.cx + 0.5) - 0.5,
                       cy=sy * (self.cy + 0.5) - 0.5, width=int(width), height=int(height))

    def cropped(self, x0: int, y0: int, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the crop [x0, x0+width) x [y0, y0+height), which must lie inside the image."""
        if x0 < 0 or y0 < 0 or width <= 0 or height <= 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(f"crop (x0={x0}, y0={y0}, width={width}, height={height}) is outside the "
                             f"{self.width}x{self.height} image")
        return replace(self, cx=self.cx - x0, cy=self.cy - y0, width=int(width), height=int(height))

    def padded(self, left: int, top: int, right: int, bottom: int) -> CameraIntrinsics:
        """Intrinsics after padding the image with the given number of pixels on each side."""
        if min(left, top, right, bottom) < 0:
            raise ValueError(f"pad (left={left}, top={top}, right={right}, bottom={bottom}) must be >= 0")
        return replace(self, cx=self.cx + left, cy=self.cy + top, width=self.width + left + right,
                       height=self.height + top + bottom)

    def check_image(self, shape: tuple[int, ...], what: str = "image") -> None:
        """Raise ValueError when an image of `shape` (H, W, ...) does not match these intrinsics."""
        if len(shape) < 2 or shape[0] != self.height or shape[1] != self.width:
            raise ValueError(f"{what} has shape {tuple(shape)} but camera_info says {self.width}x{self.height}")
