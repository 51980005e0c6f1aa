"""Kinematics of a Nova-like 6-DoF arm for the simulator: standard DH chain, forward kinematics, and
damped-least-squares inverse kinematics with joint limits. Frames: arm base -> TCP (flange), metres, radians.
The DH values approximate a Dobot Nova 5 (reach about 0.85 m); they are simulator parameters, not a
calibrated model of the real arm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from posevla.geometry import se3


@dataclass
class ArmKinematics:
    d: np.ndarray = field(default_factory=lambda: np.array([0.2405, 0.0, 0.0, 0.1405, 0.1215, 0.088]))
    a: np.ndarray = field(default_factory=lambda: np.array([0.0, -0.35, -0.32, 0.0, 0.0, 0.0]))
    alpha: np.ndarray = field(default_factory=lambda: np.array([np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0]))
    q_min: np.ndarray = field(default_factory=lambda: np.deg2rad([-360, -360, -160, -360, -360, -360.0]))
    q_max: np.ndarray = field(default_factory=lambda: np.deg2rad([360, 360, 160, 360, 360, 360.0]))

    def fk(self, q: np.ndarray) -> np.ndarray:
        """T_armbase_tcp for joint angles q (6,) radians."""
        T = np.eye(4)
        for qi, d, a, al in zip(np.asarray(q, float), self.d, self.a, self.alpha):
            ct, st, ca, sa = np.cos(qi), np.sin(qi), np.cos(al), np.sin(al)
            T = T @ np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st],
                              [0.0, sa, ca, d], [0.0, 0.0, 0.0, 1.0]])
        return T

    def within_limits(self, q: np.ndarray) -> bool:
        return bool(np.all(q >= self.q_min - 1e-9) and np.all(q <= self.q_max + 1e-9))

    def ik(self, T_target: np.ndarray, q_seed: np.ndarray, max_iter: int = 200, tol_pos: float = 1e-6,
           tol_rot: float = 1e-6, damping: float = 1e-3) -> np.ndarray | None:
        """Joint angles reaching T_target, near q_seed; None when unreachable (or outside joint limits)."""
        q = np.array(q_seed, dtype=float)
        # quick reject: the wrist centre must be within the shoulder's reach
        wrist = T_target[:3, 3] - T_target[:3, :3] @ np.array([0.0, 0.0, self.d[5]])
        shoulder = np.array([0.0, 0.0, self.d[0]])
        reach = abs(self.a[1]) + abs(self.a[2]) + abs(self.d[3]) + abs(self.d[4])
        if np.linalg.norm(wrist - shoulder) > reach:
            return None
        for _ in range(max_iter):
            err = self._error(T_target, self.fk(q))
            if np.linalg.norm(err[:3]) < tol_pos and np.linalg.norm(err[3:]) < tol_rot:
                return q if self.within_limits(q) else None
            J = self._jacobian(q)
            dq = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), err)
            step = np.linalg.norm(dq)
            if step > 0.5:
                dq *= 0.5 / step
            q = np.clip(q + dq, self.q_min, self.q_max)
        return None

    @staticmethod
    def _error(T_target: np.ndarray, T: np.ndarray) -> np.ndarray:
        rot = Rotation.from_matrix(T_target[:3, :3] @ T[:3, :3].T).as_rotvec()
        return np.concatenate([T_target[:3, 3] - T[:3, 3], rot])

    def _jacobian(self, q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
        T0 = self.fk(q)
        J = np.empty((6, 6))
        for i in range(6):
            dq = np.zeros(6)
            dq[i] = eps
            J[:, i] = self._error(self.fk(q + dq), T0) / eps
        return J

    def home(self) -> np.ndarray:
        """A comfortable start configuration: TCP in front of the base, tool pointing down."""
        return np.deg2rad([0.0, -60.0, 100.0, -130.0, -90.0, 0.0])


def T_tool_down(xyz: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    """TCP pose with the tool z axis pointing down (-z of the arm base)."""
    return se3.make_T(Rotation.from_euler("xyz", [np.pi, 0.0, yaw]).as_matrix(), xyz)
