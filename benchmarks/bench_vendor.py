"""X-Trainer vendor parts: Feetech gripper read-back and command round trips through the real scservo_sdk against
the pty bus simulator (the real bus at 1 Mbaud adds ~0.1 ms per 8-byte packet and the adapter's latency timer),
Nova 2 FK / IK with the 197 mm tool, and decoding one 1440-byte feedback packet with the vendor table."""
from __future__ import annotations

import time

import numpy as np

from posevla.robot.dobot_fields import PACKET_SIZE, feedback_dtype
from posevla.robot.feetech import FeetechGripper
from posevla.robot.feetech_sim import FeetechBusSim
from posevla.robot.kinematics import ArmKinematics


def _times(fn, n: int) -> np.ndarray:
    fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def _row(name: str, t: np.ndarray, unit: str = "ms", scale: float = 1e3) -> None:
    print(f"{name:<34} p50 {np.percentile(t, 50) * scale:8.3f} {unit}   p99 {np.percentile(t, 99) * scale:8.3f} {unit}"
          f"   rate {1.0 / np.mean(t):9.0f} /s")


def main() -> None:
    sim = FeetechBusSim({21: 2048})
    grip = FeetechGripper(sim.port, 21, closed_pos=3055, open_pos=2048, reply_timeout_s=0.5)
    grip.open()
    try:
        _row("feetech read_opening (pty sim)", _times(grip.read_opening, 500))
        g = iter(np.linspace(0, 1, 100_000))
        _row("feetech command_opening (pty sim)", _times(lambda: grip.command_opening(next(g)), 500))
    finally:
        grip.close()
        sim.close()
    kin = ArmKinematics.nova("nova2")
    q = kin.home()
    _row("nova2 fk (tool 197 mm)", _times(lambda: kin.fk(q), 2000), "us", 1e6)
    T = kin.fk(q + 0.2)
    _row("nova2 ik closed form (0.2 rad away)", _times(lambda: kin.ik(T, q), 200))
    legacy = ArmKinematics()
    T_legacy = legacy.fk(legacy.home() + 0.2)
    _row("legacy model ik, damped LSQ", _times(lambda: legacy.ik(T_legacy, legacy.home()), 30))
    dt = feedback_dtype()
    data = bytes(PACKET_SIZE)
    _row("feedback packet decode (numpy)", _times(lambda: np.frombuffer(data, dtype=dt)[0]["q_actual"].copy(), 5000),
         "us", 1e6)


if __name__ == "__main__":
    main()
