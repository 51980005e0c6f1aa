"""Render a calibration board as a pinhole camera would see it (for tests and rehearsals of the calibration).

The board image maps texture pixel (u, v) to target coordinates X = (u - margin + 0.5) * k, Y likewise, with
k = square_m / px_per_square (OpenCV pixel centres at integer coordinates); the camera sees
x ~ K [r1 r2 t] [X Y 1]^T with [R | t] = T_cam_target. Background: mid grey.
"""
from __future__ import annotations

import cv2
import numpy as np

from posevla.calibration.handeye import CharucoBoard
from posevla.geometry.intrinsics import CameraIntrinsics


def render_board(board: CharucoBoard, T_cam_target: np.ndarray, intr: CameraIntrinsics,
                 px_per_square: int = 80, margin_px: int = 40) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of the board at T_cam_target (metres)."""
    tex = board.image(px_per_square, margin_px)
    k = board.square_m / px_per_square
    S = np.array([[k, 0.0, k * (0.5 - margin_px)], [0.0, k, k * (0.5 - margin_px)], [0.0, 0.0, 1.0]])
    Rt = np.column_stack([T_cam_target[:3, 0], T_cam_target[:3, 1], T_cam_target[:3, 3]])
    H = intr.K @ Rt @ S
    out = cv2.warpPerspective(tex, H, (intr.width, intr.height), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=128)
    return np.repeat(out[..., None], 3, axis=2)
