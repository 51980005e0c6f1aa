"""Annotated images as every reader yields them, and their conversion to what the model sees.

`AnnotatedImage` holds paths (pixels are read only when a sample is made), the source image's intrinsics and
the objects as oriented boxes in the camera optical frame. `model_view()` sends the image through the
robot's own preprocessing (`ObservationBuilder.view`: resize-with-pad, intrinsics updated exactly, raymap
of the model image, depth prior [D, M] from dataset depth or none when the dataset has no depth, so that
modality is masked), and `model_pixel()` maps a source pixel to the model image with the same affine map
(K_model @ K_src^-1), so 2D box centres and raymaps mean the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder
from posevla.pretrain.boxes import Box3D
from posevla.types import CameraFrame, ModelView, optical_frame


@dataclass
class Object3D:
    """One annotated object: category name, its oriented 3D box in the camera frame, optional 2D box
    (x1, y1, x2, y2) in source-image pixels (pixel centres at integer coordinates)."""

    category: str
    box: Box3D
    box2d: tuple[float, float, float, float] | None = None

    @property
    def distance_m(self) -> float:
        return float(np.linalg.norm(self.box.centre))


@dataclass
class AnnotatedImage:
    source: str
    image_id: str
    intrinsics: CameraIntrinsics  # of the image file as stored
    rgb_path: Path
    objects: list[Object3D]
    depth_path: Path | None = None
    depth_scale_m: float = 0.001  # metres per depth unit
    categories: tuple[str, ...] = ()  # every category of the source (for "no object" questions)
    meta: dict = field(default_factory=dict)

    def load_rgb(self) -> np.ndarray:
        bgr = cv2.imread(str(self.rgb_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{self.source}: image {self.rgb_path} cannot be read")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        self.intrinsics.check_image(rgb.shape, f"{self.source}: image {self.rgb_path}")
        return rgb

    def load_depth(self) -> np.ndarray | None:
        """Float32 metres (0 = invalid) or None when the source has no depth."""
        if self.depth_path is None:
            return None
        raw = cv2.imread(str(self.depth_path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"{self.source}: depth image {self.depth_path} cannot be read")
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise ValueError(f"{self.source}: depth image {self.depth_path} must be single-channel uint16, "
                             f"got shape {raw.shape} {raw.dtype}")
        self.intrinsics.check_image(raw.shape, f"{self.source}: depth image {self.depth_path}")
        return raw.astype(np.float32) * np.float32(self.depth_scale_m)


class ViewMaker:
    """Source images -> ModelView through the robot's ObservationBuilder (one plan cache per image size)."""

    def __init__(self, image_size: int, view_name: str = "head", max_depth_m: float = 10.0) -> None:
        self.view_name = view_name
        self.builder = ObservationBuilder(BuilderConfig(image_size=image_size, max_depth_m=max_depth_m,
                                                        reference_view=view_name))

    def model_view(self, rgb: np.ndarray, depth_m: np.ndarray | None, intr: CameraIntrinsics) -> ModelView:
        frame = CameraFrame(self.view_name, rgb, depth_m, intr, 0, optical_frame(self.view_name))
        view = self.builder.view(frame)
        view.T_base_cam = np.eye(4)  # no robot: the camera frame is the only frame
        return view

    def __call__(self, img: AnnotatedImage) -> ModelView:
        return self.model_view(img.load_rgb(), img.load_depth(), img.intrinsics)


def model_pixel(uv_src: np.ndarray, src: CameraIntrinsics, model: CameraIntrinsics) -> np.ndarray:
    """(..., 2) source-image pixel coordinates -> model-image pixel coordinates (crop/resize/pad are affine in
    pixels and K_model = A @ K_src, so A = K_model @ K_src^-1)."""
    A = model.K @ src.K_inv
    uv = np.asarray(uv_src, dtype=np.float64)
    return uv @ A[:2, :2].T + A[:2, 2]


def normalised_centre(uv_model: np.ndarray, model: CameraIntrinsics) -> tuple[float, float]:
    """Model-image pixel coordinates -> PaliGemma's normalised [0, 1) coordinates (pixel i spans [i-0.5, i+0.5))."""
    u, v = np.asarray(uv_model, dtype=np.float64)
    return float((u + 0.5) / model.width), float((v + 0.5) / model.height)


def object_centre_pixel(obj: Object3D, intr: CameraIntrinsics) -> np.ndarray:
    """The object's 2D box centre in source pixels: from its 2D box when annotated, else its projected 3D centre."""
    if obj.box2d is not None:
        x1, y1, x2, y2 = obj.box2d
        return np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    c = obj.box.centre
    return np.array([intr.fx * c[0] / c[2] + intr.cx, intr.fy * c[1] / c[2] + intr.cy])
