"""ChunkExecutor: action chunks in base_link -> a smooth, limited command stream at the control rate.

Plain Python (the executor node only feeds it). Per control tick at time `now`:
1. time alignment: chunk point k belongs to time chunk.stamp + k*dt (stamp = observation capture), so the part
   of a chunk already in the past is skipped and the target is interpolated at `now` (linear position,
   slerp rotation);
2. blending of overlapping chunks: `ensemble` (ACT temporal ensembling, weights exp(-k*i) with i = 0 for the
   oldest chunk), `rtc` (real-time-chunking style: keep following the committed chunk for `rtc_freeze_s`,
   then cross-fade into the new one over `rtc_blend_s`), or `replace` (newest chunk only);
3. safety: workspace box, maximum linear/angular speed and linear acceleration (SafetyLimits.limit_step),
   gripper range and rate; NaN or non-rigid chunks are refused on submit;
4. hold (no command) when no fresh chunk arrived within `watchdog_s`, when the chunks are used up, or when
   the e-stop is latched (until reset). After a hold, motion restarts from the last commanded pose if the
   arm is there, else (and after an e-stop) from the measured TCP pose.
Times are integer nanoseconds; poses are T_base_tcp (metres).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from posevla.control.interpolation import ChunkSampler
from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.types import ActionChunk

BLEND_MODES = ("ensemble", "rtc", "replace")


@dataclass
class ExecutorConfig:
    rate_hz: float = 50.0
    watchdog_s: float = 0.5
    max_chunk_age_s: float = 1.0  # a chunk whose observation is older than this on arrival is refused
    blend: str = "ensemble"
    ensemble_k: float = 0.01
    rtc_freeze_s: float = 0.1
    rtc_blend_s: float = 0.2
    max_gripper_speed: float = 2.0  # opening per second
    max_tracking_error_m: float = 0.03  # measured TCP this far from every recent command: restart from it
    tracking_window_s: float = 0.3  # recent commands the (delayed, lagging) feedback is compared with
    # plan at this fraction of the safety limits: the driver checks the full limits over its own (jittery) send
    # intervals, so the plan keeps a margin below the last line instead of meeting it exactly
    plan_margin: float = 0.85

    def __post_init__(self) -> None:
        if self.blend not in BLEND_MODES:
            raise ValueError(f"executor field blend={self.blend!r} must be one of {BLEND_MODES}")
        for name in ("rate_hz", "watchdog_s", "max_chunk_age_s", "max_gripper_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"executor field {name}={getattr(self, name)} must be > 0")
        if not 0 < self.plan_margin <= 1:
            raise ValueError(f"executor field plan_margin={self.plan_margin} must be in (0, 1]")


@dataclass
class Hold:
    reason: str


@dataclass
class ArmCommand:
    T_base_tcp: np.ndarray
    gripper: float


@dataclass
class _Active:
    chunk: ActionChunk
    received_ns: int
    seq: int
    sampler: ChunkSampler


@dataclass
class _ArmMotion:
    T: np.ndarray | None = None
    v: np.ndarray = field(default_factory=lambda: np.zeros(3))
    gripper: float | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # positions of recent commands (m)


def validate_chunk(chunk: ActionChunk) -> str | None:
    if chunk.frame_id != "base_link":
        return f"chunk is in frame {chunk.frame_id!r}, expected base_link"
    if not chunk.arms or chunk.length < 1:
        return "chunk is empty"
    if chunk.length > 1 and not chunk.dt > 0:
        return f"chunk dt={chunk.dt} must be > 0"
    for arm, c in chunk.arms.items():
        if c.T.ndim != 3 or c.T.shape[1:] != (4, 4) or c.gripper.shape != (c.T.shape[0],):
            return f"{arm}: chunk arrays have wrong shapes {c.T.shape} / {c.gripper.shape}"
        if not np.all(np.isfinite(c.T)) or not np.all(np.isfinite(c.gripper)):
            return f"{arm}: chunk has NaN or inf"
        if not se3.is_rigid(c.T, 1e-4):
            return f"{arm}: chunk has a non-rigid pose"
    return None


class ChunkExecutor:
    def __init__(self, cfg: ExecutorConfig, limits: SafetyLimits) -> None:
        self.cfg, self.limits = cfg, limits
        m = cfg.plan_margin
        self.plan_limits = replace(limits, max_linear_speed=limits.max_linear_speed * m,
                                   max_angular_speed=limits.max_angular_speed * m,
                                   max_linear_accel=limits.max_linear_accel * m)
        self.gripper_unmeasured = 0
        self.active: list[_Active] = []
        self.motion: dict[str, _ArmMotion] = {}
        self.estopped = False
        self.last_chunk_ns: int | None = None
        self._seq = 0
        self.refused: dict[str, int] = {}
        self.last_hold = ""
        self._last_tick_ns: int | None = None
        self.resyncs = 0

    # ------------------------------------------------------------------ inputs
    def submit(self, chunk: ActionChunk, now_ns: int) -> str | None:
        """Accept a base-frame chunk; returns the reason when refused."""
        why = validate_chunk(chunk)
        if why is None and (now_ns - chunk.stamp_ns) * 1e-9 > self.cfg.max_chunk_age_s:
            why = f"chunk observation is {(now_ns - chunk.stamp_ns) * 1e-9:.2f} s old"
        if why is None and chunk.stamp_ns > now_ns + 50_000_000:
            why = "chunk stamp is in the future"
        if why is not None:
            self.refused[why.split(":")[0]] = self.refused.get(why.split(":")[0], 0) + 1
            return why
        self._seq += 1
        self.active.append(_Active(chunk, now_ns, self._seq, ChunkSampler(chunk)))
        self.active = self.active[-8:]
        self.last_chunk_ns = now_ns
        return None

    def estop(self) -> None:
        self.estopped = True
        self._reset_motion()

    def reset_estop(self) -> None:
        self.estopped = False
        self.active.clear()
        self._reset_motion()

    def _reset_motion(self) -> None:
        """Forget the commanded poses: the next motion starts from the measured TCP (after an e-stop)."""
        self.motion.clear()

    def _stop_motion(self) -> None:
        """Hold: velocity to zero, but remember the last commanded pose. Motion resumes from it when the arm is
        there (within max_tracking_error_m), so the first new set-point continues the stream the driver saw;
        otherwise from the measured pose."""
        for m in self.motion.values():
            m.v = np.zeros(3)

    # ------------------------------------------------------------------ control tick
    def _end_ns(self, a: _Active) -> int:
        return a.chunk.stamp_ns + int(round((a.chunk.length - 1) * a.chunk.dt * 1e9))

    def _targets(self, now_ns: int, arm: str) -> tuple[np.ndarray, float] | None:
        live = [a for a in self.active if arm in a.chunk.arms and a.chunk.stamp_ns <= now_ns <= self._end_ns(a)]
        if not live:
            return None
        samples = [a.sampler.sample(arm, now_ns) for a in live]  # (position, quaternion, gripper)

        def pose(p: np.ndarray, q: np.ndarray) -> np.ndarray:
            return se3.make_T(se3.matrix_from_quat(q), p)

        if self.cfg.blend == "replace" or len(live) == 1:
            p, q, g = samples[-1]
            return pose(p, q), g
        if self.cfg.blend == "rtc":
            (p0, q0, g0), (p1, q1, g1) = samples[-2], samples[-1]
            t_in = (now_ns - live[-1].received_ns) * 1e-9 - self.cfg.rtc_freeze_s
            s = float(np.clip(t_in / max(self.cfg.rtc_blend_s, 1e-9), 0.0, 1.0))
            return pose((1 - s) * p0 + s * p1, se3.quat_slerp(q0, q1, s)), (1 - s) * g0 + s * g1
        # ACT temporal ensembling: oldest chunk gets weight exp(0), newer ones exp(-k i)
        w = np.exp(-self.cfg.ensemble_k * np.arange(len(samples)))
        w /= w.sum()
        p = sum(wi * s_[0] for wi, s_ in zip(w, samples))
        quats = np.stack([s_[1] for s_ in samples])
        quats[np.sum(quats * quats[0], axis=1) < 0] *= -1
        g = float(sum(wi * s_[2] for wi, s_ in zip(w, samples)))
        return pose(p, (w[:, None] * quats).sum(0)), g

    def tick(self, now_ns: int, measured: dict[str, tuple[np.ndarray, float]]) -> dict[str, ArmCommand] | Hold:
        """One control period. measured: arm -> (T_base_tcp, gripper opening, NaN if unmeasured) from feedback,
        the start of motion after a hold."""
        hold = self._hold_reason(now_ns)
        nominal = 1.0 / self.cfg.rate_hz
        # the real time since the last tick (timers jitter): limits are applied over the time that really passed
        dt = nominal if self._last_tick_ns is None else float(np.clip((now_ns - self._last_tick_ns) * 1e-9,
                                                                     1e-3, 2.0 * nominal))
        self._last_tick_ns = now_ns
        if hold:
            self._stop_motion()
            self.last_hold = hold
            return Hold(hold)
        out: dict[str, ArmCommand] = {}
        for arm in sorted({a for act in self.active for a in act.chunk.arms} | set(self.motion)):
            target = self._targets(now_ns, arm)
            if target is None:
                if arm in self.motion:
                    self.motion[arm].v = np.zeros(3)  # this arm pauses: it restarts from rest
                continue
            m = self.motion.setdefault(arm, _ArmMotion())
            if m.T is not None and arm in measured and self._tracking_error(m, measured[arm][0]) > self.cfg.max_tracking_error_m:
                self.resyncs += 1  # the arm did not follow (commands refused downstream, or blocked): re-plan from it
                m.T = None
                m.recent.clear()
            if m.T is None:
                if arm not in measured:
                    continue  # no feedback for this arm yet: do not move it
                g_meas = float(measured[arm][1])
                if not np.isfinite(g_meas):  # no gripper measurement: start from the target, and say so
                    self.gripper_unmeasured += 1
                    g_meas = self.limits.clamp_gripper(target[1])
                m.T, m.gripper = np.asarray(measured[arm][0], float), g_meas
                m.v = np.zeros(3)
            assert m.T is not None and m.gripper is not None  # set just above when the motion (re)started
            T_cmd, m.v = self.plan_limits.limit_step(arm, target[0], m.T, m.v, dt)
            g_goal = self.limits.clamp_gripper(target[1])
            dg = float(np.clip(g_goal - m.gripper, -self.cfg.max_gripper_speed * dt, self.cfg.max_gripper_speed * dt))
            m.T, m.gripper = T_cmd, m.gripper + dg
            window = max(1, int(round(self.cfg.tracking_window_s / nominal)))
            while len(m.recent) >= window:
                m.recent.popleft()
            m.recent.append(T_cmd[:3, 3].copy())
            out[arm] = ArmCommand(T_cmd, m.gripper)
        if not out:
            self._stop_motion()
            self.last_hold = "chunks used up"
            return Hold(self.last_hold)
        self.active = [a for a in self.active if self._end_ns(a) >= now_ns]
        self.last_hold = ""
        return out

    @staticmethod
    def _tracking_error(m: _ArmMotion, T_measured: np.ndarray) -> float:
        """Distance (m) from the measured TCP to the nearest of the recent commands: feedback arrives late and
        the arm lags its set-points, so it is following as long as it is near the recent path."""
        p = np.asarray(T_measured)[:3, 3]
        if not m.recent:
            return float(np.linalg.norm(m.T[:3, 3] - p)) if m.T is not None else float("inf")
        return float(np.min(np.linalg.norm(np.asarray(m.recent) - p, axis=1)))

    def _hold_reason(self, now_ns: int) -> str:
        if self.estopped:
            return "e-stop latched"
        if self.last_chunk_ns is None:
            return "no chunk yet"
        if (now_ns - self.last_chunk_ns) * 1e-9 > self.cfg.watchdog_s:
            return f"no fresh chunk for {(now_ns - self.last_chunk_ns) * 1e-9:.2f} s (watchdog {self.cfg.watchdog_s} s)"
        return ""
