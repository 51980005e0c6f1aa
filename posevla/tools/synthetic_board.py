"""Render a calibration board as a pinhole camera would see it (for tests and rehearsals of the calibration).

The board image maps texture pixel (u, v) to target coordinates X = (u - margin + 0.5) * k, Y likewise, with
k = square_m / px_per_square (OpenCV pixel centres at integer coordinates); the camera sees
x ~ K [r1 r2 t] [X Y 1]^T with [R | t] = T_cam_target. Background: mid grey.
`render_board_depth` gives the matching aligned depth (metres, z along the optical axis, 0 where the board
is not), as a RealSense depth stream aligned to the colour image would.
"""
from __future__ import annotations

import cv2
import numpy as np

from posevla.calibration.handeye import CharucoBoard
from posevla.geometry.intrinsics import CameraIntrinsics


def _homography(board: CharucoBoard, T_cam_target: np.ndarray, intr: CameraIntrinsics, px_per_square: int,
                margin_px: int) -> np.ndarray:
    k = board.square_m / px_per_square
    S = np.array([[k, 0.0, k * (0.5 - margin_px)], [0.0, k, k * (0.5 - margin_px)], [0.0, 0.0, 1.0]])
    Rt = np.column_stack([T_cam_target[:3, 0], T_cam_target[:3, 1], T_cam_target[:3, 3]])
    return intr.K @ Rt @ S


def render_board(board: CharucoBoard, T_cam_target: np.ndarray, intr: CameraIntrinsics,
                 px_per_square: int = 80, margin_px: int = 40,
                 visible_m: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of the board at T_cam_target (metres).

    visible_m: (x0, y0, x1, y1) rectangle in target coordinates (metres); the rest of the board is hidden
    behind a mid-grey occluder (a board partly covered by the gripper or out of the frame)."""
    tex = board.image(px_per_square, margin_px)
    if visible_m is not None:
        k = board.square_m / px_per_square
        x0, y0, x1, y1 = visible_m
        u = (np.arange(tex.shape[1]) - margin_px + 0.5) * k
        v = (np.arange(tex.shape[0]) - margin_px + 0.5) * k
        inside = ((v[:, None] >= y0) & (v[:, None] <= y1)) & ((u[None, :] >= x0) & (u[None, :] <= x1))
        tex = np.where(inside, tex, np.uint8(128))
    H = _homography(board, T_cam_target, intr, px_per_square, margin_px)
    out = cv2.warpPerspective(tex, H, (intr.width, intr.height), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=128)
    return np.repeat(out[..., None], 3, axis=2)


def render_board_depth(board: CharucoBoard, T_cam_target: np.ndarray, intr: CameraIntrinsics,
                       margin_m: float = 0.02) -> np.ndarray:
    """(H, W) float32 depth in metres of the board plane (the printed area plus margin_m), 0 elsewhere."""
    uu, vv = np.meshgrid(np.arange(intr.width, dtype=float), np.arange(intr.height, dtype=float))
    rays = np.stack([(uu - intr.cx) / intr.fx, (vv - intr.cy) / intr.fy, np.ones_like(uu)], axis=-1)
    n = T_cam_target[:3, 2]  # board normal (target z) in the camera frame
    p0 = T_cam_target[:3, 3]
    denom = rays @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p0 @ n) / denom  # ray parameter = depth (rays have unit z)
    pts = rays * z[..., None] - p0  # camera-frame offset from the target origin
    xy = pts @ T_cam_target[:3, :2]  # target coordinates
    w, h = board.cols * board.square_m, board.rows * board.square_m
    ok = (np.isfinite(z) & (z > 0) & (xy[..., 0] >= -margin_m) & (xy[..., 0] <= w + margin_m)
          & (xy[..., 1] >= -margin_m) & (xy[..., 1] <= h + margin_m))
    return np.where(ok, z, 0.0).astype(np.float32)


def views_around_board(board: CharucoBoard, n: int, rng: np.random.Generator, tilt_deg: tuple[float, float] = (10, 35),
                       dist_m: tuple[float, float] = (0.3, 0.45), roll_deg: float = 40.0) -> list[np.ndarray]:
    """T_cam_target of n cameras aimed at the board centre from random directions: tilt from the board normal
    uniform in tilt_deg, distance in dist_m, roll about the optical axis within +-roll_deg (whole board in view
    for ~60 deg fields of view)."""
    from scipy.spatial.transform import Rotation

    centre = np.array([board.cols * board.square_m / 2, board.rows * board.square_m / 2, 0.0])
    out = []
    for _ in range(n):
        tilt, az = np.deg2rad(rng.uniform(*tilt_deg)), rng.uniform(0, 2 * np.pi)
        roll = np.deg2rad(rng.uniform(-roll_deg, roll_deg))
        pos = centre + rng.uniform(*dist_m) * np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az),
                                                         -np.cos(tilt)])
        z = (centre - pos) / np.linalg.norm(centre - pos)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        R = np.column_stack([x, np.cross(z, x), z]) @ Rotation.from_rotvec([0, 0, roll]).as_matrix()
        T_target_cam = np.eye(4)
        T_target_cam[:3, :3], T_target_cam[:3, 3] = R, pos
        out.append(np.linalg.inv(T_target_cam))
    return out


def robot_poses(kind: str, T_cam_target: list[np.ndarray], X: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
    """T_base_tcp that produce these board views for a hand-eye transform X and a fixed board pose Y:
    eye_in_hand X = T_tcp_cam, Y = T_base_target; eye_to_hand X = T_base_cam, Y = T_tcp_target."""
    inv = np.linalg.inv
    if kind == "eye_in_hand":
        return [Y @ inv(T) @ inv(X) for T in T_cam_target]
    return [X @ T @ inv(Y) for T in T_cam_target]
