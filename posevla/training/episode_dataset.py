"""Recorded episodes -> training samples for flow-matching post-training.

Sample (episode e, frame t): the observation is built from the recorded frames by the same
ObservationBuilder the ROS observation node uses, with camera poses from the calibration copied into the
episode (so a later re-calibration never silently changes old data). The target is the chunk of future TCP
poses at t_obs + k * control_dt, k = 0..chunk_length-1, interpolated from the recorded feedback (slerp) and
expressed in the reference camera's optical frame, T_ref_tcp = inv(T_base_ref) @ T_base_tcp, plus the
gripper opening; past the end of the episode the last pose is held (the arm is at rest).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial.transform import Rotation, Slerp

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.dataset import format as F
from posevla.dataset.reader import EpisodeReader
from posevla.geometry import se3
from posevla.model.batching import TrainingSample
from posevla.model.config import PoseVLAConfig
from posevla.model.io_transforms import XTrainerInputs, XTrainerOutputs
from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder
from posevla.types import ArmState, RobotState, optical_frame

log = logging.getLogger(__name__)

# Episode readers one process keeps open (each holds its HDF5 handle and video decoders: ~9 MB at 160x120, measured;
# 1150 open twin episodes held 11 GB in one loader process). Opening one again costs ~6 ms.
MAX_OPEN_READERS = 64


def episode_calibrations(ep: EpisodeReader) -> dict[str, HandEyeCalibration]:
    """The calibration in force when the episode was recorded (copied into its metadata), keyed by frame."""
    out = {}
    for name, entry in (ep.meta.get("calibration") or {}).items():
        if "yaml" not in entry:
            raise ValueError(f"episode {ep.path}: calibration {name} has no YAML copy")
        calib = HandEyeCalibration.from_dict(yaml.safe_load(entry["yaml"]), f"{ep.path}:meta.calibration.{name}")
        out[calib.child_frame] = calib
    if not out:
        raise ValueError(f"episode {ep.path}: no calibration recorded (meta.calibration is empty)")
    return out


def marked_failed(path: Path) -> bool:
    """True when the recorder's metadata marks the episode failed (`/recorder/mark_failure`, the leader's
    failure button, a trial's outcome, a closed-loop demonstration that did not lift); an unreadable file is
    not "marked" (the reader reports it where it is opened)."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            return json.loads(h.attrs["meta"]).get("success") is False
    except Exception:  # noqa: BLE001 - truncated or foreign files are reported by the reader, not here
        return False


def find_episodes(paths: Sequence[str | Path], include_failed: bool = False) -> list[Path]:
    """Episode files from files and task folders (complete episodes only). Episodes found in a folder that
    are marked failed are left out unless `include_failed` (an operator who pressed "failure" does not want
    that take learned); a file named explicitly is always used."""
    out: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = F.list_episodes(p) or [e for d in sorted(p.iterdir()) if d.is_dir() for e in F.list_episodes(d)]
            if not include_failed:
                skipped += [e for e in found if marked_failed(e)]
                found = [e for e in found if e not in skipped]
            out += found
        else:
            raise ValueError(f"{p}: no such episode or folder")
    if skipped:
        log.warning("left out %d episode(s) marked failed (e.g. %s); name them as files to train on them",
                 len(skipped), skipped[0])
    if not out:
        raise ValueError(f"no episodes under {[str(p) for p in paths]}"
                         + (f" ({len(skipped)} marked failed)" if skipped else ""))
    return out


def read_exclude_segments(path: str | Path, episodes: list[Path]) -> dict[Path, list[tuple[float, float]]]:
    """A YAML/JSON mapping `episode file -> [[t0_s, t1_s], ...]` (seconds from the episode's first robot stamp;
    relative paths are relative to the file) of intervals where no training sample starts. Every named episode
    must be one of `episodes` and every interval must have 0 <= t0 < t1."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--exclude-segments {path}: cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"--exclude-segments {path}: expected a mapping of episode file -> [[t0_s, t1_s], ...]")
    known = {p.resolve() for p in episodes}
    out: dict[Path, list[tuple[float, float]]] = {}
    for name, segs in raw.items():
        ep = Path(name) if Path(name).is_absolute() else path.parent / name
        if ep.resolve() not in known:
            raise ValueError(f"--exclude-segments {path}: {name} is not one of the training episodes")
        try:
            pairs = [(float(a), float(b)) for a, b in segs]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--exclude-segments {path}: {name}: expected [[t0_s, t1_s], ...]") from exc
        if not all(0 <= a < b for a, b in pairs):
            raise ValueError(f"--exclude-segments {path}: {name}: every interval needs 0 <= t0 < t1")
        out[ep.resolve()] = pairs
    return out


def split_episodes(episodes: list[Path], val_episodes: int) -> tuple[list[Path], list[Path]]:
    """(training, held-out) episodes: the held-out ones are every k-th episode (k = n // val_episodes), so they
    spread over the recording sessions; never a frame-level split (neighbouring frames are near-duplicates)."""
    n = len(episodes)
    if val_episodes < 0 or val_episodes >= n and val_episodes > 0:
        raise ValueError(f"--val-episodes {val_episodes} must be >= 0 and leave at least one of the {n} episode(s) "
                         f"for training")
    if val_episodes == 0:
        return list(episodes), []
    step = n // val_episodes
    held = {n - 1 - i * step for i in range(val_episodes)}
    return [e for i, e in enumerate(episodes) if i not in held], [e for i, e in enumerate(episodes) if i in held]


def _gripper_goals(stamps: np.ndarray, measured: np.ndarray, commanded: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The gripper target of the chunks: the recorded command (`action`, the opening the follower was told to
    reach), not the measured opening. Closing on an object the fingers stop at its width (0.42 on the twin's
    4 cm cube) while the command says 0; a policy trained on the measured opening commands 0.42 and barely
    squeezes. Frames without a finite command use the measured opening."""
    goal = measured if commanded is None else np.where(np.isfinite(commanded), commanded, measured)
    ok = np.isfinite(goal)  # neither commanded nor measured (a gripper bus dropout): interpolated over
    if not ok.any():
        raise ValueError("no frame has a finite gripper command or measurement")
    return stamps.astype(np.int64)[ok], goal[ok]


@dataclass
class _Episode:
    path: Path
    num_frames: int
    histories: dict[str, PoseHistory]
    grippers: dict[str, tuple[np.ndarray, np.ndarray]]  # arm -> (stamps, measured opening): the state
    gripper_goals: dict[str, tuple[np.ndarray, np.ndarray]]  # arm -> (stamps, commanded opening): the target
    builder: ObservationBuilder
    instruction: str
    ref_stamps: np.ndarray  # reference camera capture stamps per frame (ns)
    robot_stamps: np.ndarray
    tcp: dict[str, np.ndarray]  # arm -> (T, 4, 4) T_base_tcp per frame


class EpisodeChunkDataset:
    """Indexable training samples over several episodes (one per frame, every `stride` frames)."""

    def __init__(self, episodes: Sequence[str | Path], cfg: PoseVLAConfig, stride: int = 1,
                 exclude_s: dict[Path, list[tuple[float, float]]] | None = None) -> None:
        """exclude_s: per episode file (resolved path), [t0, t1) intervals in seconds from its first robot stamp
        where no sample starts (see `read_exclude_segments`): e.g. a deliberately wrong approach whose chunks would
        teach the error, while the frames after it still teach the correction."""
        self.cfg, self.stride = cfg, stride
        self.aug_seed = 0  # the training run's seed (see augmented)
        self.excluded_samples = 0
        self.held_depth_samples = 0  # frames not sampled: their depth is an earlier frame's (depth_every > 1)
        self.unmeasured_gripper_samples = 0  # frames not sampled: a gripper opening was not measured (NaN)
        exclude_s = {Path(k).resolve(): v for k, v in (exclude_s or {}).items()}
        self.inputs, self.outputs = XTrainerInputs(cfg), XTrainerOutputs(cfg)
        self._episodes: list[_Episode] = []
        self.index: list[tuple[int, int]] = []
        self._readers: OrderedDict[int, EpisodeReader] = OrderedDict()  # the open ones, least recently used first
        self._readers_pid = os.getpid()
        self._interp: dict[tuple[int, str], tuple] = {}
        self._depth_scales: list[float] = []
        for path in map(Path, episodes):
            with EpisodeReader(path) as ep:
                missing = [v for v in cfg.views if v not in ep.camera_names]
                if cfg.reference_view in missing:
                    raise ValueError(f"episode {path}: no {cfg.reference_view!r} camera (the model's reference view)")
                robot_stamps = ep.array("stamps/robot")
                histories, grippers, goals, tcp_T = {}, {}, {}, {}
                qpos = ep.array("observations/qpos")
                action = ep.array("action")  # the reader requires it
                for k, arm in enumerate(("left", "right")):
                    if arm not in cfg.arms:
                        continue
                    tcp = ep.array(f"observations/tcp_pose/{arm}")
                    if not np.all(np.isfinite(tcp)):
                        raise ValueError(f"episode {path}: observations/tcp_pose/{arm} has NaN poses")
                    h = PoseHistory(max_len=len(tcp) + 1, tolerance_ns=10**18)  # holds the ends
                    tcp_T[arm] = np.stack([se3.T_from_pos_quat(row[:3], row[3:]) for row in tcp])
                    for s, T in zip(robot_stamps, tcp_T[arm]):
                        h.add(int(s), T)
                    histories[arm] = h
                    grippers[arm] = (robot_stamps.astype(np.int64), qpos[:, k * 7 + 6])
                    try:
                        goals[arm] = _gripper_goals(robot_stamps, qpos[:, k * 7 + 6], action[:, k * 7 + 6])
                    except ValueError as exc:
                        raise ValueError(f"episode {path}: {arm} gripper: {exc}") from None
                builder = ObservationBuilder(BuilderConfig(image_size=cfg.image_size, max_age_s=1e9, slop_s=1e9,
                                                           reference_view=cfg.reference_view,
                                                           crops=dict(cfg.view_crops)),
                                             CameraToBase(episode_calibrations(ep), histories))
                self._depth_scales += [float(ep.depth_scale[v]) for v in cfg.views if v in ep.depth_scale]
                e = len(self._episodes)
                self._episodes.append(_Episode(path, ep.num_frames, histories, grippers, goals, builder,
                                               str(ep.meta.get("instruction", "")),
                                               ep.camera_stamps(cfg.reference_view), robot_stamps.astype(np.int64),
                                               tcp_T))
                starts = list(range(0, ep.num_frames, stride))
                # an episode recorded with depth_every k > 1 has depth at every k-th frame only: samples start
                # there, so colour and depth are of one capture as on the robot (never depth up to (k-1)/fps old)
                k = math.lcm(*(ep.depth_every.get(v, 1) for v in cfg.views if v in ep.camera_names))
                if k > 1:
                    self.held_depth_samples += sum(t % k != 0 for t in starts)
                    starts = [t for t in starts if t % k == 0]
                # a gripper bus dropout records NaN openings (not measured): no sample starts there, since the
                # state the policy would see is undefined (the policy node refuses such observations too)
                measured = np.all([np.isfinite(grippers[a][1]) for a in grippers], axis=0)
                if not measured.all():
                    keep = [t for t in starts if measured[t]]
                    self.unmeasured_gripper_samples += len(starts) - len(keep)
                    starts = keep
                segments = exclude_s.get(path.resolve(), [])
                if segments:
                    t_s = np.maximum((ep.camera_stamps(cfg.reference_view) - int(robot_stamps[0])) * 1e-9, 0.0)
                    keep = [t for t in starts if not any(a <= t_s[t] < b for a, b in segments)]
                    self.excluded_samples += len(starts) - len(keep)
                    starts = keep
                self.index += [(e, t) for t in starts]

    def __len__(self) -> int:
        return len(self.index)

    def depth_scales(self) -> list[float]:
        """The recorded depth units (metres per unit) of the model's views over all episodes, most common first."""
        from collections import Counter

        return [s for s, _ in Counter(self._depth_scales).most_common()] or [1e-3]

    def _reader(self, e: int) -> EpisodeReader:
        """Episode e's reader, opened lazily per process (safe with DataLoader workers); at most MAX_OPEN_READERS
        stay open, the least recently used is closed first."""
        if self._readers_pid != os.getpid():  # a forked DataLoader worker: never share the parent's HDF5 handles
            self._readers, self._readers_pid = OrderedDict(), os.getpid()
        r = self._readers.get(e)
        if r is None:
            r = self._readers[e] = EpisodeReader(self._episodes[e].path)
            while len(self._readers) > MAX_OPEN_READERS:
                self._readers.popitem(last=False)[1].close()
        else:
            self._readers.move_to_end(e)
        return r

    def target(self, e: int, t_obs_ns: int, T_base_ref: np.ndarray) -> np.ndarray:
        """(chunk_length, action_dim) future TCP poses in the reference frame and grippers."""
        ep = self._episodes[e]
        times = t_obs_ns + np.round(np.arange(self.cfg.chunk_length) * self.cfg.control_dt * 1e9).astype(np.int64)
        T_ref_base = se3.invert_T(T_base_ref)
        poses, grip = {}, {}
        for arm in self.cfg.arms:
            poses[arm] = T_ref_base @ self._tcp_at(e, arm, times)
            stamps, g = ep.gripper_goals[arm]
            grip[arm] = np.interp(times, stamps, g)
        return self.outputs.target_vector(poses, grip)

    def _tcp_at(self, e: int, arm: str, times_ns: np.ndarray) -> np.ndarray:
        """(n, 4, 4) T_base_tcp at the given stamps, as PoseHistory.at (linear position, slerp rotation between
        neighbouring poses, ends held), for all stamps at once."""
        key = (e, arm)
        interp = self._interp.get(key)
        if interp is None:
            h = self._episodes[e].histories[arm]
            stamps = np.asarray(h.stamps, dtype=np.int64)
            poses = np.stack(list(h.poses))
            rel = (stamps - stamps[0]).astype(np.float64)
            slerp = Slerp(rel, Rotation.from_matrix(poses[:, :3, :3])) if len(stamps) > 1 else None
            interp = self._interp[key] = (stamps[0], rel, poses, slerp)
        t0, rel, poses, slerp = interp
        t = np.clip((np.asarray(times_ns, dtype=np.int64) - t0).astype(np.float64), rel[0], rel[-1])
        if slerp is None:
            return np.repeat(poses[:1], len(t), axis=0)
        pos = np.stack([np.interp(t, rel, poses[:, k, 3]) for k in range(3)], axis=-1)
        return se3.make_T(slerp(t).as_matrix(), pos)

    def __getitem__(self, i: int) -> TrainingSample:
        e, t = self.index[i]
        ep = self._episodes[e]
        frame = self._reader(e).frame(t, cameras=self.cfg.views)  # the views the model does not read stay undecoded
        cams = dict(frame.cameras)
        obs = ep.builder.build(cams, frame.state, ep.instruction, frame.stamp_ns)
        T_base_ref = self.inputs.reference_pose(obs)
        return TrainingSample(obs, actions=self.target(e, obs.stamp_ns, T_base_ref))

    @property
    def augments(self) -> bool:
        """Whether the model config asks for training-time image augmentation (see posevla.training.augment)."""
        return self.cfg.aug_crop_scale < 1.0 or self.cfg.aug_color > 0.0

    def augmented(self, i: int, key: int) -> TrainingSample:
        """Sample i with the config's image augmentation, drawn from default_rng([aug_seed, key]) (key: the draw's
        number in the run, so every epoch crops differently and the draws never depend on the worker count).
        Targets, state and camera poses are those of sample i: only the intrinsics of each view change."""
        from posevla.training.augment import jitter_colour, random_region

        if not self.augments:
            return self[i]
        rng = np.random.default_rng([self.aug_seed, int(key)])
        e, t = self.index[i]
        ep = self._episodes[e]
        frame = self._reader(e).frame(t, cameras=self.cfg.views)
        cams = dict(frame.cameras)
        regions = ({v: random_region(self.cfg.view_crops.get(v), self.cfg.aug_crop_scale, rng) for v in cams}
                   if self.cfg.aug_crop_scale < 1.0 else None)
        obs = ep.builder.build(cams, frame.state, ep.instruction, frame.stamp_ns, regions=regions)
        if self.cfg.aug_color > 0.0:
            for view in obs.views.values():
                view.rgb = jitter_colour(view.rgb, self.cfg.aug_color, rng)
        T_base_ref = self.inputs.reference_pose(obs)
        return TrainingSample(obs, actions=self.target(e, obs.stamp_ns, T_base_ref))

    def state_and_action_rows(self, max_samples: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """States and target chunks of up to max_samples samples, for normalisation statistics.

        The same numbers as __getitem__ gives, computed from the recorded poses only (no image is decoded)."""
        rng = np.random.default_rng(seed)
        pick = sorted(int(i) for i in rng.permutation(len(self))[:max_samples])
        states, actions = [], []
        for i in pick:
            e, t = self.index[i]
            ep = self._episodes[e]
            stamp = int(ep.ref_stamps[t])
            camera_to_base = ep.builder.camera_to_base
            assert camera_to_base is not None  # built with one in __init__
            T_base_ref = camera_to_base.T_base_cam(optical_frame(self.cfg.reference_view), stamp)
            arms = {a: ArmState(ep.tcp[a][t], np.zeros(6), float(ep.grippers[a][1][t]), int(ep.robot_stamps[t]))
                    for a in self.cfg.arms}
            states.append(self.inputs.state_vector(RobotState(arms, int(ep.robot_stamps[t])), T_base_ref))
            actions.append(self.target(e, stamp, T_base_ref))
        return np.asarray(states), np.asarray(actions)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
