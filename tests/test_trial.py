"""`posevla trial`: randomised interleaved blocks, Wilson intervals, and simulated sessions over ROS (an operator
marking outcomes through the services; a simulated scene with /sim/reset and /sim/success) with an ablation,
a crash and a resume, producing results.csv and the summary."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posevla.tools.trial import (
    Condition,
    Plan,
    append_result,
    make_schedule,
    open_session,
    read_results,
    wilson_interval,
)


def test_schedule_is_randomised_interleaved_blocks() -> None:
    sched = make_schedule(["full", "rgb", "ckpt_b"], trials=20, seed=3)
    assert len(sched) == 60 and [s.index for s in sched] == list(range(60))
    for b in range(20):
        block = [s.condition for s in sched if s.block == b]
        assert sorted(block) == ["ckpt_b", "full", "rgb"]  # every condition once per block
    orders = {tuple(s.condition for s in sched if s.block == b) for b in range(20)}
    assert len(orders) > 1  # randomised, not a fixed rotation
    assert sched == make_schedule(["full", "rgb", "ckpt_b"], trials=20, seed=3)  # seeded: resumable
    assert sched != make_schedule(["full", "rgb", "ckpt_b"], trials=20, seed=4)


@pytest.mark.parametrize("k,n", [(0, 20), (3, 20), (15, 20), (20, 20), (1, 1), (50, 97)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-6) and hi == pytest.approx(ref.high, abs=1e-6)


def test_condition_parsing_and_plan_mismatch(tmp_path: Path) -> None:
    c = Condition.parse("rgb_only:modalities=rgb,min_period_s=0.5,warmup=false")
    assert c.policy == {"modalities": "rgb", "min_period_s": 0.5, "warmup": False}
    with pytest.raises(ValueError, match="not key=value"):
        Condition.parse("x:modalities")
    plan = Plan("pick", "pick it", [Condition("full"), c], 2, 0, 30.0)
    open_session(tmp_path, plan)
    with pytest.raises(ValueError, match="trials was 2, now 3"):
        open_session(tmp_path, Plan("pick", "pick it", [Condition("full"), c], 3, 0, 30.0))


def test_results_survive_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    append_result(path, {"trial": 0, "block": 0, "condition": "full", "task": "t", "outcome": "success"})
    append_result(path, {"trial": 1, "block": 0, "condition": "rgb", "task": "t", "outcome": "failure"})
    with open(path, "a") as f:
        f.write("2,1,full,t,succ")  # the process died mid-write
    assert sorted(read_results(path)) == [0, 1]


# ------------------------------------------------------------------------------------------- over ROS
rclpy = pytest.importorskip("rclpy")


class FakePolicy:
    """A node named `policy` with the policy node's run-time parameters; logs every change."""

    def __init__(self, ctx) -> None:
        from rcl_interfaces.msg import SetParametersResult

        self.node = rclpy.create_node("policy", context=ctx)
        self.node.declare_parameter("instruction", "")
        self.node.declare_parameter("modalities", "full")
        self.log: list[tuple[str, object]] = []

        def on_set(params):
            for p in params:
                if p.name == "modalities" and p.value not in ("rgb", "rgb+ray", "rgb+depth", "full"):
                    return SetParametersResult(successful=False, reason="bad modalities")
                self.log.append((p.name, p.value))
            return SetParametersResult(successful=True)

        self.node.add_on_set_parameters_callback(on_set)

    def running(self) -> bool:
        return self.node.get_parameter("instruction").value != ""


def _trial_cli(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posevla.cli", "trial", "--task", "pick", "--instruction",
                             "pick up the red cube", "--condition", "full:modalities=full", "--condition",
                             "rgb_only:modalities=rgb", "--trials", "2", "--seed", "5", "--out", str(out),
                             "--timeout", "20", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def test_operator_session_with_ablation_crash_and_resume(tmp_path: Path, rclpy_context) -> None:
    from ros_helpers import call_trigger, spin

    policy = FakePolicy(rclpy_context)
    operator = rclpy.create_node("operator", context=rclpy_context)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(policy.node)
    ex.add_node(operator)
    out = tmp_path / "session"
    seen: list[str] = []  # the modalities in force each time a trial started

    def press(name: str) -> None:
        """Call until the runner accepts: it refuses a press it is not waiting for (and a reply can be lost
        while a restarted runner's service is still being discovered)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = call_trigger(operator, ex, name, timeout_s=10)
            if r is not None and r.success:
                return
            spin(ex, 0.3)
        raise AssertionError(f"{name} was never accepted")

    def operate(proc: subprocess.Popen, trials: int, outcome_for) -> None:
        for _ in range(trials):
            press("/trial/start")
            spin(ex, 60, until=policy.running)
            assert policy.running(), "the runner never set the instruction"
            mod = policy.node.get_parameter("modalities").value
            seen.append(mod)
            press(f"/trial/{outcome_for(mod, len(seen))}")
            spin(ex, 60, until=lambda: not policy.running())
            assert not policy.running(), "the runner did not stop the policy after the mark"

    # first run: two trials, then the runner "crashes" (SIGKILL, no clean-up at all)
    proc = _trial_cli(out, "--time-limit", "120")
    try:
        operate(proc, 2, lambda mod, k: "success" if mod == "full" else "failure")
        deadline = time.monotonic() + 30
        while len(read_results(out / "results.csv")) < 2 and time.monotonic() < deadline:
            spin(ex, 0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert len(read_results(out / "results.csv")) == 2
    # second run: resumes with the remaining two trials of the same schedule
    proc = _trial_cli(out, "--time-limit", "120")
    try:
        operate(proc, 2, lambda mod, k: "success" if mod == "full" else "partial")
        spin(ex, 60, until=lambda: proc.poll() is not None)
        text = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert "resuming" in text and "2 trial(s) done, 2 to go" in text, text
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    expected = [s.condition for s in make_schedule(["full", "rgb_only"], 2, 5)]
    assert [r["condition"] for r in rows] == expected
    assert seen == [{"full": "full", "rgb_only": "rgb"}[c] for c in expected]  # each trial ran its condition
    summary = {s["condition"]: s for s in json.loads((out / "summary.json").read_text())["conditions"]}
    assert summary["full"]["success"] == 2 and summary["full"]["success_rate"] == 1.0
    assert summary["rgb_only"]["failure"] == 1 and summary["rgb_only"]["partial"] == 1
    assert summary["rgb_only"]["success_rate"] == 0.0
    assert summary["full"]["ci95_low"] == pytest.approx(wilson_interval(2, 2)[0])
    assert (out / "thumbnails.png").stat().st_size > 1000 and (out / "summary.md").read_text().count("|") > 10
    assert ("instruction", "") in policy.log  # cleared between trials: the arms hold
    policy.node.destroy_node()
    operator.destroy_node()


def test_simulated_scene_session(tmp_path: Path, rclpy_context) -> None:
    """--sim: the runner resets the scene on /sim/reset and reads the outcome from /sim/success."""
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from ros_helpers import spin
    from std_msgs.msg import Bool, Int64, String

    policy = FakePolicy(rclpy_context)
    scene = rclpy.create_node("mujoco_sim", context=rclpy_context)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    episode_pub = scene.create_publisher(String, "/sim/episode", latched)
    success_pub = scene.create_publisher(Bool, "/sim/success", 10)
    seeds: list[int] = []
    scene.create_subscription(Int64, "/sim/reset", lambda m: (seeds.append(m.data), episode_pub.publish(
        String(data=json.dumps({"seed": m.data, "resets": len(seeds)})))), 10)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(policy.node)
    ex.add_node(scene)
    out = tmp_path / "sim"
    proc = _trial_cli(out, "--sim", "--time-limit", "3")
    try:
        for _ in range(4):
            spin(ex, 60, until=policy.running)
            assert policy.running()
            # the full-modality trials "lift the cube"; the RGB-only ones run into the time limit
            if policy.node.get_parameter("modalities").value == "full":
                spin(ex, 0.5)
                success_pub.publish(Bool(data=True))
            spin(ex, 60, until=lambda: not policy.running())
        spin(ex, 60, until=lambda: proc.poll() is not None)
        text = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text
    assert seeds == [0, 1, 2, 3]
    rows = read_results(out / "results.csv")
    assert {r["condition"]: r["outcome"] for r in rows.values()} == {"full": "success", "rgb_only": "failure"}
    assert all(float(r["duration_s"]) >= 2.9 for r in rows.values() if r["condition"] == "rgb_only")
    policy.node.destroy_node()
    scene.destroy_node()


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "posevla.cli", "trial", "--task", "t", "--instruction", "x", "--out",
                           str(tmp_path), "--condition", "a:instruction=y"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "instruction is set by --instruction" in proc.stderr and "Traceback" not in proc.stderr
