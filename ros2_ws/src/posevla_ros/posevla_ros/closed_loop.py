"""ROS side of the closed-loop benchmark: scripted demonstrations and policy trials on the MuJoCo twin.

Both stages run the real graphs of `posevla_ros.graph` as processes and talk to them only through their public
interfaces, like an operator would:
- demonstrations (`collect_mujoco`): a scripted leader streams joint targets along a pick path on
  /xtrainer/servo_joint_command at 50 Hz (the teleop node's output: the driver servoes the twin's arms with
  ServoJ), and the unchanged recorder records every camera, the robot state and these commands (the action).
  Services /recorder/start, /recorder/stop_and_save, /recorder/mark_failure. (Simulated GELLO leaders read by
  teleop_node also work, but a busy machine delays their serial replies past the teleop freeze timeout.)
- trials (`sim_mujoco`): the policy node, the executor (hand-eye calibration, limits), the driver and the twin over
  TCP. Between trials the executor and driver are e-stopped, the twin drives home and places the cube, then both
  are reset; success is the twin's `/sim/success` at the trial's end.
"""
from __future__ import annotations

import functools
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla.sim.task import JointPath, TaskState
from posevla.sim.tasks import make_task, scripted_demo, scripted_returns
from posevla.sim.twin import TwinSpec
from posevla_ros.graph import graph
from posevla_ros.msg_conv import msg_to_image, ns_to_time
from posevla_ros.run_graph import GraphRunner, node_command

LATCHED = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


class StageError(RuntimeError):
    """A stage of the pipeline broke (a node died, a service did not answer, a reset never completed)."""


class SimProbe:
    """The orchestrator's own ROS node: /sim/reset, /sim/episode, /sim/success, Trigger calls, head frames."""

    def __init__(self, name: str = "closed_loop") -> None:
        self.ctx = rclpy.context.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(name, context=self.ctx)
        self.ex = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.episode: dict | None = None
        self.success: bool | None = None
        self.head: np.ndarray | None = None
        self.reset_pub = self.node.create_publisher(Int64, "/sim/reset", 10)
        self.node.create_subscription(String, "/sim/episode", self._on_episode, LATCHED)
        self.node.create_subscription(Bool, "/sim/success", lambda m: setattr(self, "success", bool(m.data)), 10)
        self.node.create_subscription(Image, "/head/color/image_raw", self._on_head, qos_profile_sensor_data)
        self.chunks = 0  # /policy/chunk messages seen
        self.tcp_travel_m = 0.0  # path length of the left TCP (/left_arm/tcp_pose)
        self._last_tcp: np.ndarray | None = None
        self.node.create_subscription(MultiDOFJointTrajectory, "/policy/chunk",
                                      lambda m: setattr(self, "chunks", self.chunks + 1), 10)
        self.node.create_subscription(PoseStamped, "/left_arm/tcp_pose", self._on_tcp, 50)
        self.policy_diag: dict[str, str] = {}  # the policy node's newest /diagnostics values (stage timings)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._clients: dict[str, Any] = {}  # service name -> rclpy client
        self.command: dict[str, tuple[np.ndarray, float]] = {}  # arm -> joint targets (rad), gripper (0..1)
        self._paths: tuple[dict[str, JointPath], float] | None = None  # (arm -> path, monotonic start) being played
        self.cmd_pub = self.node.create_publisher(JointState, "/xtrainer/servo_joint_command", 10)

    def stream_commands(self, rate_hz: float = 50.0) -> None:
        """Publish `self.command` on /xtrainer/servo_joint_command while spinning (the scripted leader)."""
        self.node.create_timer(1.0 / rate_hz, self._publish_command)

    def _publish_command(self) -> None:
        if self._paths is not None:  # the paths' sample at the publishing instant: stamps and positions agree
            paths, t0 = self._paths
            for arm, path in paths.items():
                self.command[arm] = path.at(time.monotonic() - t0)
        if not self.command:
            return
        names, position = [], []
        for arm, (q, g) in self.command.items():
            names += [f"{arm}_joint{i}" for i in range(1, 7)] + [f"{arm}_gripper"]
            position += [float(v) for v in q] + [float(g)]
        msg = JointState(name=names, position=position)
        msg.header.stamp = ns_to_time(self.node.get_clock().now().nanoseconds)
        self.cmd_pub.publish(msg)

    def play(self, paths: dict[str, JointPath]) -> None:
        """Move each arm's command along its path in real time, on one clock (spinning meanwhile)."""
        self._paths = (paths, time.monotonic())
        self.spin(max(p.duration_s for p in paths.values()) + 0.05)
        self._paths = None
        for arm, path in paths.items():
            self.command[arm] = path.at(path.duration_s)

    def _on_episode(self, m: String) -> None:
        self.episode = json.loads(m.data)

    def _on_tcp(self, m: PoseStamped) -> None:
        p = np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
        if self._last_tcp is not None:
            self.tcp_travel_m += float(np.linalg.norm(p - self._last_tcp))
        self._last_tcp = p

    def _on_diagnostics(self, m: DiagnosticArray) -> None:
        for st in m.status:
            if st.name == "policy_node":
                self.policy_diag = {kv.key: kv.value for kv in st.values}

    def policy_latency(self) -> dict[str, float]:
        """The policy node's p50 seconds over its recent chunks: capture -> chunk published (obs_age), model call,
        preprocessing; empty before its first /diagnostics."""
        out = {}
        for key in ("obs_age_p50_s", "model_p50_s", "preprocess_p50_s"):
            try:
                out[key] = float(self.policy_diag[key])
            except (KeyError, ValueError):
                pass
        return out

    def _on_head(self, m: Image) -> None:
        self.head = np.array(msg_to_image(m, "/head/color/image_raw"))

    def spin(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if until is not None and until():
                return True
            self.ex.spin_once(timeout_sec=0.02)
        return bool(until and until())

    def trigger(self, name: str, timeout_s: float = 20.0) -> Trigger.Response:
        cli = self._clients.get(name)
        if cli is None:
            cli = self._clients[name] = self.node.create_client(Trigger, name)
        if not cli.wait_for_service(timeout_sec=timeout_s):
            raise StageError(f"service {name} not available after {timeout_s} s")
        fut = cli.call_async(Trigger.Request())
        if not self.spin(timeout_s, fut.done):
            raise StageError(f"service {name} did not answer within {timeout_s} s")
        return fut.result()

    def reset(self, seed: int, timeout_s: float = 60.0) -> TaskState:
        """Place the cube for `seed` (the twin drives the arms home first); returns the placement."""
        before = (self.episode or {}).get("resets", -1)
        if not self.spin(timeout_s, lambda: self.reset_pub.get_subscription_count() > 0 and self.episode is not None):
            raise StageError("mujoco_sim does not listen on /sim/reset")
        self.reset_pub.publish(Int64(data=int(seed)))
        done = lambda: self.episode is not None and self.episode["resets"] > before and self.episode["seed"] == seed  # noqa: E731
        if not self.spin(timeout_s, done):
            raise StageError(f"/sim/reset {seed}: no /sim/episode confirmation within {timeout_s} s")
        self.success = None
        episode = self.episode
        assert episode is not None  # `done` saw it
        return TaskState(seed, (float(episode["cube_xy"][0]), float(episode["cube_xy"][1])), float(episode["cube_yaw"]))

    def fresh_success(self, timeout_s: float = 10.0) -> bool:
        self.success = None
        if not self.spin(timeout_s, lambda: self.success is not None):
            raise StageError(f"no /sim/success within {timeout_s} s")
        return bool(self.success)

    def close(self) -> None:
        self.node.destroy_node()
        self.ctx.try_shutdown()


@dataclass
class GraphOptions:
    """What both stages share: the robot YAML (endpoints, mountings), calibration, image size, camera rate."""

    robot_config: Path
    calibration_dir: Path
    width: int = 160
    height: int = 120
    rate_hz: float = 10.0
    node_log: Path | None = None  # nodes' output goes here (None: prefixed on stdout, as run_graph does)

    def twin_overrides(self) -> dict[str, object]:
        return {"robot_config": str(self.robot_config), "calibration_dir": str(self.calibration_dir),
                "width": self.width, "height": self.height, "rate_hz": self.rate_hz}


@dataclass
class DemoResult:
    seed: int
    success: bool
    seconds: float
    takes: int = 1  # recordings of this seed (a take with missing measurements is recorded again)
    nonfinite_frames: int = 0  # frames of the kept take with a NaN in the robot state or action


def nonfinite_frames(episode: Path) -> int:
    """Frames whose measured robot state or action holds NaN/inf (e.g. a gripper read-back that went stale on a
    busy machine); the trainer refuses such episodes."""
    import h5py

    with h5py.File(episode, "r") as h:
        bad = ~np.isfinite(h["observations/qpos"][:]).all(1) | ~np.isfinite(h["action"][:]).all(1)
    return int(bad.sum())


class LoggedGraphRunner(GraphRunner):
    """GraphRunner whose nodes write to one log file (the benchmark's progress display stays readable)."""

    def __init__(self, specs, log_path: Path) -> None:
        super().__init__(specs)
        self.log_path = log_path

    def start(self, delay_s: float = 0.3) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        for spec in self.specs:
            self._log.write(f"=== {spec.name}: {' '.join(node_command(spec))}\n")
            self._log.flush()
            self.procs[spec.name] = subprocess.Popen(node_command(spec), stdout=self._log, stderr=subprocess.STDOUT,
                                                     env=self.env, start_new_session=True)
            time.sleep(delay_s)

    def stop(self, timeout_s: float = 5.0) -> dict[str, int]:
        rc = super().stop(timeout_s)
        self._log.close()
        return rc


def _start(specs, opts: GraphOptions) -> GraphRunner:
    runner = LoggedGraphRunner(specs, opts.node_log) if opts.node_log else GraphRunner(specs)
    runner.start(delay_s=0.3)
    # the policy's model calls yield to the twin, driver and executor (its own session, 5 nice steps lower)
    share_autogroup_nice({n: p.pid for n, p in runner.procs.items()}, {"policy": 5})
    return runner


def collect_demos(root: Path, task: str, instruction: str, seeds: list[int], opts: GraphOptions,
                  on_progress: Callable[[DemoResult], None] = lambda r: None, max_attempts: int = 6,
                  max_lift_attempts: int = 3, demo_offset_m: float = 0.0) -> list[DemoResult]:
    """Record one scripted demonstration per seed into `root/task/` through the collect_mujoco graph. A take whose
    robot state or action has a NaN is recorded again (/recorder/rerecord_last moves it aside), up to
    `max_attempts` takes; so is a take that did not lift the cube (on a loaded machine the driver's guard may hold
    the arm mid-path; the scripted pick itself lifts every placement in physics), up to `max_lift_attempts` takes.
    The last take is kept either way (a failed lift marked failed). `task`: a task of `posevla.sim.tasks` (the
    twin's task and the episodes' folder); its scripted demonstration drives every arm it moves.
    demo_offset_m > 0 (pick_cube): perturbed demonstrations (most approaches first miss the point above the cube
    by up to this distance, then correct: `ApproachOffset.for_seed`), so the data shows how to recover from an
    approach error."""
    task_def = make_task(task)
    spec = TwinSpec.from_files(opts.robot_config, opts.calibration_dir)
    q_home = {arm: k.home() for arm, k in spec.kins.items()}
    specs = graph("collect_mujoco", instruction=instruction, task=task, overrides={
        "mujoco_sim": {**opts.twin_overrides(), "task": task},
        "xtrainer_driver": {"robot_config": str(opts.robot_config)},
        "recorder": {"root": str(root), "fps": opts.rate_hz, "reset_period_s": 0.0, "target_episodes": len(seeds),
                     "calibration_dir": str(opts.calibration_dir)}})
    probe = SimProbe("closed_loop_collect")
    probe.command = {arm: (q_home[arm], 1.0) for arm in spec.T_base_armbase}
    probe.stream_commands()
    runner = _start(specs, opts)
    results: list[DemoResult] = []
    try:
        for seed in seeds:
            t0 = time.monotonic()
            saved_bad = False  # the previous take of this seed was saved with gaps: move it aside before recording
            for takes in range(1, max_attempts + 1):  # noqa: B007 - the count is reported below
                state = probe.reset(seed)
                paths = scripted_demo(task_def, state, spec, demo_offset_m)
                start = "/recorder/rerecord_last" if saved_bad else "/recorder/start"
                deadline = time.monotonic() + 60
                while not (r := probe.trigger(start)).success:  # until every stream is alive
                    if time.monotonic() > deadline or runner.dead():
                        raise StageError(f"{start} refused: {r.message} (exited nodes: {runner.dead()})")
                    probe.spin(0.5)
                    if "moved" in r.message:  # rerecord_last moved the take aside but could not start yet
                        start = "/recorder/start"
                probe.play(paths)
                probe.spin(0.5)
                ok = probe.fresh_success()
                r = probe.trigger("/recorder/stop_and_save")
                probe.play(scripted_returns(paths, spec))
                if runner.dead():
                    raise StageError(f"node(s) exited: {runner.dead()}")
                if not r.success:  # the recorder stopped the take itself (a stream went silent): record again
                    saved_bad, gaps = False, -1
                    continue
                if not ok:
                    probe.trigger("/recorder/mark_failure")
                gaps = nonfinite_frames(max((root / task).glob("episode_*.h5"), key=lambda f: f.stat().st_mtime))
                saved_bad = gaps > 0 or (not ok and takes < max_lift_attempts)
                if not saved_bad:
                    break
            if gaps < 0:
                raise StageError(f"seed {seed}: the recorder stopped all {max_attempts} takes (streams went silent)")
            results.append(DemoResult(seed, ok, time.monotonic() - t0, takes, gaps))
            on_progress(results[-1])
    finally:
        runner.stop()
        probe.close()
    return results


def _settled(probe: SimProbe, not_before: float, chunks: int) -> bool:
    return time.monotonic() >= not_before and probe.chunks >= chunks


def _autogroup_nice() -> int | None:
    """This process's autogroup nice (Linux with sched_autogroup: `nice` orders processes only within one
    session, and every node runs in a session of its own), or None where there is none."""
    try:
        return int(Path("/proc/self/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def share_autogroup_nice(pids: dict[str, int], extra: dict[str, int] | None = None) -> None:
    """Give each node's session the orchestrator's autogroup nice (plus `extra[name]`), so a run started with a
    raised CPU share (`echo -10 > /proc/self/autogroup`) passes it to its nodes; best effort (no permission, no
    autogroup: nothing changes)."""
    base = _autogroup_nice()
    if base is None or base == 0 and not extra:
        return
    for name, pid in pids.items():
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(max(-20, min(19, base + (extra or {}).get(name, 0)))))
        except OSError:
            pass


@dataclass
class TrialResult:
    seed: int
    success: bool
    frames: list[np.ndarray] = field(default_factory=list)  # head camera at start, middle, end
    chunks: int = 0  # action chunks the policy published during the trial
    tcp_travel_m: float = 0.0  # path length of the left TCP during the trial
    policy_latency: dict[str, float] = field(default_factory=dict)  # SimProbe.policy_latency() at the trial's end


def evaluate(checkpoint: Path, instruction: str, seeds: list[int], opts: GraphOptions, trial_s: float = 10.0,
             modalities: str = "full", stack_calibration_dir: Path | None = None,
             on_progress: Callable[[TrialResult], None] = lambda r: None, settle_s: float = 1.5,
             executor_blend: str | None = None, policy_engine: str | None = None,
             flow_noise_scale: float | None = None, task: str = "pick_cube") -> list[TrialResult]:
    """Closed-loop trials through policy node, executor, driver and twin; one per held-out seed. After each reset
    the arms are released only after `settle_s` seconds and two policy chunks (the executor refuses chunks whose
    observation is older than its max_chunk_age_s, 1 s: every chunk it then takes saw the reset scene).
    policy_engine: the policy node's `engine` (torch | torch_graphs | onnxruntime; None: its config's).
    flow_noise_scale: the policy node's `flow_noise_scale` (None: its config's). task: the twin's task."""
    specs = graph("sim_mujoco", checkpoint=str(checkpoint), instruction=instruction, overrides={
        "mujoco_sim": {**opts.twin_overrides(), "task": task}, "xtrainer_driver": {"robot_config": str(opts.robot_config)},
        "executor": {"robot_config": str(opts.robot_config),
                     "calibration_dir": str(stack_calibration_dir or opts.calibration_dir),
                     **({"blend": executor_blend} if executor_blend else {})},
        "policy": {"modalities": modalities, "device": "cpu", "warmup": True,
                   "calibration_dir": str(stack_calibration_dir or opts.calibration_dir),
                   **({"engine": policy_engine} if policy_engine else {}),
                   **({"flow_noise_scale": flow_noise_scale} if flow_noise_scale is not None else {})}})
    probe = SimProbe("closed_loop_eval")
    runner = _start(specs, opts)
    results: list[TrialResult] = []
    try:
        ready = lambda: probe.episode is not None and probe.head is not None and probe.chunks > 0  # noqa: E731
        if not probe.spin(300.0, lambda: ready() or bool(runner.dead())) or runner.dead():
            raise StageError(f"the graph did not come up within 300 s (twin episode: {probe.episode is not None}, "
                             f"head image: {probe.head is not None}, policy chunks: {probe.chunks}, "
                             f"exited nodes: {runner.dead()})")
        for seed in seeds:
            for name in ("/executor/estop/trigger", "/xtrainer/estop/trigger"):
                probe.trigger(name, 60.0)
            probe.reset(seed)
            # the arms stay e-stopped until the policy has answered observations of the new scene: a chunk from
            # before the reset (the last trial's closed gripper in its state) would close the gripper at the start
            # and the policy, reading its own closed gripper, then "holds" an absent cube
            settled = functools.partial(_settled, probe, time.monotonic() + settle_s, probe.chunks + 2)
            probe.spin(60.0, settled)
            # between trials the operator clears a controller alarm the last trial left (e.g. a set-point the
            # controller found unreachable): the driver holds that arm until /xtrainer/clear_error, and without
            # this every later trial of the condition would start with an arm that cannot move
            r = probe.trigger("/xtrainer/clear_error", 60.0)
            if not r.success:
                raise StageError(f"/xtrainer/clear_error refused: {r.message}")
            for name in ("/xtrainer/estop/reset", "/executor/estop/reset"):
                r = probe.trigger(name, 60.0)
                if not r.success:
                    raise StageError(f"{name} refused: {r.message}")
            frames: list = []
            probe.head = None  # the strip's first frame shows this trial's placement, not the last one's
            probe.spin(30.0, lambda: probe.head is not None)
            probe.chunks, probe.tcp_travel_m = 0, 0.0
            t0 = time.monotonic()
            for mark in (0.0, 0.5, 1.0):
                probe.spin(max(0.0, t0 + mark * trial_s - time.monotonic()))
                if probe.head is not None:
                    frames.append(probe.head.copy())
            ok = probe.fresh_success()
            if runner.dead():
                raise StageError(f"node(s) exited: {runner.dead()}")
            results.append(TrialResult(seed, ok, frames, probe.chunks, probe.tcp_travel_m, probe.policy_latency()))
            on_progress(results[-1])
    finally:
        runner.stop()
        probe.close()
    return results
