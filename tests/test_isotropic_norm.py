"""`isotropic_position_norm: true` in a model config: each arm's three action position dimensions share one
normalisation std (the RMS of their per-axis stds), so the flow loss weighs a centimetre of error the same along
every axis of the reference frame; everything else keeps its per-dimension statistics. Used by `posevla train`
and `posevla pretrain --cotrain-flow` alike (`io_transforms.fit_norm_stats`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from posevla.model.config import ARM_ACTION_DIM, PoseVLAConfig
from posevla.model.io_transforms import fit_norm_stats, to_model_actions
from posevla.model.normalization import NormStats

REPO = Path(__file__).resolve().parents[1]


def _data(cfg: PoseVLAConfig, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(n, cfg.state_dim))
    actions = rng.normal(size=(n, 5, cfg.action_dim))
    for i in range(len(cfg.arms)):  # spreads 1 / 2 / 4 cm along x / y / z of the reference frame
        actions[..., i * ARM_ACTION_DIM:i * ARM_ACTION_DIM + 3] *= [0.01, 0.02, 0.04]
    return states, actions


@pytest.mark.parametrize("relative", [False, True])
def test_isotropic_norm_shares_one_position_std_per_arm(relative: bool) -> None:
    cfg = PoseVLAConfig.from_yaml(REPO / "models" / "tiny.yaml")
    cfg.relative_positions = relative
    states, actions = _data(cfg)
    per_dim = NormStats.fit(states, to_model_actions(actions, states, cfg))
    assert fit_norm_stats(states, actions, cfg).action_std == pytest.approx(per_dim.action_std)  # off by default
    cfg.isotropic_position_norm = True
    iso = fit_norm_stats(states, actions, cfg)
    for i in range(len(cfg.arms)):
        cols = np.arange(3) + i * ARM_ACTION_DIM
        shared = np.sqrt(np.mean(per_dim.action_std[cols] ** 2))
        assert iso.action_std[cols] == pytest.approx([shared] * 3)
        if not relative:  # absolute positions: the spreads set above, so ~ sqrt((1 + 4 + 16) / 3) cm
            assert shared == pytest.approx(np.sqrt(21 / 3) * 0.01, rel=0.05)
    pos = np.zeros(cfg.action_dim, bool)
    for i in range(len(cfg.arms)):
        pos[i * ARM_ACTION_DIM:i * ARM_ACTION_DIM + 3] = True
    assert iso.action_std[~pos] == pytest.approx(per_dim.action_std[~pos])  # rotations, grippers untouched
    assert iso.action_mean == pytest.approx(per_dim.action_mean) and iso.state_std == pytest.approx(per_dim.state_std)
    # a 1 cm error along x and along z now cost the same in the normalised loss (per dimension: 4x apart)
    e = np.zeros(cfg.action_dim)
    e[0] = 0.01
    ex = iso.normalize_action(iso.action_mean + e) ** 2
    e[0], e[2] = 0.0, 0.01
    ez = iso.normalize_action(iso.action_mean + e) ** 2
    assert ex.sum() == pytest.approx(ez.sum())


def test_isotropic_norm_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="isotropic_position_norm"):
        PoseVLAConfig(isotropic_position_norm="yes")  # type: ignore[arg-type]
