"""`posevla benchmark probe`: the scripted pick's first chunk follows the cube (slope ~0.8, one chunk per
placement); a policy that returns one chunk whatever the image gets slope 0 and one distinct chunk; bad input
exits 2 with one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from posevla.cli import main as cli_main  # noqa: E402
from posevla.model.config import PoseVLAConfig  # noqa: E402
from posevla.paths import calibration_dir, default_path  # noqa: E402
from posevla.sim.probe import first_chunk_targets, summarize  # noqa: E402
from posevla.sim.rollout import DirectRollout, RolloutConfig, ScriptedPolicy  # noqa: E402
from posevla.sim.task import heldout_seeds  # noqa: E402


def test_summarize_against_a_direct_fit() -> None:
    rng = np.random.default_rng(0)
    cube = rng.uniform([0.40, 0.22], [0.56, 0.42], (30, 2))
    end = np.c_[0.3 + 0.5 * cube[:, 0], 0.2 + 0.1 * cube[:, 1], np.full(30, 0.17)]
    s = summarize(np.c_[cube, end])
    assert s["slope_x"] == pytest.approx(0.5) and s["slope_y"] == pytest.approx(0.1)
    assert s["corr_x"] == pytest.approx(1.0) and s["distinct_chunks"] == 30
    flat = summarize(np.c_[cube, np.tile([0.45, 0.33, 0.17], (30, 1))])
    assert flat["slope_x"] == 0.0 and flat["slope_y"] == 0.0 and flat["distinct_chunks"] == 1


class _Frozen(ScriptedPolicy):
    """The scripted pick's first chunk for the first placement, returned for every later one (ignores the image)."""

    frozen = None

    def predict(self, obs, modalities: str = "full", noise_seed=None):
        if _Frozen.frozen is None:
            _Frozen.frozen = super().predict(obs, modalities)
        return _Frozen.frozen


def test_probe_tells_a_policy_that_reads_the_head_camera_from_one_that_does_not() -> None:
    cfg = PoseVLAConfig.from_yaml(default_path("models", "closed_loop.yaml"))

    class _Holder:
        config = cfg

    r = DirectRollout(_Holder(), default_path("config", "xtrainer_sim_robot.yaml"), calibration_dir(),
                      RolloutConfig(width=64, height=48))
    try:
        seeds = heldout_seeds(8)
        r.policy = ScriptedPolicy(cfg, r)
        reads = summarize(first_chunk_targets(r, seeds))
        r.policy = _Frozen(cfg, r)
        ignores = summarize(first_chunk_targets(r, seeds))
    finally:
        r.close()
    assert 0.6 < reads["slope_x"] < 1.0 and 0.6 < reads["slope_y"] < 1.0 and reads["distinct_chunks"] == 8
    assert ignores["slope_x"] == 0.0 and ignores["slope_y"] == 0.0 and ignores["distinct_chunks"] == 1


def test_probe_cli_writes_json_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    assert cli_main(["benchmark", "probe", "--policy", "scripted", "--trials", "3", "--width", "64", "--height", "48",
                     "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "probe.json").read_text())
    assert got["n"] == 3 and len(got["rows"]) == 3 and got["slope_y"] > 0.6
    capsys.readouterr()
    for argv in (["--trials", "2", "--policy", "scripted"], [], ["--checkpoint", str(tmp_path / "none")]):
        assert cli_main(["benchmark", "probe", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("posevla benchmark probe: ") and err.count("\n") == 1
