"""The twin's tasks by name, and each task's scripted demonstration for both arms.

`pick_cube` (`PickLiftTask`: the left arm picks and lifts the cube), `pick_cube_overview` (`PickOverviewTask`: the
same pick from a raised start pose whose wrist view covers the whole placement range) and `hand_over`
(`HandOverTask`: the left arm picks the cube and sets it down between the arms, the right arm picks it there and
lifts it). The name is the
task folder of recorded episodes (`data/<task>/`), the `task` parameter of `mujoco_sim` and `--task` of the
benchmarks.
"""
from __future__ import annotations

from typing import Union

from posevla.sim.handover import HandOverTask, scripted_handover
from posevla.sim.task import (
    ApproachOffset,
    JointPath,
    PickLiftTask,
    PickOverviewTask,
    TaskState,
    scripted_pick,
    scripted_return,
    start_joints,
)
from posevla.sim.twin import TwinSpec

Task = Union[PickLiftTask, HandOverTask]
TASKS: dict[str, type] = {"pick_cube": PickLiftTask, "pick_cube_overview": PickOverviewTask, "hand_over": HandOverTask}


def make_task(name: str) -> Task:
    """The task called `name` with its default ranges (ValueError naming the known tasks otherwise)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]()


def task_name(task: Task) -> str:
    return next(n for n, cls in TASKS.items() if type(task) is cls)


def scripted_demo(task: Task, state: TaskState, spec: TwinSpec, demo_offset_m: float = 0.0) -> dict[str, JointPath]:
    """Each moving arm's joint path of the scripted demonstration (equal lengths on one clock); an arm not in the
    dict holds its pose. demo_offset_m > 0: the pick's approach first misses (`ApproachOffset.for_seed`; pick only)."""
    if isinstance(task, HandOverTask):
        return scripted_handover(state, task, spec.T_base_armbase, spec.kins)
    offset = ApproachOffset.for_seed(state.seed, demo_offset_m) if state.seed is not None else ApproachOffset()
    T_base_armbase, kin = spec.T_base_armbase[task.arm], spec.kins[task.arm]
    return {task.arm: scripted_pick(state, T_base_armbase, kin, offset=offset,
                                    q_start=start_joints(task, T_base_armbase, kin))}


def scripted_returns(paths: dict[str, JointPath], spec: TwinSpec) -> dict[str, JointPath]:
    """After a demonstration: every arm of `paths` opens and goes home from where its path ended (one clock)."""
    back = {a: scripted_return(p.q[-1], spec.T_base_armbase[a], spec.kins[a]) for a, p in paths.items()}
    n = max(len(p.q) for p in back.values())
    return {a: p.padded(0, n) for a, p in back.items()}
