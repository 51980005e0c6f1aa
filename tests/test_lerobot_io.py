"""LeRobot v3.0 export -> import round trip on generated episodes: layout and metadata as LeRobot reads them,
state/action/TCP exact to float32, stamps exact, depth bit-exact, colour within video quality, calibration,
instruction and camera parameters kept."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from posevla.dataset import format as F  # noqa: E402
from posevla.dataset.lerobot_io import import_lerobot  # noqa: E402
from posevla.dataset.reader import EpisodeReader  # noqa: E402
from posevla.dataset.synthetic_streams import StreamConfig, SyntheticRGBD  # noqa: E402
from posevla.dataset.video import psnr  # noqa: E402
from posevla.dataset.writer import EpisodeWriter, FrameRecord  # noqa: E402
from posevla.geometry import se3  # noqa: E402
from posevla.types import ArmState, RobotState  # noqa: E402

CAMS = ("head", "left_wrist")
CALIB = {"head_camera.yaml": {"sha256": "a" * 64, "yaml": "schema_version: 1\n"}}


def write_episodes(root: Path, lengths: list[int], storage: str = "video", depth_every: int = 1) -> list[Path]:
    out = []
    for e, n in enumerate(lengths):
        gens = {c: SyntheticRGBD(c, StreamConfig(64, 48), seed=10 * e + i) for i, c in enumerate(CAMS)}
        meta = {"instruction": f"stack the cups {e % 2}", "operator": "ana", "fps": 30.0, "calibration": CALIB,
                "cameras": {c: f"SN{i}" for i, c in enumerate(CAMS)}}
        w = EpisodeWriter(root, "cups", meta, {c: g.intrinsics for c, g in gens.items()}, min_free_bytes=1,
                          storage=storage, depth_every=depth_every)
        rng = np.random.default_rng(e)
        streams = {c: g.frames(n, unique=3) for c, g in gens.items()}
        for k in range(n):
            stamp = 1_700_000_000_123_456_789 + e * 10**10 + int(k * 1e9 / 30) + int(rng.integers(0, 1000))
            fr = {c: next(s) for c, s in streams.items()}
            arms = {a: ArmState(se3.T_from_xyz_rpy([0.4, 0.2 * (a == "left") - 0.1, 0.2 + 0.01 * k], [np.pi, 0.1, k * 0.02]),
                                rng.normal(size=6), float(rng.random()), stamp - 333) for a in ("left", "right")}
            rec = FrameRecord(stamp, {c: f[0] for c, f in fr.items()}, {c: f[1] for c, f in fr.items()},
                              {c: stamp + 1000 * i + 7 for i, c in enumerate(CAMS)}, RobotState(arms, stamp - 333),
                              rng.normal(size=14))
            while not w.add_frame(rec):
                time.sleep(0.001)
        out.append(w.finish(success=e != 1))
    return out


def test_export_import_round_trip(tmp_path: Path) -> None:
    src = write_episodes(tmp_path / "src", [9, 7])
    out = tmp_path / "lerobot"
    res = subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", "export-lerobot", str(tmp_path / "src" / "cups"),
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2 and info["total_frames"] == 16
    assert info["features"]["observation.images.cam_high"]["dtype"] == "video"
    assert info["features"]["observation.depth.cam_left_wrist"]["info"]["video.is_depth_map"] is True
    tasks = pd.read_parquet(out / "meta" / "tasks.parquet")
    assert list(tasks.index) == ["stack the cups 0", "stack the cups 1"] and list(tasks["task_index"]) == [0, 1]
    eps = pd.read_parquet(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert list(eps["length"]) == [9, 7] and list(eps["dataset_to_index"]) == [9, 16]
    assert eps["videos/observation.images.cam_high/from_timestamp"].iloc[1] == pytest.approx(9 / 30)
    data = pd.read_parquet(out / "data" / "chunk-000" / "file-000.parquet")
    assert len(data) == 16 and list(data["index"]) == list(range(16))
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert len(stats["action"]["mean"]) == 14 and len(stats["observation.images.cam_high"]["mean"]) == 3

    res = subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", "import-lerobot", str(out), "--out",
                          str(tmp_path / "back"), "--task", "cups"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    back = F.list_episodes(tmp_path / "back" / "cups")
    assert [p.name for p in back] == [p.name for p in src]
    for a_path, b_path in zip(src, back):
        with EpisodeReader(a_path) as a, EpisodeReader(b_path) as b:
            assert b.num_frames == a.num_frames and b.camera_names == a.camera_names
            for key in ("observations/qpos", "action"):  # float32 in LeRobot's parquet, then exact
                np.testing.assert_allclose(b.array(key), a.array(key).astype(np.float32), rtol=0, atol=0)
            for arm in ("left", "right"):  # float32 poses, quaternion re-normalised on the way back
                np.testing.assert_allclose(b.array(f"observations/tcp_pose/{arm}"),
                                           a.array(f"observations/tcp_pose/{arm}"), rtol=0, atol=1e-7)
            for key in ("stamps/frame", "stamps/robot", *(f"stamps/{c}" for c in CAMS)):
                np.testing.assert_array_equal(b.array(key), a.array(key))  # exact to the nanosecond
            for key in ("instruction", "operator", "calibration", "cameras", "success", "fps"):
                assert b.meta[key] == a.meta[key], key
            assert b.meta["imported_from"]["robot_type"] == "dobot_xtrainer" and "intrinsics_assumed" not in b.meta
            for c in CAMS:
                assert b.intrinsics[c] == a.intrinsics[c] and b.depth_scale[c] == a.depth_scale[c]
                for i in range(a.num_frames):
                    np.testing.assert_array_equal(b.raw_depth(c, i), a.raw_depth(c, i))  # lossless both ways
                    assert psnr(b.rgb(c, i), a.rgb(c, i)) > 27.0  # 4:2:0 export + re-encode, tiny 64x48 noisy frames
    chk = subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", "check", str(tmp_path / "back")],
                         capture_output=True, text=True, timeout=300)
    assert chk.returncode == 0 and "2 episodes checked, 0 with problems" in chk.stdout, chk.stdout


def test_round_trip_of_an_episode_with_depth_every_frames(tmp_path: Path) -> None:
    """An episode whose depth was stored with every 3rd frame exports its held depth per frame (LeRobot has no
    notion of a lower depth rate) and comes back with depth_every 3 and the same depth for every frame."""
    [src] = write_episodes(tmp_path / "src", [8], depth_every=3)
    from posevla.dataset.lerobot_io import export_lerobot
    export_lerobot([src], tmp_path / "lerobot")
    [back] = import_lerobot(tmp_path / "lerobot", tmp_path / "back", task="cups")
    with EpisodeReader(src) as a, EpisodeReader(back) as b:
        assert a.depth_every == b.depth_every == {"head": 3, "left_wrist": 3}
        for c in CAMS:
            for i in range(8):
                np.testing.assert_array_equal(b.raw_depth(c, i), a.raw_depth(c, i))
            packets = b._h[f"observations/depth/{F.CAMERA_KEYS[c]}"]
            assert [len(packets[i]) > 0 for i in range(8)] == [i % 3 == 0 for i in range(8)]  # 3 packets, not 8


def test_import_of_a_dataset_without_our_metadata(tmp_path: Path) -> None:
    """A public-style dataset: no meta/posevla.json, no TCP poses, no depth, no stamps -> joints, actions,
    cameras and timing come in; intrinsics are flagged as assumed; missing depth is 0 (invalid)."""
    src = write_episodes(tmp_path / "src", [6])
    out = tmp_path / "lerobot"
    from posevla.dataset.lerobot_io import export_lerobot

    export_lerobot(src, out)
    (out / "meta" / "posevla.json").unlink()
    info = json.loads((out / "meta" / "info.json").read_text())
    for k in [k for k in info["features"] if k.startswith(("observation.depth.", "observation.tcp_pose.", "observation.stamp_ns."))]:
        del info["features"][k]
    (out / "meta" / "info.json").write_text(json.dumps(info))
    data_path = out / "data" / "chunk-000" / "file-000.parquet"
    data = pd.read_parquet(data_path)
    data.drop(columns=[c for c in data if c.startswith(("observation.tcp_pose.", "observation.stamp_ns."))]).to_parquet(
        data_path, index=False)
    [path] = import_lerobot(out, tmp_path / "back", task="public")
    with EpisodeReader(src[0]) as a, EpisodeReader(path) as b:
        assert b.meta["intrinsics_assumed"] == ["head", "left_wrist"] and b.meta["instruction"] == "stack the cups 0"
        np.testing.assert_allclose(b.array("observations/qpos"), a.array("observations/qpos").astype(np.float32), atol=0)
        assert np.all(np.isnan(b.array("observations/tcp_pose/left")))
        np.testing.assert_array_equal(b.array("stamps/frame"), np.round(np.arange(6) / 30 * 1e6).astype(np.int64) * 1000)
        assert not b.raw_depth("head", 0).any()


def test_import_refuses_non_v3_datasets_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "old" / "meta").mkdir(parents=True)
    (tmp_path / "old" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "features": {}}))
    res = subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", "import-lerobot", str(tmp_path / "old"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "codebase_version 'v2.1'" in res.stderr and "Traceback" not in res.stderr
