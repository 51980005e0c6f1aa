"""The one X-Trainer state codec: arm joints and gripper <-> the flat name/position lists of `/joint_states`
(and of the servo joint command, the recorder's qpos and the training state).

Names per arm: `<arm>_joint1` .. `<arm>_joint6` (rad), `<arm>_gripper` (opening 0 closed .. 1 open, the
measured opening of the gripper servo). A missing gripper is NaN on decode and never silently a default.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_JOINTS = 6


def joint_names(arm: str) -> list[str]:
    """The 7 names of one arm: 6 joints then the gripper."""
    return [f"{arm}_joint{i}" for i in range(1, N_JOINTS + 1)] + [f"{arm}_gripper"]


@dataclass
class ArmJoints:
    q: np.ndarray  # (6,) rad
    gripper: float  # 0..1, NaN when not measured


def encode(arms: Mapping[str, ArmJoints]) -> tuple[list[str], list[float]]:
    names: list[str] = []
    positions: list[float] = []
    for arm, s in arms.items():
        q = np.asarray(s.q, float)
        if q.shape != (N_JOINTS,):
            raise ValueError(f"{arm}: joint state needs {N_JOINTS} angles, got shape {q.shape}")
        names += joint_names(arm)
        positions += [*map(float, q), float(s.gripper)]
    return names, positions


def decode(names: Sequence[str], positions: Sequence[float], arms: Sequence[str]) -> dict[str, ArmJoints]:
    """The arms of `arms` whose six joints are all present; the gripper is NaN when its name is absent."""
    if len(names) != len(positions):
        raise ValueError(f"joint state has {len(names)} names but {len(positions)} positions")
    idx = {n: i for i, n in enumerate(names)}
    out: dict[str, ArmJoints] = {}
    for arm in arms:
        jn = joint_names(arm)
        if not all(n in idx for n in jn[:N_JOINTS]):
            continue
        q = np.array([positions[idx[n]] for n in jn[:N_JOINTS]], float)
        g = float(positions[idx[jn[N_JOINTS]]]) if jn[N_JOINTS] in idx else float("nan")
        out[arm] = ArmJoints(q, g)
    return out
