"""Recorder logic without ROS: refusing to start without data, repeated-frame counting, stream rates,
stopping with a reason when a stream dies, numbering across restarts, discard/re-record never delete."""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np

from posevla.dataset import format as F
from posevla.dataset.reader import EpisodeReader
from posevla.dataset.recorder import Recorder, RecorderConfig, Refusal
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics


def _cfg(root: Path) -> RecorderConfig:
    return RecorderConfig(root, "pour", "pour the water", ("head",), "ana", fps=10.0, stream_timeout_s=0.3,
                          target_episodes=4, reset_period_s=0.0)


def _feed(rec: Recorder, k: int, new_image: bool = True) -> None:
    """Stream k of every input, as the recorder node's callbacks would store it."""
    stamp = 1_000_000_000 * (1 + k)
    if new_image:
        rec.latest.color["head"] = (stamp, np.full((48, 64, 3), 10 * k % 256, np.uint8))
        rec.latest.depth["head"] = (stamp, np.full((48, 64), 700 + k, np.uint16))
        rec.note_arrival("head/color")
        rec.note_arrival("head/depth")
    rec.latest.info["head"] = CameraIntrinsics(60.0, 60.0, 31.5, 23.5, 64, 48)
    for arm in ("left", "right"):
        rec.latest.tcp[arm] = (stamp, se3.T_from_xyz_rpy([0.4, 0.0, 0.2 + 0.01 * k], [np.pi, 0, 0]))
        rec.latest.joints[arm] = (stamp, np.full(6, 0.1 * k), 0.5)
    rec.latest.action = (stamp, np.full(14, 0.1 * k + 0.05))
    rec.note_arrival("robot")
    rec.note_arrival("action")


def _record(rec: Recorder, first: int, n: int, repeat_at: int | None = None) -> None:
    for k in range(first, first + n):
        _feed(rec, k, new_image=k != repeat_at)
        assert rec.tick(time.time_ns()) is None


def test_start_needs_every_stream_and_camera_info(tmp_path: Path) -> None:
    rec = Recorder(_cfg(tmp_path))
    assert rec.start() == "cannot start: no data on ['head/color', 'head/depth', 'robot', 'action']"
    _feed(rec, 0)
    rec.latest.info.clear()
    assert rec.start() == "cannot start: no camera_info for ['head']"
    _feed(rec, 0)
    started = rec.start()
    assert started == "recording episode 0" and not isinstance(started, Refusal)
    again = rec.start()
    assert again == "already recording" and isinstance(again, Refusal)  # the node answers success=False
    assert rec.toggle().startswith("saved episode_000000.h5")  # the start/stop button


def test_episode_rates_repeats_and_marks(tmp_path: Path) -> None:
    rec = Recorder(_cfg(tmp_path))
    _feed(rec, 0)
    rec.stream_rates(now=100.0)
    rec.start()
    _record(rec, 1, 12, repeat_at=5)  # the camera missed one tick: the same image is stored twice
    assert rec.repeated == {"head": 1}
    rates = rec.stream_rates(now=102.0)  # 12 ticks, 11 new images in 2 s
    assert rates == {"head/color": 5.5, "head/depth": 5.5, "robot": 6.0, "action": 6.0}
    line = rec.status_line()
    assert "REC" in line and "episodes 0/4 (0%)" in line and "repeated 1 rejected 0" in line
    msg = rec.stop_and_save()
    assert msg.startswith("saved episode_000000.h5 (12 frames"), msg
    assert rec.mark(False) == "episode_000000.h5 marked failure"
    with EpisodeReader(rec.last_saved) as ep:
        assert ep.num_frames == 12 and ep.meta["success"] is False and ep.meta["operator"] == "ana"
        # frame i was fed as k = i + 1; k = 5 brought no new image, so frame 4 repeats frame 3
        assert ep.raw_depth("head", 3)[0, 0] == 700 + 4 and ep.raw_depth("head", 4)[0, 0] == 700 + 4
        assert ep.raw_depth("head", 5)[0, 0] == 700 + 6
        np.testing.assert_allclose(ep.array("action")[:, 0], 0.1 * np.arange(1, 13) + 0.05)
    assert "episodes 1/4 (25%)" in rec.status_line()


def test_dead_stream_stops_the_episode_and_restart_reports_it(tmp_path: Path) -> None:
    rec = Recorder(_cfg(tmp_path))
    _feed(rec, 0)
    rec.start()
    _record(rec, 1, 5)
    rec.stop_and_save()
    _feed(rec, 10)
    rec.start()
    _record(rec, 11, 3)
    time.sleep(0.35)  # the robot and the camera go silent
    msg = rec.tick(time.time_ns())
    assert msg is not None and "['head/color', 'head/depth', 'robot', 'action'] stopped for more than 0.3 s" in msg
    assert rec.state == "reset" and rec.writer is None
    assert [p.name for p in F.list_episodes(rec.task_dir)] == ["episode_000000.h5"]
    [partial] = F.list_incomplete(rec.task_dir)
    with h5py.File(partial) as h:
        assert json.loads(h.attrs["meta"])["complete"] is False
    again = Recorder(_cfg(tmp_path))  # next session
    assert again.incomplete_on_start == [partial]
    _feed(again, 20)
    assert again.start() == "recording episode 2"  # the partial one keeps its number


def test_discard_and_rerecord_move_episodes_aside(tmp_path: Path) -> None:
    rec = Recorder(_cfg(tmp_path))
    _feed(rec, 0)
    rec.start()
    _record(rec, 1, 3)
    assert rec.discard().startswith("discarded the current episode")
    assert rec.rerecord_last() == "no episode saved in this session"
    rec.start()
    _record(rec, 5, 3)
    rec.stop_and_save()
    saved = rec.last_saved
    msg = rec.rerecord_last()
    assert msg.startswith(f"moved {saved.stem}_") and msg.endswith("recording episode 0"), msg  # number reused
    assert not saved.exists() and F.list_episodes(rec.task_dir) == []
    aside = sorted((rec.task_dir / ".discarded").iterdir())
    assert len(aside) == 2 and all(p.name.startswith("episode_000000_") for p in aside)  # same second: both kept
    with EpisodeReader(aside[0]) as a, EpisodeReader(aside[1]) as b:
        assert {a.num_frames, b.num_frames} == {3}
    _record(rec, 9, 2)
    assert rec.stop_and_save().startswith("saved episode_000000.h5 (2 frames")
