"""EpisodeReader: the one reader of recorded episodes (replay node, trainer, dataset checks)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from posevla.dataset import format as F
from posevla.dataset.format import list_episodes, list_incomplete  # noqa: F401 (re-exported)
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ARM_NAMES, ArmState, CameraFrame, RobotState


@dataclass
class DatasetFrame:
    stamp_ns: int
    cameras: dict[str, CameraFrame]
    state: RobotState
    action: np.ndarray


class EpisodeReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._h = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as exc:
            raise ValueError(f"episode {self.path} cannot be opened: {exc}") from exc
        try:
            self.meta = json.loads(self._h.attrs.get("meta", "{}"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"episode {self.path}: attribute meta is not JSON: {exc}") from exc
        if "observations/qpos" not in self._h or "action" not in self._h:
            raise ValueError(f"episode {self.path}: missing observations/qpos or action")
        self.num_frames = int(self._h["observations/qpos"].shape[0])
        images = self._h.get("observations/images", {})
        self.camera_names = [F.CAMERA_NAMES.get(k, k) for k in images]
        self.intrinsics: dict[str, CameraIntrinsics] = {}
        self.depth_scale: dict[str, float] = {}
        for name in self.camera_names:
            key = F.CAMERA_KEYS.get(name, name)
            info = self._h.get(f"observations/camera_info/{key}")
            if info is None:
                raise ValueError(f"episode {self.path}: camera {name} has no camera_info")
            a = info.attrs
            self.intrinsics[name] = CameraIntrinsics.from_camera_info({
                "k": list(a["k"]), "d": list(a["d"]), "width": int(a["width"]), "height": int(a["height"]),
                "distortion_model": str(a["distortion_model"])})
            self.depth_scale[name] = float(a["depth_scale"])

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h.close()

    def raw_depth(self, camera: str, i: int) -> np.ndarray:
        return self._h[f"observations/depth/{F.CAMERA_KEYS.get(camera, camera)}"][i]

    def rgb(self, camera: str, i: int) -> np.ndarray:
        buf = self._h[f"observations/images/{F.CAMERA_KEYS.get(camera, camera)}"][i]
        bgr = cv2.imdecode(np.asarray(buf, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"episode {self.path}: frame {i} of camera {camera} is not a valid JPEG")
        return np.ascontiguousarray(bgr[..., ::-1])

    def camera_stamps(self, camera: str) -> np.ndarray:
        return self._h[f"stamps/{camera}"][:]

    def array(self, key: str) -> np.ndarray:
        return self._h[key][:]

    def frame(self, i: int) -> DatasetFrame:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1} of {self.path}")
        cams = {}
        for name in self.camera_names:
            depth = self.raw_depth(name, i).astype(np.float32) * np.float32(self.depth_scale[name])
            cams[name] = CameraFrame(name, self.rgb(name, i), depth, self.intrinsics[name],
                                     int(self._h[f"stamps/{name}"][i]), f"{name}_camera_color_optical_frame")
        qpos = self._h["observations/qpos"][i]
        robot_stamp = int(self._h["stamps/robot"][i])
        arms = {}
        for k, arm in enumerate(ARM_NAMES):
            tcp = self._h[f"observations/tcp_pose/{arm}"][i]
            if not np.all(np.isfinite(tcp)):
                continue
            arms[arm] = ArmState(se3.T_from_pos_quat(tcp[:3], tcp[3:]), qpos[k * 7:k * 7 + 6].copy(),
                                 float(qpos[k * 7 + 6]), robot_stamp)
        return DatasetFrame(int(self._h["stamps/frame"][i]), cams, RobotState(arms, robot_stamp),
                            self._h["action"][i].copy())

    def __iter__(self):
        for i in range(self.num_frames):
            yield self.frame(i)
