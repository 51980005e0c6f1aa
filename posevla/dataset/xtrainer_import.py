"""`posevla dataset import-xtrainer`: the vendor's own X-Trainer recordings -> episodes of this project's format.

The vendor's data collection (github.com/Dobot-Arm/dobot_xtrainer, commit 04cbec5f57aee6355b70c3933d84962376029f1d:
``mainCode.py`` records, ``sencondThread.py`` converts to ``train_data/episode_init_<n>.hdf5``) writes ALOHA-style
files:
    attrs: sim (bool), compress (bool)
    /observations/qpos (T, 14)   left J1..J6 (rad, the controller's GetAngle), left gripper, right J1..J6, right
                                  gripper; the gripper value is the LEADER's command (0 open .. 1 closed, copied
                                  from the action in mainCode.py), not a measurement of the follower
    /observations/qvel (T, 14)   (the vendor stores joint positions here too; not imported)
    /action (T, 14)              the leader arms' joints and triggers, same layout
    /observations/images/<cam>   cam in {top, left_wrist, right_wrist}; compress: (T, N) uint8 zero-padded JPEG
                                  of the RGB array (encoded as-is, so cv2.imdecode returns RGB), else (T, H, W, 3)
    /compress_len (n_cams, T)    JPEG lengths (optional)
    no timestamps, no depth, no camera intrinsics.

Conversion: joints are kept; TCP poses are ``T_base_armbase @ FK(q)`` through the robot YAML's kinematics, tool
frame and mountings (`XTrainerConfig.arm_kinematics`: the vendor Nova model and SetTool(1, {0,0,197,0,0,0}) in
the shipped config); gripper opening (0 closed .. 1 open) = 1 - vendor value, for qpos and action;
frame stamps are ``start + k / fps`` (the vendor's loop sleeps 20 ms per cycle but does not record stamps, so fps
is the operator's statement); depth is written as all-invalid (0). The camera intrinsics and the hand-eye
calibration come from the operator. What was assumed is written into each episode's metadata (``import``).
"""
from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posevla.dataset import format as F
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.robot.kinematics import ArmKinematics
from posevla.types import ARM_NAMES, ArmState, RobotState
from posevla.yaml_file import read_yaml

VENDOR_CAMERAS = {"top": "head", "cam_high": "head", "left_wrist": "left_wrist", "cam_left_wrist": "left_wrist",
                  "right_wrist": "right_wrist", "cam_right_wrist": "right_wrist"}


@dataclass
class VendorEpisode:
    qpos: np.ndarray  # (T, 14), vendor convention
    action: np.ndarray  # (T, 14)
    images: dict[str, list[np.ndarray]]  # our camera name -> T RGB frames
    source: Path


def _decode(row: np.ndarray, where: str) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.ascontiguousarray(row, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{where}: not a decodable JPEG")
    return img  # the vendor encoded RGB arrays as-is, so this is RGB


def read_vendor_episode(path: str | Path) -> VendorEpisode:
    """Read and check one vendor file; ValueError naming the file and key on anything unexpected."""
    import h5py

    path = Path(path)
    try:
        h = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h:
        for key in ("observations/qpos", "action", "observations/images"):
            if key not in h:
                raise ValueError(f"{path}: missing /{key} (not an X-Trainer recording)")
        qpos, action = np.asarray(h["observations/qpos"], np.float64), np.asarray(h["action"], np.float64)
        T = qpos.shape[0]
        for name, arr in (("observations/qpos", qpos), ("action", action)):
            if arr.ndim != 2 or arr.shape[1] != F.QPOS_DIM or arr.shape[0] != T or T == 0:
                raise ValueError(f"{path}: /{name} has shape {arr.shape}, expected ({T or 'T>0'}, {F.QPOS_DIM})")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{path}: /{name} holds non-finite values")
        compressed = bool(h.attrs.get("compress", False))
        images: dict[str, list[np.ndarray]] = {}
        for key, ds in h["observations/images"].items():
            if key not in VENDOR_CAMERAS:
                raise ValueError(f"{path}: unknown camera /observations/images/{key}; known: {sorted(VENDOR_CAMERAS)}")
            name = VENDOR_CAMERAS[key]
            if name in images:
                raise ValueError(f"{path}: camera {name} stored twice")
            if ds.shape[0] != T:
                raise ValueError(f"{path}: /observations/images/{key} has {ds.shape[0]} frames, qpos has {T}")
            where = f"{path}: /observations/images/{key}"
            if compressed:
                if ds.ndim != 2 or ds.dtype != np.uint8:
                    raise ValueError(f"{where}: compressed images must be (T, N) uint8, got {ds.shape} {ds.dtype}")
                images[name] = [_decode(ds[k], f"{where}[{k}]") for k in range(T)]
            else:
                if ds.ndim != 4 or ds.shape[-1] != 3 or ds.dtype != np.uint8:
                    raise ValueError(f"{where}: images must be (T, H, W, 3) uint8, got {ds.shape} {ds.dtype}")
                images[name] = [np.asarray(ds[k]) for k in range(T)]
        if not images:
            raise ValueError(f"{path}: /observations/images holds no camera")
    return VendorEpisode(qpos, action, images, path)


def load_intrinsics(path: str | Path) -> dict[str, CameraIntrinsics]:
    """YAML mapping camera name (head, left_wrist, right_wrist) -> CameraInfo fields (k, d, width, height,
    distortion_model), e.g. from the RealSense driver's camera_info."""
    path = Path(path)
    doc = read_yaml(path, "camera intrinsics")
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path}: expected a mapping camera -> camera_info fields")
    out = {}
    for cam, info in doc.items():
        if cam not in F.CAMERA_KEYS:
            raise ValueError(f"{path}: unknown camera {cam!r}; known: {sorted(F.CAMERA_KEYS)}")
        if not isinstance(info, dict):
            raise ValueError(f"{path}: {cam}: expected camera_info fields")
        unknown = sorted(set(info) - {"k", "d", "width", "height", "distortion_model"})
        if unknown:
            raise ValueError(f"{path}: {cam}: unknown key(s) {unknown}")
        try:
            out[cam] = CameraIntrinsics.from_camera_info(info)
        except ValueError as exc:
            raise ValueError(f"{path}: {cam}: {exc}") from None
    return out


def robot_state(kin: dict[str, ArmKinematics], T_base_armbase: dict[str, np.ndarray], row: np.ndarray,
                stamp_ns: int) -> RobotState:
    """One vendor qpos row -> RobotState (TCP of the tool frame in base_link, opening 0 closed .. 1 open)."""
    arms = {}
    for i, arm in enumerate(ARM_NAMES):
        q = row[i * 7:i * 7 + 6]
        arms[arm] = ArmState(T_base_armbase[arm] @ kin[arm].fk(q), q.copy(), float(1.0 - row[i * 7 + 6]), stamp_ns)
    return RobotState(arms, stamp_ns)


def action_row(row: np.ndarray) -> np.ndarray:
    out = np.array(row, np.float64)
    out[[6, 13]] = 1.0 - out[[6, 13]]
    return out


def import_xtrainer(sources: list[Path], out_root: Path, task: str, instruction: str, robot_yaml: Path,
                    intrinsics_yaml: Path, fps: float = 50.0, calibration_dir: Path | None = None,
                    storage: str = "video", operator: str = "xtrainer-import") -> list[Path]:
    """Convert vendor files (or folders of *.hdf5) into episodes under out_root/task. Returns the written paths.
    The kinematic model, tool frame and arm mountings are the robot YAML's (`kinematics`, `tool`, `arms`), so the
    imported TCP poses are of the same tool frame as the stack's. storage: the episode storage format (None: the
    writer's default)."""
    from posevla.calibration.files import calibration_dir_meta
    from posevla.dataset.writer import EpisodeWriter, FrameRecord
    from posevla.robot.driver import XTrainerConfig

    if not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps={fps} must be a positive number")
    if not task or "/" in task or task.startswith("."):
        raise ValueError(f"task={task!r} must be a plain folder name")
    files: list[Path] = []
    for s in sources:
        s = Path(s)
        if s.is_dir():
            files += sorted(s.glob("*.hdf5")) + sorted(s.glob("*.h5"))
        elif s.is_file():
            files.append(s)
        else:
            raise ValueError(f"{s} does not exist")
    if not files:
        raise ValueError(f"no .hdf5 files in {[str(s) for s in sources]}")
    robot = XTrainerConfig.from_yaml(robot_yaml)
    missing = [a for a in ARM_NAMES if a not in robot.arms]
    if missing:
        raise ValueError(f"{robot_yaml}: arms {missing} missing (both arms' mountings are needed)")
    T_base_armbase = {a: robot.arms[a].T_base_armbase for a in ARM_NAMES}
    kin = {a: robot.arm_kinematics(a) for a in ARM_NAMES}
    intr = load_intrinsics(intrinsics_yaml)
    calib = calibration_dir_meta(calibration_dir) if calibration_dir is not None else {}
    episodes = [read_vendor_episode(p) for p in files]  # check everything before writing anything
    for ep in episodes:
        for cam, frames in ep.images.items():
            if cam not in intr:
                raise ValueError(f"{ep.source}: camera {cam} has no intrinsics in {intrinsics_yaml}")
            h, w = frames[0].shape[:2]
            if (w, h) != (intr[cam].width, intr[cam].height):
                raise ValueError(f"{ep.source}: camera {cam} images are {w}x{h}, {intrinsics_yaml} says "
                                 f"{intr[cam].width}x{intr[cam].height}")
    written = []
    for ep in episodes:
        start_ns = ep.source.stat().st_mtime_ns
        cams = {c: intr[c] for c in ep.images}
        meta = {"instruction": instruction, "operator": operator, "fps": float(fps),
                "cameras": {c: "unknown (vendor recording)" for c in cams}, "calibration": calib,
                "software_version": "posevla 0.1.0", "start_time_ns": int(start_ns),
                "import": {"from": "dobot_xtrainer ALOHA-style HDF5", "file": ep.source.name,
                           "sha256": hashlib.sha256(ep.source.read_bytes()).hexdigest(),
                           "robot_config": str(robot_yaml), "kinematics": kin["left"].model,
                           "tool_index": robot.tool_index, "tool_mm_deg": list(robot.tool_mm_deg),
                           "gripper": "1 - vendor value; vendor qpos gripper is the leader's command, not measured",
                           "stamps": f"synthetic: start (file mtime) + k / {fps} s", "depth": "none (all 0)"}}
        writer = EpisodeWriter(out_root, task, meta, cams, min_free_bytes=64 * 1024 * 1024,
                               storage="video" if storage is None else storage)
        try:
            for k in range(ep.qpos.shape[0]):
                stamp = int(start_ns + round(k * 1e9 / fps))
                state = robot_state(kin, T_base_armbase, ep.qpos[k], stamp)
                rgb = {c: ep.images[c][k] for c in cams}
                depth = {c: np.zeros((cams[c].height, cams[c].width), np.uint16) for c in cams}
                rec = FrameRecord(stamp, rgb, depth, dict.fromkeys(cams, stamp), state, action_row(ep.action[k]))
                while not writer.add_frame(rec):
                    if writer.error is not None:
                        raise OSError(f"writing {ep.source} failed: {writer.error}")
                    time.sleep(0.005)
            written.append(writer.finish(success=True))
        except BaseException:
            writer.abort("import failed")
            raise
    return written


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `import-xtrainer` subcommand of `posevla dataset`."""
    x = sub.add_parser("import-xtrainer", help="convert the vendor's X-Trainer recordings (ALOHA-style HDF5) into "
                       "episodes: joints -> TCP poses through the Nova kinematics and tool frame")
    x.add_argument("paths", type=Path, nargs="+", help="vendor episode_*.hdf5 files or folders of them")
    x.add_argument("--out", type=Path, required=True, help="dataset root to write <task>/episode_*.h5 into")
    x.add_argument("--task", required=True, help="task folder name")
    x.add_argument("--instruction", required=True, help="language instruction stored with every episode")
    x.add_argument("--robot", type=Path, default=Path("config/xtrainer_robot.yaml"),
                   help="robot YAML: arm mountings (base_link <- arm base), kinematics (nova2|nova5) and tool frame")
    x.add_argument("--intrinsics", type=Path, required=True,
                   help="YAML: camera (head, left_wrist, right_wrist) -> camera_info fields k, d, width, height")
    x.add_argument("--calibration", type=Path, help="folder of hand-eye calibration files to store with the episodes")
    x.add_argument("--fps", type=float, default=50.0, help="recording rate (Hz); the vendor files carry no stamps")
    x.add_argument("--storage", choices=getattr(F, "STORAGE_FORMATS", None),
                   help="storage format of the episodes (default: the recorder's)")


def run(args: argparse.Namespace) -> int:
    """Exit 0 with one summary line; bad input -> one line naming it on stderr, exit 2."""
    import sys

    try:
        written = import_xtrainer(args.paths, args.out, args.task, args.instruction, args.robot, args.intrinsics,
                                  fps=args.fps, calibration_dir=args.calibration, storage=args.storage)
    except (ValueError, FileNotFoundError) as exc:
        print(f"posevla dataset import-xtrainer: {exc}", file=sys.stderr)
        return 2
    print(f"imported {len(written)} X-Trainer episodes into {written[0].parent}")
    return 0
