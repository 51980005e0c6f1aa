"""`posevla trial`: run, record and tally policy trials, the way the paper evaluates (N trials per condition).

    posevla trial --task stack_cups --instruction "stack the cups" --trials 20 --time-limit 60 \\
        --condition full:modalities=full --condition rgb_only:modalities=rgb --record --out runs/trials/stack

Start the robot graph first with an empty instruction, so the policy waits between trials:
`ros2 launch posevla_ros posevla.launch.py setup:=robot checkpoint:=... instruction:=""` (plus a recorder for
--record: `setup:=collect` nodes, or `ros2 run posevla_ros recorder_node`).

Each condition sets policy-node parameters at run time (`modalities`, or any parameter the policy node accepts
while running). The schedule is N randomised blocks, each holding every condition once (seeded: --seed), so
conditions interleave and drift in the scene or the robot affects all of them alike. Per trial:

  1. "reset the scene": the operator resets, then starts the trial: ENTER in this terminal, a handle button via
     `/trial/start` (std_srvs/Trigger), or, in simulation (--sim), the runner publishes the seed on /sim/reset
     and waits for /sim/episode;
  2. the condition's parameters and the instruction are set on the policy node; with --record the recorder starts;
  3. the policy runs until the operator marks the outcome (keys s / p / f, or the services /trial/success,
     /trial/partial, /trial/failure; /trial/abort discards the trial) or the time limit passes (then the policy
     stops and the runner waits for the mark; with --sim, /sim/success true ends the trial a success and the time
     limit a failure);
  4. the instruction is cleared (the executor holds the arms), the episode is saved and marked, the row is
     appended to results.csv (flushed and fsynced: a crash loses at most the trial in progress).

Restarting with the same --out resumes after the last completed trial (the plan in plan.json must match).
At the end (and after every trial) summary.json / summary.md hold per condition the trials, successes, partial
and failures, the success rate and its 95 % Wilson interval; thumbnails.png shows one tile per trial (the last
head-camera frame of its episode when recorded) with its outcome.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("success", "partial", "failure")
CSV_FIELDS = ("trial", "block", "condition", "task", "outcome", "duration_s", "started_utc", "episode", "note")


# ------------------------------------------------------------------------------------------- plan and schedule
@dataclass
class Condition:
    """One arm of the comparison: a name and the policy-node parameters it sets (name:key=value,key=value)."""

    name: str
    policy: dict[str, object] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Condition:
        name, _, rest = text.partition(":")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"--condition {text!r}: expected NAME or NAME:key=value,... (NAME letters, digits, _ -)")
        params: dict[str, object] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--condition {text!r}: {item!r} is not key=value")
            params[key.strip()] = _scalar(value.strip())
        return cls(name, params)


def _scalar(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class ScheduledTrial:
    index: int  # 0-based position in the session
    block: int
    condition: str


def make_schedule(conditions: list[str], trials: int, seed: int) -> list[ScheduledTrial]:
    """`trials` blocks; each block runs every condition once, in an order drawn from Random(seed)."""
    rng = random.Random(seed)
    out: list[ScheduledTrial] = []
    for block in range(trials):
        order = list(conditions)
        rng.shuffle(order)
        out += [ScheduledTrial(len(out) + k, block, c) for k, c in enumerate(order)]
    return out


@dataclass
class Plan:
    task: str
    instruction: str
    conditions: list[Condition]
    trials: int
    seed: int
    time_limit_s: float

    def schedule(self) -> list[ScheduledTrial]:
        return make_schedule([c.name for c in self.conditions], self.trials, self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(d["task"], d["instruction"], [Condition(**c) for c in d["conditions"]], int(d["trials"]),
                   int(d["seed"]), float(d["time_limit_s"]))


def open_session(out: Path, plan: Plan) -> Plan:
    """Write plan.json, or check that a resumed session has the same plan (raises ValueError naming the field)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    if path.exists():
        old = Plan.from_dict(json.loads(path.read_text()))
        for name in ("task", "instruction", "conditions", "trials", "seed", "time_limit_s"):
            if getattr(old, name) != getattr(plan, name):
                raise ValueError(f"{path}: {name} was {getattr(old, name)!r}, now {getattr(plan, name)!r}; "
                                 "use another --out or the same arguments to resume")
        return old
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2))
    os.replace(tmp, path)
    return plan


# ------------------------------------------------------------------------------------------- results
def read_results(path: Path) -> dict[int, dict[str, str]]:
    """Completed trials by index (a torn last line from a crash is ignored)."""
    if not path.exists():
        return {}
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("outcome") in OUTCOMES and row.get("trial", "").isdigit():
                rows[int(row["trial"])] = row
    return rows


def append_result(path: Path, row: dict[str, object]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        f.flush()
        os.fsync(f.fileno())


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for the default z); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(rows: dict[int, dict[str, str]], conditions: list[str]) -> list[dict[str, Any]]:
    out = []
    for c in conditions:
        mine = [r for r in rows.values() if r["condition"] == c]
        counts = {o: sum(r["outcome"] == o for r in mine) for o in OUTCOMES}
        n = len(mine)
        lo, hi = wilson_interval(counts["success"], n)
        durations = [float(r["duration_s"]) for r in mine if r.get("duration_s")]
        out.append({"condition": c, "trials": n, **counts, "success_rate": counts["success"] / n if n else None,
                    "ci95_low": lo, "ci95_high": hi,
                    "mean_duration_s": sum(durations) / len(durations) if durations else None})
    return out


def write_summary(out: Path, plan: Plan, rows: dict[int, dict[str, str]]) -> list[dict[str, Any]]:
    summary = summarize(rows, [c.name for c in plan.conditions])
    (out / "summary.json").write_text(json.dumps({"task": plan.task, "instruction": plan.instruction,
                                                  "trials_planned_per_condition": plan.trials,
                                                  "conditions": summary}, indent=2))
    lines = [f"# Trials: {plan.task} ({plan.instruction!r})", "",
             "| condition | trials | success | partial | failure | success rate | 95 % CI (Wilson) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        rate = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"
        lines.append(f"| {s['condition']} | {s['trials']} | {s['success']} | {s['partial']} | {s['failure']} | {rate} | "
                     f"{100 * s['ci95_low']:.0f}-{100 * s['ci95_high']:.0f} % |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def thumbnail_strip(out: Path, rows: dict[int, dict[str, str]]) -> Path | None:
    """One tile per trial: the last head-camera frame of its episode (grey when none), framed by its outcome."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {"success": "tab:green", "partial": "tab:orange", "failure": "tab:red"}
    items = [rows[k] for k in sorted(rows)]
    cols = min(10, len(items))
    nrows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(1.6 * cols, 1.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), items):
        img = _last_head_frame(r.get("episode", ""))
        ax.imshow(img if img is not None else np.full((48, 64, 3), 200, np.uint8))
        ax.set_title(f"#{r['trial']} {r['condition']}", fontsize=7)
        for side in ax.spines.values():
            side.set_visible(True)
            side.set_color(colours[r["outcome"]])
            side.set_linewidth(4)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = out / "thumbnails.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _last_head_frame(episode: str):
    if not episode or not Path(episode).is_file():
        return None
    try:
        from posevla.dataset.reader import EpisodeReader

        with EpisodeReader(episode) as ep:
            frame = ep.frame(ep.num_frames - 1)
            cam = "head" if "head" in frame.cameras else next(iter(frame.cameras))
            return frame.cameras[cam].rgb
    except Exception:  # noqa: BLE001 - a thumbnail is never worth failing the session
        return None


# ------------------------------------------------------------------------------------------- the ROS side
class RosRig:
    """Operator services and keys, the policy node's parameters, the recorder and the simulator's task topics."""

    def __init__(self, policy_node: str, record: bool, sim: bool, timeout_s: float, data_root: Path = Path("data")) -> None:
        import rclpy
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.signals import SignalHandlerOptions
        from std_srvs.srv import Trigger

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.rclpy = rclpy
        self.node = rclpy.create_node("trial_runner")
        self.params = AsyncParameterClient(self.node, policy_node)
        self.policy_node, self.record, self.sim, self.timeout_s = policy_node, record, sim, timeout_s
        self.data_root = data_root
        self.events: list[str] = []  # "start", outcomes, "abort": from services, keys, the simulator
        self.accepting: tuple[str, ...] = ()  # what the runner waits for now; other presses are refused
        self._lock = threading.Lock()
        for name in ("start", *OUTCOMES, "abort"):
            self.node.create_service(Trigger, f"trial/{name}", functools.partial(self._service_callback, name))
        self._clients: dict = {}
        self.sim_episode = ""
        self.sim_success = False
        if sim:
            from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
            from std_msgs.msg import Bool, Int64, String

            latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                 durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
            self.reset_pub = self.node.create_publisher(Int64, "sim/reset", 10)
            self.node.create_subscription(String, "sim/episode", lambda m: setattr(self, "sim_episode", m.data), latched)
            self.node.create_subscription(Bool, "sim/success", self._on_sim_success, 10)
        self.tty = sys.stdin.isatty()

    def _service_callback(self, name: str, _request, res):
        return self._on_service(name, res)

    def _on_service(self, name: str, res):
        with self._lock:
            res.success = name in self.accepting
            if res.success:
                self.events.append(name)
        res.message = f"trial: {name}" if res.success else f"trial: not waiting for {name} now (waiting for: " \
                                                          f"{', '.join(self.accepting) or 'nothing'})"
        return res

    def expect(self, names: tuple[str, ...]) -> None:
        """Accept only these events from now on; drop any other queued ones."""
        with self._lock:
            self.accepting = names
            self.events = [e for e in self.events if e in names]

    def _on_sim_success(self, msg) -> None:
        self.sim_success = self.sim_success or bool(msg.data)

    def spin(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.rclpy.spin_once(self.node, timeout_sec=0.02)
            if self.tty:
                self._poll_keys()

    def _poll_keys(self) -> None:
        import select

        if select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline().strip().lower()
            key = {"": "start", "s": "success", "p": "partial", "f": "failure", "a": "abort"}.get(line)
            if key and key in self.accepting:
                with self._lock:
                    self.events.append(key)

    def take(self, wanted: tuple[str, ...]) -> str | None:
        with self._lock:
            for i, e in enumerate(self.events):
                if e in wanted:
                    del self.events[i]
                    return e
        return None

    def set_policy(self, values: dict[str, object]) -> None:
        from rclpy.parameter import Parameter

        if not self.params.wait_for_services(timeout_sec=self.timeout_s):
            raise ConnectionError(f"policy node {self.policy_node!r} has no parameter services (is the graph running?)")
        fut = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        self.spin(self.timeout_s, until=fut.done)
        answer = fut.result() if fut.done() else None
        if answer is None:
            raise ConnectionError(f"policy node {self.policy_node!r} did not answer set_parameters within {self.timeout_s} s")
        for (k, v), r in zip(values.items(), answer.results):
            if not r.successful:
                raise ValueError(f"policy node refused {k}={v!r}: {r.reason}")

    def call(self, service: str) -> tuple[bool, str]:
        from std_srvs.srv import Trigger

        cli = self._clients.get(service) or self._clients.setdefault(service, self.node.create_client(Trigger, service))
        if not cli.wait_for_service(timeout_sec=self.timeout_s):
            raise ConnectionError(f"service {service} is not available")
        fut = cli.call_async(Trigger.Request())
        self.spin(self.timeout_s, until=fut.done)
        if not fut.done() or fut.result() is None:
            raise ConnectionError(f"service {service} did not answer within {self.timeout_s} s")
        return bool(fut.result().success), str(fut.result().message)

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def run_trial(rig: RosRig, plan: Plan, cond: Condition, st: ScheduledTrial, say) -> dict[str, object] | None:
    """One trial; the row to append, or None when it was aborted."""
    say(f"trial {st.index + 1}/{plan.trials * len(plan.conditions)} (block {st.block + 1}, condition {cond.name}): "
        + ("resetting the simulated scene" if rig.sim else "reset the scene, then start (ENTER or /trial/start)"))
    rig.expect(())
    if rig.sim:
        rig.sim_episode = ""
        from std_msgs.msg import Int64

        rig.reset_pub.publish(Int64(data=st.index))
        rig.spin(120.0, until=lambda: bool(rig.sim_episode))
        if not rig.sim_episode:
            raise ConnectionError("the simulator did not confirm /sim/reset within 120 s")
        rig.sim_success = False
    else:
        rig.expect(("start",))
        while rig.take(("start",)) is None:
            rig.spin(0.1)
    rig.expect(())
    rig.set_policy({**cond.policy})
    if rig.record:
        ok, msg = rig.call("recorder/start")
        if not ok:
            raise ConnectionError(f"recorder refused to start: {msg}")
    started = time.time()
    t0 = time.monotonic()
    rig.set_policy({"instruction": plan.instruction})
    rig.expect(OUTCOMES + ("abort",))
    say(f"  running (time limit {plan.time_limit_s:.0f} s): mark s / p / f, or /trial/success|partial|failure")
    outcome = None
    while outcome is None and time.monotonic() - t0 < plan.time_limit_s:
        rig.spin(0.05)
        outcome = rig.take(OUTCOMES + ("abort",))
        if outcome is None and rig.sim and rig.sim_success:
            outcome = "success"
    duration = time.monotonic() - t0
    if outcome is not None:
        rig.expect(())
    rig.set_policy({"instruction": ""})  # the policy stops; the executor holds the arms
    if outcome is None:
        if rig.sim:
            outcome = "failure"
        else:
            say("  time limit reached: the policy stopped; mark the outcome (s / p / f, or the services)")
            while outcome is None:
                rig.spin(0.1)
                outcome = rig.take(OUTCOMES + ("abort",))
    rig.expect(())
    episode, note = "", ""
    if rig.record:
        if outcome == "abort":
            rig.call("recorder/discard")
        else:
            ok, msg = rig.call("recorder/stop_and_save")
            note = msg
            name = msg.split("saved ", 1)[1].split()[0] if ok and "saved " in msg else ""
            episode = str(rig.data_root / plan.task / name) if name else ""
            rig.call("recorder/mark_success" if outcome == "success" else "recorder/mark_failure")
    if outcome == "abort":
        say("  aborted: this trial will be run again")
        return None
    say(f"  {outcome} after {duration:.1f} s")
    return {"trial": st.index, "block": st.block, "condition": cond.name, "task": plan.task, "outcome": outcome,
            "duration_s": f"{duration:.2f}", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "episode": episode, "note": note}


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--task", required=True, help="task name (CSV column; the recorder's task folder)")
    parser.add_argument("--instruction", required=True, help="language instruction given to the policy")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME[:key=value,...]",
                        help="a condition and the policy parameters it sets, e.g. rgb_only:modalities=rgb (repeatable; "
                             "default: one condition 'policy' with no change)")
    parser.add_argument("--trials", type=int, default=20, help="trials per condition (default 20)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per trial (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomised block order (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="session folder (plan.json, results.csv, summary.*)")
    parser.add_argument("--record", action="store_true", help="record each trial with the recorder node's services")
    parser.add_argument("--data-root", type=Path, default=Path("data"),
                        help="the recorder's root folder, to find the recorded episodes (default data)")
    parser.add_argument("--sim", action="store_true",
                        help="simulated scene: reset with /sim/reset, outcome from /sim/success (mujoco_sim)")
    parser.add_argument("--policy-node", default="policy", help="name of the policy node (default policy)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a service (default 10)")
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary and thumbnails from results.csv")


def run(args: argparse.Namespace) -> int:
    try:
        conditions = [Condition.parse(c) for c in args.condition] or [Condition("policy")]
        names = [c.name for c in conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"--condition names repeat: {names}")
        if args.trials < 1 or args.time_limit <= 0 or args.timeout <= 0:
            raise ValueError("--trials must be >= 1, --time-limit and --timeout > 0")
        for c in conditions:
            if "instruction" in c.policy:
                raise ValueError(f"--condition {c.name}: the instruction is set by --instruction, not per condition")
        plan = open_session(args.out, Plan(args.task, args.instruction, conditions, args.trials, args.seed,
                                           args.time_limit))
    except ValueError as exc:
        print(f"posevla trial: {exc}", file=sys.stderr)
        return 2
    results_path = args.out / "results.csv"

    def say(text: str) -> None:
        print(f"[trial] {text}", flush=True)

    def finish() -> None:
        rows = read_results(results_path)
        for s in write_summary(args.out, plan, rows):
            rate = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"
            say(f"{s['condition']}: {s['success']}/{s['trials']} success ({rate}, 95 % CI "
                f"{100 * s['ci95_low']:.0f}-{100 * s['ci95_high']:.0f} %), {s['partial']} partial, {s['failure']} failure")
        strip = thumbnail_strip(args.out, rows)
        say(f"results: {results_path}; summary: {args.out / 'summary.md'}" + (f"; thumbnails: {strip}" if strip else ""))

    if args.summary_only:
        finish()
        return 0
    done = read_results(results_path)
    todo = [st for st in plan.schedule() if st.index not in done]
    if done:
        say(f"resuming {args.out}: {len(done)} trial(s) done, {len(todo)} to go")
    by_name = {c.name: c for c in plan.conditions}
    rig = RosRig(args.policy_node, args.record, args.sim, args.timeout, args.data_root)
    rc = 0
    try:
        rig.set_policy({"instruction": ""})  # nothing moves before the first start
        queue = list(todo)
        while queue:
            st = queue[0]
            row = run_trial(rig, plan, by_name[st.condition], st, say)
            if row is None:
                continue  # aborted: the same trial again
            append_result(results_path, row)
            queue.pop(0)
            write_summary(args.out, plan, read_results(results_path))
    except (ConnectionError, ValueError) as exc:
        say(f"stopped: {exc}")
        rc = 1
    except KeyboardInterrupt:
        say("interrupted: run the same command again to resume")
        rc = 130
    finally:
        try:
            rig.set_policy({"instruction": ""})
        except (ConnectionError, ValueError):
            pass
        rig.close()
    finish()
    return rc
