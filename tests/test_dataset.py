"""Episode format: frame-exact round trips, crash safety (kill -9), numbering, disk checks, dataset check."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from posevla.dataset import format as F
from posevla.dataset.check import check_episode
from posevla.dataset.reader import EpisodeReader
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ArmState, RobotState

INTR = {"head": CameraIntrinsics(60.0, 60.0, 31.5, 23.5, 64, 48), "left_wrist": CameraIntrinsics(55.0, 55.0, 32.0, 24.0, 64, 48)}
META = {"instruction": "stack the cups", "operator": "test", "fps": 30.0, "calibration": {"head_camera.yaml": {"sha256": "0" * 64}}}


def _record(rng: np.random.Generator, k: int, t0: int) -> FrameRecord:
    stamp = t0 + int(k * 1e9 / 30)
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 3 + k, yy * 4, (xx + yy) * 2], -1) % 256  # JPEG-friendly content that changes per frame
    rgb = {c: (smooth + 10 * i).astype(np.uint8) for i, c in enumerate(INTR)}
    depth = {c: rng.integers(0, 5000, (48, 64), dtype=np.uint16) for c in INTR}
    arms = {a: ArmState(se3.T_from_xyz_rpy([0.4, 0.3 if a == "left" else -0.3, 0.2 + 0.001 * k], [np.pi, 0, 0.01 * k]),
                        rng.normal(size=6), float(rng.random()), stamp - 1000) for a in ("left", "right")}
    return FrameRecord(stamp, rgb, depth, {c: stamp + 17 * i for i, c in enumerate(INTR)}, RobotState(arms, stamp - 1000),
                       rng.normal(size=14))


def _write_episode(root: Path, n: int, seed: int) -> tuple[Path, list[FrameRecord]]:
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root, "stack_cups", META, INTR, min_free_bytes=1)
    recs = [_record(rng, k, 1_700_000_000_000_000_000 + seed * 10**10) for k in range(n)]
    for r in recs:
        while not w.add_frame(r):
            time.sleep(0.001)
    return w.finish(success=seed % 2 == 0), recs


def test_episodes_read_back_frame_exactly(tmp_path: Path) -> None:
    written = [_write_episode(tmp_path, 12, seed) for seed in range(3)]
    assert [p.name for p, _ in written] == [F.episode_name(i) for i in range(3)]
    for path, recs in written:
        with EpisodeReader(path) as ep:
            assert ep.num_frames == 12 and ep.camera_names == ["head", "left_wrist"]
            assert ep.meta["instruction"] == "stack the cups" and ep.meta["complete"]
            assert ep.intrinsics["head"] == INTR["head"]
            for k, rec in enumerate(recs):
                f = ep.frame(k)
                assert f.stamp_ns == rec.stamp_ns
                np.testing.assert_array_equal(f.action, rec.action)
                for c in INTR:
                    np.testing.assert_array_equal(ep.raw_depth(c, k), rec.depth[c])  # lossless, bit-exact
                    np.testing.assert_array_equal(f.cameras[c].depth, rec.depth[c].astype(np.float32) * np.float32(0.001))
                    assert f.cameras[c].stamp_ns == rec.camera_stamps[c]
                    assert np.abs(f.cameras[c].rgb.astype(int) - rec.rgb[c]).mean() < 4  # JPEG, quality 90
                for a in ("left", "right"):
                    np.testing.assert_allclose(f.state.arms[a].T_base_tcp, rec.state.arms[a].T_base_tcp, atol=1e-12)
                    np.testing.assert_array_equal(f.state.arms[a].joints, rec.state.arms[a].joints)
        assert check_episode(path).ok, check_episode(path).problems


CRASHER = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_dataset import EpisodeWriter, INTR, META, _record
    w = EpisodeWriter(sys.argv[1], "stack_cups", META, INTR, min_free_bytes=1)
    rng = np.random.default_rng(9)
    for k in range(100000):
        w.add_frame(_record(rng, k, 0))
        if k == 5:
            print("recording", flush=True)
        time.sleep(0.005)
    """)


def test_kill_9_mid_episode_keeps_earlier_episodes_and_flags_the_partial_one(tmp_path: Path) -> None:
    done = [_write_episode(tmp_path, 8, seed)[0] for seed in range(2)]
    digests = [p.read_bytes() for p in done]
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "recording"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    task = tmp_path / "stack_cups"
    assert [p.read_bytes() for p in done] == digests  # earlier episodes untouched
    assert F.list_episodes(task) == done
    partial = F.list_incomplete(task)
    assert [p.name for p in partial] == [F.episode_name(2)]
    assert F.next_index(task) == 3  # numbering continues after the crashed one
    out = subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", "check", str(task)], capture_output=True, text=True)
    assert out.returncode == 0 and "incomplete episode" in out.stdout and "2 episodes checked, 0 with problems" in out.stdout
    for p in done:  # the default storage is video: the crash happened inside H.264/FFV1 encoding
        with EpisodeReader(p) as ep:
            assert ep.storage == "video" and ep.num_frames == 8
    info = subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", "info", str(task)], capture_output=True, text=True)
    assert info.returncode == 0 and info.stdout.splitlines()[-1] == "2 episodes, 0 unreadable, 1 incomplete, 0 discarded"


def test_full_disk_is_refused_before_recording(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="GB free"):
        EpisodeWriter(tmp_path, "t", META, INTR, min_free_bytes=10**18)


def test_check_reports_nan_gaps_and_missing_calibration(tmp_path: Path) -> None:
    path, _ = _write_episode(tmp_path, 10, 0)
    with h5py.File(path, "r+") as h:
        h["action"][3, 2] = np.nan
        st = h["stamps/frame"][:]
        st[6:] += 500_000_000
        h["stamps/frame"][:] = st
        import json
        meta = json.loads(h.attrs["meta"])
        meta.pop("calibration")
        h.attrs["meta"] = json.dumps(meta)
    problems = " | ".join(check_episode(path).problems)
    assert "action: NaN/inf in 1 frames (first 3)" in problems
    assert "stamps/frame: 1 gaps" in problems
    assert "no calibration" in problems
