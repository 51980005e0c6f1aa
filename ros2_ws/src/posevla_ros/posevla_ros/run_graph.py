"""Run a node graph of `posevla_ros.graph` as child processes (for machines without `ros2 launch`).

Each node gets `--ros-args -r __node:=<name> --params-file <config/...yaml> -p key:=value`, exactly what
the launch file passes. Output lines are prefixed with the node name. Ctrl-C (or --duration) stops the
graph: SIGINT first, then SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from posevla_ros.graph import EXECUTABLES, SETUPS, NodeSpec, graph


def node_command(spec: NodeSpec) -> list[str]:
    cmd = [sys.executable, "-m", EXECUTABLES[spec.executable], "--ros-args", "-r", f"__node:={spec.name}"]
    for path in spec.param_paths():
        if not path.exists():
            raise FileNotFoundError(f"parameter file {path} for node {spec.name} does not exist")
        cmd += ["--params-file", str(path)]
    for key, value in spec.parameters.items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


def _pump(name: str, stream, width: int) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"[{name:<{width}}] {line}")
        sys.stdout.flush()


class GraphRunner:
    """Start, watch and stop a list of nodes."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None) -> None:
        self.specs = specs
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, delay_s: float = 0.3) -> None:
        width = max(len(s.name) for s in self.specs)
        for spec in self.specs:
            proc = subprocess.Popen(node_command(spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=self.env, start_new_session=True)
            self.procs[spec.name] = proc
            threading.Thread(target=_pump, args=(spec.name, proc.stdout, width), daemon=True).start()
            time.sleep(delay_s)

    def dead(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout_s: float = 5.0) -> dict[str, int]:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in self.procs.values() if p.poll() is None]
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)
        return {n: p.returncode for n, p in self.procs.items()}


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setup", choices=SETUPS, help="which graph to run (see posevla_ros.graph.graph)")
    parser.add_argument("--checkpoint", default="", help="policy checkpoint directory")
    parser.add_argument("--episode", default="", help="recorded episode to replay as the cameras (sim)")
    parser.add_argument("--instruction", default="", help="language instruction (policy, or recorder when collecting)")
    parser.add_argument("--task", default="", help="task name of the recorded episodes (collect setups)")
    parser.add_argument("--leader-dir", default="", help="folder of simulated leader ports (collect_sim)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)")
    ns = parser.parse_args(args)
    runner = GraphRunner(graph(ns.setup, ns.checkpoint, ns.episode, ns.instruction, ns.task, ns.leader_dir))
    runner.start()
    t_end = time.monotonic() + ns.duration if ns.duration > 0 else float("inf")
    rc = 0
    try:
        while time.monotonic() < t_end:
            dead = runner.dead()
            if dead:
                print(f"[run_graph] node(s) exited: {dead}; stopping the graph", flush=True)
                rc = 1
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    runner.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
