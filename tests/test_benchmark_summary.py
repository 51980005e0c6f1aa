"""`posevla benchmark summary`: pooling result files and success by cube placement."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from posevla.sim.summary import load_trials, main, placement_table
from posevla.sim.task import PickLiftTask, heldout_seeds


def _rollout_file(path: Path, seeds: list[int], ok: list[bool], perturbed: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"seeds": seeds, "success_per_seed": ok, "successes": sum(ok),
                                                  "trials": len(ok), "rollout": {"modalities": "full"},
                                                  "perturbed_calibration": perturbed}))
    return path


def test_pools_rollouts_and_bins_placements_as_the_task_samples_them(tmp_path: Path, capsys) -> None:
    seeds = heldout_seeds(12)
    task = PickLiftTask()
    # success exactly where the cube lies forward of x = 0.48 m: the x table must split 0 / all at that edge
    ok = [task.sample(s).cube_xy[0] >= 0.48 for s in seeds]
    a = _rollout_file(tmp_path / "a", seeds[:7], ok[:7])
    b = _rollout_file(tmp_path / "b", seeds[5:], ok[5:])  # overlaps a by two seeds with the same outcome
    pooled = load_trials([a / "results.json", b / "results.json"])
    assert list(pooled) == ["full"] and pooled["full"].seeds == tuple(seeds)
    assert pooled["full"].successes == sum(ok)
    x_cells = dict(placement_table(pooled["full"], task, 2))["x_m"]
    n_fwd = sum(ok)
    assert [(round(lo, 6), round(hi, 6), k, m) for lo, hi, k, m in x_cells] == [(0.40, 0.48, 0, 12 - n_fwd),
                                                                                 (0.48, 0.56, n_fwd, n_fwd)]
    assert 0 < n_fwd < 12  # the seeds fall on both sides, so the check above can fail
    assert main([str(a), str(b / "results.json"), "--bins", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"full: {n_fwd}/12 = {n_fwd / 12:.2f}, 95 % Wilson")
    assert f"[0.4, 0.48] 0/{12 - n_fwd}  [0.48, 0.56] {n_fwd}/{n_fwd}" in out


def test_closed_loop_conditions_and_miscalibrated_rollouts_stay_apart(tmp_path: Path) -> None:
    seeds = heldout_seeds(4)
    (tmp_path / "cl").mkdir()
    (tmp_path / "cl" / "results.json").write_text(json.dumps({"conditions": {
        "full": {"seeds": seeds, "success_per_seed": [True, True, False, True]},
        "rgb_only": {"seeds": seeds[:2], "success_per_seed": [False, True]}}}))
    mis = _rollout_file(tmp_path / "mis", seeds[:3], [False, False, True], perturbed=True)
    pooled = load_trials([tmp_path / "cl" / "results.json", mis / "results.json"])
    assert {c: (t.successes, len(t.seeds)) for c, t in pooled.items()} == {
        "full": (3, 4), "rgb_only": (1, 2), "full_miscalibrated": (1, 3)}


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    seeds = heldout_seeds(2)
    a = _rollout_file(tmp_path / "a", seeds, [True, False])
    b = _rollout_file(tmp_path / "b", seeds, [True, True])
    with pytest.raises(ValueError, match="two different outcomes"):
        load_trials([a / "results.json", b / "results.json"])
    (tmp_path / "other.json").write_text(json.dumps({"loss": 0.1}))
    for argv, what in (([str(a), str(b)], "two different outcomes"), ([str(tmp_path / "other.json")], "other.json: not"),
                       ([str(tmp_path / "none.json")], "none.json: cannot be read"), ([str(a), "--bins", "0"], "--bins")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1 and "Traceback" not in err
