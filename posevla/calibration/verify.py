"""`posevla calibrate verify`: see a calibration on real images.

For frames of a recorded episode, every arm's TCP (T_base_tcp from observations/tcp_pose, base_link) is
mapped into the camera through the calibration,
    head (eye-to-hand):         T_cam_tcp = inv(T_base_head) @ T_base_tcp
    wrist on arm a (eye-in-hand): T_cam_tcp = inv(T_base_tcp_a(t) @ T_tcp_wrist) @ T_base_tcp
and drawn on the colour image: a dot at the TCP and its x (red), y (green), z (blue) axes, AXIS_M long. With a
right calibration the dot sits between the fingertips of the gripper; an error of a few millimetres is
visible as an offset of a few pixels at working distance.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.views import distortion_of
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ARM_NAMES

AXIS_M = 0.05
ARM_COLOURS_RGB = {"left": (255, 0, 255), "right": (0, 255, 255)}  # dot colours: magenta, cyan


def tcp_in_camera(calib: HandEyeCalibration, T_base_tcp: dict[str, np.ndarray], arm: str) -> np.ndarray:
    """T_cam_tcp of `arm` at one instant (all poses of that instant, base_link)."""
    if calib.kind == "eye_to_hand":
        if calib.parent_frame != "base_link":
            raise ValueError(f"calibration {calib.path}: eye-to-hand parent {calib.parent_frame} is not base_link")
        T_base_cam = calib.T_parent_child
    else:
        if calib.arm not in T_base_tcp:
            raise ValueError(f"calibration {calib.path}: no TCP pose of the {calib.arm} arm carrying the camera")
        T_base_cam = T_base_tcp[calib.arm] @ calib.T_parent_child
    return se3.invert_T(T_base_cam) @ T_base_tcp[arm]


def project_tcp(T_cam_tcp: np.ndarray, intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixels of the TCP origin and of its three axis tips ((2,), (3, 2)), or None when behind the camera."""
    pts = np.vstack([np.zeros(3), np.eye(3) * AXIS_M])
    p_cam = pts @ T_cam_tcp[:3, :3].T + T_cam_tcp[:3, 3]
    if np.any(p_cam[:, 2] <= 1e-3):
        return None
    px = cv2.projectPoints(p_cam, np.zeros(3), np.zeros(3), intr.K, distortion_of(intr))[0].reshape(-1, 2)
    return px[0], px[1:]


def draw(rgb: np.ndarray, origin: np.ndarray, tips: np.ndarray, colour: tuple[int, int, int], label: str) -> None:
    o = tuple(int(round(v)) for v in origin)
    for tip, c in zip(tips, ((255, 0, 0), (0, 200, 0), (0, 0, 255))):
        cv2.line(rgb, o, tuple(int(round(v)) for v in tip), c, 2, cv2.LINE_AA)
    cv2.circle(rgb, o, 6, colour, -1, cv2.LINE_AA)
    cv2.putText(rgb, label, (o[0] + 8, o[1] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


def render_overlay(episode: Path, camera: str, calib: HandEyeCalibration, n_frames: int, out: Path) -> list[str]:
    """Write a grid of up to n_frames annotated frames to `out`; return one line per (frame, arm)."""
    from posevla.dataset.reader import EpisodeReader

    lines: list[str] = []
    tiles = []
    with EpisodeReader(episode) as ep:
        if camera not in ep.camera_names:
            raise ValueError(f"{episode}: no camera {camera!r} (it has {ep.camera_names})")
        if len(ep) == 0:
            raise ValueError(f"{episode}: the episode has no frames")
        intr = ep.intrinsics[camera]
        tcp = {}
        for arm in ARM_NAMES:
            try:
                tcp[arm] = ep.array(f"observations/tcp_pose/{arm}")
            except KeyError:
                continue  # a one-arm recording
        frames = np.unique(np.linspace(0, len(ep) - 1, min(n_frames, len(ep))).round().astype(int))
        for i in frames:
            rgb = ep.rgb(camera, int(i)).copy()
            poses = {a: se3.T_from_pos_quat(v[i, :3], v[i, 3:]) for a, v in tcp.items() if np.all(np.isfinite(v[i]))}
            for arm in sorted(poses):
                if calib.kind == "eye_in_hand" and calib.arm not in poses:
                    lines.append(f"frame {i} {arm}: the {calib.arm} arm carrying the camera has no pose")
                    break
                pr = project_tcp(tcp_in_camera(calib, poses, arm), intr)
                if pr is None:
                    lines.append(f"frame {i} {arm} TCP: behind the camera")
                    continue
                (u, v), tips = pr
                inside = 0 <= u < intr.width and 0 <= v < intr.height
                lines.append(f"frame {i} {arm} TCP: pixel ({u:.1f}, {v:.1f})" + ("" if inside else " (outside the image)"))
                if inside:
                    draw(rgb, np.array([u, v]), tips, ARM_COLOURS_RGB.get(arm, (255, 255, 0)), f"{arm} TCP")
            cv2.putText(rgb, f"{camera} frame {i}", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 1,
                        cv2.LINE_AA)
            tiles.append(rgb)
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    h, w = tiles[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, t in enumerate(tiles):
        grid[(k // cols) * h:(k // cols + 1) * h, (k % cols) * w:(k % cols + 1) * w] = t
    if not cv2.imwrite(str(out), grid[..., ::-1]):
        raise ValueError(f"--out {out}: cannot write the image")
    return lines
