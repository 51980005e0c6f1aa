"""Joint nonlinear refinement of a hand-eye transform over all board views, with its covariance.

Unknowns (12): X (T_tcp_cam eye-in-hand, T_base_cam eye-to-hand) and Y, the board pose that stays constant
(T_base_target eye-in-hand: board on the table; T_tcp_target eye-to-hand: board in the gripper). Each view i
predicts the board in the camera,
    eye-in-hand:  T_cam_target_i = inv(X) @ inv(T_base_tcp_i) @ Y
    eye-to-hand:  T_cam_target_i = inv(X) @ T_base_tcp_i @ Y
and the residuals are the pixel differences between the detected ChArUco corners and the corners projected
through that prediction (camera intrinsics and distortion fixed, robot poses taken as exact). This is the
maximum-likelihood estimate under Gaussian corner noise, which the closed-form solvers (that first turn each
view into a noisy pose, then fit rotations and translations separately) are not; it starts from the best
closed-form result and is solved with scipy.optimize.least_squares (trust region, analytic-free 2-point
Jacobian; 12 parameters).

Parametrisation, also the frame of the reported uncertainty: X = (exp([w]) R_X0, t_X0 + v), i.e. the
rotation perturbation w (rad) about the PARENT frame's x, y, z axes and the translation v (m) along them.
Covariance: s^2 (J^T J)^-1 with s^2 = sum(r^2) / (m - 12), the Gauss-Newton approximation at the optimum
(first-order, assumes independent corner noise of equal variance; s is estimated from the data itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from posevla.calibration.views import distortion_of
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics

MAX_COND = 1e10  # J^T J beyond this is singular to double precision after scaling: no covariance


@dataclass
class Refined:
    X: np.ndarray
    Y: np.ndarray
    view_rms_px: np.ndarray  # per view, reprojection RMS under (X, Y)
    rms_px: float  # over all corners
    cov: np.ndarray  # 12x12: [w_X (rad), v_X (m), w_Y, v_Y]
    sigma_translation_mm: np.ndarray  # 1-sigma of X's translation along the parent x, y, z
    sigma_rotation_deg: np.ndarray  # 1-sigma of X's rotation about the parent x, y, z
    iterations: int


def _apply(T0: np.ndarray, p: np.ndarray) -> np.ndarray:
    return se3.make_T(Rotation.from_rotvec(p[:3]).as_matrix() @ T0[:3, :3], T0[:3, 3] + p[3:6])


def predicted_cam_target(kind: str, T_base_tcp: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """T_cam_target of one view predicted by the hand-eye model (see the module docstring)."""
    robot = se3.invert_T(T_base_tcp) if kind == "eye_in_hand" else T_base_tcp
    return se3.invert_T(X) @ robot @ Y


def constant_part(kind: str, T_base_tcp: np.ndarray, X: np.ndarray, T_cam_target: np.ndarray) -> np.ndarray:
    """Y seen through one view: T_base_target (eye-in-hand) or T_tcp_target (eye-to-hand)."""
    robot = T_base_tcp if kind == "eye_in_hand" else se3.invert_T(T_base_tcp)
    return robot @ X @ T_cam_target


def project_views(kind: str, T_base_tcp: list[np.ndarray], obj: list[np.ndarray], intr: CameraIntrinsics,
                  X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(sum N_i, 2) pixels of every view's corners predicted by the hand-eye model (X, Y)."""
    K, dist = intr.K, distortion_of(intr)
    out = []
    for Tr, o in zip(T_base_tcp, obj):
        T = predicted_cam_target(kind, Tr, X, Y)
        rvec = cv2.Rodrigues(T[:3, :3])[0]
        out.append(cv2.projectPoints(np.asarray(o, float).reshape(-1, 3), rvec, T[:3, 3].copy(), K, dist)[0]
                   .reshape(-1, 2))
    return np.concatenate(out)


def view_rms(kind: str, T_base_tcp: list[np.ndarray], obj: list[np.ndarray], img: list[np.ndarray],
             intr: CameraIntrinsics, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Per-view reprojection RMS (px) of the detected corners under the hand-eye model (X, Y)."""
    err = project_views(kind, T_base_tcp, obj, intr, X, Y) - np.concatenate([np.reshape(p, (-1, 2)) for p in img])
    out, k = [], 0
    for o in obj:
        s = len(o)
        out.append(float(np.sqrt(np.mean(np.sum(err[k:k + s] ** 2, axis=1)))))
        k += s
    return np.asarray(out)


def refine(kind: str, T_base_tcp: list[np.ndarray], obj: list[np.ndarray], img: list[np.ndarray],
           intr: CameraIntrinsics, X0: np.ndarray, Y0: np.ndarray) -> Refined:
    """Minimise the corner reprojection error over X and Y; ValueError when the problem is singular."""
    measured = np.concatenate([np.asarray(p, float).reshape(-1, 2) for p in img])
    sizes = [len(o) for o in obj]

    def project(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return project_views(kind, T_base_tcp, obj, intr, X, Y)

    def fun(p: np.ndarray) -> np.ndarray:
        return (project(_apply(X0, p[:6]), _apply(Y0, p[6:])) - measured).ravel()

    r0 = fun(np.zeros(12))
    if not np.all(np.isfinite(r0)):
        raise ValueError("refinement: the starting transform projects corners to non-finite pixels")
    # x_scale: 1 mrad ~ 1 mm, so the trust region treats rotation and translation alike
    sol = least_squares(fun, np.zeros(12), method="trf", x_scale=np.full(12, 1e-3), xtol=1e-12, ftol=1e-12,
                        gtol=1e-12, max_nfev=200)
    if not np.all(np.isfinite(sol.x)) or not np.all(np.isfinite(sol.fun)):
        raise ValueError("refinement diverged (non-finite parameters)")
    X, Y = _apply(X0, sol.x[:6]), _apply(Y0, sol.x[6:])
    res = sol.fun.reshape(-1, 2)
    m, n = sol.fun.size, 12
    if m <= n:
        raise ValueError(f"refinement: {m} residuals for {n} unknowns")
    J = sol.jac
    JTJ = J.T @ J
    d = np.sqrt(np.maximum(np.diag(JTJ), 1e-300))
    scaled = JTJ / np.outer(d, d)
    ev = np.linalg.eigvalsh(scaled)
    if not np.all(np.isfinite(ev)) or ev[0] <= 0 or ev[-1] / ev[0] > MAX_COND:
        raise ValueError("refinement: the views do not determine the transform (singular Jacobian; condition "
                         f"{ev[-1] / max(ev[0], 1e-300):.1e})")
    s2 = float(np.sum(sol.fun ** 2) / (m - n))
    cov = s2 * (np.linalg.inv(scaled) / np.outer(d, d))
    sig = np.sqrt(np.diag(cov))
    per_view = []
    k = 0
    for s in sizes:
        per_view.append(float(np.sqrt(np.mean(np.sum(res[k:k + s] ** 2, axis=1)))))
        k += s
    return Refined(X, Y, np.asarray(per_view), float(np.sqrt(np.mean(np.sum(res ** 2, axis=1)))), cov,
                   sig[3:6] * 1e3, np.rad2deg(sig[0:3]), int(sol.nfev))


def mean_constant(kind: str, T_base_tcp: list[np.ndarray], X: np.ndarray, T_cam_target: list[np.ndarray]
                  ) -> np.ndarray:
    """Y as the mean (translation mean, rotation chordal mean) of its estimate through every view."""
    C = np.stack([constant_part(kind, a, X, b) for a, b in zip(T_base_tcp, T_cam_target)])
    return se3.make_T(Rotation.from_matrix(C[:, :3, :3]).mean().as_matrix(), C[:, :3, 3].mean(0))
