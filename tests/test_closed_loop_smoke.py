"""The closed-loop benchmark end to end, small: `posevla benchmark closed-loop` records 2 scripted demos through the
recorder, trains the tiny model for 2 steps, and runs 2 closed-loop trials through policy node, executor, driver and
the MuJoCo twin. Fails if any stage breaks (recording, training, loading, evaluation, success reporting); the
trained-for-2-steps policy is not expected to succeed. Plus the benchmark's statistics and ablation helpers."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("rclpy")

from posevla.calibration.files import HandEyeCalibration, load_calibrations  # noqa: E402
from posevla.geometry import se3  # noqa: E402
from posevla.sim.benchmark import checkpoint_training, perturbed_calibration, wilson_interval  # noqa: E402
from posevla.sim.task import HELDOUT_SEED_BASE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_a_checkpoint_trained_elsewhere_reports_its_own_training(tmp_path):
    # --skip-train into a fresh folder: the table names the checkpoint's steps, not the benchmark's defaults
    assert checkpoint_training(tmp_path) == {"demos": None, "steps": None}
    (tmp_path / "run_config.yaml").write_text("steps: 4000\nlr: 0.0003\ninit: runs/a\nconfig: models/tiny.yaml\n"
                                              "train: all\nema_decay: 0.999\n")
    assert checkpoint_training(tmp_path) == {"demos": None, "steps": 4000, "lr": 0.0003, "train_mode": "all",
                                             "config": "runs/a", "ema_decay": 0.999}


def test_wilson_interval_matches_reference_values():
    # 95 % Wilson intervals (z = 1.96) from the closed form, e.g. 8/10 -> [0.490, 0.943]
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 2)[0] == 0.0 and wilson_interval(0, 2)[1] == pytest.approx(0.658, abs=1e-3)
    assert wilson_interval(30, 30)[1] == 1.0 and wilson_interval(30, 30)[0] == pytest.approx(0.886, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_perturbed_calibration_moves_only_the_head_by_2cm_2deg(tmp_path):
    out = perturbed_calibration(REPO / "calibration", tmp_path / "perturbed")
    true, bad = load_calibrations(REPO / "calibration"), load_calibrations(out)
    assert set(true) == set(bad)
    for frame in true:
        T0, T1 = true[frame].T_parent_child, bad[frame].T_parent_child
        if true[frame].kind == "eye_to_hand":
            assert np.linalg.norm(T1[:3, 3] - T0[:3, 3]) == pytest.approx(0.02, abs=1e-9)
            assert math.degrees(float(se3.rotation_angle(T0[:3, :3].T @ T1[:3, :3]))) == pytest.approx(2.0, abs=1e-6)
        else:
            assert np.allclose(T0, T1)
    assert "perturbed" in HandEyeCalibration.load(out / "head_camera.yaml").method


def test_benchmark_refuses_bad_input_with_one_line(tmp_path):
    bad = tmp_path / "robot.yaml"
    bad.write_text("arms: {left: {host: 127.0.0.1}}\nsafety: {}\n")
    for extra, expected in ((["--robot-config", str(bad)], f"{bad}: field arms.left needs"),
                            (["--demos", "0"], "--demos must be >= 1"),
                            (["--lr", "0"], "--lr must lie in (0, 1]"),
                            (["--ema-decay", "1"], "--ema-decay must be 0 (off) or in (0, 1)"),
                            (["--flow-noise-scale", "-0.5"], "--flow-noise-scale must lie in [0, 1]"),
                            (["--first-seed", "999950"], "--first-seed must lie in [0, 999900]"),
                            (["--workers", "2"], "--cache-gb must be >= 0 and needs --workers 0"),
                            (["--task", "hand_over", "--demo-offset-m", "0.03"],
                             "--demo-offset-m applies to the pick tasks only"),
                            (["--collect-procs", "2"], "needs --collector direct above 1"),
                            (["--norm-stats", "init"], "--norm-stats init keeps the statistics of an --init checkpoint"),
                            (["--checkpoint", str(tmp_path)], f"--checkpoint {tmp_path} is not a Pose-VLA checkpoint"),
                            (["--checkpoint", str(REPO / "models" / "twin" / "pick_cube_overview"), "--skip-train"],
                             "--checkpoint evaluates a finished checkpoint: drop --skip-train"),
                            (["--init", str(tmp_path)], f"--init {tmp_path} is not a Pose-VLA checkpoint folder"),
                            (["--co-train-data", str(tmp_path)], f"--co-train-data {tmp_path} is not a folder of episodes")):
        proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "closed-loop", "--out",
                               str(tmp_path / "out"), *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_closed_loop_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "cl"
    proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "closed-loop", "--demos", "2",
                           "--steps", "2", "--batch-size", "2", "--trials", "2", "--trial-s", "8", "--no-ablations",
                           "--width", "96", "--height", "72", "--first-seed", "7",
                           "--out", str(out)], capture_output=True, text=True, timeout=880)
    log = (out / "nodes.log").read_text()[-3000:] if (out / "nodes.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log
    # recording: two complete episodes in the project's format, with the calibration and the task's instruction
    episodes = sorted((out / "data" / "pick_cube").glob("episode_*.h5"))
    assert len(episodes) == 2
    assert "seed 7 (" in proc.stdout and "seed 8 (" in proc.stdout and "seed 0 (" not in proc.stdout  # --first-seed
    for ep in episodes:
        with h5py.File(ep, "r") as h:
            meta = json.loads(h.attrs["meta"])
            assert meta["complete"] and meta["instruction"] == "pick up the red cube"
            assert "head_camera.yaml" in meta["calibration"]
            assert h["action"].shape[0] == meta["num_frames"] > 20  # a ~7 s demo at 10 Hz
            qpos = h["observations/qpos"][:]
            assert np.ptp(qpos[:, 0:6], axis=0).max() > 0.2  # the left arm moved (rad)
            assert np.ptp(qpos[:, 7:13], axis=0).max() < 0.02  # the right arm stayed home
    # training and loading: a checkpoint the policy node loaded
    assert (out / "train" / "checkpoint" / "model.safetensors").exists()
    assert "loaded" in (out / "nodes.log").read_text()
    # before each trial the orchestrator clears controller alarms, as the operator would (both arms answered)
    assert (out / "nodes.log").read_text().count("/xtrainer/clear_error: left: cleared; right: cleared") == 2
    # evaluation and success reporting
    res = json.loads((out / "results.json").read_text())
    # a randomly initialised model is trained whole (lora / expert would leave its vision tower random)
    assert res["train_mode"] == "all" and res["config"].endswith("closed_loop.yaml") and res["ema_decay"] == 0.0
    assert res["policy_engine"] == "onnxruntime"  # the default engine: the fastest on CPU (fresher observations)
    assert res["demo_offset_m"] == 0.06  # perturbed demonstrations by default (recovery data)
    assert res["flow_noise_scale"] == 0.0 and "flow_noise_scale=0.0" in (out / "nodes.log").read_text()
    assert "(--train all)" in (out / "train.log").read_text()
    assert "sample cache" in (out / "train.log").read_text()  # built samples kept in RAM by default (--cache-gb 8)
    assert res["first_seed"] == 7
    full = res["conditions"]["full"]
    assert full["trials"] == 2 and full["seeds"] == [HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + 1]
    assert full["successes"] == sum(full["success_per_seed"])
    assert full["wilson95"] == pytest.approx(list(wilson_interval(full["successes"], 2)))
    # the policy answered during the trials (on a machine loaded by other jobs it can miss one 8 s trial: its
    # observations refused while the TCP pose lagged the joint state by 0.5-1.2 s, seen beside CI + make demo)
    assert sum(full["chunks_per_trial"]) > 0, full
    assert max(full["tcp_travel_m"]) > 0.01, full  # its chunks moved the arm through executor and driver
    # the policy node's stage timings, read from its /diagnostics: capture -> chunk published covers the model call
    lat = full["policy_latency_s"][-1]
    assert 0 < lat["model_p50_s"] < lat["obs_age_p50_s"] < 5.0, lat
    assert "full" in proc.stdout and "95% Wilson interval" in proc.stdout
    assert (out / "rollouts.png").stat().st_size > 1000
    # a second round: the same demos, training continued from the first run's checkpoint (--init), one trial
    first = tmp_path / "round1_checkpoint"
    shutil.copytree(out / "train" / "checkpoint", first)
    out2 = tmp_path / "cl2"
    out2.mkdir()
    (out2 / "data").symlink_to(out / "data")
    co_train = tmp_path / "co_train"  # co-training: one more episode (a copy) trained on beside the two demos
    co_train.mkdir()
    shutil.copy(episodes[0], co_train / "episode_000000.h5")
    proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "closed-loop", "--skip-collect",
                           "--co-train-data", str(co_train), "--init", str(first), "--steps", "1", "--batch-size", "2", "--trials", "1", "--trial-s", "4",
                           "--no-ablations", "--width", "96", "--height", "72", "--out", str(out2)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert checkpoint_training(out2 / "train" / "checkpoint")["config"] == str(first)  # trained from round 1
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["config"] == str(first) and res2["conditions"]["full"]["trials"] == 1
    assert res2["co_train_episodes"] == 1 and "+ 1 co-training episodes" in proc.stdout
    assert "[train] 3 episode(s)" in (out2 / "train.log").read_text()  # the two demos and the co-training one
    # fine-tuning from a checkpoint keeps its normalisation by default (--norm-stats init)
    assert res2["norm_stats"] == "init"
    kept = json.loads((out2 / "train" / "checkpoint" / "norm_stats.json").read_text())
    assert kept == json.loads((first / "norm_stats.json").read_text())


def test_direct_collector_records_the_demos_in_parallel(tmp_path: Path) -> None:
    """--collector direct --collect-procs 2: the scripted demos of the overview task on simulated time in two
    processes, one progress line per demo, episodes numbered in seed order in <out>/data/<task>, counts in
    results.json (--collect-only: no training, no trials)."""
    out = tmp_path / "cl"
    proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "closed-loop", "--task",
                           "pick_cube_overview", "--collector", "direct", "--collect-procs", "2", "--demos", "3",
                           "--first-seed", "20", "--collect-only", "--width", "64", "--height", "48", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[collect] ") and "seed" in ln]
    assert len(lines) == 3 and {ln.split("seed ")[1].split(" ")[0] for ln in lines} == {"20", "21", "22"}
    assert "success 3/3" in lines[-1]
    res = json.loads((out / "results.json").read_text())
    assert res["collector"] == "direct" and res["demo_success"] == 3 and res["first_seed"] == 20
    episodes = sorted((out / "data" / "pick_cube_overview").glob("episode_*.h5"))
    assert len(episodes) == 3
    for ep, seed in zip(episodes, (20, 21, 22), strict=True):
        with h5py.File(ep, "r") as h:
            meta = json.loads(h.attrs["meta"])
            assert meta["sim_seed"] == seed and meta["success"] and meta["fps"] == 10.0
            assert "head_camera.yaml" in meta["calibration"]


def test_benchmark_evaluates_a_given_checkpoint_without_data(tmp_path: Path) -> None:
    """--checkpoint: the shipped twin policy through the graph (policy node, executor, driver, twin) with nothing
    collected or trained; the table names the checkpoint and its own training steps."""
    ckpt = REPO / "models" / "twin" / "pick_cube_overview"
    out = tmp_path / "cl"
    proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "closed-loop", "--checkpoint", str(ckpt),
                           "--task", "pick_cube_overview", "--trials", "1", "--trial-s", "10", "--no-ablations",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    log = (out / "nodes.log").read_text() if (out / "nodes.log").exists() else ""
    why = proc.stdout[-3000:] + proc.stderr[-3000:] + log[-3000:]
    assert proc.returncode == 0, why
    assert not (out / "data").exists() and not (out / "train").exists()  # nothing collected or trained
    res = json.loads((out / "results.json").read_text())
    assert res["checkpoint"] == str(ckpt) and res["steps"] == 3000 and res["demos"] is None
    full = res["conditions"]["full"]
    # 10 s, not 6: on a loaded machine (CI beside two evaluations) one 6 s trial got 4 chunks and no motion
    assert full["trials"] == 1 and full["chunks_per_trial"][0] > 0 and full["tcp_travel_m"][0] > 0.05, (full, why)
    assert f"checkpoint {ckpt} (3000 steps)" in proc.stdout


def test_hand_over_benchmark_smoke(tmp_path: Path) -> None:
    """The bimanual task through the same command: one scripted hand-over recorded through the graph (both arms
    driven, the right one lifting the cube), a training step, one trial with the twin on the hand-over task."""
    out = tmp_path / "ho"
    proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "closed-loop", "--task", "hand_over",
                           "--demos", "1", "--steps", "1", "--batch-size", "2", "--trials", "1", "--trial-s", "3",
                           "--no-ablations", "--width", "96", "--height", "72", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    log = (out / "nodes.log").read_text() if (out / "nodes.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log[-3000:]
    episodes = sorted((out / "data" / "hand_over").glob("episode_*.h5"))
    assert len(episodes) == 1 and not (out / "data" / "pick_cube").exists()
    with h5py.File(episodes[0], "r") as h:
        meta = json.loads(h.attrs["meta"])
        assert meta["instruction"] == "hand the red cube over to the right arm" and meta["success"] is not False
        assert h["action"].shape[0] == meta["num_frames"] > 150  # a ~19 s demo at 10 Hz
        qpos = h["observations/qpos"][:]
        assert np.ptp(qpos[:, 0:6], axis=0).max() > 0.2 and np.ptp(qpos[:, 7:13], axis=0).max() > 0.2  # both arms
        assert qpos[-1, 13] < 0.7 and qpos[-1, 6] > 0.9  # at the end the right gripper holds the cube, the left is open
    twin_runs = [ln for ln in log.splitlines() if ln.startswith("=== mujoco_sim:")]
    assert len(twin_runs) == 2 and all('task:="hand_over"' in ln for ln in twin_runs), twin_runs  # both graphs
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "hand_over" and res["trial_s"] == 3.0 and res["demo_success"] == 1
    assert res["demo_offset_m"] == 0.0  # the perturbed approach is the pick's
    assert res["config"].endswith("closed_loop_bimanual.yaml")  # the task's default model: all three views
    assert res["conditions"]["full"]["trials"] == 1
