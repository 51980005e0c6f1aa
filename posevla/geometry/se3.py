"""Rigid transforms on 4x4 matrices and xyz + quaternion (xyzw), rotation conversions and interpolation.

`T_a_b` maps coordinates in frame b to frame a: p_a = T_a_b @ p_b; composition T_a_c = T_a_b @ T_b_c.
Euler angles are extrinsic 'xyz' (roll about x, then pitch about y, then yaw about z, fixed axes), radians.
The 6D rotation is the first two columns of R, stacked as [r11, r21, r31, r12, r22, r32]. All functions
accept leading batch dimensions.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation, Slerp

EULER_SEQ = "xyz"


def make_T(R: ArrayLike, t: ArrayLike) -> np.ndarray:
    """(...,3,3) rotation and (...,3) translation -> (...,4,4)."""
    R, t = np.asarray(R, dtype=float), np.asarray(t, dtype=float)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (...,4,4): T_b_a from T_a_b."""
    T = np.asarray(T, dtype=float)
    Rt = np.swapaxes(T[..., :3, :3], -1, -2)
    return make_T(Rt, -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3]))


def is_rigid(T: np.ndarray, tol: float = 1e-6) -> bool:
    """True when every T is finite, has an orthonormal rotation with det +1 and a last row [0,0,0,1]."""
    T = np.asarray(T, dtype=float)
    if T.shape[-2:] != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[..., :3, :3]
    eye = np.einsum("...ji,...jk->...ik", R, R)
    return bool(np.all(np.abs(eye - np.eye(3)) < tol) and np.all(np.abs(np.linalg.det(R) - 1) < tol)
                and np.all(np.abs(T[..., 3, :] - [0, 0, 0, 1]) < tol))


def T_from_pos_quat(p: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """Position (...,3) metres and quaternion (...,4) xyzw -> (...,4,4). The quaternion is normalised."""
    q = np.asarray(q_xyzw, dtype=float)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(~np.isfinite(q)) or np.any(n < 1e-9):
        raise ValueError(f"quaternion {q.tolist()} is not finite or has zero norm")
    R = Rotation.from_quat((q / n).reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))
    return make_T(R, p)


def pos_quat_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(...,4,4) -> position (...,3), quaternion (...,4) xyzw with w >= 0."""
    T = np.asarray(T, dtype=float)
    q = Rotation.from_matrix(T[..., :3, :3].reshape(-1, 3, 3)).as_quat().reshape(T.shape[:-2] + (4,))
    q = np.where(q[..., 3:4] < 0, -q, q)
    return T[..., :3, 3].copy(), q


def euler_from_matrix(R: np.ndarray) -> np.ndarray:
    """(...,3,3) -> extrinsic xyz Euler angles (...,3) [roll, pitch, yaw] in radians, scipy's convention
    (R = Rz(yaw) Ry(pitch) Rx(roll); pitch in [-pi/2, pi/2]).

    Pitch from atan2 (not asin), yaw from the first column, then roll from what is left: near gimbal lock
    yaw is ill-defined, but roll absorbs its error, so the angles rebuild R to machine precision (scipy's
    as_euler is off by ~1e-8 there)."""
    R = np.asarray(R, dtype=float)
    pitch = np.arctan2(-R[..., 2, 0], np.hypot(R[..., 0, 0], R[..., 1, 0]))
    yaw = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    m01 = cy * R[..., 0, 1] + sy * R[..., 1, 1]  # (Rz(yaw)^T R)[0, 1]
    m11 = -sy * R[..., 0, 1] + cy * R[..., 1, 1]
    roll = np.arctan2(sp * m01 + cp * R[..., 2, 1], m11)  # (Ry(pitch)^T Rz(yaw)^T R) = Rx(roll)
    return np.stack([roll, pitch, yaw], axis=-1)


def matrix_from_euler(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=float)
    return Rotation.from_euler(EULER_SEQ, e.reshape(-1, 3)).as_matrix().reshape(e.shape[:-1] + (3, 3))


def T_from_xyz_rpy(xyz: np.ndarray, rpy: np.ndarray) -> np.ndarray:
    """Position (...,3) metres and extrinsic xyz Euler angles (...,3) radians -> (...,4,4)."""
    return make_T(matrix_from_euler(rpy), xyz)


def xyz_rpy_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.asarray(T, dtype=float)
    return T[..., :3, 3].copy(), euler_from_matrix(T[..., :3, :3])


def rot6d_from_matrix(R: np.ndarray) -> np.ndarray:
    """(...,3,3) -> (...,6): first column then second column."""
    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def matrix_from_rot6d(x: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """(...,6) -> (...,3,3) by Gram-Schmidt (any non-degenerate 6D vector gives a proper rotation)."""
    x = np.asarray(x, dtype=float)
    a, b = x[..., :3], x[..., 3:]
    c1 = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), eps)
    b = b - np.sum(c1 * b, axis=-1, keepdims=True) * c1
    c2 = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), eps)
    c3 = np.cross(c1, c2)
    return np.stack([c1, c2, c3], axis=-1)


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Angle (radians, 0..pi) of rotation matrices (...,3,3).

    atan2(2 sin, 2 cos) rather than arccos(cos): accurate for small angles, where arccos loses half the digits.
    """
    R = np.asarray(R, dtype=float)
    two_sin = np.linalg.norm(np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                                       R[..., 1, 0] - R[..., 0, 1]], axis=-1), axis=-1)
    return np.arctan2(two_sin, np.trace(R, axis1=-2, axis2=-1) - 1)


def slerp_T(T0: np.ndarray, T1: np.ndarray, s: float | np.ndarray) -> np.ndarray:
    """Interpolate between two poses: linear in position, spherical-linear in rotation; s in [0, 1]."""
    s_arr = np.atleast_1d(np.asarray(s, dtype=float))
    rots = Rotation.from_matrix(np.stack([np.asarray(T0)[:3, :3], np.asarray(T1)[:3, :3]]))
    R = Slerp([0.0, 1.0], rots)(np.clip(s_arr, 0.0, 1.0)).as_matrix()
    p = (1 - s_arr)[:, None] * np.asarray(T0)[:3, 3] + s_arr[:, None] * np.asarray(T1)[:3, 3]
    out = make_T(R, p)
    return out[0] if np.ndim(s) == 0 else out


def transform_points(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Apply T_a_b (4,4) to points p_b (...,3) -> p_a (...,3)."""
    T = np.asarray(T, dtype=float)
    return np.asarray(p, dtype=float) @ T[:3, :3].T + T[:3, 3]


def quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """(...,3,3) -> (...,4) xyzw with w >= 0."""
    R = np.asarray(R, dtype=float)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(R.shape[:-2] + (4,))
    return np.where(q[..., 3:4] < 0, -q, q)


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    """(...,4) xyzw (normalised here) -> (...,3,3), pure numpy (fast for single rotations in control loops)."""
    q = np.asarray(q, dtype=float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def quat_slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical-linear interpolation of two xyzw quaternions along the shorter arc, s in [0, 1]."""
    q0, q1 = np.asarray(q0, dtype=float), np.asarray(q1, dtype=float)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    # angle between the quaternions via atan2 (accurate when they are close, unlike arccos of the dot product)
    theta = 2.0 * np.arctan2(np.linalg.norm(q1 - q0), np.linalg.norm(q1 + q0))
    if theta < 1e-9:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    return (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)
