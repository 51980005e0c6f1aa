"""The left-arm pick-and-lift task of the twin: placements per seed, success, and the scripted demonstration.

A 4 cm cube lies on the table at a random position and yaw drawn from the seed; success means its centre is
above `lift_height_m` (base_link z, metres) when the episode ends. Training seeds and held-out evaluation seeds
come from disjoint ranges (`TRAIN_SEED_BASE`, `HELDOUT_SEED_BASE`), so no evaluation placement was ever shown
during training.

The scripted demonstration is a joint-space path for the left arm (the right arm stays at home): above the
cube, down, close, lift, hold. TCP waypoints follow minimum-jerk profiles in Cartesian space and are turned
into joints with the arm's own inverse kinematics (`ArmKinematics.ik`), seeded along the path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from posevla.geometry import se3
from posevla.robot.kinematics import ArmKinematics

TRAIN_SEED_BASE = 0
HELDOUT_SEED_BASE = 1_000_000


def train_seeds(n: int, first: int = 0) -> list[int]:
    """n training seeds from TRAIN_SEED_BASE + first (a later collection round adds seeds no earlier one used)."""
    if first < 0 or TRAIN_SEED_BASE + first + n > HELDOUT_SEED_BASE:
        raise ValueError(f"training seeds {TRAIN_SEED_BASE + first}..{TRAIN_SEED_BASE + first + n - 1} leave the "
                         f"training range [{TRAIN_SEED_BASE}, {HELDOUT_SEED_BASE})")
    return list(range(TRAIN_SEED_BASE + first, TRAIN_SEED_BASE + first + n))


def heldout_seeds(n: int) -> list[int]:
    return list(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + n))


@dataclass(frozen=True)
class TaskState:
    """A placement: the cube centre's (x, y) on the table and its yaw about base z (rad)."""

    seed: int | None
    cube_xy: tuple[float, float]
    cube_yaw: float


@dataclass(frozen=True)
class PickLiftTask:
    """Cube placement ranges (base_link, metres / radians), the success height and the task arm's start pose."""

    x_range: tuple[float, float] = (0.40, 0.56)
    y_range: tuple[float, float] = (0.22, 0.42)
    yaw_range: tuple[float, float] = (-np.pi / 4, np.pi / 4)
    lift_height_m: float = 0.10  # cube centre above this at the end: success (it rests at 0.02)
    arm: str = "left"
    instruction: str = "pick up the red cube"
    # the task arm's TCP position (base_link, m) at each trial's start, home orientation; None: the home pose
    start_tcp_m: tuple[float, float, float] | None = None

    def sample(self, seed: int | None) -> TaskState:
        if seed is None:
            return TaskState(None, (float(np.mean(self.x_range)), float(np.mean(self.y_range))), 0.0)
        rng = np.random.default_rng([int(seed), 12])
        return TaskState(int(seed), (float(rng.uniform(*self.x_range)), float(rng.uniform(*self.y_range))),
                         float(rng.uniform(*self.yaw_range)))

    def success(self, T_base_cube: np.ndarray, T_base_tcp: dict[str, np.ndarray] | None = None) -> bool:
        """The cube's centre above the lift height (whichever arm holds it; `T_base_tcp` is not needed)."""
        return bool(T_base_cube[2, 3] > self.lift_height_m)


def _min_jerk(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 0.0, 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


@dataclass
class JointPath:
    """Joint targets (rad) and gripper opening (0..1) sampled every `dt` seconds; `at(t)` interpolates."""

    dt: float
    q: np.ndarray  # (N, 6)
    gripper: np.ndarray  # (N,)

    @property
    def duration_s(self) -> float:
        return (len(self.q) - 1) * self.dt

    def padded(self, n_before: int, n_total: int) -> JointPath:
        """This path delayed by `n_before` samples (its first held) and its last sample held up to `n_total`."""
        n_after = n_total - n_before - len(self.q)
        if n_before < 0 or n_after < 0:
            raise ValueError(f"cannot pad a path of {len(self.q)} samples by {n_before} to {n_total}")
        q = np.concatenate([np.repeat(self.q[:1], n_before, 0), self.q, np.repeat(self.q[-1:], n_after, 0)])
        g = np.concatenate([np.repeat(self.gripper[:1], n_before), self.gripper,
                            np.repeat(self.gripper[-1:], n_after)])
        return JointPath(self.dt, q, g)

    def at(self, t: float) -> tuple[np.ndarray, float]:
        x = np.clip(t / self.dt, 0, len(self.q) - 1)
        i = min(int(x), len(self.q) - 2)
        f = x - i
        return (1 - f) * self.q[i] + f * self.q[i + 1], float((1 - f) * self.gripper[i] + f * self.gripper[i + 1])


@dataclass(frozen=True)
class ScriptTiming:
    """Seconds per phase of the scripted pick (minimum-jerk: peak TCP speed 1.875 x distance / time, kept well
    under the driver's 0.25 m/s limit) and the TCP heights (m)."""

    approach: float = 2.4
    descend: float = 1.4
    close: float = 0.7
    lift: float = 1.8
    hold: float = 0.8
    correct: float = 1.0  # perturbed demonstrations only: from the offset point above the cube to the true one
    above_m: float = 0.10  # approach height above the grasp height
    grasp_tcp_z_m: float = 0.058  # TCP height at the grasp (fingers reach 5.5 cm below the TCP)
    lift_tcp_z_m: float = 0.22


class PathUnreachable(RuntimeError):
    pass


def grasp_yaw(cube_yaw: float, tcp_yaw_home: float) -> float:
    """The TCP yaw (about base z) that aligns the fingers with a cube face, nearest the home yaw (90 deg symmetry)."""
    k = np.round((tcp_yaw_home - cube_yaw) / (np.pi / 2))
    return float(cube_yaw + k * np.pi / 2)


@dataclass(frozen=True)
class ApproachOffset:
    """A deliberate approach error of a perturbed demonstration (DART-style recovery data): the arm first goes to
    the point above the cube moved by (dx, dy) metres in base_link and turned by dyaw radians, then corrects to
    the true point above the cube (`ScriptTiming.correct` seconds) and picks as usual. The recorded frames then
    show the cube off-centre in the wrist view together with the motion that fixes it."""

    dx: float = 0.0
    dy: float = 0.0
    dyaw: float = 0.0

    @classmethod
    def for_seed(cls, seed: int, max_offset_m: float, probability: float = 0.75,
                 max_yaw_rad: float = np.radians(15.0)) -> ApproachOffset:
        """The offset of a train seed's demonstration (drawn from the seed, independent of its placement): with
        `probability`, a distance uniform in [0.2, 1] x max_offset_m in a uniform direction and a yaw error
        uniform in +-max_yaw_rad; else none."""
        rng = np.random.default_rng([int(seed), 34])
        if max_offset_m <= 0 or rng.uniform() >= probability:
            return cls()
        r, phi = rng.uniform(0.2, 1.0) * max_offset_m, rng.uniform(-np.pi, np.pi)
        return cls(float(r * np.cos(phi)), float(r * np.sin(phi)), float(rng.uniform(-max_yaw_rad, max_yaw_rad)))

    @property
    def is_zero(self) -> bool:
        return self.dx == 0.0 and self.dy == 0.0 and self.dyaw == 0.0


def scripted_pick(state: TaskState, T_base_armbase: np.ndarray, kin: ArmKinematics,
                  timing: ScriptTiming = ScriptTiming(), dt: float = 0.05,
                  offset: ApproachOffset = ApproachOffset(), q_start: np.ndarray | None = None,
                  max_approach_speed: float = 0.2) -> JointPath:
    """The left arm's joint path from home (or from `q_start`, joints in rad) to a lifted cube (raises
    PathUnreachable if IK fails); with an `offset`, the approach first misses the point above the cube and then
    corrects (see ApproachOffset). The grasp orientation is home's turned by the cube's yaw either way. From a
    `q_start`, the approach lasts at least long enough to keep its peak TCP speed under `max_approach_speed`."""
    q_home = kin.home()
    T_home = T_base_armbase @ kin.fk(q_home)
    q0 = q_home if q_start is None else np.asarray(q_start, float)
    T_start = T_base_armbase @ kin.fk(q0)
    yaw_home = float(np.arctan2(T_home[1, 0], T_home[0, 0]))
    yaw = grasp_yaw(state.cube_yaw, yaw_home)
    R_grasp = Rotation.from_euler("z", yaw - yaw_home).as_matrix() @ T_home[:3, :3]
    x, y = state.cube_xy
    above = se3.make_T(R_grasp, [x, y, timing.grasp_tcp_z_m + timing.above_m])
    grasp = se3.make_T(R_grasp, [x, y, timing.grasp_tcp_z_m])
    lifted = se3.make_T(R_grasp, [x, y, timing.lift_tcp_z_m])
    # (duration, from pose, to pose, gripper from, gripper to)
    target = above
    if not offset.is_zero:
        R_off = Rotation.from_euler("z", offset.dyaw).as_matrix() @ R_grasp
        target = se3.make_T(R_off, [x + offset.dx, y + offset.dy, timing.grasp_tcp_z_m + timing.above_m])
    approach_s = timing.approach
    if q_start is not None:  # min-jerk peak speed: 1.875 x distance / time
        approach_s = max(approach_s, 1.875 * float(np.linalg.norm(target[:3, 3] - T_start[:3, 3])) / max_approach_speed)
    first = [(approach_s, T_start, target, 1.0, 1.0)]
    if not offset.is_zero:
        first.append((timing.correct, target, above, 1.0, 1.0))
    phases = first + [(timing.descend, above, grasp, 1.0, 1.0),
              (timing.close, grasp, grasp, 1.0, 0.0), (timing.lift, grasp, lifted, 0.0, 0.0),
              (timing.hold, lifted, lifted, 0.0, 0.0)]
    return _phases_to_path(phases, q0, 1.0, T_base_armbase, kin, dt, f"seed {state.seed}")


def _phases_to_path(phases: list, q_start: np.ndarray, g_start: float, T_base_armbase: np.ndarray,
                    kin: ArmKinematics, dt: float, what: str) -> JointPath:
    """(duration s, T_base_tcp from, to, gripper from, to) phases -> minimum-jerk joint path by seeded IK."""
    T_armbase_base = se3.invert_T(T_base_armbase)
    q = np.asarray(q_start, float)
    qs, gs = [q], [float(g_start)]
    for duration, T0, T1, g0, g1 in phases:
        n = max(1, int(round(duration / dt)))
        for k in range(1, n + 1):
            s = float(_min_jerk(np.array(k / n)))
            T = se3.slerp_T(T0, T1, s)
            q_new = kin.ik(T_armbase_base @ T, q)
            if q_new is None:
                raise PathUnreachable(f"{what}: no IK solution at TCP {np.round(T[:3, 3], 3).tolist()}")
            q = q_new
            qs.append(q)
            gs.append(g0 + (g1 - g0) * s)
    return JointPath(dt, np.array(qs), np.array(gs))


def scripted_pick_from(state: TaskState, q_start: np.ndarray, gripper_start: float, T_base_armbase: np.ndarray,
                       kin: ArmKinematics, timing: ScriptTiming = ScriptTiming(), dt: float = 0.05,
                       max_speed: float = 0.15) -> JointPath:
    """The expert's pick from wherever the arm is (a takeover, DAgger-style): open (rising 3 cm) if the gripper
    is closed, a straight minimum-jerk move to the point above the cube (peak speed `max_speed` m/s), then the
    scripted descent, close, lift and hold. `state` gives the cube's current (x, y) and yaw."""
    T_now = T_base_armbase @ kin.fk(np.asarray(q_start, float))
    T_home = T_base_armbase @ kin.fk(kin.home())
    yaw_home = float(np.arctan2(T_home[1, 0], T_home[0, 0]))
    R_grasp = Rotation.from_euler("z", grasp_yaw(state.cube_yaw, yaw_home) - yaw_home).as_matrix() @ T_home[:3, :3]
    x, y = state.cube_xy
    above = se3.make_T(R_grasp, [x, y, timing.grasp_tcp_z_m + timing.above_m])
    grasp = se3.make_T(R_grasp, [x, y, timing.grasp_tcp_z_m])
    lifted = se3.make_T(R_grasp, [x, y, timing.lift_tcp_z_m])
    phases: list = []
    T0 = T_now
    if gripper_start < 0.9:
        T_up = T_now.copy()
        T_up[2, 3] += 0.03
        phases.append((0.6, T_now, T_up, float(gripper_start), 1.0))
        T0 = T_up
    dist = float(np.linalg.norm(above[:3, 3] - T0[:3, 3]))
    angle = float(se3.rotation_angle(T0[:3, :3].T @ above[:3, :3]))
    phases += [(max(0.8, 1.875 * dist / max_speed, 1.875 * angle / 0.5), T0, above, 1.0, 1.0),
               (timing.descend, above, grasp, 1.0, 1.0), (timing.close, grasp, grasp, 1.0, 0.0),
               (timing.lift, grasp, lifted, 0.0, 0.0), (timing.hold, lifted, lifted, 0.0, 0.0)]
    return _phases_to_path(phases, q_start, gripper_start, T_base_armbase, kin, dt, f"takeover seed {state.seed}")


def scripted_return(q_from: np.ndarray, T_base_armbase: np.ndarray, kin: ArmKinematics, open_s: float = 0.6,
                    max_speed: float = 0.12, dt: float = 0.05) -> JointPath:
    """After a demonstration: open the gripper in place, then a straight minimum-jerk TCP path home (peak speed
    `max_speed` m/s), joints by IK seeded along the way."""
    T_armbase_base = se3.invert_T(T_base_armbase)
    T0 = T_base_armbase @ kin.fk(q_from)
    T1 = T_base_armbase @ kin.fk(kin.home())
    dist = float(np.linalg.norm(T1[:3, 3] - T0[:3, 3]))
    angle = float(se3.rotation_angle(T0[:3, :3].T @ T1[:3, :3]))
    duration = max(1.0, 1.875 * dist / max_speed, 1.875 * angle / 0.5)
    n_open, n_move = max(1, int(round(open_s / dt))), max(1, int(round(duration / dt)))
    qs, gs = [np.asarray(q_from, float)] * (n_open + 1), list(np.linspace(0.0, 1.0, n_open + 1))
    q = qs[-1]
    for k in range(1, n_move + 1):
        s = float(_min_jerk(np.array(k / n_move)))
        q_new = kin.ik(T_armbase_base @ se3.slerp_T(T0, T1, s), q)
        if q_new is None:
            raise PathUnreachable(f"no IK solution on the way home (step {k}/{n_move})")
        q = q_new
        qs.append(q)
        gs.append(1.0)
    qs[-1] = kin.home()
    return JointPath(dt, np.array(qs), np.array(gs))


def start_joints(task: PickLiftTask, T_base_armbase: np.ndarray, kin: ArmKinematics) -> np.ndarray | None:
    """The task arm's joints (rad) at `task.start_tcp_m` with the home orientation, by IK seeded at home; None when
    the task starts at home. Raises PathUnreachable if the arm cannot reach it."""
    if task.start_tcp_m is None:
        return None
    T = T_base_armbase @ kin.fk(kin.home())
    T[:3, 3] = task.start_tcp_m
    q = kin.ik(se3.invert_T(T_base_armbase) @ T, kin.home())
    if q is None:
        raise PathUnreachable(f"start pose {list(task.start_tcp_m)}: no IK solution")
    return np.asarray(q, float)


@dataclass(frozen=True)
class PickOverviewTask(PickLiftTask):
    """The pick from a raised start pose from which the left wrist camera sees the whole placement range (at home it
    sees about a third of it: the cube beyond its view must be found with the head camera alone). All nine points
    of a 3 x 3 grid over the ranges are fully in the 160x120 wrist view from (0.46, 0.42, 0.40) m."""

    start_tcp_m: tuple[float, float, float] | None = (0.46, 0.42, 0.40)
