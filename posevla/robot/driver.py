"""XTrainerDriver: both follower arms of the X-Trainer, in the stack's frames and units.

Poses in and out are TCP poses in base_link (metres); each arm's controller works in its own arm base,
related by the static mounting transform T_base_armbase from the robot YAML. Every command passes a
last-line check (workspace, speed from the previous command or the actual pose, NaN, e-stop, controller
mode, fresh feedback, fresh command) and is refused -- never clamped -- when unsafe: the arm then holds.
After a lost connection the driver reconnects in the background, re-reads the actual pose and judges the
next command against it, so nothing queued before the drop is ever sent.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.robot import protocol as P
from posevla.robot import units
from posevla.robot.client import DobotArmClient, Feedback
from posevla.types import ArmState, RobotState
from posevla.yaml_file import read_yaml


@dataclass
class ArmEndpoint:
    host: str
    T_base_armbase: np.ndarray
    dashboard_port: int = P.DASHBOARD_PORT
    motion_port: int = P.MOTION_PORT
    feedback_port: int = P.FEEDBACK_PORT


@dataclass
class XTrainerConfig:
    arms: dict[str, ArmEndpoint]
    safety: SafetyLimits
    servo_t: float = 0.02  # ServoP/ServoJ t parameter, seconds
    stale_command_s: float = 0.2  # commands older than this are not sent
    feedback_timeout_s: float = 0.2  # no feedback for this long -> hold
    reconnect_period_s: float = 0.5
    source: str = field(default="<dict>", compare=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> XTrainerConfig:
        path = Path(path)
        data = read_yaml(path, "robot config")
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> XTrainerConfig:
        if not isinstance(data, dict) or "arms" not in data or "safety" not in data:
            raise ValueError(f"{source}: robot config needs 'arms' and 'safety'")
        arms = {}
        for name, a in data["arms"].items():
            try:
                T = se3.T_from_xyz_rpy(np.asarray(a["mount_xyz"], float), np.asarray(a["mount_rpy"], float))
                arms[name] = ArmEndpoint(str(a["host"]), T, int(a.get("dashboard_port", P.DASHBOARD_PORT)),
                                         int(a.get("motion_port", P.MOTION_PORT)),
                                         int(a.get("feedback_port", P.FEEDBACK_PORT)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{source}: field arms.{name} needs host, mount_xyz (m), mount_rpy (rad): {exc}") from exc
        extra = {k: float(data[k]) for k in ("servo_t", "stale_command_s", "feedback_timeout_s", "reconnect_period_s")
                 if k in data}
        for k, v in extra.items():
            if not v > 0:
                raise ValueError(f"{source}: field {k}={v} must be > 0")
        return cls(arms, SafetyLimits.from_dict(data["safety"], f"{source}:safety"), source=source, **extra)


class XTrainerDriver:
    def __init__(self, cfg: XTrainerConfig) -> None:
        self.cfg = cfg
        self.clients = {arm: DobotArmClient(ep.host, ep.dashboard_port, ep.motion_port, ep.feedback_port)
                        for arm, ep in cfg.arms.items()}
        self.T_armbase_base = {arm: se3.invert_T(ep.T_base_armbase) for arm, ep in cfg.arms.items()}
        self._last_sent: dict[str, tuple[float, np.ndarray] | None] = {arm: None for arm in cfg.arms}
        self._last_gripper: dict[str, float] = {}
        self._estop = False
        self.refusals: dict[str, str] = {}
        self.sent = dict.fromkeys(cfg.arms, 0)
        self.reconnects = dict.fromkeys(cfg.arms, 0)
        self._lock = threading.RLock()
        self._running = False
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def connect(self, enable: bool = True, supervise: bool = True) -> None:
        """Connect both arms (ConnectionError names the one that failed), optionally enable, then supervise."""
        for arm, client in self.clients.items():
            client.connect()
            if client.wait_feedback(2.0) is None:
                raise ConnectionError(f"{arm} arm ({client.host}): no feedback within 2 s")
            if enable:
                client.request("EnableRobot()")
                deadline = time.monotonic() + 2.0
                while (fb := client.latest()) is None or fb.mode not in (P.MODE_ENABLED, P.MODE_RUNNING):
                    if time.monotonic() > deadline:
                        raise ConnectionError(f"{arm} arm ({client.host}) did not enable (mode "
                                              f"{P.MODE_NAMES.get(fb.mode, fb.mode) if fb else 'unknown'})")
                    time.sleep(0.01)
        if supervise and not self._running:
            self._running = True
            self._supervisor = threading.Thread(target=self._supervise, name="xtrainer-reconnect", daemon=True)
            self._supervisor.start()

    def close(self) -> None:
        self._running = False
        for client in self.clients.values():
            client.close()

    def _supervise(self) -> None:
        while self._running:
            time.sleep(self.cfg.reconnect_period_s)
            for arm, client in self.clients.items():
                if client.connected or not self._running:
                    continue
                try:
                    client.connect()
                    if client.wait_feedback(1.0) is None:
                        client.close()
                        continue
                except ConnectionError:
                    continue
                with self._lock:
                    self._last_sent[arm] = None  # judge the next command against the actual pose
                    self.reconnects[arm] += 1

    # ------------------------------------------------------------------ state
    def feedback(self, arm: str) -> Feedback | None:
        return self.clients[arm].latest()

    def arm_state(self, arm: str) -> ArmState | None:
        fb = self.clients[arm].latest()
        if fb is None:
            return None
        T = self.cfg.arms[arm].T_base_armbase @ fb.T_armbase_tcp
        return ArmState(T_base_tcp=T, joints=fb.q, gripper=fb.gripper, stamp_ns=fb.stamp_ns)

    def robot_state(self) -> RobotState | None:
        arms = {arm: s for arm in self.clients if (s := self.arm_state(arm)) is not None}
        if not arms:
            return None
        return RobotState(arms, max(s.stamp_ns for s in arms.values()))

    # ------------------------------------------------------------------ e-stop and errors
    @property
    def estopped(self) -> bool:
        return self._estop

    def estop(self) -> None:
        """Latch the e-stop: stop sending at once and tell each controller to stop."""
        with self._lock:
            self._estop = True
            for client in self.clients.values():
                try:
                    client.request("Stop()")
                except (ConnectionError, P.ProtocolError):
                    pass

    def reset_estop(self) -> None:
        with self._lock:
            self._estop = False
            for arm in self._last_sent:
                self._last_sent[arm] = None

    def clear_error(self, arm: str) -> None:
        """Operator action only: ClearError() then EnableRobot() on one arm."""
        client = self.clients[arm]
        client.request("ClearError()")
        client.request("EnableRobot()")
        deadline = time.monotonic() + 1.0
        while (fb := client.latest()) is not None and fb.mode not in (P.MODE_ENABLED, P.MODE_RUNNING):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        with self._lock:
            self._last_sent[arm] = None

    # ------------------------------------------------------------------ commands
    def _gate(self, arm: str, stamp_ns: int | None) -> tuple[str | None, Feedback | None]:
        if arm not in self.clients:
            return f"unknown arm {arm!r}", None
        if self._estop:
            return "e-stop latched", None
        client = self.clients[arm]
        if not client.connected:
            return f"{arm} arm not connected ({client.last_error})", None
        fb = client.latest()
        now = time.time_ns()
        if fb is None or (now - fb.stamp_ns) * 1e-9 > self.cfg.feedback_timeout_s:
            return f"{arm} arm feedback is stale", None
        if fb.mode == P.MODE_ERROR:
            return f"{arm} arm controller is in error state (clear it with /xtrainer/clear_error)", None
        if fb.mode not in (P.MODE_ENABLED, P.MODE_RUNNING):
            return f"{arm} arm is not enabled (mode {P.MODE_NAMES.get(fb.mode, fb.mode)})", None
        if stamp_ns is not None and (now - stamp_ns) * 1e-9 > self.cfg.stale_command_s:
            return f"command for {arm} arm is {(now - stamp_ns) * 1e-9:.3f} s old", None
        return None, fb

    def _refuse(self, arm: str, reason: str) -> str:
        self.refusals[arm] = reason
        return reason

    def servo_pose(self, arm: str, T_base_tcp: np.ndarray, gripper: float | None = None,
                   stamp_ns: int | None = None) -> str | None:
        """Send one ServoP set-point; returns None when sent, else the reason it was refused (arm holds)."""
        with self._lock:
            why, fb = self._gate(arm, stamp_ns)
            if why:
                return self._refuse(arm, why)
            # time between set-points: from the command stamps when given (receive times bunch up under load)
            now = stamp_ns * 1e-9 if stamp_ns is not None else time.monotonic()
            last = self._last_sent[arm]
            if last is not None and 0 < now - last[0] < 0.5:
                T_prev, dt = last[1], now - last[0]
            else:  # first command, or after a pause/reconnect: judge against where the arm really is
                T_prev, dt = self.cfg.arms[arm].T_base_armbase @ fb.T_armbase_tcp, self.cfg.servo_t
            why = self.cfg.safety.check_command(arm, T_base_tcp, gripper, T_prev, dt, tol=1e-4)
            if why and last is not None:
                # also safe: one step at the speed limits from where the arm really is (the stream was
                # re-planned from the measured pose after the arm fell behind or stood still)
                T_meas = self.cfg.arms[arm].T_base_armbase @ fb.T_armbase_tcp
                if self.cfg.safety.check_command(arm, T_base_tcp, gripper, T_meas, self.cfg.servo_t, tol=1e-4) is None:
                    why = None
            if why:
                return self._refuse(arm, why)
            pose = units.pose_to_controller(self.T_armbase_base[arm] @ np.asarray(T_base_tcp, float))
            try:
                self.clients[arm].send_motion(P.format_command("ServoP", *pose, t=self.cfg.servo_t))
                if gripper is not None:
                    self._send_gripper(arm, gripper)
            except (ConnectionError, P.ProtocolError) as exc:
                return self._refuse(arm, str(exc))
            self._last_sent[arm] = (now, np.asarray(T_base_tcp, float).copy())
            self.sent[arm] += 1
            self.refusals.pop(arm, None)
            return None

    def servo_joints(self, arm: str, q: np.ndarray, gripper: float | None = None, stamp_ns: int | None = None,
                     max_joint_step: float = 0.05) -> str | None:
        """Send one ServoJ set-point (radians); refused when a joint would jump more than max_joint_step."""
        with self._lock:
            why, fb = self._gate(arm, stamp_ns)
            if why:
                return self._refuse(arm, why)
            q = np.asarray(q, float)
            if q.shape != (6,) or not np.all(np.isfinite(q)):
                return self._refuse(arm, "joint command must be 6 finite angles")
            step = float(np.abs(q - fb.q).max())
            if step > max_joint_step:
                return self._refuse(arm, f"joint step {step:.3f} rad from the actual position exceeds {max_joint_step}")
            try:
                self.clients[arm].send_motion(P.format_command("ServoJ", *units.joints_to_controller(q),
                                                               t=self.cfg.servo_t))
                if gripper is not None:
                    self._send_gripper(arm, gripper)
            except (ConnectionError, P.ProtocolError) as exc:
                return self._refuse(arm, str(exc))
            self._last_sent[arm] = None
            self.sent[arm] += 1
            return None

    def _send_gripper(self, arm: str, opening: float) -> None:
        g = self.cfg.safety.clamp_gripper(opening)
        if abs(self._last_gripper.get(arm, -1.0) - g) < 0.005:
            return
        self.clients[arm].request(P.format_command(P.GRIPPER_COMMAND, int(round(g * 1000))))
        self._last_gripper[arm] = g
