"""Video-encoded episodes (H.264 colour, FFV1 depth): bit-exact depth, colour quality, random access that decodes
at most one GOP, both storage formats behind one reader, dataset hygiene (.incomplete/.discarded, truncated
files) and the viewer's headless exports."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from posevla.dataset import format as F
from posevla.dataset.check import check_episode
from posevla.dataset.reader import EpisodeReader
from posevla.dataset.recorder import RecorderConfig
from posevla.dataset.synthetic_streams import StreamConfig, SyntheticRGBD
from posevla.dataset.video import ColourCodec, psnr
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.types import ArmState, RobotState

CAMS = ("head", "left_wrist")
META = {"instruction": "stack the cups", "operator": "t", "fps": 30.0, "calibration": {"x.yaml": {"sha256": "0" * 64}}}


def _frames(n: int, size: tuple[int, int] = (160, 120), unique: int = 4) -> tuple[dict, dict]:
    gens = {c: SyntheticRGBD(c, StreamConfig(*size), seed=i) for i, c in enumerate(CAMS)}
    return {c: g.intrinsics for c, g in gens.items()}, {c: list(g.frames(n, unique=unique)) for c, g in gens.items()}


def _write(root: Path, intr: dict, frames: dict, storage: str = "video", **kw) -> Path:
    n = len(next(iter(frames.values())))
    w = EpisodeWriter(root, "cups", META, intr, min_free_bytes=1, storage=storage, **kw)
    for k in range(n):
        stamp = 1_700_000_000_000_000_000 + int(k * 1e9 / 30) + 17 * k  # not a multiple of the period: kept exactly
        arms = {a: ArmState(se3.T_from_xyz_rpy([0.4, 0.1, 0.2 + 0.01 * k], [np.pi, 0, 0]), np.full(6, 0.1 * k), 0.5,
                            stamp - 5) for a in ("left", "right")}
        rec = FrameRecord(stamp, {c: f[k][0] for c, f in frames.items()}, {c: f[k][1] for c, f in frames.items()},
                          {c: stamp - 1000 * (i + 1) for i, c in enumerate(frames)}, RobotState(arms, stamp - 5),
                          np.full(14, 0.01 * k))
        while not w.add_frame(rec):
            time.sleep(0.001)
    return w.finish(success=True)


@pytest.fixture(scope="module")
def clip() -> tuple[dict, dict]:
    return _frames(24)


def test_video_episode_depth_is_bit_exact_and_colour_keeps_quality(tmp_path: Path, clip) -> None:
    intr, frames = clip
    path = _write(tmp_path, intr, frames, colour_codec=ColourCodec(gop=8))
    with EpisodeReader(path) as ep:
        assert ep.storage == "video" and ep.meta["format_version"] == 2 and ep.meta["storage"]["depth_codec"] == "ffv1"
        assert ep.num_frames == 24 and ep.camera_names == list(CAMS)
        for c in CAMS:
            for k in range(24):
                np.testing.assert_array_equal(ep.raw_depth(c, k), frames[c][k][1])  # FFV1: lossless, bit-exact
            psnrs = [psnr(ep.rgb(c, k), frames[c][k][0]) for k in range(24)]
            assert min(psnrs) > 37.0, psnrs  # 160x120 here; the benchmark reports > 40 dB at 640x480
        stamps = ep.array("stamps/frame")
        np.testing.assert_array_equal(np.diff(stamps), [int((k + 1) * 1e9 / 30) - int(k * 1e9 / 30) + 17 for k in range(23)])
        np.testing.assert_array_equal(ep.camera_stamps("left_wrist"), stamps - 2000)
        kf = ep._h["observations/video_keyframe/cam_high"][:]
        assert list(np.flatnonzero(kf)) == [0, 8, 16]
    assert check_episode(path).ok, check_episode(path).problems


def test_full_size_default_codec_psnr_above_40_db_and_bit_exact_depth_on_sensor_like_frames(tmp_path: Path) -> None:
    """640x480, the format's default codecs, all three cameras. Test data: posevla.dataset.synthetic_streams --
    ray-cast tabletop with a world-fixed grain texture, Gaussian colour noise (sigma 1.5 levels), RealSense-like
    correlated stereo depth noise (RMS z^2 * 0.08 px / (f * baseline)) and ~1 % invalid pixels in clusters, and a
    moving camera; it does not compress trivially (asserted below: > 1.5 bits per depth pixel even for FFV1)."""
    cams = ("head", "left_wrist", "right_wrist")
    gens = {c: SyntheticRGBD(c, StreamConfig(), seed=i) for i, c in enumerate(cams)}
    frames = {c: list(g.frames(6, unique=2)) for c, g in gens.items()}
    w = EpisodeWriter(tmp_path, "full", META, {c: g.intrinsics for c, g in gens.items()}, min_free_bytes=1)
    for k in range(6):
        stamp = 1_700_000_000_000_000_000 + k * 33_333_333
        arms = {a: ArmState(np.eye(4), np.zeros(6), 0.5, stamp) for a in ("left", "right")}
        rec = FrameRecord(stamp, {c: f[k][0] for c, f in frames.items()}, {c: f[k][1] for c, f in frames.items()},
                          {c: stamp for c in cams}, RobotState(arms, stamp), np.zeros(14))
        while not w.add_frame(rec):
            time.sleep(0.001)
    path = w.finish(success=True)
    with EpisodeReader(path) as ep:
        assert ep.meta["storage"]["colour_codec"] == {**ColourCodec().to_attrs()}
        parts = ep.stored_bytes()
        for c in cams:
            key = "cam_high" if c == "head" else f"cam_{c}"
            assert parts[f"depth/{key}"] * 8 / (6 * 640 * 480) > 1.5  # noisy depth: not a trivially compressible test
            psnrs = []
            for k in range(6):
                depth = ep.raw_depth(c, k)
                np.testing.assert_array_equal(depth, frames[c][k][1])  # bit-exact, invalid (0) pixels included
                assert (depth == 0).mean() > 0.005
                psnrs.append(psnr(ep.rgb(c, k), frames[c][k][0]))
            assert np.mean(psnrs) > 40.0 and min(psnrs) > 39.0, (c, psnrs)


def test_random_access_decodes_at_most_one_gop_and_matches_sequential(tmp_path: Path, clip) -> None:
    intr, frames = clip
    path = _write(tmp_path, intr, frames, colour_codec=ColourCodec(gop=8))
    with EpisodeReader(path) as seq:
        reference = [seq.rgb("head", k) for k in range(24)]
        assert seq._colour["head"].frames_decoded == 24  # sequential: every frame decoded once
    with EpisodeReader(path) as ep:
        order = [21, 3, 17, 16, 9, 0, 23, 8, 15, 2]
        for i in order:
            before = ep._colour["head"].frames_decoded if "head" in ep._colour else 0
            np.testing.assert_array_equal(ep.rgb("head", i), reference[i])
            decoded = ep._colour["head"].frames_decoded - before
            assert decoded <= i % 8 + 1, (i, decoded)  # from the keyframe at or before i, never the whole episode
        with pytest.raises(IndexError):
            ep.rgb("head", 24)
        only = ep.frame(5, cameras=["head"])  # the trainer decodes only the views it uses
        assert list(only.cameras) == ["head"] and "left_wrist" not in ep._colour and "left_wrist" not in ep._depth


def test_both_storage_formats_read_through_one_api(tmp_path: Path, clip) -> None:
    intr, frames = clip
    video = _write(tmp_path / "v", intr, frames)
    jpeg = _write(tmp_path / "j", intr, frames, storage="jpeg")
    deflate = _write(tmp_path / "d", intr, frames, depth_codec="deflate")
    with EpisodeReader(video) as v, EpisodeReader(jpeg) as j, EpisodeReader(deflate) as d:
        assert (v.storage, j.storage, d.storage) == ("video", "jpeg", "video")
        assert j.meta["format_version"] == 1 and "observations/images/cam_high" in j._h
        for k in (0, 11, 23):
            fv, fj, fd = v.frame(k), j.frame(k), d.frame(k)
            assert fv.stamp_ns == fj.stamp_ns == fd.stamp_ns
            for c in CAMS:
                np.testing.assert_array_equal(fv.cameras[c].depth, fj.cameras[c].depth)
                np.testing.assert_array_equal(fd.cameras[c].depth, fj.cameras[c].depth)
                assert fv.cameras[c].intrinsics == fj.cameras[c].intrinsics
                assert psnr(fv.cameras[c].rgb, frames[c][k][0]) > psnr(fj.cameras[c].rgb, frames[c][k][0]) - 3
            np.testing.assert_array_equal(fv.action, fj.action)
        # frozen-camera check works from stored digests in both formats
        assert np.array_equal(v.frame_digests("head") == np.roll(v.frame_digests("head"), 1),
                              j.frame_digests("head") == np.roll(j.frame_digests("head"), 1))
    with pytest.raises(ValueError, match="storage='png'"):
        EpisodeWriter(tmp_path, "x", META, intr, storage="png")
    with pytest.raises(ValueError, match="depth_codec='png'"):
        EpisodeWriter(tmp_path, "x", META, intr, depth_codec="png")
    with pytest.raises(ValueError, match="recorder storage='mp4'"):
        RecorderConfig(tmp_path, "t", "i", storage="mp4")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posevla.cli", "dataset", *args], capture_output=True, text=True,
                          timeout=300)


def test_hidden_folders_never_count_and_info_survives_a_truncated_file(tmp_path: Path) -> None:
    intr, frames = _frames(6, (64, 48), unique=2)
    good = _write(tmp_path, intr, frames)
    task = good.parent
    partial = task / F.INCOMPLETE_DIR / F.episode_name(1)
    partial.write_bytes(good.read_bytes())  # an episode left by a crash
    (task / F.DISCARDED_DIR).mkdir()
    (task / F.DISCARDED_DIR / "episode_000000_20260101-000000.h5").write_bytes(good.read_bytes())
    (task / F.DISCARDED_DIR / F.episode_name(7)).write_bytes(good.read_bytes())  # even with a complete-style name
    truncated = task / F.episode_name(2)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert F.list_episodes(task / F.INCOMPLETE_DIR) == [] and F.list_episodes(task / F.DISCARDED_DIR) == []
    info = _cli("info", str(tmp_path))
    assert info.returncode == 1, info.stderr  # one file could not be read: reported, not a crash
    lines = info.stdout.splitlines()
    assert any(line.startswith(f"{truncated}: UNREADABLE") for line in lines), info.stdout
    assert any(line.startswith(f"{good}: 6 frames, 0.2 s, video") for line in lines), info.stdout
    assert lines[-1] == "2 episodes, 1 unreadable, 1 incomplete, 2 discarded", info.stdout
    assert "Traceback" not in info.stderr
    check = _cli("check", str(task))
    assert check.returncode == 1 and "2 episodes checked, 1 with problems, 1 incomplete, 2 discarded" in check.stdout
    assert f"{partial}: incomplete episode" in check.stdout and "cannot be opened" in check.stdout
    from posevla.training.episode_dataset import find_episodes

    assert find_episodes([task]) == [good, truncated]  # never .incomplete/ or .discarded/
    truncated.unlink()
    (task / F.episode_name(0)).rename(task / "spare.h5")
    with pytest.raises(ValueError, match="no episodes"):
        find_episodes([task])  # only hidden folders left: nothing to train on
    missing = _cli("info", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("does not exist") and "Traceback" not in missing.stderr


def test_viewer_exports_headless(tmp_path: Path) -> None:
    from posevla.tools.synthetic_episode import write_demo_episode

    ep = write_demo_episode(tmp_path, seconds=1.0, fps=10.0, width=64, height=48)
    res = _cli("view", str(ep), "--mp4", str(tmp_path / "ep.mp4"), "--save", str(tmp_path / "ep.rrd"))
    assert res.returncode == 0, res.stderr
    from posevla.dataset.video import read_video_file

    frames = list(read_video_file(tmp_path / "ep.mp4"))
    assert len(frames) == 10 and frames[0][1].shape == (240 * 2 + 160, 320 * 3, 3)
    np.testing.assert_allclose([t for t, _ in frames], np.arange(10) * 0.1, atol=1e-3)
    assert (tmp_path / "ep.rrd").read_bytes()[:4] == b"RRF2" and (tmp_path / "ep.rrd").stat().st_size > 10_000
    bad = _cli("view", str(ep), "--stride", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == "posevla dataset view: --stride 0 must be >= 1"


def test_recorder_meta_names_the_storage(tmp_path: Path, clip) -> None:
    intr, frames = clip
    small = {c: f[:3] for c, f in frames.items()}
    path = _write(tmp_path, intr, small, colour_codec=ColourCodec(crf=20, gop=2))
    with EpisodeReader(path) as ep:
        codec = ep.meta["storage"]["colour_codec"]
        assert codec == {"encoder": "libx264", "pix_fmt": "yuv444p", "crf": 20, "preset": "ultrafast", "gop": 2,
                         "tune": "none", "codec": "h264"}
        assert ColourCodec.from_attrs(codec) == ColourCodec(crf=20, gop=2)
        old = {k: v for k, v in codec.items() if k != "tune"}  # episodes written before `tune` existed
        assert ColourCodec.from_attrs(old).tune == "none"
        assert json.loads(ep._h.attrs["meta"])["complete"] is True
        assert dict(ep._h["observations/video/cam_high"].attrs)["crf"] == 20


def test_convert_jpeg_episodes_to_video_keeps_everything_but_the_codec(tmp_path: Path, clip) -> None:
    intr, frames = clip
    small = {c: f[:6] for c, f in frames.items()}
    old = _write(tmp_path / "old", intr, small, storage="jpeg")
    res = _cli("convert", str(old.parent), "--out", str(tmp_path / "new"))
    assert res.returncode == 0, res.stderr
    [new] = F.list_episodes(tmp_path / "new" / "cups")
    with EpisodeReader(old) as a, EpisodeReader(new) as b:
        assert (a.storage, b.storage) == ("jpeg", "video") and b.meta["converted_from"]["storage"] == "jpeg"
        assert b.meta["calibration"] == a.meta["calibration"] and b.meta["instruction"] == a.meta["instruction"]
        for key in ("stamps/frame", "stamps/robot", "stamps/head", "action", "observations/qpos",
                    "observations/tcp_pose/left"):
            np.testing.assert_array_equal(b.array(key), a.array(key))
        for k in range(6):
            np.testing.assert_array_equal(b.raw_depth("left_wrist", k), a.raw_depth("left_wrist", k))
            assert psnr(b.rgb("head", k), a.rgb("head", k)) > 37.0


def test_depth_every_keeps_every_kth_depth_bit_exact_in_a_third_of_the_bytes(tmp_path: Path, clip) -> None:
    intr, frames = clip
    full = _write(tmp_path / "full", intr, frames)
    third = _write(tmp_path / "third", intr, frames, depth_every=3)
    with EpisodeReader(full) as a, EpisodeReader(third) as b:
        assert b.meta["storage"]["depth_every"] == 3 and "depth_every" not in a.meta["storage"]
        assert b.depth_every == {"head": 3, "left_wrist": 3} and a.depth_every == {"head": 1, "left_wrist": 1}
        for c in CAMS:
            packets = b._h[f"observations/depth/{F.CAMERA_KEYS[c]}"]
            assert [len(packets[k]) > 0 for k in range(24)] == [k % 3 == 0 for k in range(24)]
            for k in range(24):
                assert b.depth_source(c, k) == k - k % 3
                np.testing.assert_array_equal(b.raw_depth(c, k), frames[c][k - k % 3][1])  # held, bit-exact
                np.testing.assert_array_equal(a.raw_depth(c, k), frames[c][k][1])
            held = b.raw_depth(c, 4)
            held[:] = 0  # callers get copies: the held frame is not changed for the next one
            np.testing.assert_array_equal(b.raw_depth(c, 5), frames[c][3][1])
        assert [b.fresh_depth(k) for k in range(6)] == [True, False, False, True, False, False]
        assert all(a.fresh_depth(k) for k in range(24))
        ratio = b.stored_bytes()["depth"] / a.stored_bytes()["depth"]
        assert 0.30 < ratio < 0.38, ratio  # 8 of 24 packets
        np.testing.assert_array_equal(b.array("stamps/head"), a.array("stamps/head"))  # colour stamps untouched
        assert b.frame(7).cameras["head"].depth.shape == (120, 160)
    assert check_episode(third).ok, check_episode(third).problems
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(third.read_bytes())
    import h5py
    with h5py.File(damaged, "r+") as h:
        packets = h["observations/depth/cam_high"]
        packets[4] = packets[3]  # a packet between stored frames
        packets[6] = np.zeros(0, np.uint8)  # a stored frame without its packet
    problems = check_episode(damaged).problems
    assert problems == ["camera head: 1 frames that must store depth (depth_every 3) have none (first 6)",
                        "camera head: 1 frames between stored depth have a depth packet (first 4)"], problems
    for kw, match in (({"depth_every": 0}, "depth_every=0"), ({"depth_every": 2.0}, "depth_every=2.0"),
                      ({"depth_every": 3, "depth_codec": "deflate"}, "depth_every=3: needs storage 'video' with "
                                                                      "depth_codec 'ffv1'"),
                      ({"depth_every": 3, "storage": "jpeg"}, "depth_every=3: needs")):
        with pytest.raises(ValueError, match=match):
            EpisodeWriter(tmp_path / "bad", "x", META, intr, min_free_bytes=1, **kw)
    with pytest.raises(ValueError, match="recorder depth_every=0"):
        RecorderConfig(tmp_path, "t", "i", depth_every=0)
    with pytest.raises(ValueError, match="recorder depth_every=2: needs storage 'video'"):
        RecorderConfig(tmp_path, "t", "i", storage="jpeg", depth_every=2)
    with pytest.raises(ValueError, match="recorder: colour codec preset='slowest'"):
        RecorderConfig(tmp_path, "t", "i", colour_preset="slowest")
    assert RecorderConfig(tmp_path, "t", "i", colour_preset="veryfast", colour_crf=17, colour_tune="psnr",
                          depth_every=3).colour_codec() == ColourCodec(preset="veryfast", crf=17, tune="psnr")


def test_convert_to_lower_depth_rate_and_training_samples_start_at_stored_depth(tmp_path: Path) -> None:
    import yaml

    from posevla.model.config import PoseVLAConfig
    from posevla.tools.synthetic_episode import write_demo_episode
    from posevla.training.episode_dataset import EpisodeChunkDataset

    src = write_demo_episode(tmp_path / "data", seconds=1.0, fps=15.0, width=96, height=72, seed=0)
    res = _cli("convert", str(src), "--out", str(tmp_path / "small"), "--depth-every", "4", "--colour-preset",
               "veryfast", "--colour-crf", "17", "--colour-tune", "psnr", "--colour-gop", "8")
    assert res.returncode == 0, res.stderr
    [new] = F.list_episodes(tmp_path / "small" / src.parent.name)
    with EpisodeReader(src) as a, EpisodeReader(new) as b:
        n = a.num_frames
        assert b.num_frames == n and set(b.depth_every.values()) == {4}
        cc = b.meta["storage"]["colour_codec"]
        assert (cc["preset"], cc["crf"], cc["tune"], cc["gop"]) == ("veryfast", 17, "psnr", 8)
        for c in a.camera_names:
            for k in range(n):
                np.testing.assert_array_equal(b.raw_depth(c, k), a.raw_depth(c, k - k % 4))
    cfg = PoseVLAConfig.from_dict(yaml.safe_load((Path(__file__).resolve().parents[1] / "models" / "tiny.yaml").read_text()))
    cfg_views = [v for v in cfg.views]
    full, small = EpisodeChunkDataset([src], cfg), EpisodeChunkDataset([new], cfg)
    try:
        assert [t for _, t in small.index] == list(range(0, n, 4)) and small.held_depth_samples == n - len(small)
        assert len(full) == n and full.held_depth_samples == 0
        for t in (0, 4, 8):
            sa, sb = full[t], small[t // 4]
            for v in cfg_views:
                np.testing.assert_array_equal(sb.observation.views[v].depth_prior, sa.observation.views[v].depth_prior)
            np.testing.assert_array_equal(sb.actions, sa.actions)
    finally:
        full.close()
        small.close()
    info = _cli("info", str(new))
    assert info.returncode == 0 and "video (depth every 4 frames)" in info.stdout, info.stdout
    bad = _cli("convert", str(src), "--out", str(tmp_path / "bad"), "--depth-every", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "posevla dataset convert: episode depth_every=0: an integer in 1..30 (1: depth with every frame)"]
