"""One follower gripper on its own thread: the latest requested opening goes out, the measured opening comes
back at `rate_hz`, and nothing here can delay the arm's set-points.

The X-Trainer's grippers are Feetech SMS/STS servos on their own USB-RS485 adapters (not behind the Dobot
controller); `posevla.robot.feetech` speaks their protocol. A single failed transaction is retried on the next
cycle (the previous reading stays valid for `stale_s`); a bus that keeps failing (unplugged adapter, silent servo)
makes `latest()` report no measurement (the opening is then NaN everywhere) and the channel reopens the port
every `reopen_s`; the failure is in `error` for diagnostics.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from posevla.robot.feetech import FeetechError, FeetechGripper, GripperConfig


class GripperChannel:
    def __init__(self, cfg: GripperConfig, rate_hz: float = 50.0, stale_s: float = 0.2, reopen_s: float = 1.0,
                 failures_to_reopen: int = 5) -> None:
        self.cfg, self.period, self.stale_s, self.reopen_s = cfg, 1.0 / rate_hz, stale_s, reopen_s
        self.failures_to_reopen = failures_to_reopen  # consecutive failed transactions before the port is reopened
        self.failures = 0
        self._goal: float | None = None
        self._sent: float | None = None
        self._latest: tuple[float, int] | None = None  # (opening 0..1, wall-clock stamp ns)
        self.error = ""
        self.reads = 0
        self._running = True
        self._gripper: FeetechGripper | None = None
        self._thread = threading.Thread(target=self._loop, name=f"gripper-{cfg.port}", daemon=True)
        self._thread.start()

    def command(self, opening: float) -> None:
        """Request an opening (0 closed .. 1 open; clamped by the caller's safety range)."""
        if np.isfinite(opening):
            self._goal = float(np.clip(opening, 0.0, 1.0))

    def latest(self) -> tuple[float, int] | None:
        """(opening, stamp_ns) of the newest read-back, or None when it is older than stale_s or missing."""
        v = self._latest
        if v is None or (time.time_ns() - v[1]) * 1e-9 > self.stale_s:
            return None
        return v

    def opening(self) -> float:
        v = self.latest()
        return float("nan") if v is None else v[0]

    def close(self) -> None:
        self._running = False
        self._thread.join(1.0)
        if self._gripper is not None:
            self._gripper.close()

    def _loop(self) -> None:
        next_open = 0.0
        while self._running:
            t0 = time.monotonic()
            if self._gripper is None:
                if t0 >= next_open:
                    try:
                        g = FeetechGripper.from_config(self.cfg)
                        g.open()
                        self._gripper, self._sent, self.error = g, None, ""
                    except FeetechError as exc:
                        self.error = str(exc)
                        next_open = t0 + self.reopen_s
                time.sleep(self.period)
                continue
            try:
                goal = self._goal
                if goal is not None and (self._sent is None or abs(goal - self._sent) > 0.002):
                    self._gripper.command_opening(goal)
                    self._sent = goal
                self._latest = self._gripper.read_opening()
                self.reads += 1
                self.failures = 0
            except FeetechError as exc:
                # one late status packet is not a dead bus: the last reading stays valid for stale_s and the next
                # cycle tries again; only repeated failures reopen the port
                self.error = str(exc)
                self.failures += 1
                if self.failures >= self.failures_to_reopen:
                    self._gripper.close()
                    self._gripper = None
                    self.failures = 0
                    next_open = time.monotonic() + self.reopen_s
            time.sleep(max(0.0, self.period - (time.monotonic() - t0)))
