"""Run a node graph of `posevla_ros.graph` as child processes (for machines without `ros2 launch`).

Each node gets `--ros-args -r __node:=<name> --params-file <config/...yaml> -p key:=value`, exactly what
the launch file passes (string values quoted, so a digit-only serial stays a string). Output lines are prefixed
with the node name. Ctrl-C, SIGTERM (e.g. from systemd or a supervisor) or --duration stop the graph: SIGINT to
every node first, then SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque

import yaml

from posevla_ros.bringup import BringupArgs, bringup, parse_cameras
from posevla_ros.graph import CAMERAS, EXECUTABLES, SETUPS, NodeSpec
from posevla_ros.trial_runner import trial_options


def param_arg(key: str, value: object) -> str:
    """`key:=value` for --ros-args -p. rcl parses the value as YAML with its own typing (a digit-only string,
    leading zeros or not, becomes an integer), so every string is double-quoted and stays a string."""
    if isinstance(value, str):
        return f"{key}:={yaml.safe_dump(value, default_style=chr(34), width=1 << 20).strip()}"
    if isinstance(value, (list, tuple)):
        return f"{key}:=[{', '.join(yaml.safe_dump(v, default_style=chr(34)).strip() if isinstance(v, str) else str(v) for v in value)}]"
    if isinstance(value, bool):
        return f"{key}:={'true' if value else 'false'}"
    return f"{key}:={value}"


def node_command(spec: NodeSpec) -> list[str]:
    cmd = [sys.executable, "-m", EXECUTABLES[spec.executable], "--ros-args", "-r", f"__node:={spec.name}"]
    for path in spec.param_paths():
        if not path.exists():
            raise FileNotFoundError(f"parameter file {path} for node {spec.name} does not exist")
        cmd += ["--params-file", str(path)]
    for key, value in spec.parameters.items():
        cmd += ["-p", param_arg(key, value)]
    return cmd


def _pump(name: str, stream, width: int, tail: deque) -> None:
    for line in iter(stream.readline, ""):
        tail.append(line)
        sys.stdout.write(f"[{name:<{width}}] {line}")
        sys.stdout.flush()


class GraphRunner:
    """Start, watch and stop a list of nodes."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None) -> None:
        self.specs = specs
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.tail: dict[str, deque] = {}  # node -> its last output lines (to explain a failure in one line)

    def start(self, delay_s: float = 0.3) -> None:
        width = max(len(s.name) for s in self.specs)
        for spec in self.specs:
            proc = subprocess.Popen(node_command(spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=self.env, start_new_session=True)
            self.procs[spec.name] = proc
            self.tail[spec.name] = deque(maxlen=20)
            threading.Thread(target=_pump, args=(spec.name, proc.stdout, width, self.tail[spec.name]),
                             daemon=True).start()
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


class _Terminate(Exception):
    """Raised in the main thread by the SIGTERM handler, so the graph is stopped like on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminate()


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setup", choices=SETUPS, help="which graph to run (see posevla_ros.graph.graph)")
    parser.add_argument("--checkpoint", default="", help="policy checkpoint directory")
    parser.add_argument("--episode", default="", help="recorded episode to replay as the cameras (sim)")
    parser.add_argument("--instruction", default="", help="language instruction (policy, or recorder when collecting)")
    parser.add_argument("--task", default="", help="task name of the recorded episodes (collect setups)")
    parser.add_argument("--leader-dir", default="", help="folder of simulated leader ports (collect_sim)")
    parser.add_argument("--calibration-dir", default="", help="hand-eye calibration folder (default: the installed one)")
    parser.add_argument("--cameras", default="", help="cameras in use, e.g. 'head,left_wrist' (default: all three)")
    parser.add_argument("--remote", default="", help="host:port of a policy server (posevla serve-policy) instead of "
                                                     "--checkpoint")
    for cam in CAMERAS:
        parser.add_argument(f"--{cam.replace('_', '-')}-serial", default="", help=f"RealSense serial of the {cam} camera")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)")
    trial_group = parser.add_argument_group("setup trial (trial_runner parameters; see posevla trial --help)")
    trial_group.add_argument("--trials", default="", help="trials per condition (default 20)")
    trial_group.add_argument("--time-limit", default="", help="seconds per trial (default 60)")
    trial_group.add_argument("--condition", action="append", default=[], help="NAME[:key=value,...] (repeatable)")
    trial_group.add_argument("--out", default="", help="session folder (default runs/trials/<task>)")
    trial_group.add_argument("--no-record", action="store_true", help="do not start a recorder / record the trials")
    trial_group.add_argument("--seed", default="", help="seed of the randomised block order (default 0)")
    ns = parser.parse_args(args)
    extra = BringupArgs(calibration_dir=ns.calibration_dir, cameras=parse_cameras(ns.cameras), remote=ns.remote,
                        serials={c: getattr(ns, f"{c}_serial") for c in CAMERAS if getattr(ns, f"{c}_serial")})
    try:
        trial = trial_options(ns.trials, ns.time_limit, ";".join(ns.condition), ns.out,
                              "false" if ns.no_record else "", ns.seed) if ns.setup == "trial" else None
        specs = bringup(ns.setup, ns.checkpoint, ns.episode, ns.instruction, ns.task, ns.leader_dir, extra, trial)
        runner = GraphRunner(specs)
        for spec in specs:
            node_command(spec)  # parameter files exist, before anything starts
    except (ValueError, FileNotFoundError) as exc:
        print(f"run_graph: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    t_end = time.monotonic() + ns.duration if ns.duration > 0 else float("inf")
    rc = 0
    try:
        runner.start()
        while time.monotonic() < t_end:
            dead = runner.dead()
            if dead:
                print(f"[run_graph] node(s) exited: {dead}; stopping the graph", flush=True)
                rc = 1
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except _Terminate:
        print("[run_graph] SIGTERM: stopping the graph", flush=True)
        rc = 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        runner.stop()
        signal.signal(signal.SIGTERM, previous)
    return rc


if __name__ == "__main__":
    sys.exit(main())
