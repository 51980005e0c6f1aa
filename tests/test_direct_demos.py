"""Scripted demonstrations recorded directly on the twin (`posevla.sim.direct_demos`): the recorded commands are the
scripted paths the graph's collection plays (perturbed approaches included), the cube is lifted, the frames are
1/fps apart with every twin camera, an interrupt (SIGINT / SIGTERM) ends the process promptly with the finished
episodes complete, and bad input exits 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from posevla.dataset.reader import EpisodeReader  # noqa: E402
from posevla.paths import calibration_dir, default_path  # noqa: E402
from posevla.sim.direct_demos import main, record_demos  # noqa: E402
from posevla.sim.task import ApproachOffset, PickLiftTask  # noqa: E402
from posevla.sim.tasks import scripted_demo  # noqa: E402
from posevla.sim.twin import TwinSpec  # noqa: E402

ROBOT = default_path("config", "xtrainer_sim_robot.yaml")


def test_direct_demos_record_the_scripted_paths_and_lift(tmp_path: Path) -> None:
    seeds = [3, 4]
    assert any(not ApproachOffset.for_seed(s, 0.06).is_zero for s in seeds)  # one perturbed approach at least
    info = record_demos(tmp_path, len(seeds), seeds[0], demo_offset_m=0.06, width=64, height=48, log=lambda m: None)
    assert info["success"] == 2
    files = sorted((tmp_path / "pick_cube").glob("episode_*.h5"))
    assert len(files) == 2
    spec = TwinSpec.from_files(ROBOT, calibration_dir())
    task = PickLiftTask()
    for seed, path in zip(seeds, files, strict=True):
        path_ref = scripted_demo(task, task.sample(seed), spec, 0.06)["left"]
        with EpisodeReader(path) as ep:
            assert ep.meta["complete"] and ep.meta["success"]
            assert set(ep.camera_names) == {"head", "left_wrist", "right_wrist"}
            assert ep.meta["calibration"]  # the calibration files travel with the episode
            n = ep.num_frames
            assert n == int(np.floor((path_ref.duration_s + 0.5) / 0.1 + 1e-9)) + 1
            stamps = ep.array("stamps/frame")
            assert np.all(np.diff(stamps) == 100_000_000)
            action = ep.array("action")
            for k in (0, n // 3, 2 * n // 3, n - 1):  # the command at frame k is the path at k x 0.1 s
                q, g = path_ref.at(k * 0.1)
                np.testing.assert_allclose(action[k, :6], q, atol=2e-3)
                assert action[k, 6] == pytest.approx(g, abs=0.05)
            assert np.ptp(action[:, 7:], axis=0).max() == 0.0  # the right arm holds
            qpos = ep.array("observations/qpos")
            assert np.abs(qpos[-1, :6] - action[-1, :6]).max() < 0.02  # the follower reached the path's end
            assert ep.rgb("head", n // 2).shape == (48, 64, 3)


def test_direct_demos_place_the_cube_in_the_given_range(tmp_path: Path) -> None:
    """--x-range/--y-range move the placements (seed 5 lies elsewhere in the task's range): the log names a cube in
    the new range and the recorded TCP descends there to grasp it."""
    nominal = PickLiftTask().sample(5).cube_xy
    x_rng, y_rng = (0.38, 0.39), (0.25, 0.26)
    assert not (x_rng[0] <= nominal[0] <= x_rng[1])
    lines: list[str] = []
    info = record_demos(tmp_path, 1, 5, demo_offset_m=0.0, width=64, height=48, log=lines.append,
                        x_range_m=x_rng, y_range_m=y_rng)
    assert info["success"] == 1
    x, y = (float(v) for v in lines[0].split("cube at ")[1].split(")")[0].split(", "))
    assert x_rng[0] <= x <= x_rng[1] and y_rng[0] <= y <= y_rng[1]
    with EpisodeReader(next((tmp_path / "pick_cube").glob("episode_*.h5"))) as ep:
        tcp = ep.array("observations/tcp_pose/left")
    low = tcp[np.argmin(tcp[:, 2])]  # the grasp: the lowest TCP of the episode
    assert abs(low[0] - x) < 0.01 and abs(low[1] - y) < 0.01


def test_direct_demos_in_parallel_share_out_seeds_and_numbers(tmp_path: Path, capsys) -> None:
    """--procs 2 on 3 episodes after one already in the folder: two processes (seeds 10-11 and 12), numbers 1-3 in
    seed order, each episode the placement of its seed; the parent reports the lifted count."""
    record_demos(tmp_path, 1, 30, width=48, height=32, log=lambda m: None)  # episode 0 exists: numbering continues
    assert main(["--out", str(tmp_path), "--episodes", "3", "--first-seed", "10", "--procs", "2", "--width", "48",
                 "--height", "32", "--demo-offset-m", "0"]) == 0
    out = capsys.readouterr().out
    assert "3/3 succeeded" in out and out.count("[direct-demos] 1/2 seed 10") == 1
    files = sorted((tmp_path / "pick_cube").glob("episode_*.h5"))
    assert [f.name for f in files] == [f"episode_{i:06d}.h5" for i in range(4)]
    task = PickLiftTask()
    for f, seed in zip(files, [30, 10, 11, 12], strict=True):
        with EpisodeReader(f) as ep:
            assert ep.meta["sim_seed"] == seed and ep.meta["success"]
            assert ep.meta["cube_xy_m"] == pytest.approx(list(task.sample(seed).cube_xy))


def test_direct_demos_stop_promptly_on_an_interrupt(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "posevla.sim.direct_demos", "--out", str(tmp_path),
                             "--episodes", "200", "--width", "64", "--height", "48"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "pick_cube").glob("episode_*.h5")):  # readiness: the first episode is saved
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no episode within 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # before the fix it hung joining the writer's threads
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = sorted((tmp_path / "pick_cube").glob("episode_*.h5"))
    assert 1 <= len(done) < 200
    for p in done:
        with EpisodeReader(p) as ep:
            assert ep.meta["complete"] and ep.num_frames > 50


@pytest.mark.parametrize("argv", [
    ["--first-seed", "1000000"],
    ["--episodes", "0"],
    ["--task", "hand_over", "--demo-offset-m", "0.05"],
    ["--demo-offset-m", "0.2"],
    ["--fps", "0"],
    ["--x-range", "0.5", "0.4"],
    ["--y-range", "0.1", "0.9"],
    ["--procs", "0"],
    ["--procs", "2", "--first-index", "3"],
    ["--calibration-dir", "/nonexistent"],
])
def test_direct_demos_bad_input_exits_2(tmp_path: Path, argv: list[str], capsys) -> None:
    assert main(["--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posevla.sim.direct_demos: ")
    assert not (tmp_path / "pick_cube").exists()
