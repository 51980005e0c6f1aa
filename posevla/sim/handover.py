"""The bimanual hand-over task of the twin: the left arm picks the cube and sets it down at the hand-over spot
between the arms, the right arm picks it there and lifts it.

Placements (position and yaw on the left arm's side) are drawn from the seed exactly like the pick task's, from
the same disjoint training / held-out seed ranges. Success at the episode's end: the cube's centre is above
`lift_height_m`, the **right** gripper holds it (the cube within `hold_xy_m` of the right TCP's vertical and
between its fingers' reach below the TCP) and the left TCP is at least `release_m` from it (the left arm let go).

The scripted demonstration drives both arms on one clock (`scripted_handover`): left -- above the cube, down,
close, lift to the carry height, carry to above the spot, down, open, rise, home; right -- home until the left
gripper has opened and risen, then above the spot (while the left goes home), down, close, lift, hold (the
grippers never touch: `tests/test_mujoco_twin.py`). TCP waypoints follow
minimum-jerk profiles (peak TCP speed kept under the driver's limit), joints from each arm's own IK.
Frames: base_link, metres, radians, seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from posevla.geometry import se3
from posevla.robot.kinematics import ArmKinematics
from posevla.sim.task import JointPath, PickLiftTask, ScriptTiming, TaskState, _phases_to_path, grasp_yaw

FINGER_REACH_M = 0.055  # the fingers reach this far below the TCP (ScriptTiming.grasp_tcp_z_m's comment)


@dataclass(frozen=True)
class HandOverTask:
    """Cube placements (base_link, m / rad; the pick task's ranges by default), the hand-over spot and success."""

    x_range: tuple[float, float] = PickLiftTask.x_range
    y_range: tuple[float, float] = PickLiftTask.y_range
    yaw_range: tuple[float, float] = PickLiftTask.yaw_range
    spot_xy: tuple[float, float] = (0.48, 0.06)  # where the left arm sets the cube down (between the arms)
    lift_height_m: float = 0.10
    hold_xy_m: float = 0.03  # the cube's centre within this of the right TCP's vertical: held by the right arm
    release_m: float = 0.08  # the left TCP at least this far from the cube's centre: the left arm let go
    arm: str = "left"  # the arm that moves first (traces and miss rules of the direct loop follow it)
    arms: tuple[str, ...] = ("left", "right")
    instruction: str = "hand the red cube over to the right arm"

    def sample(self, seed: int | None) -> TaskState:
        """The same placement the pick task draws for this seed (the first half of the task is that pick)."""
        return PickLiftTask(self.x_range, self.y_range, self.yaw_range).sample(seed)

    def success(self, T_base_cube: np.ndarray, T_base_tcp: dict[str, np.ndarray] | None = None) -> bool:
        """Lifted, held by the right gripper, released by the left; False without the TCP poses."""
        if T_base_tcp is None or T_base_cube[2, 3] <= self.lift_height_m:
            return False
        cube, right, left = T_base_cube[:3, 3], T_base_tcp["right"][:3, 3], T_base_tcp["left"][:3, 3]
        held = (np.hypot(*(cube[:2] - right[:2])) < self.hold_xy_m
                and 0.0 < right[2] - cube[2] < FINGER_REACH_M + 0.01)
        return bool(held and np.linalg.norm(cube - left) >= self.release_m)


@dataclass(frozen=True)
class HandOverTiming:
    """Seconds and heights of the scripted hand-over beyond the pick's own (`ScriptTiming`)."""

    pick: ScriptTiming = ScriptTiming()
    carry_tcp_z_m: float = 0.16  # TCP height while carrying the cube to the spot
    raise_s: float = 0.9  # grasp -> carry height (at least; every move is also kept under max_speed)
    lower_s: float = 1.0  # above the spot -> set down
    open_s: float = 0.5
    rise_s: float = 0.8  # the left arm rises after opening
    max_speed: float = 0.16  # peak TCP speed of the carry, the right arm's approach and the way home (m/s)
    place_clearance_m: float = 0.004  # the cube is set down this far above its resting height
    right_delay_s: float = 0.0  # the right arm starts this long after the left arm has risen from the spot (its
    # grippers would collide with the left's if it started as the left opens)


def _move_s(T0: np.ndarray, T1: np.ndarray, max_speed: float, minimum: float) -> float:
    """Duration of a minimum-jerk move (peak speed 1.875 x mean) under `max_speed` m/s and 0.5 rad/s."""
    dist = float(np.linalg.norm(T1[:3, 3] - T0[:3, 3]))
    angle = float(se3.rotation_angle(T0[:3, :3].T @ T1[:3, :3]))
    return max(minimum, 1.875 * dist / max_speed, 1.875 * angle / 0.5)


def _grasp_frames(xy: tuple[float, float], yaw: float, T_home: np.ndarray, timing: ScriptTiming
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(above, grasp, lifted) TCP poses for a top-down grasp of a cube at `xy` with yaw `yaw` by an arm whose home
    TCP pose is `T_home` (fingers aligned with the cube face nearest the home yaw)."""
    yaw_home = float(np.arctan2(T_home[1, 0], T_home[0, 0]))
    R = Rotation.from_euler("z", grasp_yaw(yaw, yaw_home) - yaw_home).as_matrix() @ T_home[:3, :3]
    x, y = xy
    return (se3.make_T(R, [x, y, timing.grasp_tcp_z_m + timing.above_m]), se3.make_T(R, [x, y, timing.grasp_tcp_z_m]),
            se3.make_T(R, [x, y, timing.lift_tcp_z_m]))


def scripted_handover(state: TaskState, task: HandOverTask, T_base_armbase: dict[str, np.ndarray],
                      kins: dict[str, ArmKinematics], timing: HandOverTiming = HandOverTiming(),
                      dt: float = 0.05) -> dict[str, JointPath]:
    """Both arms' joint paths on one clock (equal lengths, `dt` apart) from home to the cube lifted by the right
    arm; raises `PathUnreachable` if an arm's IK fails."""
    pt = timing.pick
    T_home = {a: T_base_armbase[a] @ kins[a].fk(kins[a].home()) for a in ("left", "right")}
    above, grasp, _ = _grasp_frames(state.cube_xy, state.cube_yaw, T_home["left"], pt)
    carry = grasp.copy()
    carry[2, 3] = timing.carry_tcp_z_m
    spot_carry = carry.copy()
    spot_carry[:2, 3] = task.spot_xy
    place = spot_carry.copy()
    place[2, 3] = pt.grasp_tcp_z_m + timing.place_clearance_m
    risen = place.copy()
    risen[2, 3] = timing.carry_tcp_z_m + 0.04
    left_phases = [(pt.approach, T_home["left"], above, 1.0, 1.0), (pt.descend, above, grasp, 1.0, 1.0),
                   (pt.close, grasp, grasp, 1.0, 0.0),
                   (_move_s(grasp, carry, timing.max_speed, timing.raise_s), grasp, carry, 0.0, 0.0),
                   (_move_s(carry, spot_carry, timing.max_speed, 1.0), carry, spot_carry, 0.0, 0.0),
                   (_move_s(spot_carry, place, timing.max_speed, timing.lower_s), spot_carry, place, 0.0, 0.0),
                   (timing.open_s, place, place, 0.0, 1.0)]
    rise_s = _move_s(place, risen, timing.max_speed, timing.rise_s)
    t_right = sum(p[0] for p in left_phases) + rise_s + timing.right_delay_s
    left_phases += [(rise_s, place, risen, 1.0, 1.0),
                    (_move_s(risen, T_home["left"], timing.max_speed, 1.0), risen, T_home["left"], 1.0, 1.0)]
    # the cube keeps its yaw while carried (the left TCP does not turn), so the right arm grasps the same faces' pair
    r_above, r_grasp, r_lifted = _grasp_frames(task.spot_xy, state.cube_yaw, T_home["right"], pt)
    right_phases = [(max(2.0, _move_s(T_home["right"], r_above, timing.max_speed, 1.0)), T_home["right"], r_above,
                     1.0, 1.0), (pt.descend, r_above, r_grasp, 1.0, 1.0), (pt.close, r_grasp, r_grasp, 1.0, 0.0),
                    (pt.lift, r_grasp, r_lifted, 0.0, 0.0), (pt.hold, r_lifted, r_lifted, 0.0, 0.0)]
    what = f"hand-over seed {state.seed}"
    left = _phases_to_path(left_phases, kins["left"].home(), 1.0, T_base_armbase["left"], kins["left"], dt, what)
    right = _phases_to_path(right_phases, kins["right"].home(), 1.0, T_base_armbase["right"], kins["right"], dt, what)
    n_right = int(round(t_right / dt))
    n_total = max(len(left.q), n_right + len(right.q))
    return {"left": left.padded(0, n_total), "right": right.padded(n_right, n_total)}
