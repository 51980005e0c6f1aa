"""`state_input: false` in a model config: the robot state is not shown to the model (training and inference go
through the same Batcher), so two observations that differ only in the arm's pose and gripper give the same chunk
(in the reference camera frame), while with the state shown they do not."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from posevla.model.config import PoseVLAConfig
from posevla.model.policy import PoseVLAPolicy
from posevla.types import ArmState, Observation, RobotState

REPO = Path(__file__).resolve().parents[1]


def _moved(obs: Observation) -> Observation:
    """The same images with the left TCP 10 cm further along x and the gripper closed."""
    arms = dict(obs.state.arms)
    T = np.eye(4)
    T[0, 3] = 0.10
    arms["left"] = ArmState(T, np.zeros(6), 0.0, 0)
    return dataclasses.replace(obs, state=RobotState(arms, obs.state.stamp_ns))


@pytest.mark.parametrize("state_input", [True, False])
def test_state_input_switch(state_input: bool) -> None:
    cfg = PoseVLAConfig.from_yaml(REPO / "models" / "tiny.yaml")
    cfg.state_input = state_input
    policy = PoseVLAPolicy.from_config(cfg, seed=0, device="cpu")
    obs = policy.synthetic_observation("pick up the red cube")
    arrays = policy.batcher.observation_arrays([obs, _moved(obs)])
    a = policy.predict(obs, noise_seed=3).arms["left"]
    b = policy.predict(_moved(obs), noise_seed=3).arms["left"]
    diff = float(np.abs(a.T[:, :3, 3] - b.T[:, :3, 3]).max() + np.abs(a.gripper - b.gripper).max())
    if state_input:
        assert np.abs(arrays["state"][0] - arrays["state"][1]).max() > 0.05
        assert diff > 1e-4  # the (random) model reads the state
    else:
        assert not arrays["state"].any()  # constant: the data mean in normalised units
        assert diff < 1e-6


def test_state_input_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="state_input"):
        PoseVLAConfig(state_input="no")  # type: ignore[arg-type]
