"""Hand-eye calibration from (TCP pose, calibration-board pose) pairs.

Frames: T_base_tcp (robot feedback, base_link), T_cam_target (board seen by the camera, from solvePnP).
- eye_in_hand (wrist camera): solve X = T_tcp_cam with the board fixed in the world:
  T_base_target = T_base_tcp_i @ X @ T_cam_target_i is the same for every sample.
- eye_to_hand (head camera): solve X = T_base_cam with the board fixed on the gripper:
  T_tcp_target = inv(T_base_tcp_i) @ X @ T_cam_target_i is the same for every sample.
Residuals are the spread of that constant transform over the samples (translation in mm, rotation in deg):
what a user can read as "how far apart would the board be, seen through each sample".
OpenCV's four classical solvers are run and the one with the smallest median residual is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics

METHODS = {"tsai": cv2.CALIB_HAND_EYE_TSAI, "park": cv2.CALIB_HAND_EYE_PARK,
           "horaud": cv2.CALIB_HAND_EYE_HORAUD, "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS}
MIN_SAMPLES = 3


@dataclass(frozen=True)
class CharucoBoard:
    """A ChArUco target (chessboard with ArUco markers: every corner has an id, so the board's orientation is
    never ambiguous and a partly hidden board still gives a pose). `cols` x `rows` squares of `square_m`
    metres, markers of `marker_m`. Target frame (OpenCV): origin at the board's top-left outer corner, x along
    the columns, y along the rows, z into the board."""

    cols: int = 7
    rows: int = 5
    square_m: float = 0.04
    marker_m: float = 0.03
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        if self.cols < 3 or self.rows < 3:
            raise ValueError(f"board {self.cols}x{self.rows} squares: need at least 3x3")
        if not 0 < self.marker_m < self.square_m:
            raise ValueError(f"marker size {self.marker_m} m must be positive and smaller than the square "
                             f"{self.square_m} m")
        if not hasattr(cv2.aruco, self.dictionary):
            raise ValueError(f"ArUco dictionary {self.dictionary!r} is unknown to OpenCV")

    @classmethod
    def parse(cls, text: str, square_m: float, marker_m: float, dictionary: str = "DICT_5X5_100") -> CharucoBoard:
        """'7x5' squares -> CharucoBoard; ValueError names the argument."""
        try:
            cols, rows = (int(v) for v in text.lower().split("x"))
        except ValueError as exc:
            raise ValueError(f"--board {text!r}: expected COLSxROWS squares, e.g. 7x5") from exc
        return cls(cols, rows, square_m, marker_m, dictionary)

    def cv_board(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_m, self.marker_m, d)

    def image(self, px_per_square: int = 80, margin_px: int = 40) -> np.ndarray:
        """Printable board (uint8 grey): exactly px_per_square pixels per square inside a white margin."""
        size = (self.cols * px_per_square + 2 * margin_px, self.rows * px_per_square + 2 * margin_px)
        return self.cv_board().generateImage(size, marginSize=margin_px)


def detect_board(rgb: np.ndarray, intr: CameraIntrinsics, board: CharucoBoard, min_corners: int = 6
                 ) -> np.ndarray | None:
    """T_cam_target (4x4, metres) of the board in an RGB image, or None when too few corners are seen."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cvb = board.cv_board()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(cvb).detectBoard(gray)
    if ids is None or len(ids) < min_corners:
        return None
    obj, img = cvb.matchImagePoints(corners, ids)
    if len(obj) < min_corners:
        return None
    dist = np.asarray(intr.distortion, float) if intr.distortion_model in ("plumb_bob", "rational_polynomial") \
        else np.zeros(5)  # RealSense color streams report (near) zero Brown-Conrady/inverse coefficients
    ok, rvec, tvec = cv2.solvePnP(obj, img, intr.K, dist, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    return se3.make_T(cv2.Rodrigues(rvec)[0], tvec.ravel())


@dataclass(frozen=True)
class HandEyeResult:
    T: np.ndarray  # T_tcp_cam (eye_in_hand) or T_base_cam (eye_to_hand)
    method: str
    translation_mm: np.ndarray  # per sample, distance of its constant-transform estimate from the mean
    rotation_deg: np.ndarray

    @property
    def summary(self) -> dict[str, float]:
        return {"translation_mm": float(np.median(self.translation_mm)), "rotation_deg": float(np.median(self.rotation_deg)),
                "translation_mm_max": float(self.translation_mm.max()), "rotation_deg_max": float(self.rotation_deg.max()),
                "samples": int(self.translation_mm.size)}


def _constant_part(kind: str, T_base_tcp: np.ndarray, X: np.ndarray, T_cam_target: np.ndarray) -> np.ndarray:
    if kind == "eye_in_hand":
        return T_base_tcp @ X @ T_cam_target  # T_base_target
    return se3.invert_T(T_base_tcp) @ X @ T_cam_target  # T_tcp_target


def residuals(kind: str, T_base_tcp: list[np.ndarray], T_cam_target: list[np.ndarray], X: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample translation (mm) and rotation (deg) distance of the constant transform from its mean."""
    consts = np.stack([_constant_part(kind, a, X, b) for a, b in zip(T_base_tcp, T_cam_target)])
    mean_t = consts[:, :3, 3].mean(0)
    mean_R = Rotation.from_matrix(consts[:, :3, :3]).mean()
    dt = np.linalg.norm(consts[:, :3, 3] - mean_t, axis=1) * 1e3
    dr = np.rad2deg((Rotation.from_matrix(consts[:, :3, :3]) * mean_R.inv()).magnitude())
    return dt, dr


def solve_hand_eye(kind: str, T_base_tcp: list[np.ndarray], T_cam_target: list[np.ndarray]) -> HandEyeResult:
    """X from >= 3 pose pairs with rotations about different axes; see the module docstring for frames."""
    if kind not in ("eye_in_hand", "eye_to_hand"):
        raise ValueError(f"kind {kind!r} must be eye_in_hand or eye_to_hand")
    if len(T_base_tcp) != len(T_cam_target):
        raise ValueError(f"{len(T_base_tcp)} TCP poses but {len(T_cam_target)} board poses")
    if len(T_base_tcp) < MIN_SAMPLES:
        raise ValueError(f"{len(T_base_tcp)} samples: hand-eye calibration needs at least {MIN_SAMPLES} "
                         "(in practice 15+, with large rotations about different axes)")
    robot = T_base_tcp if kind == "eye_in_hand" else [se3.invert_T(T) for T in T_base_tcp]
    R_r = [T[:3, :3] for T in robot]
    t_r = [T[:3, 3] for T in robot]
    R_c = [T[:3, :3] for T in T_cam_target]
    t_c = [T[:3, 3] for T in T_cam_target]
    best: HandEyeResult | None = None
    for name, flag in METHODS.items():
        try:
            R, t = cv2.calibrateHandEye(R_r, t_r, R_c, t_c, method=flag)
        except cv2.error:
            continue
        X = se3.make_T(R, t.ravel())
        if not np.all(np.isfinite(X)):
            continue
        dt, dr = residuals(kind, T_base_tcp, T_cam_target, X)
        if best is None or np.median(dt) + np.median(dr) < np.median(best.translation_mm) + np.median(best.rotation_deg):
            best = HandEyeResult(X, name, dt, dr)
    if best is None:
        raise ValueError("every hand-eye solver failed: the poses are degenerate (too little rotation?)")
    return best


def still_frames(T_base_tcp: np.ndarray, window: int = 2, max_mm: float = 0.5, max_deg: float = 0.1) -> np.ndarray:
    """Indices of frames where the TCP moved less than max_mm / max_deg over +-window frames.

    Calibration samples must come from a robot at rest: the camera and the robot feedback are not sampled at
    the same instant, so a moving arm turns their time offset into a pose error.
    """
    n = len(T_base_tcp)
    keep = []
    for i in range(window, n - window):
        seg = T_base_tcp[i - window:i + window + 1]
        dp = np.linalg.norm(seg[:, :3, 3] - seg[window, :3, 3], axis=1).max() * 1e3
        dr = max(np.rad2deg(se3.rotation_angle(seg[window, :3, :3].T @ T[:3, :3])) for T in seg)
        if dp <= max_mm and dr <= max_deg:
            keep.append(i)
    return np.asarray(keep, dtype=int)


def one_per_pose(indices: np.ndarray, T_base_tcp: np.ndarray, min_mm: float = 5.0, min_deg: float = 2.0) -> np.ndarray:
    """From runs of still frames, keep one frame per distinct robot pose (the first one)."""
    kept: list[int] = []
    for i in indices:
        if not kept:
            kept.append(int(i))
            continue
        T0, T1 = T_base_tcp[kept[-1]], T_base_tcp[i]
        if (np.linalg.norm(T1[:3, 3] - T0[:3, 3]) * 1e3 >= min_mm
                or np.rad2deg(se3.rotation_angle(T0[:3, :3].T @ T1[:3, :3])) >= min_deg):
            kept.append(int(i))
    return np.asarray(kept, dtype=int)
