"""The running twin: MuJoCo physics in real time behind the X-Trainer's TCP protocol.

`TwinArm` plugs a MuJoCo arm into the protocol simulator (`posevla.robot.simulator`) by composition: it is an
`ArmSim` (same command handling: EnableRobot, ServoJ, ServoP through `ArmKinematics.ik`, the gripper
command, alarms, recorded commands, 1440-byte feedback) whose `step` is not a first-order lag but the physics
world writing the measured joints and gripper opening back after each physics step. The world reads each
arm's `q_target` / `gripper_target` as position-actuator set-points. `ArmController` (the simulator's
dashboard / motion / feedback servers) serves each `TwinArm` unchanged.

Units: metres, radians, seconds; base_link is MuJoCo's world frame.
"""
from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from posevla.robot import protocol as P
from posevla.robot.simulator import ArmController, ArmSim
from posevla.sim.task import PickLiftTask, TaskState, start_joints
from posevla.sim.tasks import Task
from posevla.sim.twin import TwinSpec, build_mjcf


@dataclass
class TwinArm(ArmSim):
    """An `ArmSim` whose state comes from the physics world (`TwinWorld.step`), not from a lag model; plus the
    gripper's set-point and measured opening (0 closed .. 1 open), which `TwinGrippers` exchanges with the
    gripper's servo bus."""

    gripper: float = 1.0
    gripper_target: float = 1.0

    def step(self, dt: float) -> None:  # the world owns the dynamics
        raise RuntimeError("TwinArm is stepped by TwinWorld, not by XTrainerSimulator's lag model")

    def write_setpoints(self, ctrl_q: np.ndarray) -> float:
        """Copy the joint set-point into `ctrl_q` (6,), return the gripper set-point (opening 0..1)."""
        with self.lock:
            ctrl_q[:] = self.q_target
            return float(self.gripper_target)

    def read_state(self, q: np.ndarray, gripper: float) -> None:
        """Measured joints (rad) and gripper opening (0..1) after a physics step; the mode follows motion."""
        with self.lock:
            self.q = np.array(q, dtype=float)
            self.gripper = float(gripper)
            if self.mode in (P.MODE_ENABLED, P.MODE_RUNNING):
                moving = np.abs(self.q_target - self.q).max() > 1e-3
                self.mode = P.MODE_RUNNING if moving else P.MODE_ENABLED

    def teleport(self, q: np.ndarray, gripper: float) -> None:
        """Simulation reset: measured state and set-points jump to `q`, `gripper` together."""
        with self.lock:
            self.q, self.q_target = np.array(q, float), np.array(q, float)
            self.gripper = self.gripper_target = float(gripper)


@dataclass
class _ArmIndex:
    qpos: np.ndarray  # 6 joint qpos addresses
    dof: np.ndarray  # 6 joint dof addresses
    finger_qpos: np.ndarray  # 2
    finger_dof: np.ndarray
    ctrl: np.ndarray  # 6 joint actuators
    finger_ctrl: np.ndarray  # 2
    site: int  # TCP site


class TwinWorld:
    """MuJoCo model + data of the twin, the arms, the task; `start()` runs physics in real time on a thread.

    Every access to `data` holds `lock` (physics thread, renderer, reset)."""

    def __init__(self, spec: TwinSpec, task: Task | None = None, realtime_factor: float = 1.0) -> None:
        self.spec = spec
        self.task: Task = task or PickLiftTask()
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(spec))
        self.data = mujoco.MjData(self.model)
        self.lock = threading.RLock()
        # the controllers hold the flange model; SetTool/Tool from the driver select the tool, as on the robot
        self.arms: dict[str, TwinArm] = {a: TwinArm(a, kin=copy.deepcopy(spec.flange_kins[a])) for a in spec.T_base_armbase}
        self.step_hooks: list[Callable[[], None]] = []  # called on the physics thread after each batch of steps
        m = self.model
        jid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)  # noqa: E731
        aid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, n)  # noqa: E731
        self._idx: dict[str, _ArmIndex] = {}
        for a in self.arms:
            joints = [jid(f"{a}_joint{i}") for i in range(1, 7)]
            fingers = [jid(f"{a}_finger_{s}") for s in ("a", "b")]
            self._idx[a] = _ArmIndex(m.jnt_qposadr[joints], m.jnt_dofadr[joints], m.jnt_qposadr[fingers],
                                     m.jnt_dofadr[fingers], np.array([aid(f"{a}_joint{i}") for i in range(1, 7)]),
                                     np.array([aid(f"{a}_finger_{s}") for s in ("a", "b")]),
                                     mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, f"{a}_tcp"))
        self._cube_qpos = m.jnt_qposadr[jid("cube")]
        self._cube_dof = m.jnt_dofadr[jid("cube")]
        self.realtime_factor = realtime_factor
        self.sim_time_s = 0.0
        self.state: TaskState | None = None
        self.resets = 0
        self._running = False
        self._thread: threading.Thread | None = None
        self._teleport_home()
        self.place(None)

    # ------------------------------------------------------------------ state
    def _teleport_home(self) -> None:
        """Start-up only: both arms at home, grippers open, set-points equal (no motion)."""
        with self.lock:
            mujoco.mj_resetData(self.model, self.data)
            for a, arm in self.arms.items():
                q = self.spec.kins[a].home()
                arm.teleport(q, 1.0)
                ix = self._idx[a]
                self.data.qpos[ix.qpos] = q
                self.data.qpos[ix.finger_qpos] = self.spec.finger_stroke_m
                self.data.ctrl[ix.ctrl] = q
                self.data.ctrl[ix.finger_ctrl] = self.spec.finger_stroke_m
            mujoco.mj_forward(self.model, self.data)

    def move_home(self, joint_speed: float = 0.8, timeout_s: float = 30.0) -> None:
        """Open the grippers and drive both arms home along a minimum-jerk joint path, as an operator's reset
        would (no teleporting: the controllers' feedback stays continuous). Paced by simulated time; blocks."""
        self.move_joints({a: self.spec.kins[a].home() for a in self.arms}, joint_speed, timeout_s)

    def move_joints(self, targets: dict[str, np.ndarray], joint_speed: float = 0.8, timeout_s: float = 30.0) -> None:
        """Open the grippers and drive the arms in `targets` (joints, rad) there along one minimum-jerk joint path
        (the others hold). Paced by simulated time; blocks."""
        with self.lock:
            start = {a: self.arms[a].q.copy() for a in targets}
            t0 = self.sim_time_s
        span = max(float(np.abs(np.asarray(targets[a]) - start[a]).max()) for a in targets)
        duration = max(0.3, 1.875 * span / joint_speed)  # peak speed of a min-jerk profile: 1.875 x mean
        deadline = time.monotonic() + timeout_s
        while True:
            s = min(1.0, (self.sim_time_s - t0) / duration)
            w = s**3 * (10 - 15 * s + 6 * s**2)
            for a, arm in self.arms.items():
                with arm.lock:
                    if a in targets:
                        arm.q_target = start[a] + w * (np.asarray(targets[a]) - start[a])
                    arm.gripper_target = 1.0
            if s >= 1.0 or time.monotonic() > deadline:
                break
            if self._thread is None:
                self.step(5)
            else:
                time.sleep(0.005)

    def place(self, seed: int | None) -> TaskState:
        """Put the cube where the task's placement for `seed` says (None: the nominal placement), at rest."""
        state = self.task.sample(seed)
        with self.lock:
            self.data.qpos[self._cube_qpos:self._cube_qpos + 3] = [*state.cube_xy, self.spec.cube_half_m]
            c, s = np.cos(state.cube_yaw / 2), np.sin(state.cube_yaw / 2)
            self.data.qpos[self._cube_qpos + 3:self._cube_qpos + 7] = [c, 0.0, 0.0, s]  # wxyz
            self.data.qvel[self._cube_dof:self._cube_dof + 6] = 0.0
            mujoco.mj_forward(self.model, self.data)
            self.state = state
            self.resets += 1
        return state

    def reset(self, seed: int | None) -> TaskState:
        """An episode's start: arms home (moving), the task arm on to the task's start pose if it has one
        (`PickLiftTask.start_tcp_m`), then the cube placed for `seed`."""
        self.move_home()
        if isinstance(self.task, PickLiftTask) and self.task.start_tcp_m is not None:
            arm = self.task.arm
            q = start_joints(self.task, self.spec.T_base_armbase[arm], self.spec.kins[arm])
            if q is not None:
                self.move_joints({arm: q})
        return self.place(seed)

    def step(self, n: int = 1) -> None:
        """n physics steps: set-points from the arms in, measured state out."""
        stroke = self.spec.finger_stroke_m
        with self.lock:
            d = self.data
            for a, arm in self.arms.items():
                ix = self._idx[a]
                q_set = np.empty(6)
                g = arm.write_setpoints(q_set)
                d.ctrl[ix.ctrl] = q_set
                d.ctrl[ix.finger_ctrl] = np.clip(g, 0.0, 1.0) * stroke
            mujoco.mj_step(self.model, d, nstep=n)
            self.sim_time_s += n * self.model.opt.timestep
            for a, arm in self.arms.items():
                ix = self._idx[a]
                arm.read_state(d.qpos[ix.qpos], float(np.mean(d.qpos[ix.finger_qpos])) / stroke)

    def cube_pose(self) -> np.ndarray:
        """T_base_cube (4x4)."""
        with self.lock:
            p = self.data.qpos[self._cube_qpos:self._cube_qpos + 3].copy()
            w, x, y, z = self.data.qpos[self._cube_qpos + 3:self._cube_qpos + 7]
        from scipy.spatial.transform import Rotation

        T = np.eye(4)
        T[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()
        T[:3, 3] = p
        return T

    def success(self) -> bool:
        return self.task.success(self.cube_pose(), {a: self.T_base_tcp(a) for a in self.arms})

    def T_base_tcp(self, arm: str) -> np.ndarray:
        """The TCP site's pose in base_link, from MuJoCo's own forward kinematics."""
        with self.lock:
            i = self._idx[arm].site
            T = np.eye(4)
            T[:3, :3] = self.data.site_xmat[i].reshape(3, 3)
            T[:3, 3] = self.data.site_xpos[i]
        return T

    # ------------------------------------------------------------------ real time
    def start(self) -> None:
        """Physics on a thread, paced to wall time x realtime_factor (behind by more than 50 ms: it slows down)."""
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="twin-physics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        dt = float(self.model.opt.timestep)
        t_wall0, t_sim0 = time.monotonic(), self.sim_time_s
        max_batch = max(1, int(0.05 / dt))
        while self._running:
            due = (time.monotonic() - t_wall0) * self.realtime_factor - (self.sim_time_s - t_sim0)
            n = int(due / dt)
            if n > max_batch:  # fell behind (busy machine): drop the backlog instead of spiralling
                t_wall0 += (n - max_batch) * dt / self.realtime_factor
                n = max_batch
            if n > 0:
                self.step(n)
                for hook in self.step_hooks:
                    hook()
            time.sleep(0.004)

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


class TwinControllers:
    """Both Dobot controllers of the twin on their TCP endpoints (`ArmController` per `TwinArm`)."""

    def __init__(self, world: TwinWorld, hosts: dict[str, str], ports: dict[str, dict[str, int]] | None = None) -> None:
        unknown = sorted(set(hosts) - set(world.arms))
        if unknown:
            raise ValueError(f"arms {unknown} are not in the twin (has {sorted(world.arms)})")
        self.controllers: dict[str, ArmController] = {}
        try:
            for arm, host in hosts.items():
                self.controllers[arm] = ArmController(world.arms[arm], host, **(ports or {}).get(arm, {}))
        except OSError:
            self.close()
            raise

    def endpoint(self, arm: str) -> dict:
        c = self.controllers[arm]
        return {"host": c.host, **c.ports}

    def close(self) -> None:
        for c in self.controllers.values():
            c.close()


def _serve_gripper_buses(cfgs: dict, shared, ready, stop, open_requests=None) -> None:
    """Child process: the simulated Feetech buses answer the driver at once, whatever the physics process is doing.
    shared[2k] <- the goal opening the driver wrote (NaN: none yet); shared[2k+1] -> the physical opening."""
    from posevla.robot.feetech_sim import A_GOAL_POS, FeetechBusSim
    from posevla.tools.sim_priority import raise_for_simulated_hardware

    raise_for_simulated_hardware()  # a servo answers within its reply timeout (34 ms) whatever else runs
    buses, links = {}, []
    try:
        for arm, g in cfgs.items():
            buses[arm] = FeetechBusSim({g.servo_id: g.open_pos})
            link = Path(g.port)
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                raise OSError(f"gripper port {link} exists and is not a link: refusing to replace it")
            link.symlink_to(buses[arm].port)
            links.append(link)
        ready.set()
        while not stop.is_set():
            for k, (arm, g) in enumerate(cfgs.items()):
                if open_requests is not None and open_requests[k]:  # reset: the goal becomes "fully open"
                    buses[arm].set_register(g.servo_id, A_GOAL_POS, int(round(g.position(1.0))).to_bytes(2, "little"))
                    open_requests[k] = 0
                goal = buses[arm].register(g.servo_id, A_GOAL_POS, 2)
                shared[2 * k] = float(np.clip(g.opening(goal), 0.0, 1.0)) if goal else float("nan")
                buses[arm].move_by_hand(g.servo_id, g.position(float(shared[2 * k + 1])))
            time.sleep(0.005)
    except KeyboardInterrupt:  # the graph's Ctrl-C reaches the whole process group
        pass
    finally:
        for bus in buses.values():
            bus.close()
        for link in links:
            if link.is_symlink():
                link.unlink()


class TwinGrippers:
    """The grippers as the X-Trainer drives them: one Feetech servo bus per arm (`posevla.robot.feetech_sim`, a pty
    linked at the gripper's configured port, served by a child process so replies never wait for physics or
    rendering). The goal position the driver writes is the fingers' set-point; the present position it reads back
    is the physical finger opening (so a grasped cube stops it, as on the robot). Positions <-> openings through
    the gripper's own `GripperConfig.opening` / `position`."""

    def __init__(self, world: TwinWorld, grippers: dict) -> None:
        import multiprocessing as mp

        self.world, self.cfgs = world, {a: g for a, g in grippers.items() if a in world.arms}
        self.proc = None
        if not self.cfgs:
            return
        ctx = mp.get_context("spawn")
        self.shared = ctx.Array("d", [float("nan"), 1.0] * len(self.cfgs), lock=False)
        self.open_requests = ctx.Array("b", [0] * len(self.cfgs), lock=False)  # 1: set the goal to open
        self._stop, ready = ctx.Event(), ctx.Event()
        self.proc = ctx.Process(target=_serve_gripper_buses,
                                args=(self.cfgs, self.shared, ready, self._stop, self.open_requests),
                                daemon=True, name="twin-grippers")
        self.proc.start()
        while not ready.wait(0.1):
            if not self.proc.is_alive():
                raise OSError(f"the simulated gripper buses did not start (ports {[g.port for g in self.cfgs.values()]})")
        world.step_hooks.append(self.sync)

    def sync(self) -> None:
        for k, arm in enumerate(self.cfgs):
            twin = self.world.arms[arm]
            goal = self.shared[2 * k]
            if np.isfinite(goal):
                with twin.lock:
                    twin.gripper_target = float(goal)
            self.shared[2 * k + 1] = float(twin.gripper)

    def open(self, timeout_s: float = 2.0) -> bool:
        """An operator's reset: every gripper's goal register set to fully open (the fingers follow), as if the
        last command had been `open`; the driver's next goal overrides it. True once the buses took it."""
        if self.proc is None:
            return True
        for k in range(len(self.cfgs)):
            self.open_requests[k] = 1
        deadline = time.monotonic() + timeout_s
        while any(self.open_requests[k] for k in range(len(self.cfgs))) and time.monotonic() < deadline:
            time.sleep(0.005)
        return not any(self.open_requests[k] for k in range(len(self.cfgs)))

    def close(self) -> None:
        if self.proc is not None:
            self._stop.set()
            self.proc.join(5.0)
            if self.proc.is_alive():
                self.proc.kill()
