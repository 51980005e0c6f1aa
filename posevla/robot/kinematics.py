"""Kinematics of the X-Trainer's 6-DoF Dobot Nova arms: standard DH chain, tool frame, forward kinematics,
and damped-least-squares inverse kinematics with joint limits. Frames: arm base -> flange -> tool (TCP);
metres, radians. Joint angles are the controller's (``q_actual`` in degrees on the wire, radians here).

Vendor models (`ArmKinematics.nova`), DH values from the X-Trainer's own code
(github.com/Dobot-Arm/dobot_xtrainer, ``dobot_function/manipulate_utils.py``, ``forward_kinematics``, commit
04cbec5f57aee6355b70c3933d84962376029f1d): standard DH rows (theta offset, d, a, alpha)

    Nova 2: (0, 0.2234, 0, pi/2) (-pi/2, 0, -0.280, 0) (0, 0, -0.225, 0) (-pi/2, 0.1175, 0, pi/2)
            (0, 0.120, 0, -pi/2) (0, 0.088, 0, 0)
    Nova 5: d1 0.240, a2 -0.400, a3 -0.330, d4 0.135, d5 0.120, d6 0.088, same offsets and alphas.

The X-Trainer ships Nova 2 by default (``mainCode.py``: ``which_robot_type = "Nova 2"``; it also accepts
Nova 5). Joint limits are the vendor URDF's (github.com/Dobot-Arm/DOBOT_6Axis_ROS2_V4,
``dobot_rviz/urdf/nova2_robot.urdf``, commit a1eabefdfc340bcb4bd1554d0d96df25e72f0d48): J1, J4-J6 +-6.28 rad,
J2 +-3.14, J3 +-2.79. The URDF's joint origins chain to the same flange pose as the DH table to 0.02 mm for
Nova 2 (tests/test_kinematics_vendor.py); the Nova 5 URDF is CAD-derived and differs from the DH by up to
0.33 mm in the tested poses (d6 88.328 vs 88 mm). The tool frame is the vendor's ``SetTool(1, {0, 0, 197, 0, 0, 0})``: 197 mm
along the flange z axis; its true value for a given gripper must be measured (docs/robot_vendor_facts.md).
Home of the vendor model: the X-Trainer's leader start joints (``settings/dobot_config/dobot_settings.ini``:
left -90, 0, -90, 0, 90, 90 deg; right mirrored), tool pointing down.

Inverse kinematics of the vendor models is closed-form (`ik_all`: up to 8 solutions, checked by FK, the one nearest
the seed returned by `ik`; about 2 ms against 11-17 ms for the damped least squares kept for the legacy model and
as the fallback at singular targets).

The default-constructed `ArmKinematics()` keeps the earlier Nova-like approximation (no tool offset) that the
simulator and tests were tuned on; the vendor model is `ArmKinematics.nova(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from posevla.geometry import se3
from posevla.robot import units

NOVA_DH: dict[str, dict[str, tuple[float, ...]]] = {
    "nova2": {"d": (0.2234, 0.0, 0.0, 0.1175, 0.120, 0.088), "a": (0.0, -0.280, -0.225, 0.0, 0.0, 0.0)},
    "nova5": {"d": (0.240, 0.0, 0.0, 0.135, 0.120, 0.088), "a": (0.0, -0.400, -0.330, 0.0, 0.0, 0.0)},
}
NOVA_ALPHA = (np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0)
NOVA_THETA_OFFSET = (0.0, -np.pi / 2, 0.0, -np.pi / 2, 0.0, 0.0)
NOVA_Q_LIMIT = (6.28, 3.14, 2.79, 6.28, 6.28, 6.28)  # radians, symmetric, from the vendor URDF
XTRAINER_TOOL_Z_M = 0.197  # SetTool(1, {0, 0, 197, 0, 0, 0}) in dobot_control/robots/dobot.py
XTRAINER_START_DEG = {"left": (-90.0, 0.0, -90.0, 0.0, 90.0, 90.0), "right": (90.0, 0.0, 90.0, 0.0, -90.0, -90.0)}


def tool_from_controller(tool_mm_deg: np.ndarray) -> np.ndarray:
    """SetTool's {x, y, z mm, rx, ry, rz deg} -> T_flange_tool (metres), same angle convention as poses."""
    return units.pose_from_controller(np.asarray(tool_mm_deg, dtype=np.float64))


@dataclass
class ArmKinematics:
    d: np.ndarray = field(default_factory=lambda: np.array([0.2405, 0.0, 0.0, 0.1405, 0.1215, 0.088]))
    a: np.ndarray = field(default_factory=lambda: np.array([0.0, -0.35, -0.32, 0.0, 0.0, 0.0]))
    alpha: np.ndarray = field(default_factory=lambda: np.array([np.pi / 2, 0.0, 0.0, np.pi / 2, -np.pi / 2, 0.0]))
    q_min: np.ndarray = field(default_factory=lambda: np.deg2rad([-360, -360, -160, -360, -360, -360.0]))
    q_max: np.ndarray = field(default_factory=lambda: np.deg2rad([360, 360, 160, 360, 360, 360.0]))
    theta_offset: np.ndarray = field(default_factory=lambda: np.zeros(6))  # DH theta = q + offset
    T_flange_tool: np.ndarray = field(default_factory=lambda: np.eye(4))  # tool (TCP) frame on the flange
    q_home: np.ndarray = field(default_factory=lambda: np.deg2rad([0.0, -60.0, 100.0, -130.0, -90.0, 0.0]))
    model: str = "nova-like approximation"
    closed_form_ik: bool = False  # ik() uses the closed-form solver (vendor models); else damped least squares

    @classmethod
    def nova(cls, model: str = "nova2", T_flange_tool: np.ndarray | None = None,
             tool_z_m: float = XTRAINER_TOOL_Z_M, arm: str = "left") -> ArmKinematics:
        """The vendor's Nova 2 / Nova 5 model with a tool frame (default: the X-Trainer's 197 mm along flange z)
        and the X-Trainer's start pose of the given arm ('left' or 'right') as home."""
        if model not in NOVA_DH:
            raise ValueError(f"unknown Nova model {model!r}; expected one of {sorted(NOVA_DH)}")
        if arm not in XTRAINER_START_DEG:
            raise ValueError(f"unknown arm {arm!r}; expected 'left' or 'right'")
        if T_flange_tool is None:
            T_flange_tool = se3.make_T(np.eye(3), np.array([0.0, 0.0, float(tool_z_m)]))
        T_flange_tool = np.asarray(T_flange_tool, dtype=np.float64)
        if T_flange_tool.shape != (4, 4) or not np.all(np.isfinite(T_flange_tool)):
            raise ValueError("T_flange_tool must be a finite 4x4 matrix")
        lim = np.asarray(NOVA_Q_LIMIT)
        return cls(d=np.array(NOVA_DH[model]["d"]), a=np.array(NOVA_DH[model]["a"]), alpha=np.array(NOVA_ALPHA),
                   q_min=-lim, q_max=lim.copy(), theta_offset=np.array(NOVA_THETA_OFFSET),
                   T_flange_tool=T_flange_tool, q_home=np.deg2rad(XTRAINER_START_DEG[arm]), model=model,
                   closed_form_ik=True)

    def fk_flange(self, q: np.ndarray) -> np.ndarray:
        """T_armbase_flange for joint angles q (6,) radians."""
        T = np.eye(4)
        for qi, off, d, a, al in zip(np.asarray(q, float), self.theta_offset, self.d, self.a, self.alpha):
            th = qi + off
            ct, st, ca, sa = np.cos(th), np.sin(th), np.cos(al), np.sin(al)
            T = T @ np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st],
                              [0.0, sa, ca, d], [0.0, 0.0, 0.0, 1.0]])
        return T

    def fk(self, q: np.ndarray) -> np.ndarray:
        """T_armbase_tcp for joint angles q (6,) radians (flange pose times the tool frame)."""
        return self.fk_flange(q) @ self.T_flange_tool

    def within_limits(self, q: np.ndarray) -> bool:
        return bool(np.all(q >= self.q_min - 1e-9) and np.all(q <= self.q_max + 1e-9))

    def reach_m(self) -> float:
        """Upper bound of the wrist centre's distance from the shoulder (metres)."""
        return float(abs(self.a[1]) + abs(self.a[2]) + abs(self.d[3]) + abs(self.d[4]))

    def ik_all(self, T_target: np.ndarray, q_seed: np.ndarray | None = None, tol: float = 1e-7) -> list[np.ndarray]:
        """Every closed-form solution (up to 8) putting the TCP at T_target, within the joint limits.

        The Nova's DH structure (alpha = 90, 0, 0, 90, -90, 0 deg; a1 = a4 = a5 = a6 = 0; d2 = d3 = 0) has the
        three parallel middle axes of a UR-type arm, solved in the usual order: shoulder (theta1) from the wrist
        centre's distance to the base axis, wrist (theta5) and theta6 from the target orientation, then the
        planar elbow (theta3), theta2 and theta4. Every candidate is checked by forward kinematics (position
        and rotation-matrix entries within `tol`); each joint angle is taken as the equivalent (mod 2 pi) nearest to q_seed
        that lies inside the limits. Singular targets (wrist centre on the base axis, theta5 = 0) may have no
        isolated solution here; `ik` then falls back to damped least squares."""
        if not np.all(np.isfinite(T_target)):
            return []
        d4, d6 = self.d[3], self.d[5]
        a2, a3 = self.a[1], self.a[2]
        T06 = np.asarray(T_target, float) @ se3.invert_T(self.T_flange_tool)
        p05 = T06 @ np.array([0.0, 0.0, -d6, 1.0])
        r = float(np.hypot(p05[0], p05[1]))
        if r < abs(d4) or r < 1e-12:
            return []
        psi, phi = np.arctan2(p05[1], p05[0]), np.arccos(min(1.0, d4 / r))
        T60 = se3.invert_T(T06)
        seed = np.zeros(6) if q_seed is None else np.asarray(q_seed, float)
        out: list[np.ndarray] = []
        for th1 in (psi + phi + np.pi / 2, psi - phi + np.pi / 2):
            s1, c1 = np.sin(th1), np.cos(th1)
            c5 = (T06[0, 3] * s1 - T06[1, 3] * c1 - d4) / d6
            if abs(c5) > 1.0 + 1e-9:
                continue
            for th5 in (np.arccos(min(1.0, max(-1.0, c5))), -np.arccos(min(1.0, max(-1.0, c5)))):
                s5 = np.sin(th5)
                if abs(s5) < 1e-9:
                    th6 = seed[5] + self.theta_offset[5]  # wrist singular: theta6 is free, keep the seed's
                else:
                    th6 = np.arctan2((-T60[1, 0] * s1 + T60[1, 1] * c1) / s5, (T60[0, 0] * s1 - T60[0, 1] * c1) / s5)
                T01 = self._dh(th1, 0)
                T45, T56 = self._dh(th5, 4), self._dh(th6, 5)
                T14 = se3.invert_T(T01) @ T06 @ se3.invert_T(T45 @ T56)
                px, py = T14[0, 3], T14[1, 3]  # the elbow plane is frame 1's x-y plane
                c3 = (px * px + py * py - a2 * a2 - a3 * a3) / (2.0 * a2 * a3)
                if abs(c3) > 1.0 + 1e-9:
                    continue
                for th3 in (np.arccos(min(1.0, max(-1.0, c3))), -np.arccos(min(1.0, max(-1.0, c3)))):
                    th2 = np.arctan2(py, px) - np.arctan2(a3 * np.sin(th3), a2 + a3 * np.cos(th3))
                    T34 = se3.invert_T(self._dh(th2, 1) @ self._dh(th3, 2)) @ T14
                    th4 = np.arctan2(T34[1, 0], T34[0, 0])
                    q = np.array([th1, th2, th3, th4, th5, th6]) - self.theta_offset
                    q = self._nearest_in_limits(q, seed)
                    if q is None:
                        continue
                    if np.abs(self.fk(q)[:3] - T_target[:3]).max() < tol:  # rotation entries and metres
                        if all(np.abs(q - o).max() > 1e-9 for o in out):
                            out.append(q)
        return out

    def _dh(self, theta: float, i: int) -> np.ndarray:
        ct, st, ca, sa = np.cos(theta), np.sin(theta), np.cos(self.alpha[i]), np.sin(self.alpha[i])
        return np.array([[ct, -st * ca, st * sa, self.a[i] * ct], [st, ct * ca, -ct * sa, self.a[i] * st],
                         [0.0, sa, ca, self.d[i]], [0.0, 0.0, 0.0, 1.0]])

    def _nearest_in_limits(self, q: np.ndarray, seed: np.ndarray) -> np.ndarray | None:
        """Each angle shifted by a multiple of 2 pi to the value nearest the seed inside the limits."""
        out = np.empty(6)
        for i in range(6):
            k0 = np.round((seed[i] - q[i]) / (2 * np.pi))
            cands = [q[i] + 2 * np.pi * k for k in (k0 - 1, k0, k0 + 1, k0 - 2, k0 + 2)]
            cands = [c for c in cands if self.q_min[i] - 1e-9 <= c <= self.q_max[i] + 1e-9]
            if not cands:
                return None
            out[i] = min(cands, key=lambda c: abs(c - seed[i]))
        return out

    def ik(self, T_target: np.ndarray, q_seed: np.ndarray, max_iter: int = 200, tol_pos: float = 1e-6,
           tol_rot: float = 1e-6, damping: float = 1e-3) -> np.ndarray | None:
        """Joint angles putting the TCP at T_target (arm base frame), near q_seed; None when unreachable
        (or outside joint limits). Vendor models: the closed-form solution nearest q_seed (L2 over joints)."""
        q = np.array(q_seed, dtype=float)
        if not np.all(np.isfinite(T_target)) or not np.all(np.isfinite(q)):
            return None
        if self.closed_form_ik:
            sols = self.ik_all(T_target, q)
            if sols:
                return min(sols, key=lambda s: float(np.linalg.norm(s - q)))
        # quick reject: the wrist centre must be within the shoulder's reach
        T_flange = T_target @ se3.invert_T(self.T_flange_tool)
        wrist = T_flange[:3, 3] - T_flange[:3, :3] @ np.array([0.0, 0.0, self.d[5]])
        shoulder = np.array([0.0, 0.0, self.d[0]])
        if np.linalg.norm(wrist - shoulder) > self.reach_m():
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
        return np.array(self.q_home, dtype=float)


def T_tool_down(xyz: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    """TCP pose with the tool z axis pointing down (-z of the arm base)."""
    return se3.make_T(Rotation.from_euler("xyz", [np.pi, 0.0, yaw]).as_matrix(), xyz)
