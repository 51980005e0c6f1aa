"""Deliberate approach errors of perturbed twin demonstrations become segments the trainer leaves out."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from posevla.sim.demo_segments import approach_error_segment
from posevla.sim.task import ScriptTiming


def _demo(offset_xy_m: tuple[float, float], fps: float = 10.0, still_s: float = 0.5):
    """TCP path like the scripted pick: still, approach (2.4 s) to above the cube (+ offset), correct (1 s),
    descend, close; the gripper command falls to 0 at the grasp."""
    timing = ScriptTiming()
    t = np.arange(0, still_s + timing.approach + timing.correct + timing.descend + 2.0, 1 / fps)
    start, grasp = np.array([0.3, 0.1, 0.3]), np.array([0.5, 0.3, 0.06])
    above_off = np.r_[grasp[:2] + offset_xy_m, 0.16]
    p = np.empty((len(t), 3))
    cmd = np.ones(len(t))
    for i, ti in enumerate(t):
        s = ti - still_s
        if s <= 0:
            p[i] = start
        elif s <= timing.approach:
            p[i] = start + (above_off - start) * s / timing.approach
        elif s <= timing.approach + timing.correct:
            p[i] = above_off + (np.r_[grasp[:2], 0.16] - above_off) * (s - timing.approach) / timing.correct
        else:
            p[i] = np.r_[grasp[:2], max(0.06, 0.16 - 0.1 * (s - timing.approach - timing.correct) / timing.descend)]
            cmd[i] = 0.0 if s > timing.approach + timing.correct + timing.descend else 1.0
    return p, (t * 1e9).astype(np.int64) + 10**18, cmd


def test_perturbed_approach_is_found_and_straight_is_not() -> None:
    p, stamps, cmd = _demo((0.03, -0.02))
    seg = approach_error_segment(p, stamps, cmd)
    assert seg is not None and seg[0] == 0.0
    assert seg[1] == pytest.approx(0.5 + 0.1 + ScriptTiming().approach, abs=0.11)  # first move (one frame) + approach
    p, stamps, cmd = _demo((0.0, 0.0))
    assert approach_error_segment(p, stamps, cmd) is None
    p, stamps, cmd = _demo((0.003, 0.0))  # 3 mm: below the 5 mm threshold
    assert approach_error_segment(p, stamps, cmd) is None
    assert approach_error_segment(p, stamps, np.ones(len(p))) is None  # never closes: not a pick


def test_trainer_leaves_out_sample_starts_in_the_segments(tmp_path: Path) -> None:
    from posevla.cli import main
    from posevla.model.config import PoseVLAConfig
    from posevla.tools.synthetic_episode import write_demo_episode
    from posevla.training.episode_dataset import EpisodeChunkDataset, read_exclude_segments

    repo = Path(__file__).resolve().parents[1]
    cfg = PoseVLAConfig.from_dict(yaml.safe_load((repo / "models" / "tiny.yaml").read_text()))
    ep = write_demo_episode(tmp_path / "data", seconds=2.0, fps=15.0, width=160, height=120)
    full = EpisodeChunkDataset([ep], cfg)
    seg_file = tmp_path / "exclude.yaml"
    seg_file.write_text(yaml.safe_dump({str(ep): [[0.0, 1.0]]}))
    cut = EpisodeChunkDataset([ep], cfg, exclude_s=read_exclude_segments(seg_file, [ep]))
    assert len(full) == 30 and cut.excluded_samples == len(full) - len(cut)
    assert 13 <= cut.excluded_samples <= 16  # ~1 s of 15 fps frames
    assert [t for _, t in cut.index] == [t for _, t in full.index][cut.excluded_samples:]  # the first second
    full.close()
    cut.close()
    for content, message in (({str(tmp_path / "other.h5"): [[0, 1]]}, "is not one of the training episodes"),
                             ({str(ep): [[1.0, 0.5]]}, "every interval needs 0 <= t0 < t1"),
                             ({str(ep): "soon"}, "expected [[t0_s, t1_s], ...]"),
                             ([1, 2], "expected a mapping")):
        seg_file.write_text(yaml.safe_dump(content))
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            read_exclude_segments(seg_file, [ep])
    assert main(["train", "--data", str(ep), "--exclude-segments", str(seg_file), "--out", str(tmp_path / "r")]) == 2
