"""Stage 2 of `make demo`: run the simulated graph and report what crossed it.

replay_node (recorded episode as cameras) -> policy_node -> executor_node -> xtrainer_driver_node ->
xtrainer_sim (Dobot TCP protocol on loopback). A monitor node in this process counts chunks and servo
commands, keeps the TCP trajectory, reads /diagnostics, and saves a trajectory plot.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla_ros.graph import graph
from posevla_ros.msg_conv import msg_to_chunk, msg_to_servo_command, pose_to_T
from posevla_ros.run_graph import GraphRunner


class DemoMonitor(Node):
    """Counts what flows through the graph (plumbing only)."""

    def __init__(self) -> None:
        super().__init__("demo_monitor")
        self.chunks: list[tuple[float, int, str]] = []  # (receive time, stamp, frame)
        self.commands: list[float] = []
        self.tcp: dict[str, list[tuple[float, np.ndarray]]] = {"left": [], "right": []}
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.create_subscription(MultiDOFJointTrajectory, "/policy/chunk", self._on_chunk, 10)
        self.create_subscription(MultiDOFJointTrajectory, "/xtrainer/servo_command", self._on_command, 50)
        for arm in self.tcp:
            self.create_subscription(PoseStamped, f"/{arm}_arm/tcp_pose",
                                     lambda m, a=arm: self.tcp[a].append((time.monotonic(), pose_to_T(m.pose))), 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)

    def _on_chunk(self, msg: MultiDOFJointTrajectory) -> None:
        chunk = msg_to_chunk(msg, "/policy/chunk")
        self.chunks.append((time.monotonic(), chunk.stamp_ns, chunk.frame_id))

    def _on_command(self, msg: MultiDOFJointTrajectory) -> None:
        msg_to_servo_command(msg)
        self.commands.append(time.monotonic())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
            self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values} | {"_message": st.message,
                                                                                  "_level": str(level)}


def _plot(mon: DemoMonitor, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(mon.tcp.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    t0 = min(v[0][0] for v in mon.tcp.values() if v)
    for ax, arm in zip(axes, ("left", "right")):
        if not mon.tcp[arm]:
            continue
        t = np.array([x[0] for x in mon.tcp[arm]]) - t0
        p = np.array([x[1][:3, 3] for x in mon.tcp[arm]])
        for k, name in enumerate("xyz"):
            ax.plot(t, p[:, k], label=f"{name} (m)")
        for tc, _, _ in mon.chunks:
            ax.axvline(tc - t0, color="0.85", lw=0.5)
        ax.set_title(f"{arm} TCP in base_link (grey: chunk arrivals)")
        ax.set_xlabel("time (s)")
        ax.legend()
    fig.tight_layout()
    path = out / "trajectory.png"
    fig.savefig(path, dpi=80)
    return path


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    parser.add_argument("--episode", required=True, help="episode to replay as the cameras")
    parser.add_argument("--instruction", default="pick up the red cube")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    ns = parser.parse_args(args)
    ns.out.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    mon = DemoMonitor()
    runner = GraphRunner(graph("sim", ns.checkpoint, ns.episode, ns.instruction))
    print(f"[demo] starting the sim graph: {[s.name for s in runner.specs]}", flush=True)
    runner.start()
    t_end = time.monotonic() + ns.duration
    died: dict[str, int] = {}
    try:
        while time.monotonic() < t_end and not died:
            rclpy.spin_once(mon, timeout_sec=0.05)
            died = runner.dead()
    except KeyboardInterrupt:
        pass
    codes = runner.stop()
    cmd_t = np.array(mon.commands)
    summary = {
        "duration_s": ns.duration,
        "chunks": len(mon.chunks),
        "chunk_frames": sorted({c[2] for c in mon.chunks}),
        "servo_commands": len(mon.commands),
        "servo_rate_hz": float(1 / np.median(np.diff(cmd_t))) if len(cmd_t) > 2 else 0.0,
        "tcp_samples": {a: len(v) for a, v in mon.tcp.items()},
        "nodes_exited_early": died,
        "exit_codes": codes,
        "diagnostics": mon.diagnostics,
    }
    plot = _plot(mon, ns.out)
    (ns.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[demo] chunks from the policy: {summary['chunks']} (frames {summary['chunk_frames']})")
    print(f"[demo] servo commands to the driver: {summary['servo_commands']} at {summary['servo_rate_hz']:.1f} Hz")
    print(f"[demo] TCP feedback samples: {summary['tcp_samples']}")
    for name, kv in sorted(mon.diagnostics.items()):
        figures = ", ".join(f"{k}={v}" for k, v in kv.items() if not k.startswith("_"))
        print(f"[demo] diagnostics {name}: {kv.get('_message', '')} {figures}")
    if plot:
        print(f"[demo] saved {plot}")
    print(f"[demo] saved {ns.out / 'summary.json'}")
    mon.destroy_node()
    rclpy.try_shutdown()
    if died:
        print(f"[demo] FAILED: node(s) exited early: {died}", file=sys.stderr)
        return 1
    return 0 if summary["chunks"] > 0 and summary["servo_commands"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
