"""Stage-2 targets from a LeRobot v3.0 dataset: a generated episode exported with the project's LeRobot export,
read back as a `format: lerobot` mixture source, gives the same future TCP poses in every camera as the episode
itself, with the calibration and camera parameters the dataset carries (or a named calibration folder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from posevla.dataset.lerobot_io import export_lerobot
from posevla.model.config import PoseVLAConfig
from posevla.model.pose_tokens import PoseTokenizer
from posevla.pretrain.mixture import Mixture, open_source, read_mixture
from posevla.pretrain.records import ViewMaker
from posevla.pretrain.targets import parse_trajectory_answer
from posevla.pretrain.trajectory import EpisodeTrajectories
from posevla.tools.synthetic_episode import write_demo_episode

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lerobot")
    episode = write_demo_episode(root / "src", seconds=1.0, fps=10.0, width=64, height=48)
    return episode, export_lerobot([episode], root / "dataset")


def _source(tmp: Path, dataset: Path, **extra) -> Path:
    path = tmp / "mix.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "pub", "format": "lerobot", "root": str(dataset),
                                                 "cache": str(tmp / "cache"), "horizon": 4, "dt_s": 0.1, **extra}]}))
    return path


def test_lerobot_source_gives_the_episode_targets(exported, tmp_path: Path) -> None:
    episode, dataset = exported
    cfg = PoseVLAConfig.from_yaml(REPO / "models" / "tiny.yaml")
    [spec] = read_mixture(_source(tmp_path, dataset))
    got = open_source(spec, cfg.arms)
    ref = EpisodeTrajectories([episode], horizon=4, dt_s=0.1)
    assert len(got) == len(ref) == 10 * 3 and got.index == ref.index
    tok = PoseTokenizer(256).with_default_edges()  # uniform bins: 7.8 mm in x/y, no duplicated quantile edges
    views = ViewMaker(cfg.image_size)
    flips = tokens = 0
    for i in range(len(ref)):
        a, b = ref.sample(i, cfg, tok, views), got.sample(i, cfg, tok, views)
        va, vb = a.sample.observation.views["head"], b.sample.observation.views["head"]
        np.testing.assert_array_equal(vb.raymap, va.raymap)  # the dataset's camera parameters, not an assumed pinhole
        np.testing.assert_allclose(vb.intrinsics.K, va.intrinsics.K, atol=0)
        e, t, cam = ref.index[i]
        stamp = int(ref._reader(e).camera_stamps(cam)[t])
        assert int(got._reader(e).camera_stamps(cam)[t]) == stamp  # original stamps survive the round trip
        truth, mine = ref.future_poses(e, cam, stamp), got.future_poses(e, cam, stamp)
        for arm in truth:  # TCP poses went through float32 parquet columns: ~1e-8 m
            np.testing.assert_allclose(mine[arm], truth[arm], atol=2e-6)
        # the same tokens, except where a value lies within float32 rounding of a bin edge: then the next bin
        da, db = parse_trajectory_answer(a.sample.pose_text, tok), parse_trajectory_answer(b.sample.pose_text, tok)
        for arm in da:
            np.testing.assert_allclose(db[arm][:, :3, 3], da[arm][:, :3, 3], atol=2.0 / 256 + 1e-9)
        flips += sum(x != y for x, y in zip(a.sample.pose_text.split(), b.sample.pose_text.split()))
        tokens += len(a.sample.pose_text.split())
        assert b.sample.observation.instruction == a.sample.observation.instruction
    assert flips <= 0.02 * tokens, (flips, tokens)
    ref.close()
    got.close()
    marker = json.loads((tmp_path / "cache" / "converted.json").read_text())
    assert marker["episodes"] == "all" and marker["dataset"] == str(dataset.resolve())
    # second use: the cache is reused, and a mixture streams samples from it
    mix = Mixture(read_mixture(tmp_path / "mix.yaml"), cfg, tok, seed=0, buffer=2)
    s = next(mix)
    assert s.sample.observation.instruction.startswith("trajectory pick up the red cube")
    assert set(parse_trajectory_answer(s.sample.pose_text, tok)) == {"left", "right"}
    mix.close()


def test_lerobot_source_calibration_and_refusals(exported, tmp_path: Path) -> None:
    episode, dataset = exported
    import shutil

    copy = tmp_path / "nocalib"
    shutil.copytree(dataset, copy)
    meta_path = copy / "meta" / "posevla.json"
    meta = json.loads(meta_path.read_text())
    for e in meta["episodes"].values():
        e.pop("calibration", None)
    meta_path.write_text(json.dumps(meta))
    [spec] = read_mixture(_source(tmp_path, copy))
    with pytest.raises(ValueError, match="has no calibration .* no `calibration` folder"):
        open_source(spec)
    [spec] = read_mixture(_source(tmp_path, copy, calibration=str(REPO / "calibration")))
    got = open_source(spec)  # the repository's calibration, which the demo episode recorded too
    ref = EpisodeTrajectories([episode], horizon=4, dt_s=0.1)
    e, t, cam = ref.index[5]
    stamp = int(ref._reader(e).camera_stamps(cam)[t])
    for arm, T in ref.future_poses(e, cam, stamp).items():
        np.testing.assert_allclose(got.future_poses(e, cam, stamp)[arm], T, atol=2e-6)
    got.close()
    ref.close()
    # the cache belongs to the other dataset now
    [spec] = read_mixture(_source(tmp_path, dataset))
    with pytest.raises(ValueError, match="cache .* was converted from"):
        open_source(spec)
    # joint angles only: refused, naming the missing feature
    info_path = copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["observation.tcp_pose.left"]
    info_path.write_text(json.dumps(info))
    [spec] = read_mixture(_source(tmp_path / "x", copy) if (tmp_path / "x").mkdir() is None else None)
    with pytest.raises(ValueError, match="no feature observation.tcp_pose.left"):
        open_source(spec)


@pytest.mark.parametrize("entry, message", [
    ({"episodes": "all"}, "sources[0].episodes='all' must be a list"),
    ({"assume_intrinsics": "yes"}, "assume_intrinsics='yes' must be true or false"),
    ({"horizon": 0}, "horizon=0 must be an integer >= 1"),
    ({"bogus": 1}, "unknown field(s) ['bogus']"),
])
def test_lerobot_source_fields_are_checked(tmp_path: Path, entry: dict, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"format": "lerobot", "root": "d", "cache": "c", **entry}]}))
    with pytest.raises(ValueError) as err:
        read_mixture(path)
    assert message in str(err.value)
