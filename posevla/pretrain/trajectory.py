"""Stage-2 targets: future TCP poses of each gripper projected into each camera, from the project's episodes.

For frame t of an episode and camera c (head, left_wrist, right_wrist), with the camera's capture stamp s:
    T_base_c   = the camera pose at s, from the calibration recorded in the episode (head: static T_base_head;
                 wrist: T_base_tcp(s) @ T_tcp_wrist), exactly as the trainer and the robot compute it;
    T_c_tcp(k) = inv(T_base_c) @ T_base_tcp(s + k * dt_s),  k = 1..horizon, for every arm
(TCP poses interpolated from the recorded feedback, slerp; past the end the last pose is held). The image is
camera c's frame through the robot's preprocessing; the answer lists each arm's poses in time order.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.dataset.reader import EpisodeReader
from posevla.geometry import se3
from posevla.model.batching import TrainingSample
from posevla.model.config import PoseVLAConfig
from posevla.model.pose_tokens import PoseTokenizer
from posevla.pretrain.records import ViewMaker
from posevla.pretrain.targets import TRAJECTORY_PROMPT, PretrainSample, observation, trajectory_answer
from posevla.training.episode_dataset import episode_calibrations, find_episodes
from posevla.types import ARM_NAMES, optical_frame


@dataclass
class _Episode:
    path: Path
    num_frames: int
    cameras: list[str]
    camera_to_base: CameraToBase
    histories: dict[str, PoseHistory]
    instruction: str


class EpisodeTrajectories:
    """(episode, frame, camera) -> trajectory samples. Opens episode files lazily, one reader per episode."""

    def __init__(self, paths: Sequence[str | Path], horizon: int = 10, dt_s: float = 0.1,
                 cameras: tuple[str, ...] | None = None, arms: tuple[str, ...] = ARM_NAMES,
                 name: str = "episodes", calibrations: dict[str, HandEyeCalibration] | None = None) -> None:
        """calibrations: {camera frame: calibration} for episodes that recorded none (e.g. imported from a public
        LeRobot dataset); an episode's own recorded calibration always wins."""
        if horizon < 1:
            raise ValueError(f"trajectory horizon={horizon} must be >= 1")
        if not dt_s > 0:
            raise ValueError(f"trajectory dt_s={dt_s} must be > 0")
        self.horizon, self.dt_s, self.arms, self.name = horizon, dt_s, tuple(arms), name
        self.episodes: list[_Episode] = []
        self.index: list[tuple[int, int, str]] = []
        self._readers: dict[int, EpisodeReader] = {}
        for path in find_episodes(paths):
            with EpisodeReader(path) as ep:
                stamps = ep.array("stamps/robot").astype(np.int64)
                histories = {}
                for arm in self.arms:
                    tcp = ep.array(f"observations/tcp_pose/{arm}")
                    if not np.all(np.isfinite(tcp)):
                        raise ValueError(f"episode {path}: observations/tcp_pose/{arm} has NaN poses (trajectory "
                                         "targets need the recorded end-effector poses)")
                    h = PoseHistory(max_len=len(tcp) + 1, tolerance_ns=10**18)  # holds the ends
                    for s, row in zip(stamps, tcp):
                        h.add(int(s), se3.T_from_pos_quat(row[:3], row[3:]))
                    histories[arm] = h
                cams = [c for c in ep.camera_names if cameras is None or c in cameras]
                if not cams:
                    raise ValueError(f"episode {path}: none of the cameras {cameras} (has {ep.camera_names})")
                e = len(self.episodes)
                if ep.meta.get("calibration") or not calibrations:
                    calib = episode_calibrations(ep)
                else:
                    calib = dict(calibrations)
                self.episodes.append(_Episode(path, ep.num_frames, cams, CameraToBase(calib, histories), histories,
                                              str(ep.meta.get("instruction", ""))))
                self.index += [(e, t, c) for t in range(ep.num_frames) for c in cams]

    def __len__(self) -> int:
        return len(self.index)

    def _reader(self, e: int) -> EpisodeReader:
        r = self._readers.get(e)
        if r is None:
            r = self._readers[e] = EpisodeReader(self.episodes[e].path)
        return r

    def future_poses(self, e: int, camera: str, stamp_ns: int) -> dict[str, np.ndarray]:
        """{arm: (horizon, 4, 4) T_cam_tcp} at stamp + k * dt_s, k = 1..horizon."""
        ep = self.episodes[e]
        T_cam_base = se3.invert_T(ep.camera_to_base.T_base_cam(optical_frame(camera), stamp_ns))
        times = stamp_ns + np.round(np.arange(1, self.horizon + 1) * self.dt_s * 1e9).astype(np.int64)
        return {arm: np.stack([T_cam_base @ ep.histories[arm].at(int(s)) for s in times]) for arm in self.arms}

    def sample(self, i: int, cfg: PoseVLAConfig, tok: PoseTokenizer, views: ViewMaker) -> PretrainSample:
        e, t, camera = self.index[i]
        frame = self._reader(e).frame(t).cameras[camera]
        view = views.model_view(frame.rgb, frame.depth, frame.intrinsics)
        answer = trajectory_answer(self.future_poses(e, camera, frame.stamp_ns), tok)
        prompt = TRAJECTORY_PROMPT.format(instruction=self.episodes[e].instruction).strip()
        return PretrainSample(TrainingSample(observation(view, prompt, cfg), pose_text=answer), self.name,
                              image_id=f"{self.episodes[e].path.name}:{t}:{camera}")

    def translations(self, max_samples: int = 2000, seed: int = 0) -> np.ndarray:
        """(N, 3) camera-frame TCP positions of a sample of targets (for fitting bins), no image decoded."""
        rng = np.random.default_rng(seed)
        out, stamps = [], {}
        for i in rng.permutation(len(self.index))[:max_samples]:
            e, t, camera = self.index[int(i)]
            if (e, camera) not in stamps:
                stamps[e, camera] = self._reader(e).camera_stamps(camera)
            stamp = int(stamps[e, camera][t])
            for T in self.future_poses(e, camera, stamp).values():
                out.append(T[:, :3, 3])
        return np.concatenate(out) if out else np.zeros((0, 3))

    def indices(self, rng: np.random.Generator, rank: int = 0, world: int = 1) -> Iterator[int]:
        """This rank's sample indices in a fresh random order, forever."""
        share = np.arange(rank, len(self.index), world)
        while True:
            yield from (int(i) for i in rng.permutation(share))

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
