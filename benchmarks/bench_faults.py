"""Safety under faults, measured at the simulated controller: for each injected fault (network, clock, link,
feedback, e-stop), the largest set-point-to-arm distance, speed, acceleration and rotation speed that the
controller received, beside the limits (posevla.robot.faults; the same scenarios tests/test_robot_faults.py
asserts). Also saves the table to runs/bench/faults.txt."""
from __future__ import annotations

import time
from pathlib import Path

from posevla.robot import faults


def main() -> None:
    t0 = time.perf_counter()
    results = faults.run_all()
    text = faults.table(results)
    print(text)
    print(f"{len(results)} scenarios in {time.perf_counter() - t0:.1f} s (real driver, real sockets, simulated controllers)")
    out = Path(__file__).resolve().parents[1] / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
