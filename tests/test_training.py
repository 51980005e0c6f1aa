"""Offline training: episode -> samples with the shared observation code, single-process training that
saves a loadable checkpoint with fitted normalisation, and torchrun DDP on two CPU processes."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from posevla.calibration.files import HandEyeCalibration
from posevla.cli import main
from posevla.dataset.reader import EpisodeReader
from posevla.model.config import PoseVLAConfig
from posevla.model.io_transforms import XTrainerInputs
from posevla.model.policy import PoseVLAPolicy
from posevla.tools.synthetic_episode import write_demo_episode
from posevla.training.episode_dataset import EpisodeChunkDataset, find_episodes
from posevla.training.train import lr_at

REPO = Path(__file__).resolve().parents[1]
CFG = PoseVLAConfig.from_dict(yaml.safe_load((REPO / "models" / "tiny.yaml").read_text()))


@pytest.fixture(scope="module")
def episode(tmp_path_factory) -> Path:
    return write_demo_episode(tmp_path_factory.mktemp("train") / "data", seconds=2.0, fps=15.0, width=160, height=120)


def test_frames_with_an_unmeasured_gripper_are_not_sampled(episode: Path, tmp_path: Path) -> None:
    """A gripper bus dropout records NaN openings (the driver publishes no made-up value): those frames start no
    sample, the chunk targets interpolate the gripper over the frames that have one, and an episode without any
    gripper value is refused naming it (before: every sample there raised, or trained on NaN targets)."""
    import shutil

    import h5py

    gaps = shutil.copy(episode, tmp_path / "episode_000000.h5")
    dead = shutil.copy(episode, tmp_path / "episode_000001.h5")
    with h5py.File(gaps, "r+") as h:
        qpos, action = h["observations/qpos"][:], h["action"][:]
        qpos[[3, 4, 5, 20], 6] = np.nan  # left gripper unmeasured for 3 + 1 frames
        action[[4, 20], 6] = np.nan  # and not commanded in two of them
        h["observations/qpos"][...], h["action"][...] = qpos, action
    data = EpisodeChunkDataset([gaps], CFG)
    try:
        assert len(data) == 30 - 4 and data.unmeasured_gripper_samples == 4
        assert [t for _, t in data.index] == [t for t in range(30) if t not in (3, 4, 5, 20)]
        for i in (0, 2, 3, 17):  # frames 0, 2, 6 and 19: the neighbours of the gaps
            sample = data[i]
            assert np.all(np.isfinite(sample.actions)), (i, sample.actions)
        states, actions = data.state_and_action_rows()
        assert np.all(np.isfinite(states)) and np.all(np.isfinite(actions))
    finally:
        data.close()
    with h5py.File(dead, "r+") as h:
        qpos, action = h["observations/qpos"][:], h["action"][:]
        qpos[:, 6], action[:, 6] = np.nan, np.nan
        h["observations/qpos"][...], h["action"][...] = qpos, action
    with pytest.raises(ValueError, match="episode_000001.h5: left gripper: no frame has a finite gripper"):
        EpisodeChunkDataset([dead], CFG)


def test_samples_are_built_with_the_episode_calibration(episode: Path) -> None:
    data = EpisodeChunkDataset([episode], CFG)
    assert len(data) == 30 and len(EpisodeChunkDataset([episode], CFG, stride=4)) == 8
    inputs = XTrainerInputs(CFG)
    with EpisodeReader(episode) as ep:
        head = HandEyeCalibration.from_dict(yaml.safe_load(ep.meta["calibration"]["head_camera.yaml"]["yaml"]))
        tcp_last = ep.array("observations/tcp_pose/left")[-1]
    for i in (0, 10, 29):
        s = data[i]
        assert s.actions.shape == (CFG.chunk_length, CFG.action_dim) and np.all(np.isfinite(s.actions))
        T_base_ref = inputs.reference_pose(s.observation)
        np.testing.assert_allclose(T_base_ref, head.T_parent_child, atol=1e-12)  # the calibration of the episode
        state = inputs.state_vector(s.observation.state, T_base_ref)
        np.testing.assert_allclose(s.actions[0], state, atol=2e-3)  # the chunk starts where the arm is
        assert s.observation.views["head"].rgb.shape == (CFG.image_size, CFG.image_size, 3)
    # past the end of the episode the chunk holds the last recorded pose
    last = data[29].actions[-1, :3]
    T_ref_base = np.linalg.inv(head.T_parent_child)
    np.testing.assert_allclose(last, (T_ref_base @ np.r_[tcp_last[:3], 1.0])[:3], atol=1e-9)
    data.close()


def test_gripper_targets_are_the_recorded_commands(episode: Path) -> None:
    """The chunk's gripper is what the follower was told (action), not where its fingers stopped (qpos): closing
    on a cube the fingers stop at its width while the command says closed."""
    data = EpisodeChunkDataset([episode], CFG)
    with EpisodeReader(episode) as ep:
        cmd, measured = ep.array("action")[:, 6], ep.array("observations/qpos")[:, 6]
    differs = [t for t in range(len(data)) if abs(cmd[t] - measured[t]) > 0.05]
    assert differs, "the synthetic episode should close its gripper during the take"
    left_gripper = CFG.arms.index("left") * 10 + 9
    for t in differs[:3]:
        s = data[t]  # the target is sampled at the head camera's stamp, the arrays at the robot's: a few ms apart
        assert s.actions[0, left_gripper] == pytest.approx(cmd[t], abs=0.01)
        assert abs(s.actions[0, left_gripper] - measured[t]) > 0.04
        assert s.observation.state.arms["left"].gripper == pytest.approx(measured[t], abs=1e-6)  # the state: measured
    data.close()


def test_samples_decode_only_the_views_the_model_reads(episode: Path, monkeypatch) -> None:
    """A model without the right wrist view never decodes that camera (a third of the decoding per sample)."""
    cfg = PoseVLAConfig.from_dict({**yaml.safe_load((REPO / "models" / "tiny.yaml").read_text()),
                                   "views": ["head", "left_wrist"]})
    decoded: list[str] = []
    real_rgb = EpisodeReader.rgb
    monkeypatch.setattr(EpisodeReader, "rgb", lambda self, cam, i: decoded.append(cam) or real_rgb(self, cam, i))
    data = EpisodeChunkDataset([episode], cfg)
    s = data[5]
    assert sorted(s.observation.views) == ["head", "left_wrist"]
    assert sorted(decoded) == ["head", "left_wrist"]
    data.close()


def test_learning_rate_schedule() -> None:
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0) == pytest.approx(0.1, abs=1e-3)


def test_train_saves_a_checkpoint_the_policy_loads(episode: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(episode.parent), "--steps", "12", "--batch-size", "3", "--warmup", "3",
                 "--lr", "1e-3", "--out", str(out), "--save-every", "6"]) == 0
    assert "1 episode(s), 30 samples, 1 process(es) on cpu" in capsys.readouterr().out
    with open(out / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert (out / "loss.png").stat().st_size > 5000 and (out / "checkpoint_6").is_dir()
    trained = PoseVLAPolicy.from_pretrained(out / "checkpoint", device="cpu")
    fresh = PoseVLAPolicy.from_config(REPO / "models" / "tiny.yaml", seed=0, device="cpu")
    changed = [n for (n, a), (_, b) in zip(trained.model.named_parameters(), fresh.model.named_parameters())
               if not np.array_equal(a.detach().numpy(), b.detach().numpy())]
    assert len(changed) > 10  # training moved the weights
    data = EpisodeChunkDataset([episode], CFG)
    states, _ = data.state_and_action_rows()
    np.testing.assert_allclose(trained.norm.state_mean, states.mean(0), atol=1e-6)  # fitted on the data
    chunk = trained.predict(data[5].observation, noise_seed=0)
    assert chunk.frame_id == "head_camera_color_optical_frame" and chunk.arms["left"].T.shape == (50, 4, 4)
    assert np.all(np.isfinite(chunk.arms["left"].T))
    data.close()


def test_bad_training_input_is_named(tmp_path: Path, episode: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "nothing: no such episode or folder" in capsys.readouterr().err
    assert main(["train", "--data", str(episode), "--batch-size", "64", "--out", str(tmp_path / "r")]) == 2
    assert "30 samples in 1 episode(s), fewer than --batch-size 64" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no episodes under"):
        find_episodes([tmp_path])


def test_episodes_marked_failed_are_left_out_of_folders(tmp_path: Path, episode: Path, caplog) -> None:
    import json
    import shutil

    import h5py

    task = tmp_path / "pick"
    task.mkdir()
    good, failed = task / "episode_000000.h5", task / "episode_000001.h5"
    shutil.copy(episode, good)
    shutil.copy(episode, failed)
    with h5py.File(failed, "r+") as h:  # what /recorder/mark_failure writes
        meta = json.loads(h.attrs["meta"])
        meta["success"] = False
        h.attrs["meta"] = json.dumps(meta)
    assert find_episodes([task]) == [good]
    assert "left out 1 episode(s) marked failed" in caplog.text
    assert find_episodes([task], include_failed=True) == [good, failed]
    assert find_episodes([failed]) == [failed]  # named as a file: used
    good.unlink()
    with pytest.raises(ValueError, match=r"no episodes under .* \(1 marked failed\)"):
        find_episodes([task])


@pytest.mark.slow
def test_torchrun_ddp_two_processes(episode: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "posevla.training.train", "--data", str(episode), "--steps", "5", "--batch-size", "2",
           "--warmup", "1", "--save-every", "4", "--workers", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    assert "2 ranks agree on the weights" in proc.stdout, proc.stdout
    assert PoseVLAPolicy.from_pretrained(out / "checkpoint", device="cpu").config.chunk_length == 50
    state = torch.load(out / "resume" / "step_00000004.pt", weights_only=False)
    assert len(state["rng"]) == 2  # both ranks' random streams
    # resuming from step 4 (both ranks) redoes step 5 exactly
    first = load_file(str(out / "checkpoint" / "model.safetensors"))
    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "at step 4" in proc.stdout
    again = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)
