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
