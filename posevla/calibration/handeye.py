"""Hand-eye calibration from (TCP pose, calibration-board pose) pairs.

Frames: T_base_tcp (robot feedback, base_link), T_cam_target (board seen by the camera, from solvePnP).
- eye_in_hand (wrist camera): solve X = T_tcp_cam with the board fixed in the world:
  T_base_target = T_base_tcp_i @ X @ T_cam_target_i is the same for every sample.
- eye_to_hand (head camera): solve X = T_base_cam with the board fixed on the gripper:
  T_tcp_target = inv(T_base_tcp_i) @ X @ T_cam_target_i is the same for every sample.
Residuals are the spread of that constant transform over the samples (translation in mm, rotation in deg):
what a user can read as "how far apart would the board be, seen through each sample".
OpenCV's four classical solvers are run and the one with the smallest median residual is kept, after the
motions were checked to determine X at all (`posevla.calibration.observability`); singular or non-finite
solver results are refusals. `posevla.calibration.pipeline` adds per-view checks, outlier trimming, a joint
reprojection-error refinement and the uncertainty of the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from posevla.calibration.observability import Observability, check_motions
from posevla.calibration.refine import constant_part
from posevla.calibration.views import MIN_CORNERS, BoardView, ViewChecks, detect_corners, solve_view
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


def detect_board(rgb: np.ndarray, intr: CameraIntrinsics, board: CharucoBoard, min_corners: int = MIN_CORNERS
                 ) -> np.ndarray | None:
    """T_cam_target (4x4, metres) of the board in an RGB image, or None when the view fails a check of
    `posevla.calibration.views` (too few corners, collinear or tiny coverage, high reprojection error,
    ambiguous PnP). `detect_view` gives the reason."""
    v = detect_view(rgb, intr, board, ViewChecks(min_corners=min_corners))
    return v.T_cam_target if v.ok else None


def detect_view(rgb: np.ndarray, intr: CameraIntrinsics, board: CharucoBoard, checks: ViewChecks = ViewChecks()
                ) -> BoardView:
    """Corners, board pose and the per-view checks of one RGB image (never raises on a bad view)."""
    obj, img, ids = detect_corners(rgb, board)
    return solve_view(obj, img, ids, intr, board, checks)


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


def residuals(kind: str, T_base_tcp: list[np.ndarray], T_cam_target: list[np.ndarray], X: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample translation (mm) and rotation (deg) distance of the constant transform from its mean."""
    consts = np.stack([constant_part(kind, a, X, b) for a, b in zip(T_base_tcp, T_cam_target)])
    mean_t = consts[:, :3, 3].mean(0)
    mean_R = Rotation.from_matrix(consts[:, :3, :3]).mean()
    dt = np.linalg.norm(consts[:, :3, 3] - mean_t, axis=1) * 1e3
    dr = np.rad2deg((Rotation.from_matrix(consts[:, :3, :3]) * mean_R.inv()).magnitude())
    return dt, dr


def _check_inputs(kind: str, T_base_tcp: list[np.ndarray], T_cam_target: list[np.ndarray]) -> None:
    if kind not in ("eye_in_hand", "eye_to_hand"):
        raise ValueError(f"kind {kind!r} must be eye_in_hand or eye_to_hand")
    if len(T_base_tcp) != len(T_cam_target):
        raise ValueError(f"{len(T_base_tcp)} TCP poses but {len(T_cam_target)} board poses")
    if len(T_base_tcp) < MIN_SAMPLES:
        raise ValueError(f"{len(T_base_tcp)} samples: hand-eye calibration needs at least {MIN_SAMPLES} "
                         "(in practice 15+, with large rotations about different axes)")
    for name, Ts in (("TCP pose", T_base_tcp), ("board pose", T_cam_target)):
        for i, T in enumerate(Ts):
            T = np.asarray(T, float)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)) or not se3.is_rigid(T, 1e-6):
                raise ValueError(f"sample {i}: {name} is not a finite rigid 4x4 transform")


def robot_side(kind: str, T_base_tcp: list[np.ndarray]) -> list[np.ndarray]:
    """The 'gripper' poses handed to the solvers: T_base_tcp eye-in-hand, inv(T_base_tcp) eye-to-hand."""
    return list(T_base_tcp) if kind == "eye_in_hand" else [se3.invert_T(T) for T in T_base_tcp]


def check_observable(kind: str, T_base_tcp: list[np.ndarray]) -> Observability:
    """Observability of X from these robot poses; ValueError (with the motions to add) when unobservable."""
    obs = check_motions(robot_side(kind, T_base_tcp), frame="TCP" if kind == "eye_in_hand" else "base")
    if not obs.ok:
        raise ValueError(f"hand-eye calibration refused, the motions cannot determine the camera pose "
                         f"({obs.summary()}): " + "; ".join(obs.problems))
    return obs


def closed_form(kind: str, T_base_tcp: list[np.ndarray], T_cam_target: list[np.ndarray],
                methods: tuple[str, ...] = tuple(METHODS)) -> dict[str, np.ndarray | str]:
    """Every OpenCV solver's X, or the reason it was refused (exception, non-finite or non-rigid result:
    determinant 0 or -1 is a refusal, never passed on)."""
    robot = robot_side(kind, T_base_tcp)
    R_r = [T[:3, :3] for T in robot]
    t_r = [T[:3, 3] for T in robot]
    R_c = [T[:3, :3] for T in T_cam_target]
    t_c = [T[:3, 3] for T in T_cam_target]
    out: dict[str, np.ndarray | str] = {}
    for name in methods:
        try:
            R, t = cv2.calibrateHandEye(R_r, t_r, R_c, t_c, method=METHODS[name])
        except cv2.error as exc:
            out[name] = f"OpenCV error: {str(exc).strip().splitlines()[-1]}"
            continue
        R, t = np.asarray(R, float), np.asarray(t, float).ravel()
        if R.shape != (3, 3) or t.shape != (3,) or not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            out[name] = "non-finite result"
            continue
        det = float(np.linalg.det(R))
        if abs(det - 1) > 1e-4 or np.abs(R.T @ R - np.eye(3)).max() > 1e-4:
            out[name] = f"not a rotation (determinant {det:.3f})"
            continue
        out[name] = se3.make_T(R, t)
    return out


def solve_hand_eye(kind: str, T_base_tcp: list[np.ndarray], T_cam_target: list[np.ndarray]) -> HandEyeResult:
    """The best closed-form X (smallest median residual) from >= 3 pose pairs with rotations about different
    axes; see the module docstring for frames. ValueError when the motions cannot determine X or every solver
    fails. `posevla.calibration.pipeline.calibrate` adds view checks, outlier trimming and refinement."""
    _check_inputs(kind, T_base_tcp, T_cam_target)
    check_observable(kind, T_base_tcp)
    best: HandEyeResult | None = None
    failures = []
    for name, X in closed_form(kind, T_base_tcp, T_cam_target).items():
        if isinstance(X, str):
            failures.append(f"{name}: {X}")
            continue
        dt, dr = residuals(kind, T_base_tcp, T_cam_target, X)
        if best is None or np.median(dt) + np.median(dr) < np.median(best.translation_mm) + np.median(best.rotation_deg):
            best = HandEyeResult(X, name, dt, dr)
    if best is None:
        raise ValueError("every hand-eye solver failed (" + "; ".join(failures) + ")")
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
