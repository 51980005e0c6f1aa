"""Safety limits shared by the executor (which limits) and the X-Trainer driver (which only rejects).

All poses are TCP poses in base_link (metres); speeds in m/s and rad/s; gripper opening 0..1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.geometry import se3
from posevla.yaml_file import read_yaml


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box in base_link that the TCP must stay in (metres)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.lo, float), np.asarray(self.hi, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(lo < hi):
            raise ValueError(f"workspace box lo={self.lo} hi={self.hi} must be 3 finite numbers each with lo < hi")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    def contains(self, p: np.ndarray, tol: float = 0.0) -> bool:
        return bool(np.all(p >= self.lo - tol) and np.all(p <= self.hi + tol))

    def clamp(self, p: np.ndarray) -> np.ndarray:
        return np.clip(p, self.lo, self.hi)


@dataclass
class SafetyLimits:
    workspace: dict[str, WorkspaceBox]
    max_linear_speed: float = 0.25  # m/s
    max_angular_speed: float = 1.0  # rad/s
    max_linear_accel: float = 2.0  # m/s^2
    gripper_min: float = 0.0
    gripper_max: float = 1.0
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        for name in ("max_linear_speed", "max_angular_speed", "max_linear_accel"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{self.source}: safety field {name}={v} must be a positive number")
        if not (0.0 <= self.gripper_min < self.gripper_max <= 1.0):
            raise ValueError(f"{self.source}: gripper range [{self.gripper_min}, {self.gripper_max}] must lie in [0, 1]")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> SafetyLimits:
        try:
            ws = d["workspace"]
            boxes = {arm: WorkspaceBox(np.asarray(b["lo"], float), np.asarray(b["hi"], float)) for arm, b in ws.items()}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: safety field workspace must map arm -> {{lo: [x,y,z], hi: [x,y,z]}} "
                             f"({exc})") from exc
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
        known = {"max_linear_speed", "max_angular_speed", "max_linear_accel", "gripper_min", "gripper_max"}
        unknown = set(d) - known - {"workspace"}
        if unknown:
            raise ValueError(f"{source}: unknown safety field(s) {sorted(unknown)}")
        return cls(workspace=boxes, source=source, **{k: float(d[k]) for k in known if k in d})

    @classmethod
    def from_yaml(cls, path: str | Path, key: str | None = "safety") -> SafetyLimits:
        path = Path(path)
        data = read_yaml(path, "safety limits file")
        if key is not None:
            data = (data or {}).get(key)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: safety limits (key {key!r}) missing or not a mapping")
        return cls.from_dict(data, str(path))

    # ------------------------------------------------------------------ checks (driver: reject only)
    def check_command(self, arm: str, T_base_tcp: np.ndarray, gripper: float | None,
                      T_prev_base_tcp: np.ndarray | None, dt: float, tol: float = 1e-6) -> str | None:
        """Why this command is unsafe, or None. dt: seconds since the previous command/pose T_prev."""
        if arm not in self.workspace:
            return f"arm {arm!r} has no workspace box"
        T = np.asarray(T_base_tcp, dtype=float)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return "pose has NaN or inf"
        if not se3.is_rigid(T, 1e-5):
            return "pose is not a rigid transform"
        if not self.workspace[arm].contains(T[:3, 3], tol):
            return f"position {np.round(T[:3, 3], 3).tolist()} m is outside the {arm} workspace box"
        if gripper is not None and not (np.isfinite(gripper) and self.gripper_min - tol <= gripper <= self.gripper_max + tol):
            return f"gripper {gripper} outside [{self.gripper_min}, {self.gripper_max}]"
        if T_prev_base_tcp is not None:
            if not dt > 0:
                return f"non-positive time step {dt}"
            v = np.linalg.norm(T[:3, 3] - T_prev_base_tcp[:3, 3]) / dt
            if v > self.max_linear_speed * (1 + 1e-6) + tol / dt:
                return f"linear speed {v:.3f} m/s exceeds {self.max_linear_speed} m/s"
            w = float(se3.rotation_angle(T_prev_base_tcp[:3, :3].T @ T[:3, :3])) / dt
            if w > self.max_angular_speed * (1 + 1e-6) + tol / dt:
                return f"angular speed {w:.3f} rad/s exceeds {self.max_angular_speed} rad/s"
        return None

    # ------------------------------------------------------------------ limiting (executor)
    def limit_step(self, arm: str, T_target: np.ndarray, T_prev: np.ndarray, v_prev: np.ndarray, dt: float
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Move from T_prev toward T_target within the box, speed and acceleration limits.

        Returns the limited pose and the new linear velocity (m/s). T_target must be finite and rigid.
        """
        box = self.workspace[arm]
        p_prev = T_prev[:3, 3]
        p_goal = box.clamp(T_target[:3, 3])
        delta = p_goal - p_prev
        dist = float(np.linalg.norm(delta))
        # never faster than what still allows stopping at the goal with the acceleration limit
        v_cap = min(dist / dt, np.sqrt(2.0 * self.max_linear_accel * dist))
        v_des = delta / dist * v_cap if dist > 1e-12 else np.zeros(3)
        dv = v_des - v_prev
        dv_max = self.max_linear_accel * dt
        if np.linalg.norm(dv) > dv_max:
            dv *= dv_max / np.linalg.norm(dv)
        v = v_prev + dv
        speed = np.linalg.norm(v)
        if speed > self.max_linear_speed:
            v *= self.max_linear_speed / speed
        p = box.clamp(p_prev + v * dt)
        v = (p - p_prev) / dt
        # rotation: slerp toward the target, at most max_angular_speed * dt
        # (through unit quaternions, so a slightly non-orthonormal target, e.g. a blend, cannot add speed)
        q0, q1 = se3.quat_from_matrix(T_prev[:3, :3]), se3.quat_from_matrix(T_target[:3, :3])
        q0, q1 = q0 / np.linalg.norm(q0), q1 / np.linalg.norm(q1)
        R_goal = se3.matrix_from_quat(q1)
        angle = float(se3.rotation_angle(T_prev[:3, :3].T @ R_goal))
        max_angle = self.max_angular_speed * dt
        if angle <= max_angle or angle < 1e-12:
            R = R_goal
        else:
            R = se3.matrix_from_quat(se3.quat_slerp(q0, q1, max_angle / angle))
        return se3.make_T(R, p), v

    def clamp_gripper(self, g: float) -> float:
        return float(np.clip(g, self.gripper_min, self.gripper_max))
