"""One board view: ChArUco corners -> board pose (T_cam_target, metres) with the checks that make it usable.

A view is accepted only when all of these hold (each refusal names its reason):
- corners: at least `min_corners` (default 6) ChArUco corners;
- spread: the corners must span a 2-D area of the board, not a line. Measured in the board plane (metres):
  the minor/major ratio of the corners' standard deviations (`min_aspect`, default 0.15; six corners on
  one row give 0) and the area of their convex hull as a fraction of the board's inner-corner rectangle
  (`min_coverage`, default 0.15). A line of corners leaves the rotation about that line free: PnP then
  returns a pose tens of degrees wrong with a small reprojection error;
- reprojection: RMS of the PnP residual below `max_rms_px` (default 3 px: detected ChArUco corners are
  good to ~0.1-0.3 px, so an RMS of several pixels means a wrong detection, motion blur or wrong intrinsics);
- ambiguity: a planar target has two PnP minima (IPPE, Collins & Bartoli 2014, returns both). When the
  second one explains the corners almost as well (RMS ratio below `min_ambiguity_ratio`, default 1.5) and
  the two poses differ by more than `ambiguity_deg` (default 2 deg), the view cannot tell them apart and is
  refused (typical of small, far or fronto-parallel boards).
The accepted pose is the better IPPE solution refined by Levenberg-Marquardt on the reprojection error.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics

MIN_CORNERS = 6
MIN_ASPECT = 0.15
MIN_COVERAGE = 0.15
MAX_RMS_PX = 3.0
MIN_AMBIGUITY_RATIO = 1.5
AMBIGUITY_DEG = 2.0


@dataclass(frozen=True)
class ViewChecks:
    """Thresholds of the per-view checks (see the module docstring)."""

    min_corners: int = MIN_CORNERS
    min_aspect: float = MIN_ASPECT
    min_coverage: float = MIN_COVERAGE
    max_rms_px: float = MAX_RMS_PX
    min_ambiguity_ratio: float = MIN_AMBIGUITY_RATIO
    ambiguity_deg: float = AMBIGUITY_DEG


@dataclass
class BoardView:
    """Corners of one image and the board pose solved from them. `reason` is None for an accepted view."""

    obj: np.ndarray  # (N, 3) corner positions in the target frame, metres
    img: np.ndarray  # (N, 2) detected pixel positions
    ids: np.ndarray  # (N,) ChArUco corner ids
    T_cam_target: np.ndarray | None = None
    rms_px: float = float("nan")
    aspect: float = 0.0
    coverage: float = 0.0
    ambiguity_ratio: float = float("inf")
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def n(self) -> int:
        return int(len(self.obj))


def distortion_of(intr: CameraIntrinsics) -> np.ndarray:
    """OpenCV distortion vector for these intrinsics (RealSense colour streams report ~zero coefficients in
    models OpenCV does not use: treated as none)."""
    if intr.distortion_model in ("plumb_bob", "rational_polynomial"):
        return np.asarray(intr.distortion, float)
    return np.zeros(5)


def detect_corners(rgb: np.ndarray, board) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ChArUco corners of an RGB image: object points (N, 3) m, image points (N, 2) px, ids (N,).
    N may be 0."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    cvb = board.cv_board()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(cvb).detectBoard(gray)
    if ids is None or len(ids) == 0:
        return np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0, int)
    obj, img = cvb.matchImagePoints(corners, ids)
    return (np.asarray(obj, float).reshape(-1, 3), np.asarray(img, float).reshape(-1, 2),
            np.asarray(ids, int).ravel())


def _spread(obj: np.ndarray, board) -> tuple[float, float]:
    """(minor/major std ratio, convex-hull area / inner-corner rectangle area) of corners in the board plane."""
    xy = obj[:, :2]
    if len(xy) < 3:
        return 0.0, 0.0
    ev = np.linalg.eigvalsh(np.cov(xy.T))
    aspect = float(np.sqrt(max(ev[0], 0.0) / ev[1])) if ev[1] > 0 else 0.0
    hull = cv2.convexHull(xy.astype(np.float32))
    inner = (board.cols - 2) * (board.rows - 2) * board.square_m ** 2
    return aspect, float(cv2.contourArea(hull) / inner) if inner > 0 else 0.0


def _rms(obj: np.ndarray, img: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, intr: CameraIntrinsics) -> float:
    proj, _ = cv2.projectPoints(obj, rvec, tvec, intr.K, distortion_of(intr))
    return float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))


def solve_view(obj: np.ndarray, img: np.ndarray, ids: np.ndarray, intr: CameraIntrinsics, board,
               checks: ViewChecks = ViewChecks()) -> BoardView:
    """PnP of one view with the checks of the module docstring; never raises on bad geometry."""
    v = BoardView(np.asarray(obj, float).reshape(-1, 3), np.asarray(img, float).reshape(-1, 2),
                  np.asarray(ids, int).ravel())
    if v.n < checks.min_corners:
        v.reason = f"{v.n} corners (< {checks.min_corners})"
        return v
    if not (np.all(np.isfinite(v.obj)) and np.all(np.isfinite(v.img))):
        v.reason = "non-finite corner coordinates"
        return v
    v.aspect, v.coverage = _spread(v.obj, board)
    if v.aspect < checks.min_aspect:
        v.reason = (f"corners nearly collinear (minor/major spread {v.aspect:.2f} < {checks.min_aspect}): "
                    "the rotation about their line is unobservable")
        return v
    if v.coverage < checks.min_coverage:
        v.reason = f"corners cover {100 * v.coverage:.0f} % of the board (< {100 * checks.min_coverage:.0f} %)"
        return v
    dist = distortion_of(intr)
    try:
        n_sol, rvecs, tvecs, errs = cv2.solvePnPGeneric(v.obj, v.img, intr.K, dist, flags=cv2.SOLVEPNP_IPPE)
    except cv2.error as exc:
        v.reason = f"PnP failed ({str(exc).strip().splitlines()[-1]})"
        return v
    if n_sol < 1:
        v.reason = "PnP found no pose"
        return v
    sols = []
    for r, t in zip(rvecs[:n_sol], tvecs[:n_sol]):
        r, t = cv2.solvePnPRefineLM(v.obj, v.img, intr.K, dist, r.copy(), t.copy())
        sols.append((_rms(v.obj, v.img, r, t, intr), r, t))
    sols.sort(key=lambda s: s[0])
    rms, rvec, tvec = sols[0]
    if not (np.isfinite(rms) and np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):
        v.reason = "PnP returned a non-finite pose"
        return v
    v.rms_px = rms
    v.T_cam_target = se3.make_T(cv2.Rodrigues(rvec)[0], tvec.ravel())
    if len(sols) > 1:
        rms2, r2, _ = sols[1]
        v.ambiguity_ratio = float(rms2 / max(rms, 1e-9))
        gap = float(np.rad2deg(se3.rotation_angle(cv2.Rodrigues(rvec)[0].T @ cv2.Rodrigues(r2)[0])))
        if v.ambiguity_ratio < checks.min_ambiguity_ratio and gap > checks.ambiguity_deg:
            v.reason = (f"PnP ambiguous: a second pose {gap:.0f} deg away fits with RMS {rms2:.2f} px vs "
                        f"{rms:.2f} px (ratio {v.ambiguity_ratio:.2f} < {checks.min_ambiguity_ratio}); view the "
                        "board larger or more tilted")
            return v
    if rms > checks.max_rms_px:
        v.reason = f"reprojection RMS {rms:.2f} px (> {checks.max_rms_px} px)"
    return v


def board_depth_ratio(view: BoardView, depth_m: np.ndarray, intr: CameraIntrinsics, min_points: int = 4
                      ) -> float | None:
    """Median over the corners of (depth-camera distance / PnP distance), or None without enough valid depth.

    The PnP distance scales with the printed square size, the depth camera's does not: a ratio of 1.03 means
    the board is 3 % larger than the size given (or the depth is 3 % off). Depth is sampled as the median of
    the valid pixels in a 5x5 window at each corner (depth aligned to the colour image, metres, 0 = invalid).
    """
    if view.T_cam_target is None or depth_m is None or depth_m.ndim != 2:
        return None
    p_cam = view.obj @ view.T_cam_target[:3, :3].T + view.T_cam_target[:3, 3]
    h, w = depth_m.shape
    ratios = []
    for (u, vv), z in zip(np.round(view.img).astype(int), p_cam[:, 2]):
        if not (2 <= u < w - 2 and 2 <= vv < h - 2) or z <= 0:
            continue
        win = depth_m[vv - 2:vv + 3, u - 2:u + 3]
        good = win[np.isfinite(win) & (win > 0)]
        if good.size >= 5:
            ratios.append(float(np.median(good)) / z)
    return float(np.median(ratios)) if len(ratios) >= min_points else None
