"""Plain data types passed between capture, observation building, the model and the executor.

Conventions (see README "Frames and units"): metres, radians, seconds; stamps are integer
nanoseconds of ROS time at *capture*; `T_a_b` is a 4x4 matrix mapping frame b to frame a;
quaternions are xyzw; camera frames are optical (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics

ARM_NAMES: tuple[str, str] = ("left", "right")
VIEW_NAMES: tuple[str, str, str] = ("head", "left_wrist", "right_wrist")


def optical_frame(view: str) -> str:
    """ROS frame id of a view's color optical frame, e.g. 'head' -> 'head_camera_color_optical_frame'."""
    return f"{view}_camera_color_optical_frame"


@dataclass
class CameraFrame:
    """One camera's RGB-D as captured (before model preprocessing).

    rgb: HxWx3 uint8; depth: HxW float32 metres aligned to color (0 = invalid) or None.
    """

    name: str
    rgb: np.ndarray
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics
    stamp_ns: int
    frame_id: str


@dataclass
class ArmState:
    """One arm at one instant. T_base_tcp: 4x4 (base_link <- tcp), joints: (6,) rad, gripper: opening 0..1."""

    T_base_tcp: np.ndarray
    joints: np.ndarray
    gripper: float
    stamp_ns: int


@dataclass
class RobotState:
    arms: dict[str, ArmState]
    stamp_ns: int


@dataclass
class ModelView:
    """A view as the model sees it (after resize/crop/pad).

    rgb: SxSx3 uint8; raymap: SxSx3 float32 (K^-1 [u,v,1] at pixel centres); depth_prior: SxSx2 float32
    ([depth metres, valid mask]) or None when the view has no depth. intrinsics: K of *this* image.
    T_base_cam: camera pose in base_link at capture time (4x4) when known.
    """

    name: str
    rgb: np.ndarray
    raymap: np.ndarray
    depth_prior: np.ndarray | None
    intrinsics: CameraIntrinsics
    frame_id: str
    stamp_ns: int
    T_base_cam: np.ndarray | None = None


@dataclass
class Observation:
    """Everything one policy call needs. `views` is ordered (head first); `state` is in base_link."""

    views: dict[str, ModelView]
    state: RobotState | None
    instruction: str
    stamp_ns: int
    meta: dict = field(default_factory=dict)


@dataclass
class ArmChunk:
    """Target TCP poses of one arm: T (N,4,4) = T_frame_tcp for each step; gripper (N,) opening 0..1."""

    T: np.ndarray
    gripper: np.ndarray


@dataclass
class ActionChunk:
    """A chunk of end-effector targets. Point k is meant for time stamp_ns + k*dt (stamp = observation capture)."""

    frame_id: str
    stamp_ns: int
    dt: float
    arms: dict[str, ArmChunk]

    @property
    def length(self) -> int:
        return next(iter(self.arms.values())).T.shape[0] if self.arms else 0
