"""A scripted demonstration in the ray-cast tabletop scene, written in the real episode format.

The left arm reaches above the red cube, descends, closes its gripper and lifts; the right arm stays home.
Joint angles come from the simulator's kinematics (so episodes agree with the X-Trainer simulator); the
head camera follows the shipped calibration (calibration/head_camera.yaml), wrist cameras ride on the TCPs
(calibration/<arm>_wrist_camera.yaml). Used by `make demo` (replayed as the cameras) and by tests.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from posevla.calibration.files import episode_calibration_meta, load_calibrations
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.paths import calibration_dir, config_dir
from posevla.robot.driver import XTrainerConfig
from posevla.robot.kinematics import ArmKinematics
from posevla.tools.synthetic_scene import TabletopScene
from posevla.types import ArmState, RobotState

CAMERAS = ("head", "left_wrist", "right_wrist")


def camera_intrinsics(width: int = 320, height: int = 240) -> dict[str, CameraIntrinsics]:
    """D455-like head and D405-like wrist intrinsics at the given resolution."""
    s = width / 640.0
    head = CameraIntrinsics(386.0 * s, 386.0 * s, (319.5 + 0.5) * s - 0.5, (239.5 + 0.5) * s - 0.5, width, height)
    wrist = CameraIntrinsics(433.0 * s, 433.0 * s, (321.0 + 0.5) * s - 0.5, (238.0 + 0.5) * s - 0.5, width, height)
    return {"head": head, "left_wrist": wrist, "right_wrist": wrist}


def scripted_tcp_path(T_home: np.ndarray, target: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n,4,4) TCP poses in base_link and (n,) gripper openings: approach, descend, grasp, lift."""
    above = target + [0.0, 0.0, 0.12]
    keys = [(0.0, T_home[:3, 3], 1.0), (0.4, above, 1.0), (0.6, target + [0, 0, 0.02], 1.0),
            (0.75, target + [0, 0, 0.02], 0.0), (1.0, above, 0.0)]
    ts = np.linspace(0.0, 1.0, n)
    pos = np.stack([np.interp(ts, [k[0] for k in keys], [k[1][i] for k in keys]) for i in range(3)], axis=1)
    grip = np.interp(ts, [k[0] for k in keys], [k[2] for k in keys])
    T = np.tile(T_home, (n, 1, 1))
    T[:, :3, 3] = pos
    return T, grip


def write_demo_episode(root: Path, task: str = "pick_red_cube", instruction: str = "pick up the red cube",
                       seconds: float = 3.0, fps: float = 15.0, width: int = 320, height: int = 240,
                       cube_xy: tuple[float, float] = (0.35, 0.10), seed: int = 0) -> Path:
    robot = XTrainerConfig.from_yaml(config_dir() / "xtrainer_sim_robot.yaml")
    calibs = load_calibrations(calibration_dir())
    kin = ArmKinematics()
    scene = TabletopScene.default()
    scene.boxes[0].centre = np.array([cube_xy[0], cube_xy[1], 0.03])
    intr = camera_intrinsics(width, height)
    n = max(2, int(round(seconds * fps)))
    home = {arm: robot.arms[arm].T_base_armbase @ kin.fk(kin.home()) for arm in robot.arms}
    T_left, g_left = scripted_tcp_path(home["left"], scene.boxes[0].centre + [0, 0, 0.03], n)
    q = {arm: kin.home() for arm in robot.arms}
    rng = np.random.default_rng(seed)
    meta = {"instruction": instruction, "operator": "synthetic", "fps": fps,
            "cameras": {c: f"SIM-{c.upper()}" for c in CAMERAS}, "software_version": "posevla 0.1.0",
            "start_time_ns": time.time_ns(),
            "calibration": episode_calibration_meta(c.path for c in calibs.values() if c.path is not None)}
    writer = EpisodeWriter(root, task, meta, intr, min_free_bytes=64 * 1024 * 1024)
    t0 = time.time_ns()
    qpos_prev = None
    states = []
    for k in range(n):
        T_arm = {"left": T_left[k], "right": home["right"]}
        grip = {"left": float(g_left[k]), "right": 1.0}
        for arm in robot.arms:
            sol = kin.ik(se3.invert_T(robot.arms[arm].T_base_armbase) @ T_arm[arm], q[arm])
            if sol is None:
                raise RuntimeError(f"scripted pose of the {arm} arm at step {k} is unreachable")
            q[arm] = sol
        stamp = t0 + int(k / fps * 1e9)
        states.append(RobotState({arm: ArmState(T_arm[arm], q[arm].copy(), grip[arm], stamp) for arm in robot.arms},
                                 stamp))
    for k, state in enumerate(states):
        stamp = state.stamp_ns
        rgb, depth, cam_stamps = {}, {}, {}
        for cam in CAMERAS:
            if cam == "head":
                T_base_cam = calibs["head_camera_color_optical_frame"].T_parent_child
            else:
                arm = cam.removesuffix("_wrist")
                T_base_cam = state.arms[arm].T_base_tcp @ calibs[f"{cam}_camera_color_optical_frame"].T_parent_child
            rgb[cam], depth[cam] = scene.render(T_base_cam, intr[cam])
            noise = rng.integers(-2, 3, rgb[cam].shape)  # sensor noise: real cameras never repeat a frame exactly
            rgb[cam] = np.clip(rgb[cam].astype(np.int16) + noise, 0, 255).astype(np.uint8)
            cam_stamps[cam] = stamp + int(rng.integers(-2_000_000, 2_000_000))
        nxt = states[min(k + 1, n - 1)]
        action = np.concatenate([np.r_[nxt.arms[a].joints, nxt.arms[a].gripper] for a in ("left", "right")])
        qpos_prev = action
        while not writer.add_frame(FrameRecord(stamp, rgb, depth, cam_stamps, state, action)):
            time.sleep(0.01)
    del qpos_prev
    return writer.finish(success=True)
