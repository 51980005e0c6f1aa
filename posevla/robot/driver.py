"""XTrainerDriver: both follower arms of the X-Trainer, in the stack's frames and units.

Poses in and out are TCP poses in base_link (metres); each arm's controller works in its own arm base,
related by the static mounting transform T_base_armbase from the robot YAML.

Every set-point passes the guard (`posevla.robot.guard`), which is anchored on the *measured* arm: feedback is
checked for plausibility before it is trusted, each set-point is shaped to the speed and acceleration limits over
the actual interval since the previous one (that interval is the `t` sent), and refused when it is implausible or
would be further than a bound from the measured arm. When the command stream stops while the arm moves, the
driver itself brakes it with the deceleration limit. The e-stop sends Stop() on a channel of its own, waits until
the controller has answered every motion command sent before, and sends Stop() again, so nothing queued runs after
the last Stop(). After a lost connection the driver reconnects in the background and restarts from the measured
pose at rest.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.robot import protocol as P
from posevla.robot import units
from posevla.robot.client import DobotArmClient, Feedback
from posevla.robot.feetech import GripperConfig, load_grippers
from posevla.robot.gripper_channel import GripperChannel
from posevla.robot.guard import FeedbackMonitor, GuardConfig, Setpoint, SetpointGuard, TrustedPose
from posevla.robot.kinematics import ArmKinematics, tool_from_controller
from posevla.types import ArmState, RobotState
from posevla.yaml_file import read_yaml

TOP_LEVEL_KEYS = {"arms", "safety", "guard", "stale_command_s", "reconnect_period_s", "motion_fault_hold_s",
                  "tool", "grippers", "kinematics", "speed_factor"}
KINEMATIC_MODELS = ("nova2", "nova5", "sim")  # vendor Nova models; "sim": the simulator's Nova-like approximation
ARM_KEYS = {"host", "dashboard_port", "motion_port", "feedback_port", "mount_xyz", "mount_rpy"}


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
    guard: GuardConfig = field(default_factory=GuardConfig)
    stale_command_s: float = 0.2  # commands older than this (header stamp vs wall clock) are not sent
    reconnect_period_s: float = 0.5
    motion_fault_hold_s: float = 0.2  # after the controller rejects a set-point, hold this long, then restart
    # tool frame selected at start-up: SetTool(index, {x,y,z mm, rx,ry,rz deg}) + Tool(index); None: the flange
    tool_index: int = 0
    tool_mm_deg: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    kinematics: str = "sim"
    speed_factor: int | None = None  # SpeedFactor(n) at start-up (the vendor sets one; ServoJ/ServoP ignore it)
    grippers: dict[str, GripperConfig] = field(default_factory=dict)
    source: str = field(default="<dict>", compare=False)

    def arm_kinematics(self, arm: str, with_tool: bool = True) -> ArmKinematics:
        """The arm's kinematic model, TCP = the configured tool frame (or the flange: with_tool=False)."""
        T_tool = tool_from_controller(np.array(self.tool_mm_deg)) if with_tool and self.tool_index else np.eye(4)
        if self.kinematics == "sim":
            return ArmKinematics(T_flange_tool=T_tool)
        return ArmKinematics.nova(self.kinematics, T_flange_tool=T_tool, arm=arm)

    @property
    def servo_t(self) -> float:
        return self.guard.servo_t

    @classmethod
    def from_yaml(cls, path: str | Path) -> XTrainerConfig:
        path = Path(path)
        data = read_yaml(path, "robot config")
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> XTrainerConfig:
        if not isinstance(data, dict) or "arms" not in data or "safety" not in data:
            raise ValueError(f"{source}: robot config needs 'arms' and 'safety'")
        unknown = sorted(set(data) - TOP_LEVEL_KEYS)
        if unknown:
            raise ValueError(f"{source}: unknown robot config field(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
        arms = {}
        for name, a in data["arms"].items():
            bad = sorted(set(a) - ARM_KEYS) if isinstance(a, dict) else []
            if bad:
                raise ValueError(f"{source}: unknown field(s) {bad} in arms.{name}; known: {sorted(ARM_KEYS)}")
            try:
                T = se3.T_from_xyz_rpy(np.asarray(a["mount_xyz"], float), np.asarray(a["mount_rpy"], float))
                arms[name] = ArmEndpoint(str(a["host"]), T, int(a.get("dashboard_port", P.DASHBOARD_PORT)),
                                         int(a.get("motion_port", P.MOTION_PORT)),
                                         int(a.get("feedback_port", P.FEEDBACK_PORT)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{source}: field arms.{name} needs host, mount_xyz (m), mount_rpy (rad): {exc}") from exc
        extra = {k: float(data[k]) for k in ("stale_command_s", "reconnect_period_s", "motion_fault_hold_s")
                 if k in data}
        for k, v in extra.items():
            if not v > 0:
                raise ValueError(f"{source}: field {k}={v} must be > 0")
        guard = GuardConfig.from_dict(data.get("guard"), f"{source}:guard")
        tool = data.get("tool") or {}
        if not isinstance(tool, dict) or set(tool) - {"index", "offset_mm_deg"}:
            raise ValueError(f"{source}: field tool must be {{index: 1..9, offset_mm_deg: [x, y, z, rx, ry, rz]}}")
        tool_index = int(tool.get("index", 0))
        offset = tuple(float(v) for v in tool.get("offset_mm_deg", (0.0,) * 6))
        if tool and (not 1 <= tool_index <= 9 or len(offset) != 6 or not np.all(np.isfinite(offset))):
            raise ValueError(f"{source}: field tool needs index 1..9 and offset_mm_deg of 6 finite numbers")
        kin = str(data.get("kinematics", "sim"))
        if kin not in KINEMATIC_MODELS:
            raise ValueError(f"{source}: field kinematics={kin!r} must be one of {KINEMATIC_MODELS}")
        sf = data.get("speed_factor")
        if sf is not None and not (isinstance(sf, int) and 1 <= sf <= 100):
            raise ValueError(f"{source}: field speed_factor={sf!r} must be an integer 1..100")
        return cls(arms, SafetyLimits.from_dict(data["safety"], f"{source}:safety"), guard=guard,
                   tool_index=tool_index, tool_mm_deg=offset, kinematics=kin, speed_factor=sf,
                   grippers=_grippers(data.get("grippers"), source), source=source, **extra)


def _fk_base(T_base_armbase: np.ndarray, kin: ArmKinematics, q: np.ndarray) -> np.ndarray:
    """T_base_tcp of joints q (rad) through the arm's kinematics and mounting."""
    return T_base_armbase @ kin.fk(q)


def _grippers(value: object, source: str) -> dict[str, GripperConfig]:
    """`grippers:` is a gripper YAML path (relative to the robot YAML) or {arm: {port, servo_id, ...}}."""
    if value is None:
        return {}
    if isinstance(value, str):
        base = Path(source).parent if source != "<dict>" else Path(".")
        path = Path(value) if Path(value).is_absolute() else base / value
        return load_grippers(path)
    if not isinstance(value, dict):
        raise ValueError(f"{source}: field grippers must be a gripper YAML path or a mapping arm -> gripper")
    return {arm: GripperConfig.from_mapping(v, f"{source}: grippers.{arm}") for arm, v in value.items()}


class XTrainerDriver:
    def __init__(self, cfg: XTrainerConfig) -> None:
        self.cfg = cfg
        self.kins = {arm: cfg.arm_kinematics(arm) for arm in cfg.arms}
        self.monitors = {arm: FeedbackMonitor(cfg.guard, ep.T_base_armbase, self.kins[arm].fk)
                         for arm, ep in cfg.arms.items()}
        self.guards = {arm: SetpointGuard(arm, cfg.safety, cfg.guard) for arm in cfg.arms}
        self.clients = {arm: DobotArmClient(ep.host, ep.dashboard_port, ep.motion_port, ep.feedback_port,
                                            on_feedback=self.monitors[arm].update,
                                            on_motion_error=functools.partial(self._on_motion_error, arm))
                        for arm, ep in cfg.arms.items()}
        self.T_armbase_base = {arm: se3.invert_T(ep.T_base_armbase) for arm, ep in cfg.arms.items()}
        self._ik_last: dict[str, np.ndarray] = {}  # joints (rad) of the last ServoP set-point judged reachable
        self._estop = False
        self._fault: dict[str, tuple[str, float]] = {}  # arm -> (why, monotonic time the hold ends)
        self.refusals: dict[str, str] = {}
        self.sent = dict.fromkeys(cfg.arms, 0)
        self.shaped = dict.fromkeys(cfg.arms, 0)
        self.brakes = dict.fromkeys(cfg.arms, 0)
        self.reconnects = dict.fromkeys(cfg.arms, 0)
        self.stops_sent = 0
        # (monotonic send time ns, command text) of every motion command, for measurements against what the
        # controller received (posevla.robot.faults)
        self.sent_log: dict[str, deque[tuple[int, str]]] = {arm: deque(maxlen=100_000) for arm in cfg.arms}
        self._lock = threading.RLock()
        self._running = False
        self._threads: list[threading.Thread] = []
        self.grippers: dict[str, GripperChannel] = {}

    # ------------------------------------------------------------------ lifecycle
    def connect(self, enable: bool = True, supervise: bool = True) -> None:
        """Connect both arms (ConnectionError names the one that failed), optionally enable, then supervise."""
        for arm, client in self.clients.items():
            client.connect()
            if client.wait_feedback(2.0) is None:
                raise ConnectionError(f"{arm} arm ({client.host}): no feedback within 2 s")
            if enable:
                try:
                    client.request("EnableRobot()", 2.0)
                except P.ProtocolError as exc:
                    raise ConnectionError(f"{arm} arm ({client.host}) refused EnableRobot(): {exc}") from exc
                deadline = time.monotonic() + 2.0
                while (fb := client.latest()) is None or fb.mode not in (P.MODE_ENABLED, P.MODE_RUNNING):
                    if time.monotonic() > deadline:
                        raise ConnectionError(f"{arm} arm ({client.host}) did not enable (mode "
                                              f"{P.MODE_NAMES.get(fb.mode, fb.mode) if fb else 'unknown'})")
                    time.sleep(0.01)
            self._start_up(arm, client)
        for arm, gcfg in self.cfg.grippers.items():
            if arm in self.cfg.arms and arm not in self.grippers:
                self.grippers[arm] = GripperChannel(gcfg)
        if not self._running:
            self._running = True
            targets = [(self._brake_loop, "xtrainer-brake")]
            if supervise:
                targets.append((self._supervise, "xtrainer-reconnect"))
            for target, name in targets:
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)

    def _start_up(self, arm: str, client: DobotArmClient) -> None:
        """The vendor's start-up: the tool frame (SetTool + Tool) and speed factor. Errors are not cleared here:
        ClearError() is an operator action (/xtrainer/clear_error)."""
        cmds = []
        if self.cfg.tool_index:
            vals = ",".join(f"{v:g}" for v in self.cfg.tool_mm_deg)
            cmds += [f"SetTool({self.cfg.tool_index},{{{vals}}})", f"Tool({self.cfg.tool_index})"]
        if self.cfg.speed_factor is not None:
            cmds.append(f"SpeedFactor({self.cfg.speed_factor})")
        for cmd in cmds:
            try:
                client.request(cmd, 2.0)
            except P.ProtocolError as exc:
                raise ConnectionError(f"{arm} arm ({client.host}) refused {cmd}: {exc}") from exc

    def close(self) -> None:
        self._running = False
        for g in self.grippers.values():
            g.close()
        for client in self.clients.values():
            client.close()

    def _supervise(self) -> None:
        while self._running:
            time.sleep(self.cfg.reconnect_period_s)
            for arm, client in self.clients.items():
                if client.connected or not self._running:
                    continue
                with self._lock:
                    self.guards[arm].forget()
                    self.monitors[arm].reset()
                try:
                    client.connect()
                    if client.wait_feedback(1.0) is None:
                        client.close()
                        continue
                except ConnectionError:
                    continue
                with self._lock:
                    self.guards[arm].forget()  # restart from the measured pose at rest
                    self.reconnects[arm] += 1

    # ------------------------------------------------------------------ state
    def feedback(self, arm: str) -> Feedback | None:
        return self.clients[arm].latest()

    def trusted(self, arm: str) -> TrustedPose | str:
        return self.monitors[arm].trusted(time.time_ns())

    def arm_state(self, arm: str) -> ArmState | None:
        """The arm's newest *trusted* state (None while its feedback is implausible, stale or missing)."""
        fb = self.clients[arm].latest()
        t = self.trusted(arm)
        if fb is None or isinstance(t, str):
            return None
        return ArmState(T_base_tcp=t.T_base_tcp, joints=t.q, gripper=self.gripper_opening(arm), stamp_ns=t.stamp_ns)

    def gripper_opening(self, arm: str) -> float:
        """Measured opening (0 closed .. 1 open) from the gripper's own bus; NaN when not measured."""
        ch = self.grippers.get(arm)
        return float("nan") if ch is None else ch.opening()

    def robot_state(self) -> RobotState | None:
        arms = {arm: s for arm in self.clients if (s := self.arm_state(arm)) is not None}
        if not arms:
            return None
        return RobotState(arms, max(s.stamp_ns for s in arms.values()))

    # ------------------------------------------------------------------ e-stop and errors
    @property
    def estopped(self) -> bool:
        return self._estop

    def estop(self, drain_timeout_s: float = 0.3) -> None:
        """Latch the e-stop: nothing is sent any more, Stop() goes to each controller on its own channel at once,
        and again once the controller has answered every motion command sent before (so none runs after it).
        Returns within about drain_timeout_s + 0.4 s whatever the links do."""
        self._estop = True  # checked by every send under the lock: no set-point starts after this line
        got = self._lock.acquire(timeout=0.1)  # let a send in progress finish (its socket call is bounded)
        if got:
            self._lock.release()
        threads = [threading.Thread(target=self._stop_arm, args=(arm, drain_timeout_s), daemon=True)
                   for arm in self.clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(drain_timeout_s + 0.4)

    def _stop_arm(self, arm: str, drain_timeout_s: float) -> None:
        client = self.clients[arm]
        if client.stop_now(0.2):
            self.stops_sent += 1
        deadline = time.monotonic() + drain_timeout_s
        while not client.motion_idle() and time.monotonic() < deadline:
            time.sleep(0.002)
        if client.stop_now(0.2):
            self.stops_sent += 1
        with self._lock:
            self.guards[arm].forget()

    def reset_estop(self) -> None:
        with self._lock:
            self._estop = False
            for g in self.guards.values():
                g.forget()

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
            self.guards[arm].forget()
            self._fault.pop(arm, None)

    def _on_motion_error(self, arm: str, why: str) -> None:
        """The controller rejected a set-point (or answered garbage): hold this arm, then restart from it."""
        self._fault[arm] = (why, time.monotonic() + self.cfg.motion_fault_hold_s)

    # ------------------------------------------------------------------ commands
    def _gate(self, arm: str, stamp_ns: int | None) -> str | TrustedPose:
        if arm not in self.clients:
            return f"unknown arm {arm!r}"
        if self._estop:
            return "e-stop latched"
        client = self.clients[arm]
        if not client.connected:
            return f"{arm} arm not connected ({client.last_error})"
        fault = self._fault.get(arm)
        if fault is not None:
            if time.monotonic() < fault[1]:
                return f"{arm} arm controller rejected a set-point ({fault[0]})"
            del self._fault[arm]
            self.guards[arm].forget()
        fb = client.latest()
        if fb is None:
            return f"{arm} arm has no feedback"
        if fb.mode == P.MODE_ERROR:
            return f"{arm} arm controller is in error state (clear it with /xtrainer/clear_error)"
        if fb.mode not in (P.MODE_ENABLED, P.MODE_RUNNING):
            return f"{arm} arm is not enabled (mode {P.MODE_NAMES.get(fb.mode, fb.mode)})"
        now = time.time_ns()
        if stamp_ns is not None:
            age = (now - stamp_ns) * 1e-9
            if age > self.cfg.stale_command_s:
                return f"command for {arm} arm is {age:.3f} s old"
            if age < -0.05:
                return f"command for {arm} arm is stamped {-age:.3f} s in the future"
        meas = self.monitors[arm].trusted(now)
        if isinstance(meas, str):
            return f"{arm} arm: {meas}"
        return meas

    def _refuse(self, arm: str, reason: str) -> str:
        self.refusals[arm] = reason
        return reason

    def _send(self, arm: str, name: str, sp: Setpoint, now_ns: int) -> str | None:
        if name == "ServoJ":
            if sp.q is None:
                return "ServoJ set-point without joints"
            values = units.joints_to_controller(sp.q)
        else:
            values = units.pose_to_controller(self.T_armbase_base[arm] @ sp.T_base_tcp)
        try:
            text = P.format_command(name, *values, t=sp.t_s)
            self.clients[arm].send_motion(text)
        except (ConnectionError, P.ProtocolError, ValueError) as exc:
            self.guards[arm].forget()
            return str(exc)
        self.sent_log[arm].append((now_ns, text))
        self.guards[arm].commit(sp, now_ns)
        self.sent[arm] += 1
        return None

    def _ik_check(self, arm: str, T_base_tcp: np.ndarray, q_meas_rad: np.ndarray) -> str:
        """Why the controller could not follow a ServoP set-point, judged against the measured joints ('' if it
        can): no inverse-kinematics solution within the joint limits (the controller would raise an IK alarm and
        stop), or the solution nearest the measured joints turns a joint further than max_ik_joint_step_rad (a
        singularity or a branch flip: joint speeds the TCP limits do not bound). Seeded with the previous set-point's
        solution (one or two iterations at the set-point rate)."""
        q_meas = np.asarray(q_meas_rad, float)
        seed = self._ik_last.get(arm)
        limit = self.cfg.guard.max_ik_joint_step_rad
        if seed is None or float(np.max(np.abs(seed - q_meas))) > limit:
            seed = q_meas
        q = self.kins[arm].ik(self.T_armbase_base[arm] @ T_base_tcp, seed)
        if q is None:
            self._ik_last.pop(arm, None)
            return (f"{arm} arm set-point {np.round(T_base_tcp[:3, 3], 3).tolist()} m has no inverse-kinematics "
                    "solution within the joint limits (unreachable): not sent")
        step = np.abs(q - q_meas)
        j = int(np.argmax(step))
        if step[j] > limit:
            return (f"{arm} arm set-point needs joint {j + 1} to turn {step[j]:.2f} rad from the measured joints "
                    f"(limit max_ik_joint_step_rad {limit}): near a singularity, not sent")
        self._ik_last[arm] = q
        return ""

    def servo_pose(self, arm: str, T_base_tcp: np.ndarray, gripper: float | None = None,
                   stamp_ns: int | None = None) -> str | None:
        """Send one ServoP set-point toward T_base_tcp (shaped to the limits); None when sent, else why not."""
        with self._lock:
            meas = self._gate(arm, stamp_ns)
            if isinstance(meas, str):
                return self._refuse(arm, meas)
            now = time.monotonic_ns()
            sp = self.guards[arm].shape(T_base_tcp, now, meas)
            if isinstance(sp, str):
                return self._refuse(arm, sp)
            if not np.allclose(sp.T_base_tcp, T_base_tcp, atol=1e-9):
                self.shaped[arm] += 1
            why_ik = self._ik_check(arm, sp.T_base_tcp, meas.q)
            if why_ik:
                return self._refuse(arm, why_ik)
            why_sent = self._send(arm, "ServoP", sp, now)
            if why_sent:
                return self._refuse(arm, why_sent)
            self.refusals.pop(arm, None)
        if gripper is not None:
            self.command_gripper(arm, gripper)
        return None

    def servo_joints(self, arm: str, q: np.ndarray, gripper: float | None = None,
                     stamp_ns: int | None = None) -> str | None:
        """Send one ServoJ set-point (radians), its TCP checked through the kinematics like ServoP."""
        with self._lock:
            meas = self._gate(arm, stamp_ns)
            if isinstance(meas, str):
                return self._refuse(arm, meas)
            now = time.monotonic_ns()
            fk_base = functools.partial(_fk_base, self.cfg.arms[arm].T_base_armbase, self.kins[arm])
            sp = self.guards[arm].shape_joints(q, now, meas, fk_base)
            if isinstance(sp, str):
                return self._refuse(arm, sp)
            why = self._send(arm, "ServoJ", sp, now)
            if why:
                return self._refuse(arm, why)
            self.refusals.pop(arm, None)
        if gripper is not None:
            self.command_gripper(arm, gripper)
        return None

    # ------------------------------------------------------------------ braking
    def _brake_loop(self) -> None:
        """When an arm's set-points stop while it moves (network stall, refused commands, the other arm still
        streaming), continue its last velocity down to rest with the deceleration limit."""
        period = self.cfg.guard.servo_t
        while self._running:
            time.sleep(period / 2)
            with self._lock:
                if self._estop:
                    continue
                now = time.monotonic_ns()
                for arm, g in self.guards.items():
                    if not g.moving() or g.last_ns is None or (now - g.last_ns) * 1e-9 < 1.5 * period:
                        continue
                    if not self.clients[arm].connected:
                        g.forget()
                        continue
                    T_base_armbase = self.cfg.arms[arm].T_base_armbase
                    sp = g.brake(now, functools.partial(_fk_base, T_base_armbase, self.kins[arm]))
                    if sp is not None and self._send(arm, "ServoP" if sp.q is None else "ServoJ", sp, now) is None:
                        self.brakes[arm] += 1

    # ------------------------------------------------------------------ gripper
    def command_gripper(self, arm: str, opening: float) -> None:
        """Ask for a gripper opening (0 closed .. 1 open, clamped to the safety range); the gripper's own thread
        sends it, so a slow gripper never delays the arm's set-points. The latest request wins."""
        ch = self.grippers.get(arm)
        if ch is None or not np.isfinite(opening) or self._estop:
            return
        ch.command(self.cfg.safety.clamp_gripper(opening))
