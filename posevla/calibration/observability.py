"""Can these robot motions determine a hand-eye transform at all? Checked before any solver runs.

Hand-eye calibration solves A_k X = X B_k for the relative robot motions A_k (Tsai & Lenz 1989; Park &
Martin 1994). Its translation part is (R_Ak - I) t_X = R_X t_Bk - t_Ak: each motion constrains t_X only
perpendicular to its rotation axis, because (R - I) has singular values 2 sin(theta/2), 2 sin(theta/2), 0
with the axis as null space. Stacking all motions, (R_Ak - I)^T (R_Ak - I) = 4 sin^2(theta_k/2)(I - k k^T), so

    M = mean_k 4 sin^2(theta_k / 2) (I - a_k a_k^T)        (a_k: unit rotation axis, theta_k: angle)

is the information the motions carry about t_X (and, to first order, about the rotation of X: Park's
rotation fit aligns the axes, and a rotation about the only axis used is unobservable the same way).
A translation error sigma_t in the measured motions becomes roughly sigma_t / sqrt(lambda_min(M)) per
motion in X along the weakest direction.

Checks (relative motions between every pair of samples, robot side, as the solvers see them):
- `rotation_deg`: RMS rotation angle of the relative motions >= MIN_ROTATION_DEG = 10 deg. Pure
  translations give 0 and leave t_X completely free; below ~10 deg the 1/(2 sin(theta/2)) amplification
  exceeds 5.7 per motion, i.e. 1 mm of PnP noise at 0.4 m becomes several mm in X.
- `axis_spread_deg` = 2 asin(sqrt(2 lambda_min(M) / trace(M))): the angle between the rotation axes, exact
  for two equally used axes (capped at 90 deg, which axes spread in all directions reach), >= MIN_AXIS_SPREAD_DEG
  = 30 deg. Rotations about a single axis give ~0: the translation along that axis is free (the wrong
  solutions of the issue were 2-15 m off). At 30 deg, the weakest direction still gets sin^2(15 deg) = 7 %
  of the motion's information, i.e. its sigma is at most ~2.7x that of the best direction (measured
  condition numbers of well-spread sets are 1.2-2).
- `condition`: sqrt(lambda_max(M) / lambda_min(M)), reported (inf when singular).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

MIN_ROTATION_DEG = 10.0
MIN_AXIS_SPREAD_DEG = 30.0


@dataclass(frozen=True)
class Observability:
    samples: int
    rotation_deg: float  # RMS relative rotation angle
    max_rotation_deg: float
    axis_spread_deg: float  # equivalent angle between two equally used rotation axes (0 = one axis)
    condition: float  # sqrt(lambda_max / lambda_min) of M (inf when singular)
    dominant_axis: np.ndarray  # unit vector, frame of the robot side (TCP frame eye-in-hand, base eye-to-hand)
    weakest_direction: np.ndarray  # unit vector: where t_X is least determined
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"{self.samples} samples: relative rotations RMS {self.rotation_deg:.1f} deg (max "
                f"{self.max_rotation_deg:.1f}), axis spread {self.axis_spread_deg:.1f} deg, condition "
                f"{self.condition:.1f}")


def _axis_name(v: np.ndarray, frame: str) -> str:
    names = ("x", "y", "z")
    i = int(np.argmax(np.abs(v)))
    if abs(v[i]) > 0.9:
        return f"{frame} {names[i]}"
    return f"{frame} ({v[0]:+.2f}, {v[1]:+.2f}, {v[2]:+.2f})"


def check_motions(robot_motions: list[np.ndarray], frame: str = "TCP",
                  min_rotation_deg: float = MIN_ROTATION_DEG, min_axis_spread_deg: float = MIN_AXIS_SPREAD_DEG
                  ) -> Observability:
    """Observability of X from the robot-side poses (T_base_tcp eye-in-hand, inv(T_base_tcp) eye-to-hand).

    `frame` names the frame the relative rotation axes are expressed in, for the operator's message."""
    n = len(robot_motions)
    R = np.stack([np.asarray(T, float)[:3, :3] for T in robot_motions]) if n else np.zeros((0, 3, 3))
    rotvecs = []
    for i in range(n):
        for j in range(i + 1, n):
            rotvecs.append(Rotation.from_matrix(R[i].T @ R[j]).as_rotvec())
    rv = np.asarray(rotvecs).reshape(-1, 3)
    theta = np.linalg.norm(rv, axis=1)
    if rv.shape[0] == 0 or not np.all(np.isfinite(rv)):
        return Observability(n, 0.0, 0.0, 0.0, float("inf"), np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0]),
                             ("fewer than 2 finite robot poses",))
    axes = rv / np.maximum(theta, 1e-12)[:, None]
    w = 4 * np.sin(theta / 2) ** 2
    M = np.einsum("k,kij->ij", w, np.eye(3)[None] - np.einsum("ki,kj->kij", axes, axes)) / len(w)
    ev, evec = np.linalg.eigh(M)
    S = np.einsum("k,ki,kj->ij", w, axes, axes)
    dominant = np.linalg.eigh(S)[1][:, -1] if w.sum() > 0 else np.array([0.0, 0.0, 1.0])
    trace = float(ev.sum())
    # two equally used axes at angle phi: M's eigenvalues are (W/2)(1 - cos phi), (W/2)(1 + cos phi), W with
    # W = trace/2, so lambda_min / W = sin^2(phi/2)
    frac = float(np.clip(ev[0] / (trace / 2), 0.0, 1.0)) if trace > 1e-12 else 0.0
    spread = float(np.rad2deg(2 * np.arcsin(np.sqrt(min(frac, 0.5)))))
    cond = float(np.sqrt(ev[-1] / ev[0])) if ev[0] > 1e-12 * max(ev[-1], 1e-300) and ev[-1] > 0 else float("inf")
    rms = float(np.rad2deg(np.sqrt(np.mean(theta ** 2))))
    mx = float(np.rad2deg(theta.max()))
    problems = []
    if rms < min_rotation_deg:
        problems.append(f"the arm barely rotates between samples (RMS {rms:.1f} deg < {min_rotation_deg:g} deg; pure "
                        "translations leave the camera's position unobservable): add poses that tilt the gripper "
                        f"by 20-45 deg about at least two different axes, e.g. {frame} x and {frame} y")
    elif spread < min_axis_spread_deg:
        other = np.cross(dominant, [1.0, 0.0, 0.0] if abs(dominant[0]) < 0.9 else [0.0, 1.0, 0.0])
        other /= np.linalg.norm(other)
        problems.append(f"the rotations are all about nearly one axis ({_axis_name(dominant, frame)}; spread "
                        f"{spread:.1f} deg < {min_axis_spread_deg:g} deg), so the position along it is unobservable: "
                        f"add poses rotated 20-45 deg about an axis perpendicular to it, e.g. "
                        f"{_axis_name(other, frame)}")
    return Observability(n, rms, mx, spread, cond, dominant, evec[:, 0], tuple(problems))
