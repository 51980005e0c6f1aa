"""Training runs that survive SIGKILL, a seeded data order independent of the worker count, evaluation on held-out
episodes (errors in mm / deg per horizon step, camera frame and base_link), LoRA export, the memory plan."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from posevla.cli import main
from posevla.geometry import se3
from posevla.model.config import PoseVLAConfig
from posevla.model.io_transforms import pose_to_vector
from posevla.model.policy import PoseVLAPolicy
from posevla.tools.synthetic_episode import write_demo_episode
from posevla.training.episode_dataset import EpisodeChunkDataset, split_episodes
from posevla.training.evaluate import chunk_errors
from posevla.training.loader import BatchBuilder, EpochBatchOrder, make_loader
from posevla.training.options import apply_train_mode, export_state_dict

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=28, patch_size=14, chunk_length=8, flow_steps=4, max_prompt_tokens=24,
            vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 16},
            expert={"hidden_size": 32, "intermediate_size": 128})
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# Runs train.main with _after_step replaced by a SIGKILL of its own process after step argv[1].
KILLER = ("import os, signal, sys; import posevla.training.train as t; k = int(sys.argv[1]); "
          "t._after_step = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == k else None; "
          "sys.exit(t.main(sys.argv[2:]))")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "data"
    for seed in range(3):
        write_demo_episode(root, seconds=1.0, fps=15.0, width=96, height=72, cube_xy=(0.3 + 0.03 * seed, 0.1),
                           seed=seed)
    return root / "pick_red_cube"


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny28.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train_cmd(episodes: Path, cfg: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return ["--data", str(episodes), "--config", str(cfg), "--steps", "10", "--batch-size", "2", "--warmup", "2",
            "--lr", "1e-3", "--save-every", "4", "--seed", "3", "--val-episodes", "0", "--train", "all",
            "--workers", str(workers), "--out", str(out), *extra]


def test_sigkilled_run_resumes_to_the_same_weights(episodes: Path, tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLER, "6"] + _train_cmd(episodes, tiny_yaml, out, 2),
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL after step 6: steps 5 and 6 are lost
    assert not (out / "checkpoint").exists() and (out / "resume" / "step_00000004.pt").is_file()
    # an argument that changes the run is refused by name (the worker count may change)
    assert main(["train", *_train_cmd(episodes, tiny_yaml, out, 0, "--resume", "--lr", "2e-3")]) == 2
    assert "--resume: --lr is 0.002 but the run in" in capsys.readouterr().err
    # resumed in this process without workers; the reference runs uninterrupted, also here
    assert main(["train", *_train_cmd(episodes, tiny_yaml, out, 0, "--resume")]) == 0
    assert "at step 4" in capsys.readouterr().out
    assert main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "ref", 0)]) == 0
    a = load_file(str(tmp_path / "ref" / "checkpoint" / "model.safetensors"))
    b = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-identical weights
    init = PoseVLAPolicy.from_config(tiny_yaml, seed=3, device="cpu").model.state_dict()
    assert sum(not torch.equal(init[n], a[n]) for n in a) > 20  # and training did change them
    with open(tmp_path / "ref" / "train_log.csv") as f:
        ref_loss = [float(r["loss"]) for r in csv.DictReader(f)]
    with open(out / "train_log.csv") as f:
        res_loss = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(res_loss) == 10 and res_loss == ref_loss


def test_batch_order_is_seeded_resumable_and_worker_independent(episodes: Path) -> None:
    cfg = PoseVLAConfig(**TINY)
    order = EpochBatchOrder(np.arange(30), 4, seed=5)
    assert order.per_epoch == 7
    stream = [order.batch(b) for b in range(16)]
    assert sorted(sum(stream[:7], [])) == sorted(set(sum(stream[:7], [])))  # an epoch has no repeats
    assert stream[:7] != stream[7:14]  # each epoch is reshuffled
    assert list(EpochBatchOrder(np.arange(30), 4, seed=5, start=9, count=5)) == stream[9:14]
    assert stream != [EpochBatchOrder(np.arange(30), 4, seed=6).batch(b) for b in range(16)]
    policy = PoseVLAPolicy.from_config(cfg, device="cpu")
    data = EpisodeChunkDataset(sorted(episodes.glob("*.h5")), cfg)
    builder = BatchBuilder(data, policy.batcher)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(builder, EpochBatchOrder(np.arange(len(data)), 3, seed=1, start=2, count=3), workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 3
    for x, y in zip(batches[0], batches[2]):
        assert x.keys() == y.keys() and float(y["build_s"]) > 0
        for k in x:
            if k != "build_s":
                assert torch.equal(x[k], y[k]), k
    data.close()


def test_split_is_by_episode() -> None:
    eps = [Path(f"e{i}.h5") for i in range(10)]
    train, held = split_episodes(eps, 2)
    assert held == [Path("e4.h5"), Path("e9.h5")] and len(train) == 8 and not set(train) & set(held)
    assert split_episodes(eps, 0) == (eps, [])
    with pytest.raises(ValueError, match="--val-episodes 10"):
        split_episodes(eps, 10)


def test_chunk_errors_in_mm_and_degrees_in_both_frames() -> None:
    cfg = PoseVLAConfig(**TINY)
    n = cfg.chunk_length
    T = se3.T_from_xyz_rpy(np.c_[np.linspace(0, 0.1, n), np.zeros(n), np.full(n, 0.8)], np.tile([0.1, 0.2, 0.3], (n, 1)))
    true = np.concatenate([pose_to_vector(T, np.full(n, 0.2)), pose_to_vector(T, np.full(n, 0.9))], -1)[None]
    T_err = T.copy()
    T_err[:, :3, 3] += [0.003, 0.0, 0.004]  # 3 mm along camera x, 4 mm along z: 5 mm
    T_err[:, :3, :3] = T[:, :3, :3] @ se3.matrix_from_euler(np.array([0.0, 0.0, np.radians(2.0)]))
    pred = np.concatenate([pose_to_vector(T_err, np.full(n, 0.25)), pose_to_vector(T, np.full(n, 0.9))], -1)[None]
    R_base_ref = se3.matrix_from_euler(np.array([np.pi / 2, 0.0, 0.0]))[None]  # camera x -> base x, z -> base -y
    e = chunk_errors(pred, true, R_base_ref, cfg)
    np.testing.assert_allclose(e["left"]["pos_mm"], 5.0, atol=1e-9)
    np.testing.assert_allclose(e["left"]["cam_mm"][0], np.tile([3.0, 0.0, 4.0], (n, 1)), atol=1e-9)
    np.testing.assert_allclose(e["left"]["base_mm"][0], np.tile([3.0, 4.0, 0.0], (n, 1)), atol=1e-9)
    np.testing.assert_allclose(e["left"]["rot_deg"], 2.0, atol=1e-6)
    np.testing.assert_allclose(e["left"]["gripper"], 0.05, atol=1e-12)
    np.testing.assert_allclose(e["right"]["pos_mm"], 0.0, atol=1e-9)
    np.testing.assert_allclose(e["right"]["rot_deg"], 0.0, atol=1e-5)


def test_held_out_evaluation_plots_and_run_config(episodes: Path, tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(episodes), "--config", str(tiny_yaml), "--steps", "4", "--batch-size", "2",
                 "--warmup", "1", "--val-episodes", "1", "--eval-every", "2", "--eval-samples", "6", "--workers", "0",
                 "--precision", "bf16", "--train", "lora", "--lora-rank", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 episode(s), 30 samples, 1 process(es) on cpu (2 training episode(s), 1 held out)" in text
    assert "step 2 held-out 6 samples" in text and "--train lora" in text and "data " in text and "model " in text
    result = json.loads((out / "eval.json").read_text())
    assert result["step"] == 4 and result["samples"] == 6
    for arm in ("left", "right"):
        r = result["arms"][arm]
        assert len(r["pos_mm"]) == len(r["rot_deg"]) == 8 and np.shape(r["base_xyz_mm"]) == (8, 3)
        assert all(np.isfinite(r["pos_mm"])) and r["mean_pos_mm"] > 0
        # the norm of the per-axis errors in either frame is at least the mean norm's lower bound
        assert np.all(np.linalg.norm(r["camera_xyz_mm"], axis=1) <= np.asarray(r["pos_mm"]) + 1e-6)
    assert (out / "eval_errors.png").stat().st_size > 5000 and (out / "loss.png").stat().st_size > 5000
    saved = yaml.safe_load((out / "checkpoint" / "run_config.yaml").read_text())
    assert saved["train"] == "lora" and saved["lora_rank"] == 2 and saved["steps"] == 4
    loaded = PoseVLAPolicy.from_pretrained(out / "checkpoint", device="cpu")  # LoRA merged: the plain layout
    assert not any("lora" in n for n, _ in loaded.model.named_parameters())


def test_lora_export_merges_adapters_exactly() -> None:
    pol = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=1, device="cpu", dtype=torch.float32)
    apply_train_mode(pol.model, "lora", lora_rank=4)
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # adapters that do something
    obs = pol.synthetic_observation("pick up the red cup")
    with_adapters = pol.predict(obs, noise_seed=2).arms["left"].T
    state = export_state_dict(pol.model)
    fresh = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=9, device="cpu")
    assert set(state) == set(fresh.model.state_dict())
    fresh.model.load_state_dict(state)
    np.testing.assert_allclose(fresh.predict(obs, noise_seed=2).arms["left"].T, with_adapters, atol=1e-5)
    base = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=1, device="cpu")
    assert np.abs(base.predict(obs, noise_seed=2).arms["left"].T - with_adapters).max() > 1e-3


def test_memory_plan_at_full_size(capsys) -> None:
    assert main(["train", "--plan", "--config", str(REPO / "models" / "posevla_3b.yaml"), "--device", "cpu"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    gib = {mode: float(rows[mode][-2]) for mode in ("all", "no-vision", "lora", "expert")}
    assert gib["all"] > 40 and gib["lora"] < 16 and gib["expert"] < 16  # what a 24 GB card can hold
    assert 3000 < float(rows["all"][2]) < 3500  # M parameters with the real 257k vocabulary


def test_auto_trains_a_random_model_whole_and_adapts_a_pretrained_one() -> None:
    from posevla.training.options import peft_available, resolve_train_mode

    assert resolve_train_mode("auto", pretrained=False) == "all"  # lora would leave the random vision tower random
    assert resolve_train_mode("auto", pretrained=True) == ("lora" if peft_available() else "expert")
    assert resolve_train_mode("expert", pretrained=False) == "expert"  # an explicit choice is kept


class _Stop(BaseException):
    """Ends a training run inside the test process after a chosen step (like a kill, without a subprocess)."""


def test_ema_weights_are_saved_evaluated_and_resumed(episodes: Path, tiny_yaml: Path, tmp_path: Path,
                                                     monkeypatch) -> None:
    import posevla.training.train as train_mod

    ema = ["--ema-decay", "0.8"]
    assert main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "ref", 0, *ema)]) == 0
    state = torch.load(tmp_path / "ref" / "resume" / "step_00000008.pt", map_location="cpu", weights_only=False)
    saved = load_file(str(tmp_path / "ref" / "checkpoint_8" / "model.safetensors"))
    assert state["ema"].keys() == state["model"].keys()
    # the step-8 checkpoint holds the average, not the raw weights the optimizer keeps stepping
    assert all(torch.equal(saved[n], state["ema"][n]) for n in state["ema"])
    differ = [n for n in state["ema"] if not torch.allclose(state["ema"][n], state["model"][n], atol=1e-6)]
    assert len(differ) > 20
    # interrupted after step 6 and resumed from the step-4 state: the same average as the uninterrupted run
    def stop_after_6(step: int) -> None:
        if step == 6:
            raise _Stop
    monkeypatch.setattr(train_mod, "_after_step", stop_after_6)
    with pytest.raises(_Stop):
        main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "cut", 0, *ema)])
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    assert main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "cut", 0, *ema, "--resume")]) == 0
    a = load_file(str(tmp_path / "ref" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    # a decay outside (0, 1) is refused by name
    assert main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "bad", 0, "--ema-decay", "1.0")]) == 2


def test_ema_follows_the_warmed_up_recurrence() -> None:
    from posevla.training.ema import ParamEMA, warmed_decay

    model = torch.nn.Linear(1, 1, bias=False)
    weights = [2.0, 4.0, -1.0, 3.0, 3.0]
    with torch.no_grad():
        model.weight.fill_(weights[0])
    ema = ParamEMA(model, decay=0.5)
    expected = weights[0]
    for step, w in enumerate(weights[1:], start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        d = ema.update(step)
        expected = d * expected + (1 - d) * w
        assert d == pytest.approx(min(0.5, (1 + step) / (10 + step)))
    # by hand: d = 2/11, 3/12, 4/13, 5/14 (all below 0.5)
    hand = 2.0
    for d, w in zip((2 / 11, 3 / 12, 4 / 13, 5 / 14), weights[1:]):
        hand = d * hand + (1 - d) * w
    assert float(ema.shadow["weight"]) == pytest.approx(hand, abs=1e-6) == pytest.approx(expected, abs=1e-6)
    assert warmed_decay(0.999, 10_000) == 0.999
    with ema.swapped_in():
        assert float(model.weight.detach()) == pytest.approx(hand, abs=1e-6)
    assert float(model.weight.detach()) == 3.0  # the raw weights come back
    with pytest.raises(ValueError, match="--ema-decay"):
        ParamEMA(model, 1.0)


def test_fine_tuning_can_keep_the_checkpoints_normalisation(episodes: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    """--norm-stats init keeps the --init checkpoint's statistics bit for bit; the default refits them on --data."""
    assert main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "base", 0)]) == 0
    base = json.loads((tmp_path / "base" / "checkpoint" / "norm_stats.json").read_text())
    one = sorted(episodes.glob("*.h5"))[:1]  # a different data set: its own statistics differ from the base's

    def fine_tune(out: str, *extra: str) -> dict:
        args = ["train", "--data", str(one[0]), "--init", str(tmp_path / "base" / "checkpoint"), "--steps", "2",
                "--batch-size", "2", "--warmup", "1", "--val-episodes", "0", "--train", "all", "--workers", "0",
                "--out", str(tmp_path / out), *extra]
        assert main(args) == 0
        return json.loads((tmp_path / out / "checkpoint" / "norm_stats.json").read_text())

    assert fine_tune("kept", "--norm-stats", "init") == base
    refit = fine_tune("refit")
    assert not np.allclose(refit["state_mean"], base["state_mean"])
    # without a checkpoint there are no statistics to keep: refused by name
    assert main(["train", *_train_cmd(episodes, tiny_yaml, tmp_path / "bad", 0, "--norm-stats", "init")]) == 2
