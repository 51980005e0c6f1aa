"""Stage 2 of `make demo`: run the simulated graph and report what crossed it.

replay_node (recorded episode as cameras) -> policy_node -> executor_node -> xtrainer_driver_node ->
xtrainer_sim (Dobot TCP protocol on loopback). A monitor node in this process counts chunks and servo
commands, keeps the TCP trajectory, reads /diagnostics, and saves a trajectory plot with the chunks the
executor accepted, the ones it refused, and the spans where the arms held.

The timed window (--duration) starts only once the graph is ready: TCP feedback from both arms and the first
chunk accepted by the executor (on a busy machine the policy node can take minutes to import and warm up;
--ready-timeout bounds that wait). Any failure is explained in one line, and the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla_ros.graph import graph
from posevla_ros.msg_conv import msg_to_chunk, msg_to_servo_command, pose_to_T, time_to_ns
from posevla_ros.run_graph import GraphRunner

# On a shared CPU the tiny model's observation-to-chunk latency reaches ~1.5 s (p99 1.2 s model time at load 17),
# past the robot defaults (observations 0.5 s, chunks 1.0 s: config/policy.yaml, config/executor.yaml). The demo
# accepts older ones so that it shows the pipeline; the robot keeps its defaults.
DEMO_OVERRIDES: dict[str, dict[str, object]] = {"policy": {"max_age_s": 1.5}, "executor": {"max_chunk_age_s": 2.5}}

# a gap between servo commands longer than this many control periods is drawn as a hold
HOLD_GAP_PERIODS = 3
CONTROL_PERIOD_S = 0.02


class DemoMonitor(Node):
    """Counts what flows through the graph (plumbing only)."""

    def __init__(self) -> None:
        super().__init__("demo_monitor")
        self.chunks: list[tuple[float, int, str]] = []  # (receive time, stamp, frame) on /policy/chunk
        self.accepted: dict[int, float] = {}  # stamp -> receive time on /executor/chunk_base
        self.commands: list[float] = []
        self.tcp: dict[str, list[tuple[float, np.ndarray]]] = {"left": [], "right": []}
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.create_subscription(MultiDOFJointTrajectory, "policy/chunk", self._on_chunk, 10)
        self.create_subscription(MultiDOFJointTrajectory, "executor/chunk_base", self._on_accepted, 10)
        self.create_subscription(MultiDOFJointTrajectory, "xtrainer/servo_command", self._on_command, 50)
        for arm in self.tcp:
            self.create_subscription(PoseStamped, f"{arm}_arm/tcp_pose",
                                     lambda m, a=arm: self.tcp[a].append((time.monotonic(), pose_to_T(m.pose))), 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)

    def _on_chunk(self, msg: MultiDOFJointTrajectory) -> None:
        chunk = msg_to_chunk(msg, "/policy/chunk")
        self.chunks.append((time.monotonic(), chunk.stamp_ns, chunk.frame_id))

    def _on_accepted(self, msg: MultiDOFJointTrajectory) -> None:
        self.accepted[time_to_ns(msg.header.stamp)] = time.monotonic()

    def _on_command(self, msg: MultiDOFJointTrajectory) -> None:
        msg_to_servo_command(msg)
        self.commands.append(time.monotonic())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
            self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values} | {"_message": st.message,
                                                                                  "_level": str(level)}

    def reset(self) -> None:
        """Start the timed window: forget what happened during start-up."""
        self.chunks.clear()
        self.accepted.clear()
        self.commands.clear()
        for v in self.tcp.values():
            v.clear()

    def refused(self) -> list[float]:
        """Receive times of chunks the executor did not pass on (refused: too old, unsafe, e-stop...)."""
        t_end = time.monotonic() - 0.5  # chunks younger than this may still be on their way
        return [t for t, stamp, _ in self.chunks if stamp not in self.accepted and t < t_end]

    def holds(self, t_from: float, t_to: float) -> list[tuple[float, float]]:
        """Spans with no servo command for more than HOLD_GAP_PERIODS control periods (the arms held)."""
        times = [t_from, *self.commands, t_to]
        gap = HOLD_GAP_PERIODS * CONTROL_PERIOD_S
        return [(a, b) for a, b in zip(times[:-1], times[1:]) if b - a > gap]


def plot(mon: DemoMonitor, out: Path, t0: float, t_end: float) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(mon.tcp.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    holds, refused = mon.holds(t0, t_end), mon.refused()
    for ax, arm in zip(axes, ("left", "right")):
        for i, (a, b) in enumerate(holds):
            ax.axvspan(a - t0, b - t0, color="tab:orange", alpha=0.25, lw=0, label="hold (no command)" if i == 0 else None)
        for i, tc in enumerate(sorted(mon.accepted.values())):
            ax.axvline(tc - t0, color="tab:green", lw=0.6, alpha=0.6, label="chunk accepted" if i == 0 else None)
        for i, tc in enumerate(refused):
            ax.axvline(tc - t0, color="tab:red", lw=0.9, ls="--", label="chunk refused" if i == 0 else None)
        if mon.tcp[arm]:
            t = np.array([x[0] for x in mon.tcp[arm]]) - t0
            p = np.array([x[1][:3, 3] for x in mon.tcp[arm]])
            for k, name in enumerate("xyz"):
                ax.plot(t, p[:, k], label=f"{name} (m)")
        ax.set_title(f"{arm} TCP in base_link")
        ax.set_xlabel("time since the graph was ready (s)")
        ax.set_xlim(0, t_end - t0)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = out / "trajectory.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _last_words(runner: GraphRunner, name: str) -> str:
    lines = [ln.strip() for ln in runner.tail.get(name, []) if ln.strip()]
    return lines[-1] if lines else "no output"


def wait_ready(mon: DemoMonitor, runner: GraphRunner, timeout_s: float) -> str:
    """Spin until TCP feedback from both arms and one accepted chunk; '' when ready, else the reason."""
    t_start = time.monotonic()
    next_note = t_start + 15.0
    while True:
        rclpy.spin_once(mon, timeout_sec=0.05)
        dead = runner.dead()
        if dead:
            name, code = next(iter(dead.items()))
            return f"node {name} exited with status {code} during start-up: {_last_words(runner, name)}"
        feedback = all(mon.tcp.values())
        if feedback and mon.accepted:
            return ""
        now = time.monotonic()
        if now - t_start > timeout_s:
            if not feedback:
                return f"no TCP feedback from the simulated arms within {timeout_s:.0f} s (driver: {_last_words(runner, 'xtrainer_driver')})"
            if not mon.chunks:
                return (f"no chunk from the policy within {timeout_s:.0f} s (policy: {_last_words(runner, 'policy')}); "
                        "a busy machine may need a larger --ready-timeout")
            why = mon.diagnostics.get("executor", {}).get("last_refusal", "") or _last_words(runner, "executor")
            return f"the executor refused all {len(mon.chunks)} chunks within {timeout_s:.0f} s: {why}"
        if now > next_note:
            state = ("feedback ok" if feedback else "waiting for feedback") + (
                f", {len(mon.chunks)} chunks, none accepted yet" if mon.chunks else ", policy loading")
            print(f"[demo] waiting for the graph ({now - t_start:.0f} s): {state}", flush=True)
            next_note = now + 15.0


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    parser.add_argument("--episode", required=True, help="episode to replay as the cameras")
    parser.add_argument("--instruction", default="pick up the red cube")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the timed window, once ready")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for the graph to be ready before the timed window (default 300)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    ns = parser.parse_args(args)
    ns.out.mkdir(parents=True, exist_ok=True)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: KeyboardInterrupt, handled below
    mon = DemoMonitor()
    specs = graph("sim", ns.checkpoint, ns.episode, ns.instruction)
    for spec in specs:
        spec.parameters.update(DEMO_OVERRIDES.get(spec.name, {}))
    runner = GraphRunner(specs)
    print(f"[demo] starting the sim graph: {[s.name for s in runner.specs]}; CPU demo limits "
          f"{DEMO_OVERRIDES} (robot defaults: 0.5 s observations, 1.0 s chunks)", flush=True)
    failure = ""
    died: dict[str, int] = {}
    t_ready = t_end = time.monotonic()
    try:
        runner.start()
        t_launch = time.monotonic()
        failure = wait_ready(mon, runner, ns.ready_timeout)
        if not failure:
            print(f"[demo] graph ready after {time.monotonic() - t_launch:.1f} s; running for {ns.duration:.0f} s",
                  flush=True)
            mon.reset()
            t_ready = time.monotonic()
            t_end = t_ready + ns.duration
            while time.monotonic() < t_end and not died:
                rclpy.spin_once(mon, timeout_sec=0.05)
                died = runner.dead()
            t_end = min(t_end, time.monotonic())
            if died:
                name, code = next(iter(died.items()))
                failure = f"node {name} exited with status {code}: {_last_words(runner, name)}"
    except KeyboardInterrupt:
        failure = "interrupted"
    codes = runner.stop()
    cmd_t = np.array(mon.commands)
    refused, holds = mon.refused(), mon.holds(t_ready, t_end)
    summary: dict[str, Any] = {
        "duration_s": round(t_end - t_ready, 2),
        "chunks": len(mon.chunks),
        "chunks_accepted": sum(stamp in mon.accepted for _, stamp, _ in mon.chunks),
        "chunks_refused": len(refused),
        "chunk_frames": sorted({c[2] for c in mon.chunks}),
        "servo_commands": len(mon.commands),
        "servo_rate_hz": float(1 / np.median(np.diff(cmd_t))) if len(cmd_t) > 2 else 0.0,
        "holds": len(holds),
        "hold_s": round(sum(b - a for a, b in holds), 2),
        "tcp_samples": {a: len(v) for a, v in mon.tcp.items()},
        "nodes_exited_early": died,
        "exit_codes": codes,
        "failure": failure,
        "diagnostics": mon.diagnostics,
    }
    if not failure and not (summary["chunks_accepted"] > 0 and summary["servo_commands"] > 0):
        failure = (f"{summary['chunks_accepted']} chunks accepted and {summary['servo_commands']} servo commands "
                   f"in the {ns.duration:.0f} s window")
        summary["failure"] = failure
    path = plot(mon, ns.out, t_ready, t_end) if failure != "interrupted" else None
    (ns.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[demo] chunks from the policy: {summary['chunks']} (frames {summary['chunk_frames']}); executor accepted "
          f"{summary['chunks_accepted']}, refused {summary['chunks_refused']}")
    print(f"[demo] servo commands to the driver: {summary['servo_commands']} at {summary['servo_rate_hz']:.1f} Hz; "
          f"holds: {summary['holds']} ({summary['hold_s']} s)")
    print(f"[demo] TCP feedback samples: {summary['tcp_samples']}")
    for name, kv in sorted(mon.diagnostics.items()):
        figures = ", ".join(f"{k}={v}" for k, v in kv.items() if not k.startswith("_"))
        print(f"[demo] diagnostics {name}: {kv.get('_message', '')} {figures}")
    if path:
        print(f"[demo] saved {path}")
    print(f"[demo] saved {ns.out / 'summary.json'}")
    mon.destroy_node()
    rclpy.try_shutdown()
    if failure:
        print(f"[demo] FAILED: {failure}", file=sys.stderr, flush=True)
        return 130 if failure == "interrupted" else 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        print("[demo] interrupted", file=sys.stderr)
        sys.exit(130)
