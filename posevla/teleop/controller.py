"""Leader-to-follower joint mirroring with a safe start and a freeze on trouble (no ROS, no I/O).

States, per robot (both arms together):
  waiting   - no leader reading or no follower state yet; nothing is sent.
  aligning  - the followers move from where they are towards the leader at `align_speed` (rad/s) and
              only start mirroring when every measured joint is within `align_tolerance` (rad) of the leader.
  mirroring - the followers track the leader, each step rate-limited to `max_speed` (rad/s).
In both, a target never leads the measured follower joints by more than `max_lead` (rad), so a lagging
follower is never handed a jump.
  frozen    - the leader's port went away, it gave no new reading for `leader_timeout_s` (a single missed
              packet only holds the followers for that cycle), or it jumped more than
              `max_leader_jump` (rad) between two readings; nothing is sent (the follower controllers
              hold position) until `resume()`, which aligns slowly again.
Angles in radians (follower joint convention), gripper opening 0..1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from posevla.teleop.gello import LeaderReading


@dataclass(frozen=True)
class TeleopLimits:
    align_speed: float = 0.3  # rad/s while aligning
    align_tolerance: float = 0.05  # rad, max joint difference to start mirroring
    max_speed: float = 2.0  # rad/s while mirroring
    max_leader_jump: float = 0.35  # rad between consecutive leader readings
    leader_timeout_s: float = 0.2
    gripper_speed: float = 2.0  # opening fraction per second while aligning
    max_lead: float = 0.04  # rad a target may lead the follower's measured joints (below the driver's 0.05 check)


@dataclass
class TeleopController:
    arms: tuple[str, ...]
    limits: TeleopLimits = field(default_factory=TeleopLimits)
    state: str = "waiting"
    reason: str = "waiting for the leader and the followers"

    def __post_init__(self) -> None:
        self._last_leader: dict[str, LeaderReading] = {}
        self._cmd: dict[str, tuple[np.ndarray, float]] = {}

    def freeze(self, why: str) -> None:
        if self.state != "frozen":
            self.state, self.reason = "frozen", why
        self._cmd.clear()

    def resume(self) -> str:
        """Leave `frozen` (operator action): the next steps align slowly from the followers' actual pose."""
        if self.state == "frozen":
            self.state, self.reason = "waiting", "resumed; aligning once leader and followers report"
            self._last_leader.clear()
        return self.state

    def step(self, leader: dict[str, LeaderReading] | None, follower_q: dict[str, np.ndarray],
             follower_gripper: dict[str, float], now_ns: int, dt: float) -> dict[str, tuple[np.ndarray, float]]:
        """One control cycle: joint and gripper targets per arm, or {} (hold) when nothing may move."""
        if self.state == "frozen":
            return {}
        if leader is None:
            if self.state in ("aligning", "mirroring"):
                self.freeze("leader disconnected")
            return {}
        for arm in self.arms:
            r = leader.get(arm)
            if r is None or (now_ns - r.stamp_ns) > self.limits.leader_timeout_s * 1e9:
                if self.state in ("aligning", "mirroring"):
                    self.freeze(f"{arm} leader silent for more than {self.limits.leader_timeout_s} s")
                return {}
            if not np.all(np.isfinite(r.q)):
                self.freeze(f"{arm} leader reported non-finite joints")
                return {}
            prev = self._last_leader.get(arm)
            if prev is not None and r.stamp_ns == prev.stamp_ns:
                return {}  # no new reading this cycle (a missed packet): hold, freeze only after the timeout
            if prev is not None:
                jump = float(np.abs(r.q - prev.q).max())
                if jump > self.limits.max_leader_jump:
                    self.freeze(f"{arm} leader jumped {jump:.2f} rad between readings (limit "
                                f"{self.limits.max_leader_jump})")
                    return {}
        self._last_leader = {a: leader[a] for a in self.arms}
        if any(a not in follower_q for a in self.arms):
            return {}
        if self.state == "waiting":
            self._cmd = {a: (np.asarray(follower_q[a], float).copy(), float(follower_gripper.get(a, 0.0)))
                         for a in self.arms}
            self.state, self.reason = "aligning", "moving the followers slowly to the leader pose"
        aligning = self.state == "aligning"
        speed = self.limits.align_speed if aligning else self.limits.max_speed
        out, worst = {}, 0.0
        for a in self.arms:
            q_prev, g_prev = self._cmd[a]
            target, g_target = leader[a].q, leader[a].gripper
            step = np.clip(target - q_prev, -speed * dt, speed * dt)
            g_step = self.limits.gripper_speed * dt if aligning else 1.0
            q_meas = np.asarray(follower_q[a], float)
            q = np.clip(q_prev + step, q_meas - self.limits.max_lead, q_meas + self.limits.max_lead)
            g = g_prev + float(np.clip(g_target - g_prev, -g_step, g_step))
            self._cmd[a] = (q, g)
            out[a] = (q.copy(), g)
            worst = max(worst, float(np.abs(target - q_meas).max()))
        if aligning and worst < self.limits.align_tolerance:
            self.state, self.reason = "mirroring", "followers mirror the leader"
        return out
