"""Executor at 50 Hz: command-period jitter (p50/p99) of a real timer loop, and transform + executor CPU time
per cycle (camera-frame chunk -> base_link -> limited command)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from posevla.calibration.files import load_calibrations
from posevla.calibration.transforms import CameraToBase
from posevla.control.executor import ChunkExecutor, ExecutorConfig
from posevla.geometry import se3
from posevla.robot.driver import XTrainerConfig
from posevla.tools.latency_plot import save_latency_plot
from posevla.types import ActionChunk, ArmChunk

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    robot = XTrainerConfig.from_yaml(REPO / "config" / "xtrainer_sim_robot.yaml")
    tf = CameraToBase(load_calibrations(REPO / "calibration"), {})
    T_base_head = tf.T_base_cam("head_camera_color_optical_frame", 0)
    ex = ChunkExecutor(ExecutorConfig(rate_hz=50.0, watchdog_s=1.0), robot.safety)
    T_home = {"left": se3.T_from_xyz_rpy([0.45, 0.3, 0.25], [np.pi, 0, 0]),
              "right": se3.T_from_xyz_rpy([0.45, -0.3, 0.25], [np.pi, 0, 0])}
    measured = {a: (T, 0.5) for a, T in T_home.items()}
    period = 0.02
    n_cycles = 500  # 10 s
    ticks, cpu_transform, cpu_tick = [], [], []
    t_next = time.perf_counter()
    for i in range(n_cycles):
        now_ns = time.time_ns()
        if i % 5 == 0:  # a new chunk every 100 ms, as a fast policy would send
            t0 = time.perf_counter()
            arms = {}
            for a, T in T_home.items():
                path = np.tile(T, (50, 1, 1))
                path[:, 0, 3] += 0.05 * np.sin(np.linspace(0, 1, 50) + i * 0.01)
                arms[a] = ArmChunk(se3.invert_T(T_base_head) @ path, np.full(50, 0.5))
            chunk = tf.chunk_to_base(ActionChunk("head_camera_color_optical_frame", now_ns, 0.02, arms))
            ex.submit(chunk, now_ns)
            cpu_transform.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = ex.tick(now_ns, measured)
        cpu_tick.append(time.perf_counter() - t0)
        if isinstance(out, dict):
            measured.update({a: (c.T_base_tcp, c.gripper) for a, c in out.items()})
        ticks.append(time.perf_counter())
        t_next += period
        time.sleep(max(0.0, t_next - time.perf_counter()))
    jitter = (np.diff(ticks) - period) * 1e3
    print(f"50 Hz loop over {n_cycles} cycles: period error p50 {np.median(np.abs(jitter)):.3f} ms, "
          f"p99 {np.percentile(np.abs(jitter), 99):.3f} ms, max {np.abs(jitter).max():.3f} ms")
    print(f"executor tick CPU (2 arms): p50 {np.median(cpu_tick) * 1e3:.3f} ms  p99 {np.percentile(cpu_tick, 99) * 1e3:.3f} ms")
    print(f"chunk transform to base_link (2 arms x 50 points): p50 {np.median(cpu_transform) * 1e3:.3f} ms")
    path = save_latency_plot({"50 Hz period error (signed)": jitter, "executor tick CPU": np.asarray(cpu_tick) * 1e3,
                              "chunk transform CPU": np.asarray(cpu_transform) * 1e3}, "executor",
                             "executor at 50 Hz, two arms")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
