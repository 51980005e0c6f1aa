"""The driver's last line, anchored on the measured arm: which feedback to trust, and which set-point may go out.

Two parts, per arm, plain Python (the driver calls them under its lock; tests call them directly):

`FeedbackMonitor` sees every feedback packet. A packet is *plausible* when its joints and TCP pose are finite,
the pose is rigid, the TCP agrees with the forward kinematics of the measured joints (when a kinematic model is
given), the TCP moved no faster than an arm can since the previous packet, the controller clock did not run
backwards, and the packet was not delivered late (`Feedback.delay_s`). After an implausible packet nothing is
trusted again until the stream has been plausible for `retrust_s`; `trusted()` then returns the newest plausible
packet, or None (the arm holds) when that is older than `feedback_timeout_s`.

`SetpointGuard` turns a requested TCP pose into the set-point that is sent, or refuses it. Speeds and the
acceleration are computed over the *actual* interval since the previous set-point (monotonic clock), and that
interval is the `t` sent with it, so what the controller is asked to do is exactly what was checked. After a gap
longer than `max_gap_s` (stall, reconnect, per-arm pause, hold) the previous velocity is zero and the reference is
the measured pose: motion restarts within the acceleration limit less what the resting arm may have crept since it
was measured (see `_accel_budget`). The request is *shaped* (speed, acceleration,
angular speed: the set-point moves toward the request as far as the limits allow) but *refused* when it is
implausible (non-finite, non-rigid, outside the workspace box, further than `max_request_m` / `max_request_rad`
from the reference) or when the shaped set-point would be further than `max_lead_m` / `max_lead_rad` from the
measured arm. Braking (`brake`) continues the last velocity with the deceleration limit to standstill.

Guarantees at the controller (tests/test_robot_faults.py measures them): every set-point is within `max_lead_m`
(+ max_linear_speed x the measurement's age, at most `feedback_timeout_s`) of the latest trusted measured TCP; |step| / t <= max_linear_speed; |step/t - previous step/t| / t <=
max_linear_accel (previous = 0 after a gap); the rotation step / t <= max_angular_speed; the TCP is inside the box.
Frames: T_base_tcp (base_link, metres); times in ns unless named _s.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np

from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.robot.client import Feedback


@dataclass(frozen=True)
class GuardConfig:
    """Limits of the guard beyond SafetyLimits (robot YAML key `guard`; every field optional)."""

    servo_t: float = 0.02  # nominal set-point period and the t of a restart step (s)
    min_servo_t: float = 0.004  # shortest t sent to the controller (Dobot's lower bound for ServoP/ServoJ) (s)
    max_gap_s: float = 0.1  # no set-point for longer: the stream restarts from the measured pose at rest (s)
    max_lead_m: float = 0.03  # a set-point is never further than this from the measured TCP (m)
    max_lead_rad: float = 0.3  # ... nor rotated further than this from it (rad)
    max_request_m: float = 0.05  # a request this far from the reference is a fault upstream: refused (m)
    max_request_rad: float = 0.5  # (rad)
    max_joint_speed: float = 1.5  # ServoJ: no joint faster than this (rad/s)
    max_ik_joint_step_rad: float = 0.6  # ServoP: the set-point's IK solution nearest the measured joints may turn
    # no joint further than this from them (rad); beyond it the pose is near a singularity or needs a branch flip
    feedback_timeout_s: float = 0.1  # newest trusted feedback older than this: hold (s)
    feedback_max_delay_s: float = 0.05  # a packet delivered this much later than the fastest recent one is stale (s)
    plausible_speed: float = 2.0  # the TCP cannot move faster than this between two packets (m/s)
    plausible_angular_speed: float = 8.0  # (rad/s)
    fk_tolerance_m: float = 0.005  # |FK(q_actual) - TCP| above this: the packet is implausible; 0 disables (m)
    retrust_s: float = 0.2  # after an implausible packet, feedback must be plausible this long to be trusted (s)
    restart_tolerance_m: float = 0.005  # after a gap, restart from the last set-point if the arm is this close (m)
    rest_speed: float = 0.003  # after a gap, restart only once the measured TCP is slower than this (m/s)
    restart_max_age_s: float = 0.1  # ... and measured no longer ago than this (s)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (np.isfinite(v) and (v > 0 or (f.name == "fk_tolerance_m" and v == 0))):
                raise ValueError(f"guard field {f.name}={v} must be a positive number")
        if self.min_servo_t > self.servo_t or self.servo_t > self.max_gap_s:
            raise ValueError(f"guard fields need min_servo_t <= servo_t <= max_gap_s "
                             f"({self.min_servo_t}, {self.servo_t}, {self.max_gap_s})")

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "<dict>") -> GuardConfig:
        d = d or {}
        if not isinstance(d, dict):
            raise ValueError(f"{source}: field guard must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown guard field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**{k: float(v) for k, v in d.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc


@dataclass
class TrustedPose:
    T_base_tcp: np.ndarray
    q: np.ndarray
    stamp_ns: int
    recv_ns: int
    speed: float = 0.0  # TCP speed between the two newest trusted packets (m/s; inf after only one)
    age_s: float = 0.0  # how old the measurement is when a set-point is judged against it


class FeedbackMonitor:
    """Plausibility of one arm's feedback stream. `update` runs on the client's reader thread."""

    def __init__(self, cfg: GuardConfig, T_base_armbase: np.ndarray,
                 fk: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.cfg, self.T_base_armbase, self.fk = cfg, np.asarray(T_base_armbase, float), fk
        self._lock = threading.Lock()
        self._prev: Feedback | None = None
        self._trusted: TrustedPose | None = None
        self._bad_until_ns = 0
        self.last_problem = ""
        self.implausible = 0

    def reset(self) -> None:
        """Forget the stream (after a reconnect): nothing is trusted until new packets arrive."""
        with self._lock:
            self._prev, self._trusted, self._bad_until_ns = None, None, 0

    def problem(self, fb: Feedback) -> str:
        """Why this packet is implausible, or ''."""
        q, T = np.asarray(fb.q, float), np.asarray(fb.T_armbase_tcp, float)
        if q.shape != (6,) or not np.all(np.isfinite(q)) or T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return "feedback has NaN or inf"
        if not se3.is_rigid(T, 1e-4):
            return "feedback TCP pose is not a rigid transform"
        if fb.delay_s > self.cfg.feedback_max_delay_s:
            return f"feedback delivered {fb.delay_s * 1e3:.0f} ms late"
        if self.fk is not None and self.cfg.fk_tolerance_m > 0:
            err = float(np.linalg.norm(self.fk(q)[:3, 3] - T[:3, 3]))
            if err > self.cfg.fk_tolerance_m:
                return f"feedback TCP is {err * 1e3:.1f} mm from the forward kinematics of its joints"
        prev = self._prev
        if prev is not None:
            if fb.controller_ms and prev.controller_ms:
                if fb.controller_ms < prev.controller_ms:
                    return "controller clock ran backwards"
                dt = (fb.controller_ms - prev.controller_ms) * 1e-3
            else:
                dt = (fb.recv_ns - prev.recv_ns) * 1e-9
            dt = max(dt, 0.004)
            T0 = np.asarray(prev.T_armbase_tcp, float)
            if np.all(np.isfinite(T0)):
                jump = float(np.linalg.norm(T[:3, 3] - T0[:3, 3]))
                if jump > self.cfg.plausible_speed * dt + 0.002:
                    return f"feedback TCP jumped {jump * 1e3:.0f} mm in {dt * 1e3:.0f} ms"
                turn = float(se3.rotation_angle(T0[:3, :3].T @ T[:3, :3]))
                if turn > self.cfg.plausible_angular_speed * dt + 0.01:
                    return f"feedback TCP turned {np.rad2deg(turn):.0f} deg in {dt * 1e3:.0f} ms"
        return ""

    def update(self, fb: Feedback) -> None:
        why = self.problem(fb)
        with self._lock:
            self._prev = fb
            if why:
                self.implausible += 1
                self.last_problem = why
                self._bad_until_ns = fb.recv_ns + int(self.cfg.retrust_s * 1e9)
                return
            if fb.recv_ns < self._bad_until_ns:
                return
            T = self.T_base_armbase @ np.asarray(fb.T_armbase_tcp, float)
            speed, old = float("inf"), self._trusted  # unknown until two packets
            if old is not None and fb.stamp_ns > old.stamp_ns:
                speed = float(np.linalg.norm(T[:3, 3] - old.T_base_tcp[:3, 3])) / ((fb.stamp_ns - old.stamp_ns) * 1e-9)
            self._trusted = TrustedPose(T, np.asarray(fb.q, float).copy(), fb.stamp_ns, fb.recv_ns, speed)

    def trusted(self, now_ns: int) -> TrustedPose | str:
        """The newest trusted pose, or why there is none (the arm must hold). now_ns: wall clock."""
        with self._lock:
            t, bad_until, problem = self._trusted, self._bad_until_ns, self.last_problem
        if now_ns < bad_until:
            return f"implausible feedback ({problem})"
        if t is None:
            return "no plausible feedback yet"
        age = (now_ns - t.stamp_ns) * 1e-9
        if age > self.cfg.feedback_timeout_s:
            return f"feedback is {age:.3f} s old" + (f" (last problem: {problem})" if problem else "")
        return replace(t, age_s=max(age, 0.0))


@dataclass
class Setpoint:
    """What goes to the controller: pose, the t sent with it (s), and the TCP velocity it implies (m/s)."""

    T_base_tcp: np.ndarray
    t_s: float
    v: np.ndarray
    q: np.ndarray | None = None  # ServoJ set-points: joints (rad)
    qd: np.ndarray | None = None  # ... and the joint velocity they imply (rad/s)
    v_unc: float = 0.0  # how far the arm's real velocity may be from v (m/s): a restart from a creeping arm


class SetpointGuard:
    """Shapes or refuses one arm's set-points (see the module docstring). Not thread-safe: the driver locks."""

    def __init__(self, arm: str, limits: SafetyLimits, cfg: GuardConfig) -> None:
        self.arm, self.limits, self.cfg = arm, limits, cfg
        self.last: Setpoint | None = None
        self.last_ns: int | None = None  # monotonic time of the last set-point sent

    def forget(self) -> None:
        """The next set-point restarts from the measured pose at rest (reconnect, e-stop, fault)."""
        self.last, self.last_ns = None, None

    def moving(self) -> bool:
        if self.last is None:
            return False
        return float(np.linalg.norm(self.last.v)) > 1e-6 or (self.last.qd is not None and
                                                              float(np.abs(self.last.qd).max()) > 1e-6)

    def _reference(self, now_ns: int, meas: TrustedPose) -> tuple[np.ndarray, np.ndarray, float, bool] | str:
        """(T_ref, v_prev, t, continuing) for a set-point sent at monotonic time now_ns, or why not now."""
        if self.last is not None and self.last_ns is not None:
            gap = (now_ns - self.last_ns) * 1e-9
            if gap <= self.cfg.max_gap_s:
                # t as sent (0.1 ms resolution, rounded down): the limits are checked over exactly that t
                t = max(np.floor(gap * 1e4) / 1e4, self.cfg.min_servo_t)
                return self.last.T_base_tcp, self.last.v, t, True
        # after a gap the arm is at rest: at its last set-point when it is there (the controller's set-point
        # stream stays continuous), else at the measured pose (reconnect, e-stop, blocked arm)
        if meas.speed > self.cfg.rest_speed:
            return f"waiting for the arm to come to rest before restarting ({meas.speed:.3f} m/s)"
        if meas.age_s > self.cfg.restart_max_age_s:
            return f"waiting for fresh feedback before restarting (newest is {meas.age_s * 1e3:.0f} ms old)"
        if self.last is not None and self._near(self.last.T_base_tcp, meas.T_base_tcp):
            return self.last.T_base_tcp, np.zeros(3), self.cfg.servo_t, False
        return meas.T_base_tcp, np.zeros(3), self.cfg.servo_t, False

    def _near(self, T_a: np.ndarray, T_b: np.ndarray) -> bool:
        return (float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3])) <= self.cfg.restart_tolerance_m
                and float(se3.rotation_angle(T_a[:3, :3].T @ T_b[:3, :3])) <= 10 * self.cfg.restart_tolerance_m)

    def _static_check(self, T: np.ndarray) -> str:
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            return "pose has NaN or inf"
        if not se3.is_rigid(T, 1e-5):
            return "pose is not a rigid transform"
        box = self.limits.workspace.get(self.arm)
        if box is None:
            return f"arm {self.arm!r} has no workspace box"
        if not box.contains(T[:3, 3]):
            return f"position {np.round(T[:3, 3], 3).tolist()} m is outside the {self.arm} workspace box"
        return ""

    def _lead_check(self, T: np.ndarray, meas: TrustedPose) -> str:
        # the arm may have followed the set-points (at most max_linear_speed) since it was measured
        bound = self.cfg.max_lead_m + self.limits.max_linear_speed * meas.age_s
        lead = float(np.linalg.norm(T[:3, 3] - meas.T_base_tcp[:3, 3]))
        if lead > bound:
            return f"set-point would be {lead * 1e3:.0f} mm from the measured arm (limit {bound * 1e3:.0f})"
        turn = float(se3.rotation_angle(meas.T_base_tcp[:3, :3].T @ T[:3, :3]))
        if turn > self.cfg.max_lead_rad:
            return f"set-point would be rotated {np.rad2deg(turn):.0f} deg from the measured arm"
        return ""

    def shape(self, T_req: np.ndarray, now_ns: int, meas: TrustedPose) -> Setpoint | str:
        """The set-point to send at monotonic time now_ns toward T_req, or why none may be sent."""
        T_req = np.asarray(T_req, float)
        why = self._static_check(T_req)
        if why:
            return why
        ref = self._reference(now_ns, meas)
        if isinstance(ref, str):
            return ref
        T_ref, v_prev, t, continuing = ref
        dist = float(np.linalg.norm(T_req[:3, 3] - T_ref[:3, 3]))
        if dist > self.cfg.max_request_m:
            return f"request is {dist * 1e3:.0f} mm from the current set-point (limit {self.cfg.max_request_m * 1e3:.0f})"
        angle = float(se3.rotation_angle(T_ref[:3, :3].T @ T_req[:3, :3]))
        if angle > self.cfg.max_request_rad:
            return f"request is rotated {np.rad2deg(angle):.0f} deg from the current set-point"
        L = self.limits
        # translation: braking-aware desired velocity, then the acceleration and speed limits over t
        v_cap = min(dist / t, float(np.sqrt(2.0 * L.max_linear_accel * dist)))
        v_des = (T_req[:3, 3] - T_ref[:3, 3]) / dist * v_cap if dist > 1e-12 else np.zeros(3)
        accel, v_unc = self._accel_budget(continuing, meas, t)
        v = _limit(v_des, v_prev, accel * t, L.max_linear_speed)
        p = T_ref[:3, 3] + v * t
        # rotation: along the geodesic, at most max_angular_speed * t
        max_angle = L.max_angular_speed * t
        if angle <= max_angle:
            R = T_req[:3, :3]
        else:
            q0, q1 = se3.quat_from_matrix(T_ref[:3, :3]), se3.quat_from_matrix(T_req[:3, :3])
            R = se3.matrix_from_quat(se3.quat_slerp(q0, q1, max_angle / angle))
        T = se3.make_T(R, p)
        why = self._static_check(T) or self._lead_check(T, meas)
        return why or Setpoint(T, t, v, v_unc=v_unc)

    def _accel_budget(self, continuing: bool, meas: TrustedPose, t: float) -> tuple[float, float]:
        """(acceleration allowed for this step (m/s^2), velocity uncertainty it leaves (m/s)).

        A restart step starts from a measured pose, but the resting arm may still creep (below rest_speed) for
        the measurement's age and during t: the step keeps 5 % plus that distance over t^2 of the limit unused, and
        the step after it keeps the same uncertainty of its starting velocity (creep / t) unused."""
        a = self.limits.max_linear_accel
        if not continuing:
            creep_m = meas.speed * (meas.age_s + t)
            return max(0.95 * a - creep_m / t ** 2, 0.0), creep_m / t
        unc = self.last.v_unc if self.last is not None else 0.0
        return max(a - unc / t, 0.0), 0.0

    def brake(self, now_ns: int, fk_base: Callable[[np.ndarray], np.ndarray] | None = None) -> Setpoint | None:
        """One braking step from the last set-point (deceleration limit), or None when already at rest.
        A joint stream (last set-point with q) brakes in joint space, its TCP speed falling by the same limit."""
        last = self.last
        if last is None or self.last_ns is None or not self.moving():
            return None
        if (now_ns - self.last_ns) * 1e-9 > self.cfg.max_gap_s:
            # too late to brake smoothly: the controller has long reached its last set-point and stands there
            self.last = replace(last, v=np.zeros(3), qd=None if last.qd is None else np.zeros(6))
            return None
        t = min(max(np.floor((now_ns - self.last_ns) * 1e-5) / 1e4, self.cfg.min_servo_t), self.cfg.servo_t)
        speed = float(np.linalg.norm(last.v))
        new_speed = max(0.0, speed - max(self.limits.max_linear_accel - last.v_unc / t, 0.0) * t)
        ratio = new_speed / speed if speed > 1e-9 else 0.0
        if last.q is not None and last.qd is not None and fk_base is not None:
            qd = last.qd * ratio
            q = last.q + qd * t
            T = fk_base(q)
            if self._static_check(T):
                return Setpoint(last.T_base_tcp, t, np.zeros(3), last.q.copy(), np.zeros(6))
            return Setpoint(T, t, (T[:3, 3] - last.T_base_tcp[:3, 3]) / t, q, qd)
        v = last.v * ratio
        p = self.limits.workspace[self.arm].clamp(last.T_base_tcp[:3, 3] + v * t)
        v = (p - last.T_base_tcp[:3, 3]) / t
        return Setpoint(se3.make_T(last.T_base_tcp[:3, :3], p), t, v)

    def shape_joints(self, q_req: np.ndarray, now_ns: int, meas: TrustedPose,
                     fk_base: Callable[[np.ndarray], np.ndarray]) -> Setpoint | str:
        """ServoJ: the largest fraction of the joint step whose TCP (through fk_base) meets every limit."""
        q_req = np.asarray(q_req, float)
        if q_req.shape != (6,) or not np.all(np.isfinite(q_req)):
            return "joint command must be 6 finite angles"
        T_req = fk_base(q_req)
        why = self._static_check(T_req)
        if why:
            return why
        ref = self._reference(now_ns, meas)
        if isinstance(ref, str):
            return ref
        T_ref, v_prev, t, continuing = ref
        accel, v_unc = self._accel_budget(continuing, meas, t)
        q_ref = self.last.q if continuing and self.last is not None and self.last.q is not None else meas.q
        if float(np.linalg.norm(T_req[:3, 3] - T_ref[:3, 3])) > self.cfg.max_request_m:
            return "joint request moves the TCP further than max_request_m from the current set-point"
        L = self.limits

        def ok(s: float) -> Setpoint | None:
            q = q_ref + s * (q_req - q_ref)
            if s > 1.0 and self._static_check(fk_base(q)):
                return None
            if float(np.abs(q - q_ref).max()) > self.cfg.max_joint_speed * t * (1 + 1e-9):
                return None
            T = fk_base(q)
            v = (T[:3, 3] - T_ref[:3, 3]) / t
            if (np.linalg.norm(v) > L.max_linear_speed * (1 + 1e-9)
                    or np.linalg.norm(v - v_prev) > accel * t * (1 + 1e-9)
                    or se3.rotation_angle(T_ref[:3, :3].T @ T[:3, :3]) > L.max_angular_speed * t * (1 + 1e-9)
                    or self._static_check(T) or self._lead_check(T, meas)):
                return None
            return Setpoint(T, t, v, q, (q - q_ref) / t, v_unc)

        best = ok(1.0)
        if best is None:
            # The TCP velocity is nearly linear in the fraction s of the joint step: v(s) ~ s * v1. The limits then
            # give an interval of s (acceleration: |s v1 - v_prev| <= a t; speed; joint speed); take its upper end
            # and shrink toward its lower end until the exact FK check passes.
            dq_max = float(np.abs(q_req - q_ref).max())
            v1 = (T_req[:3, 3] - T_ref[:3, 3]) / t
            A, V = accel * t, L.max_linear_speed
            aa = float(v1 @ v1)
            # s may exceed 1 (by at most a half step): decelerating within the limit can carry the arm a little
            # past a request that stops short, as for ServoP
            s_hi, s_lo = 1.5, 0.0
            if dq_max > 0:
                s_hi = min(s_hi, self.cfg.max_joint_speed * t / dq_max)
            if aa > 1e-18:
                s_hi = min(s_hi, V / np.sqrt(aa))
                bb, cc = -2.0 * float(v1 @ v_prev), float(v_prev @ v_prev) - A * A
                disc = bb * bb - 4 * aa * cc
                if disc < 0:
                    return "the arm cannot follow this joint stream within the acceleration limit (hold)"
                r0, r1 = (-bb - np.sqrt(disc)) / (2 * aa), (-bb + np.sqrt(disc)) / (2 * aa)
                s_lo, s_hi = max(s_lo, r0), min(s_hi, r1)
            if s_lo > s_hi:
                return "the arm cannot follow this joint stream within the limits (hold)"
            s0 = min(max(1.0, s_lo), s_hi)
            mid = 0.5 * (s_lo + s_hi)
            best = None
            for k in range(12):  # from the preferred fraction toward the middle of the interval (FK nonlinearity)
                best = ok(s0 + (mid - s0) * (1 - 0.5 ** k))
                if best is not None:
                    break
            if best is None:
                return "the arm cannot follow this joint stream within the limits (hold)"
        return best

    def commit(self, sp: Setpoint, now_ns: int) -> None:
        self.last, self.last_ns = sp, now_ns


def _limit(v_des: np.ndarray, v_prev: np.ndarray, dv_max: float, v_max: float) -> np.ndarray:
    """v_des moved toward from v_prev by at most dv_max, then capped at v_max (m/s). The cap only scales v down,
    so |v - v_prev| stays within dv_max when |v_prev| <= v_max."""
    dv = v_des - v_prev
    n = float(np.linalg.norm(dv))
    if n > dv_max:
        dv *= dv_max / n
    v = v_prev + dv
    s = float(np.linalg.norm(v))
    if s > v_max:
        v *= v_max / s
    return v
