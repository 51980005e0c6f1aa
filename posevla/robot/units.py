"""The one place where the controller's units meet the stack's: mm/deg <-> m/rad.

Dobot poses are [x, y, z (mm), rx, ry, rz (deg)] of the TCP in the arm's base frame, with rx, ry, rz
fixed-axis (extrinsic) X-Y-Z angles, i.e. R = Rz(rz) Ry(ry) Rx(rx) -- the same convention as
`posevla.geometry.se3` Euler angles.
"""
from __future__ import annotations

import numpy as np

from posevla.geometry import se3

MM_PER_M = 1000.0


def joints_to_controller(q_rad: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.asarray(q_rad, dtype=np.float64))


def joints_from_controller(q_deg: np.ndarray) -> np.ndarray:
    return np.deg2rad(np.asarray(q_deg, dtype=np.float64))


def pose_to_controller(T_armbase_tcp: np.ndarray) -> np.ndarray:
    """4x4 (metres) -> [x, y, z mm, rx, ry, rz deg]."""
    xyz, rpy = se3.xyz_rpy_from_T(T_armbase_tcp)
    return np.concatenate([xyz * MM_PER_M, np.rad2deg(rpy)])


def pose_from_controller(p: np.ndarray) -> np.ndarray:
    """[x, y, z mm, rx, ry, rz deg] -> 4x4 (metres)."""
    p = np.asarray(p, dtype=np.float64)
    return se3.T_from_xyz_rpy(p[:3] / MM_PER_M, np.deg2rad(p[3:6]))
