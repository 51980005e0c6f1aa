"""The data-collection graph without hardware (setup collect_sim): simulated leaders on pseudo-terminals
(`posevla teleop sim-leaders`, real dynamixel_sdk in teleop_node) drive the simulated X-Trainer over TCP
while replayed cameras play; the recorder writes an episode in which the followers track the leaders."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("dynamixel_sdk")
from posevla_ros.graph import graph  # noqa: E402
from posevla_ros.run_graph import GraphRunner  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from ros_helpers import call_trigger, sim_robot_yaml, spin  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from posevla.dataset import format as F  # noqa: E402
from posevla.dataset.reader import EpisodeReader  # noqa: E402
from posevla.tools.synthetic_episode import write_demo_episode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow



# the followers track the leaders' +-8 deg (+-0.14 rad) wave within this once a lag of up to 0.4 s is allowed: a
# follower that does not follow errs by >= 0.14 rad; measured 0.037-0.044 rad beside a CI run and 0.058 when four
# test runs shared the 2 cores (the driver shapes and holds the starved stream)
TRACK_RAD = 0.08


def _moved_deg(episode: Path) -> float:
    """The smaller of the commanded and the measured range of motion of the left arm's first joint (degrees)."""
    with EpisodeReader(episode) as ep:
        action, qpos = ep.array("action"), ep.array("observations/qpos")
    return float(np.degrees(min(np.ptp(action[:, 0]), np.ptp(qpos[:, 0]))))


def _tracking_error(action: np.ndarray, qpos: np.ndarray, cols: slice) -> float:
    """Largest |measured - commanded| joint angle (rad) of the columns, at the best lag of up to 6 frames (0.4 s)."""
    return min(float(np.abs(qpos[lag:, cols] - action[:len(action) - lag, cols]).max()) for lag in range(7))


def _take_ok(episode: Path) -> bool:
    """A take an operator keeps: the leaders' wave is in it (> 2.5 deg) and both arms tracked it (< TRACK_RAD)."""
    with EpisodeReader(episode) as ep:
        action, qpos = ep.array("action"), ep.array("observations/qpos")
    return _moved_deg(episode) > 2.5 and all(_tracking_error(action, qpos, c) < TRACK_RAD for c in (slice(0, 6), slice(7, 13)))


def test_collect_sim_graph_records_teleoperated_episode(tmp_path: Path, rclpy_context) -> None:
    robot = sim_robot_yaml(tmp_path)
    source = write_demo_episode(tmp_path / "source", seconds=2.0, fps=15.0, width=160, height=120)
    leaders = tmp_path / "leaders"
    sim_leaders = subprocess.Popen([sys.executable, "-m", "posevla.cli", "teleop", "sim-leaders", "--link-dir",
                                    str(leaders), "--amplitude", "8", "--period", "3"], stdout=subprocess.DEVNULL)
    specs = graph("collect_sim", episode=str(source), instruction="wave both arms", task="wave",
                  leader_dir=str(leaders))
    assert [s.name for s in specs] == ["xtrainer_sim", "xtrainer_driver", "replay", "teleop", "recorder"]
    for s in specs:
        if s.name in ("xtrainer_sim", "xtrainer_driver"):
            s.parameters["robot_config"] = str(robot)
        if s.name == "recorder":
            # stream_timeout_s 3 s as in the twin graphs: the replayed cameras of a graph starved beside other runs
            # (CI + make demo + a training) paused > 0.5 s and the recorder rightly stopped the take on its own
            # (stall detection is tested in test_recorder.py / test_dataset_capture.py)
            s.parameters.update(root=str(tmp_path / "data"), fps=15.0, reset_period_s=0.0, stream_timeout_s=3.0)
    node = rclpy.create_node("collect_probe", context=rclpy_context)
    states: list[str] = []
    latched = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(String, "/teleop/state", lambda m: states.append(m.data), latched)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)

    deadline = time.monotonic() + 30
    while not all((leaders / a).exists() for a in ("left", "right")):
        assert time.monotonic() < deadline, "sim-leaders did not start"
        time.sleep(0.1)
    runner = GraphRunner(specs)
    try:
        runner.start(delay_s=0.5)
        # a teleop node starved beside other test runs can miss its leaders for 0.2 s while aligning and freeze
        # (latched, as it must be); the operator then resumes it from the console, as the test does (at most 3 times)
        deadline, resumes = time.monotonic() + 90.0, 0
        while not any(s.startswith("mirroring") for s in states) and time.monotonic() < deadline:
            spin(ex, 2.0, until=lambda: any(s.startswith(("mirroring", "frozen")) for s in states[-1:]))
            if states and states[-1].startswith("frozen") and resumes < 3:
                resumes += 1
                call_trigger(node, ex, "/teleop/resume")
        assert any(s.startswith("mirroring") for s in states), (states, runner.dead())
        # a take whose leaders' serial replies came late on a starved machine records little motion or lagging
        # followers (the teleop holds the last command, the driver holds the arm), and one whose streams stalled
        # (the replayed cameras, or the teleop's actions while it froze) is stopped by the recorder itself and kept
        # aside as partial: the operator resumes the teleop if it froze and records again, as here (at most 4
        # takes; the motion and tracking assertions below hold for the kept take)
        saved: list[str] = []
        for _take in range(4):
            if states and states[-1].startswith("frozen"):
                call_trigger(node, ex, "/teleop/resume")
            deadline = time.monotonic() + 30
            while not ((r := call_trigger(node, ex, "/recorder/start", 20.0)) and r.success):  # every stream has data
                assert time.monotonic() < deadline, r
                spin(ex, 0.5)
            spin(ex, 4.0)
            r = call_trigger(node, ex, "/recorder/stop_and_save")
            assert r is not None, "/recorder/stop_and_save did not answer"
            if not r.success:  # stopped by the recorder on a stalled stream: the partial take is kept aside
                assert r.message == "not recording", r
                assert list((tmp_path / "data" / "wave" / ".incomplete").glob("episode_*.h5")), "partial not kept"
                continue
            name = re.search(r"saved (episode_\d{6}\.h5)", r.message)
            assert name, r
            saved.append(name.group(1))
            if _take_ok(F.list_episodes(tmp_path / "data" / "wave")[-1]):
                break
        assert saved, "no take was saved"
        # the operator's shell command (started after the recording: its start-up load must not skew it)
        out = subprocess.run([sys.executable, "-m", "posevla_ros.trigger", "/recorder/mark_success"],
                             capture_output=True, text=True, timeout=60)
        assert (out.returncode == 0 and f"/recorder/mark_success: ok: {saved[-1]} marked success"
                in out.stdout), out
        out = subprocess.run([sys.executable, "-m", "posevla_ros.trigger", "/recorder/nope", "--timeout", "1"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "/recorder/nope: service not available after 1.0 s" in out.stderr, out
        assert not runner.dead(), runner.dead()
    finally:
        node.destroy_node()
        runner.stop()
        sim_leaders.terminate()
        sim_leaders.wait(10)
    episodes = F.list_episodes(tmp_path / "data" / "wave")
    assert [e.name for e in episodes] == saved  # the partial takes are not listed
    with EpisodeReader(episodes[-1]) as ep:
        assert 45 <= ep.num_frames <= 90  # ~4 s at 15 Hz
        assert ep.meta["instruction"] == "wave both arms" and ep.meta["calibration"] and ep.meta["success"] is True
        action, qpos = ep.array("action"), ep.array("observations/qpos")
        joints = np.r_[0:6, 7:13]
        assert np.all(np.isfinite(action)) and np.all(np.isfinite(qpos[:, joints]))
        # a gripper opening is NaN where its bus reading was stale (> 0.2 s: seen with the CPU starved by five
        # processes on two cores); the trainer skips such frames. Most frames must have it.
        assert np.isfinite(qpos[:, [6, 13]]).all(axis=1).mean() > 0.8, qpos[:, [6, 13]]
        # the leaders wave +-8 degrees: the commands and the followers both move (a graph starved at load ~15 read the
        # simulated leaders' serial replies late and recorded only 4.8 deg of commanded motion in 4 s) ...
        assert np.ptp(action[:, 0]) > np.deg2rad(2.5) and np.ptp(qpos[:, 0]) > np.deg2rad(2.5)
        # ... and the followers track the commands: within TRACK_RAD once a lag of up to 0.4 s (6 frames) is allowed
        assert _tracking_error(action, qpos, slice(0, 6)) < TRACK_RAD
        assert _tracking_error(action, qpos, slice(7, 13)) < TRACK_RAD
        f = ep.frame(ep.num_frames - 1)
        assert set(f.cameras) == {"head", "left_wrist", "right_wrist"}
        assert f.cameras["head"].rgb.shape == (120, 160, 3)
