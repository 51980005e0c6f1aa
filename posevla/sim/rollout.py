"""Direct (synchronous) rollouts of a policy on the twin, without ROS: a fast diagnostic beside the real loop.

The same pieces as the graph, minus the transport and the wall clock: the twin's physics (`TwinWorld`, stepped
here, not on a thread), its cameras (`TwinRenderer`, depth rounded to millimetres as the sim node publishes
it), the observation builder of the observation node, the policy, the hand-eye transform of the executor node
(`CameraToBase.chunk_to_base`), the `ChunkExecutor` (blending, limits) and the arm's IK (the driver's ServoP).
Time is simulated: an observation taken at t gives a chunk that reaches the executor at t + `latency_s`, a new
observation is taken every `replan_s`, the executor ticks at its rate. Because nothing waits for a busy CPU,
a trial costs only its renders and model calls (~2-4 s for 12 s simulated on 2 cores, tiny model), so model
and training choices can be compared on many seeds before the (slower, real-time) ROS trials confirm them.

Units: metres, radians, seconds (stamps in integer ns of simulated time).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posevla.calibration.files import load_calibrations
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.control.executor import ChunkExecutor, ExecutorConfig, Hold
from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder
from posevla.sim.render import TwinRenderer
from posevla.sim.tasks import Task
from posevla.sim.twin import TwinSpec
from posevla.sim.world import TwinWorld
from posevla.types import ArmState, CameraFrame, RobotState, optical_frame


@dataclass
class RolloutConfig:
    trial_s: float = 12.0  # simulated seconds per trial
    replan_s: float = 0.15  # a new observation every this many seconds (the policy node's pace)
    latency_s: float = 0.1  # observation -> chunk at the executor (inference + transport)
    width: int = 160
    height: int = 120
    modalities: str = "full"
    blend: str = "ensemble"
    settle_s: float = 0.5  # after the reset, before the first observation


@dataclass(frozen=True)
class MissRule:
    """When the policy has missed its grasp, for takeover recordings of the recovery. A miss: the task arm's gripper
    set-point has been closed for `closed_s` seconds while the cube centre is still below `lifted_z_m` (base_link z;
    the cube rests at 0.02 m, and a held cube rises with the lift that follows the close), or `latest_s` seconds of
    the trial have passed without a lift (the policy hesitates or wanders)."""

    closed_s: float = 1.5
    lifted_z_m: float = 0.035
    latest_s: float = 9.0

    def missed(self, t_s: float, closed_for_s: float | None, cube_z_m: float) -> bool:
        if cube_z_m >= self.lifted_z_m:
            return False
        return t_s >= self.latest_s or (closed_for_s is not None and closed_for_s >= self.closed_s)


@dataclass
class TrialResult:
    seed: int
    success: bool
    cube_z_m: float
    tcp_travel_m: float
    chunks: int
    min_grasp_dist_m: float  # closest TCP (x, y) came to the cube's while the gripper was closing (< 0.5)
    frames: list[np.ndarray] = field(default_factory=list)  # head RGB at the start, middle, end
    trace: np.ndarray | None = None  # (n, 6) every executor tick: t (s), task arm TCP x y z (base_link, m),
    # gripper set-point, measured gripper opening
    takeover_at_s: float | None = None  # trial time (s) at which the scripted expert took over; None: it never did
    stopped_early: bool = False  # stop_on_success ended the trial when the cube was lifted


class DirectRollout:
    """One twin, one policy, trials by seed (see the module docstring)."""

    def __init__(self, policy, robot_yaml: str | Path, calibration_dir: str | Path, cfg: RolloutConfig,
                 executor_cfg: ExecutorConfig | None = None, limits: SafetyLimits | None = None,
                 stack_calibration_dir: str | Path | None = None, task: Task | None = None) -> None:
        """calibration_dir: the camera poses the twin renders. stack_calibration_dir: the calibration the stack
        reads, as one set of files on a robot: the observation builder (TCP state into the camera frame) and the
        executor (chunk to base_link); default: the rendered one. task: the task (`posevla.sim.tasks`: placements
        per seed, success; default: PickLiftTask(), the benchmark's ranges)."""
        from posevla.robot.driver import XTrainerConfig

        self.policy, self.cfg = policy, cfg
        self.spec = TwinSpec.from_files(robot_yaml, calibration_dir)
        self.world = TwinWorld(self.spec, task)
        self.renderer = TwinRenderer(self.world, cfg.width, cfg.height)
        self.views = [v for v in policy.config.views if v in self.renderer.camera_ids]
        self.robot = XTrainerConfig.from_yaml(robot_yaml)
        self.limits = limits or self.robot.safety
        self.executor_cfg = executor_cfg or ExecutorConfig(blend=cfg.blend)
        self.kins = {a: self.robot.arm_kinematics(a) for a in self.spec.T_base_armbase}
        # what the twin renders; what the stack reads (both the observation builder and the executor)
        self.calibs = load_calibrations(calibration_dir)
        self.stack_calibs = load_calibrations(stack_calibration_dir) if stack_calibration_dir else self.calibs

    def _state(self, stamp_ns: int) -> RobotState:
        arms = {a: ArmState(self.world.T_base_tcp(a), arm.q.copy(), float(arm.gripper), stamp_ns)
                for a, arm in self.world.arms.items()}
        return RobotState(arms, stamp_ns)

    def _frames(self, stamp_ns: int, views=None) -> dict[str, CameraFrame]:
        out = {}
        for v in (self.views if views is None else views):
            rgb, depth = self.renderer.render(v)
            depth = np.round(depth * 1000.0).clip(0, 65535).astype(np.uint16).astype(np.float32) / 1000.0
            out[v] = CameraFrame(v, rgb, depth, self.renderer.intrinsics(v), stamp_ns, optical_frame(v))
        return out

    def trial(self, seed: int, keep_frames: bool = False, takeover_s: float | None = None,
              record: Callable[[int, dict[str, CameraFrame], RobotState, np.ndarray], None] | None = None,
              record_period_s: float = 0.1, miss: MissRule | None = None,
              stop_on_success: bool = False) -> TrialResult:
        """One trial. takeover_s: from this trial time on, the scripted expert (`ScriptedPolicy(from_current=True)`)
        drives instead of the policy, with a fresh executor (DAgger-style corrections from the states the policy
        reached). miss: the expert also takes over as soon as the policy has missed its grasp (see `MissRule`), so
        the recording shows the recovery -- open, re-approach, grasp -- from the policy's own failed grasp.
        stop_on_success: end the trial as soon as the cube is lifted (before any takeover). record(stamp_ns,
        frames of every twin camera, robot state, command (14,)) every record_period_s."""
        cfg, world = self.cfg, self.world
        policy = self.policy
        if hasattr(policy, "reset"):
            policy.reset()
        world.reset(seed)
        world.step(int(round(cfg.settle_s / world.model.opt.timestep)))
        histories = {a: PoseHistory(max_len=4000, tolerance_ns=10**9) for a in world.arms}
        builder = ObservationBuilder(BuilderConfig(image_size=self.policy.config.image_size, max_age_s=1e9, slop_s=1e9,
                                                   reference_view=self.policy.config.reference_view,
                                                   crops=dict(self.policy.config.view_crops)),
                                     CameraToBase(self.stack_calibs, histories))
        to_base = CameraToBase(self.stack_calibs, histories)
        executor = ChunkExecutor(self.executor_cfg, self.limits)
        pending: deque = deque()  # (due ns, chunk in base_link)
        tick_s = 1.0 / self.executor_cfg.rate_hz
        steps_per_tick = max(1, int(round(tick_s / world.model.opt.timestep)))
        t0 = world.sim_time_s
        now_ns = lambda: int(round((world.sim_time_s - t0) * 1e9)) + 1_000_000_000  # noqa: E731
        next_obs_ns = now_ns()
        q_seed = {a: world.arms[a].q.copy() for a in world.arms}
        T_armbase_base = {a: se3.invert_T(T) for a, T in self.spec.T_base_armbase.items()}
        cube0 = world.cube_pose()[:3, 3].copy()
        travel, last_p, chunks = 0.0, None, 0
        frames: list = []
        trace: list = []
        min_grasp = float("inf")
        start_ns = now_ns()
        end_ns = start_ns + int(cfg.trial_s * 1e9)
        takeover_ns = None if takeover_s is None else start_ns + int(takeover_s * 1e9)
        takeover_at_s: float | None = None
        closed_since_ns: int | None = None  # the task arm's gripper set-point has been closed since (policy only)
        stopped_early = False
        next_record_ns = start_ns
        while now_ns() < end_ns:
            t = now_ns()
            for a in world.arms:
                histories[a].add(t, world.T_base_tcp(a))
            if takeover_at_s is None and miss is not None:
                if world.arms[self.robot_task_arm].gripper_target < 0.5:
                    closed_since_ns = t if closed_since_ns is None else closed_since_ns
                else:
                    closed_since_ns = None
                if miss.missed((t - start_ns) * 1e-9, None if closed_since_ns is None else (t - closed_since_ns) * 1e-9,
                               float(world.cube_pose()[2, 3])):
                    takeover_ns = t
            if takeover_at_s is None and stop_on_success and world.success():
                stopped_early = True
                break
            if takeover_ns is not None and t >= takeover_ns:
                takeover_ns = None
                takeover_at_s = (t - start_ns) * 1e-9
                policy = ScriptedPolicy(self.policy.config, self, from_current=True)
                executor = ChunkExecutor(self.executor_cfg, self.limits)
                pending.clear()
                next_obs_ns = t
            if record is not None and t >= next_record_ns:
                q_cmd = np.concatenate([np.r_[world.arms[a].q_target, world.arms[a].gripper_target]
                                        for a in ("left", "right")])
                record(t, self._frames(t, self.renderer.camera_ids), self._state(t), q_cmd)
                next_record_ns += int(record_period_s * 1e9)
            if t >= next_obs_ns:
                cams = self._frames(t)
                obs = builder.build(cams, self._state(t), world.task.instruction, t)
                chunk = policy.predict(obs, modalities=cfg.modalities)
                pending.append((t + int(cfg.latency_s * 1e9), to_base.chunk_to_base(chunk)))
                chunks += 1
                next_obs_ns = t + int(cfg.replan_s * 1e9)
                if keep_frames and len(frames) < 1:
                    frames.append(cams[self.policy.config.reference_view].rgb)
            while pending and pending[0][0] <= t:
                executor.submit(pending.popleft()[1], t)
            measured = {a: (world.T_base_tcp(a), float(arm.gripper)) for a, arm in world.arms.items()}
            cmd = executor.tick(t, measured)
            if not isinstance(cmd, Hold):
                for a, c in cmd.items():
                    q = self.kins[a].ik(T_armbase_base[a] @ c.T_base_tcp, q_seed[a])
                    if q is None:
                        continue  # the driver would refuse an unreachable set-point: the arm holds
                    q_seed[a] = q
                    with world.arms[a].lock:
                        world.arms[a].q_target = np.array(q)
                        world.arms[a].gripper_target = float(c.gripper)
            world.step(steps_per_tick)
            p = world.T_base_tcp(self.robot_task_arm)[:3, 3]
            if last_p is not None:
                travel += float(np.linalg.norm(p - last_p))
            last_p = p
            task_arm = world.arms[self.robot_task_arm]
            trace.append((world.sim_time_s - t0, *p, task_arm.gripper_target, task_arm.gripper))
            if task_arm.gripper_target < 0.5:
                min_grasp = min(min_grasp, float(np.linalg.norm(p[:2] - cube0[:2])))
        if keep_frames:
            frames.append(self.renderer.render(self.policy.config.reference_view)[0])
        cube = world.cube_pose()
        return TrialResult(seed, bool(world.success()), float(cube[2, 3]), travel, chunks, min_grasp, frames,
                           np.asarray(trace), takeover_at_s, stopped_early)

    @property
    def robot_task_arm(self) -> str:
        return self.world.task.arm

    def close(self) -> None:
        self.renderer.close()


class ScriptedPolicy:
    """The scripted demonstration as a 'policy' that knows the placement (a pipeline check, not a learner): at
    each observation it returns the task's scripted TCP paths (`posevla.sim.tasks.scripted_demo`) from the time
    since its first observation, `chunk_length` points `control_dt` apart, in the reference view's frame; an arm
    the demonstration does not move holds its measured pose. A direct
    rollout of it must lift the cube: if not, the rollout (transform, executor, IK, physics) is broken."""

    def __init__(self, config, rollout: DirectRollout, from_current: bool = False) -> None:
        self.config, self.rollout = config, rollout
        self.from_current = from_current  # plan from the arm's current joints and the cube's current pose (pick)
        self._t0: int | None = None
        self._paths: dict | None = None  # arm -> JointPath on one clock; arms not in it hold their measured pose

    def predict(self, obs, modalities: str = "full", noise_seed: int | None = None):
        from posevla.types import ActionChunk, ArmChunk

        world, arm = self.rollout.world, self.rollout.robot_task_arm
        if self._t0 is None or self._paths is None or obs.stamp_ns < self._t0:
            self._t0 = obs.stamp_ns
            if world.state is None:
                raise RuntimeError("scripted policy: the world has no episode (call reset first)")
            if self.from_current:
                from scipy.spatial.transform import Rotation

                from posevla.sim.task import TaskState, scripted_pick_from

                T_cube = world.cube_pose()
                yaw = float(Rotation.from_matrix(T_cube[:3, :3]).as_euler("zyx")[0])
                here = TaskState(world.state.seed, (float(T_cube[0, 3]), float(T_cube[1, 3])), yaw)
                a = world.arms[arm]
                self._paths = {arm: scripted_pick_from(here, a.q.copy(), float(a.gripper),
                                                       self.rollout.spec.T_base_armbase[arm], self.rollout.kins[arm])}
            else:
                from posevla.sim.tasks import scripted_demo

                self._paths = scripted_demo(world.task, world.state, self.rollout.spec)
        n, dt = self.config.chunk_length, self.config.control_dt
        times = (obs.stamp_ns - self._t0) * 1e-9 + np.arange(n) * dt
        T_ref_base = se3.invert_T(obs.views[self.config.reference_view].T_base_cam)
        arms = {}
        for name, path in self._paths.items():
            T_base_armbase = self.rollout.spec.T_base_armbase[name]
            poses, grip = [], []
            for t in times:
                q, g = path.at(float(t))
                poses.append(T_ref_base @ T_base_armbase @ self.rollout.kins[name].fk(q))
                grip.append(g)
            arms[name] = ArmChunk(np.stack(poses), np.asarray(grip))
        for other, state in obs.state.arms.items():
            if other not in arms:
                arms[other] = ArmChunk(np.repeat((T_ref_base @ state.T_base_tcp)[None], n, 0), np.full(n, state.gripper))
        return ActionChunk(obs.views[self.config.reference_view].frame_id, obs.stamp_ns, dt, arms)

    def reset(self) -> None:
        self._t0 = None
