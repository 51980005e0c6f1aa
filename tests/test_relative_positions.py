"""`relative_positions: true` in a model config: the model predicts each chunk point's position as the offset
from the arm's current TCP position (both in the reference camera frame). Training targets, normalisation
statistics and decoding go through io_transforms.to/from_model_actions, so the executor still receives absolute
poses."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.model.batching import TrainingSample
from posevla.model.config import PoseVLAConfig
from posevla.model.io_transforms import XTrainerInputs, from_model_actions, to_model_actions
from posevla.model.policy import PoseVLAPolicy
from posevla.types import ArmState, Observation, RobotState

REPO = Path(__file__).resolve().parents[1]


def _cfg(relative: bool) -> PoseVLAConfig:
    cfg = PoseVLAConfig.from_yaml(REPO / "models" / "tiny.yaml")
    cfg.relative_positions = relative
    return cfg


def _moved(obs: Observation, dx: float) -> Observation:
    arms = dict(obs.state.arms)
    T = arms["left"].T_base_tcp.copy()
    T[0, 3] += dx
    arms["left"] = ArmState(T, np.zeros(6), arms["left"].gripper, 0)
    return dataclasses.replace(obs, state=RobotState(arms, obs.state.stamp_ns))


def test_round_trip_touches_only_positions() -> None:
    cfg = _cfg(True)
    rng = np.random.default_rng(0)
    state = rng.normal(size=(4, cfg.state_dim))
    actions = rng.normal(size=(4, cfg.chunk_length, cfg.action_dim))
    rel = to_model_actions(actions, state, cfg)
    np.testing.assert_allclose(from_model_actions(rel, state, cfg), actions, atol=1e-12)
    for arm in range(len(cfg.arms)):
        p = slice(arm * 10, arm * 10 + 3)
        np.testing.assert_allclose(rel[..., p], actions[..., p] - state[:, None, p], atol=1e-12)
        np.testing.assert_array_equal(rel[..., arm * 10 + 3:arm * 10 + 10], actions[..., arm * 10 + 3:arm * 10 + 10])
    np.testing.assert_array_equal(to_model_actions(actions, state, _cfg(False)), actions)


@pytest.mark.parametrize("relative", [True, False])
def test_model_output_zero_decodes_to_the_state_or_the_mean(relative: bool, monkeypatch) -> None:
    """A model that outputs all zeros (normalised) with identity statistics: relative -> the chunk stays where
    the arm is (it follows the arm when the arm moves 10 cm); absolute -> the same pose for both."""
    policy = PoseVLAPolicy.from_config(_cfg(relative), seed=0, device="cpu")
    monkeypatch.setattr(policy.model, "sample_actions", lambda batch, noise, **kw: torch.zeros_like(noise))
    obs = policy.synthetic_observation("pick up the red cube")
    inputs = XTrainerInputs(policy.config)
    for o in (obs, _moved(obs, 0.10)):
        T_ref_tcp = np.linalg.inv(inputs.reference_pose(o)) @ o.state.arms["left"].T_base_tcp
        chunk = policy.predict(o, noise_seed=1).arms["left"]
        if relative:
            np.testing.assert_allclose(chunk.T[:, :3, 3], np.broadcast_to(T_ref_tcp[:3, 3], (50, 3)), atol=1e-9)
        else:
            np.testing.assert_allclose(chunk.T[:, :3, 3], 0.0, atol=1e-9)


def test_training_targets_are_offsets_from_the_state() -> None:
    cfg = _cfg(True)
    policy = PoseVLAPolicy.from_config(cfg, seed=0, device="cpu")
    obs = policy.synthetic_observation("pick up the red cube")
    inputs = XTrainerInputs(cfg)
    state = inputs.state_vector(obs.state, inputs.reference_pose(obs))
    absolute = np.tile(state, (cfg.chunk_length, 1))
    absolute[:, 0] += np.linspace(0.0, 0.05, cfg.chunk_length)  # the left arm moves 5 cm along camera x
    arrays = policy.batcher.collate([TrainingSample(obs, actions=absolute)])
    acts = policy.norm.unnormalize_action(arrays["actions"][0].astype(np.float64))
    np.testing.assert_allclose(acts[:, 0], np.linspace(0.0, 0.05, cfg.chunk_length), atol=1e-6)
    np.testing.assert_allclose(acts[:, 1:3], 0.0, atol=1e-6)
    np.testing.assert_allclose(acts[:, 3:10], absolute[:, 3:10], atol=1e-6)  # rotation, gripper: absolute


def test_relative_positions_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="relative_positions"):
        PoseVLAConfig(relative_positions="yes")  # type: ignore[arg-type]


def test_a_state_with_an_unmeasured_gripper_or_a_bad_pose_is_refused_naming_it() -> None:
    cfg = _cfg(True)
    policy = PoseVLAPolicy.from_config(cfg, seed=0, device="cpu")
    obs = policy.synthetic_observation("pick up the red cube")
    inputs = XTrainerInputs(cfg)
    T_base_ref = inputs.reference_pose(obs)
    arm = next(iter(obs.state.arms))
    good = obs.state.arms[arm]
    obs.state.arms[arm] = dataclasses.replace(good, gripper=float("nan"))
    with pytest.raises(ValueError, match=f"robot state: {arm} gripper opening is not measured"):
        inputs.state_vector(obs.state, T_base_ref)
    T = good.T_base_tcp.copy()
    T[0, 3] = np.inf
    obs.state.arms[arm] = dataclasses.replace(good, T_base_tcp=T)
    with pytest.raises(ValueError, match=f"robot state: {arm} arm TCP pose has NaN or inf"):
        inputs.state_vector(obs.state, T_base_ref)
