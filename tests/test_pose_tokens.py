"""Pose tokens: round trips within half a bin, equal-frequency bins on skewed data, files."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posevla.geometry import se3
from posevla.model.pose_sequence import (
    PoseParseError,
    PoseTrajectory,
    PoseTuple,
    encode_trajectory,
    encode_tuples,
    parse_trajectory,
    parse_tuples,
    parse_tuples_lenient,
)
from posevla.model.pose_tokens import PoseTokenizer


@pytest.fixture(scope="module")
def fitted() -> tuple[PoseTokenizer, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.c_[rng.normal(0, 0.15, (20000, 2)), rng.lognormal(np.log(0.8), 0.4, 20000)]
    sizes = rng.gamma(2.0, 0.05, (5000, 3))
    return PoseTokenizer(1024).fit(t, sizes), t, sizes


def test_translation_and_size_round_trip_within_half_a_bin(fitted) -> None:
    tok, t, sizes = fitted
    b = tok.encode_translation(t)
    back = tok.decode_translation(b)
    lo_xy, hi_xy = tok.bin_bounds("trans_xy", b[:, :2])
    lo_z, hi_z = tok.bin_bounds("trans_z", b[:, 2])
    err = np.abs(back - t)
    assert np.all(err[:, :2] <= (hi_xy - lo_xy) / 2 + 1e-12)
    assert np.all(err[:, 2] <= (hi_z - lo_z) / 2 + 1e-12)
    bs = tok.encode_size(sizes)
    lo, hi = tok.bin_bounds("size", bs)
    assert np.all(np.abs(tok.decode_size(bs) - sizes) <= (hi - lo) / 2 + 1e-12)


def test_rotation_round_trip_within_half_a_uniform_bin_and_exact_edges() -> None:
    tok = PoseTokenizer(1024)
    e = np.random.default_rng(1).uniform(-np.pi, np.pi, (5000, 3))
    err = np.abs(tok.decode_rotation(tok.encode_rotation(e)) - e)
    assert err.max() <= np.pi / 1024 + 1e-12
    assert tok.encode_rotation(np.array([-np.pi]))[0] == 0
    assert tok.encode_rotation(np.array([np.pi - 1e-12]))[0] == 1023
    assert tok.encode_rotation(np.array([np.pi]))[0] == 0  # wraps: [-pi, pi)
    assert tok.encode_rotation(np.array([0.0]))[0] == 512


def test_quantile_bins_give_near_uniform_token_frequencies_on_skewed_data(fitted) -> None:
    tok, _, _ = fitted
    rng = np.random.default_rng(5)  # fresh samples of the same skewed distributions
    z = rng.lognormal(np.log(0.8), 0.4, 200000)
    counts = np.bincount(tok.encode_translation(np.c_[np.zeros((z.size, 2)), z])[:, 2], minlength=1024)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert entropy > 0.99 * np.log(1024)
    # uniform bins over the same range would waste most tokens
    uniform = np.bincount(np.clip(((z - z.min()) / np.ptp(z) * 1024).astype(int), 0, 1023), minlength=1024)
    q = uniform / uniform.sum()
    assert -(q[q > 0] * np.log(q[q > 0])).sum() < 0.9 * np.log(1024)
    # bins are narrow where data is dense
    widths = np.diff(tok.edges["trans_z"])
    assert widths[512] < widths[5] and widths[512] < widths[1018]


def test_save_load_and_corrupt_files(tmp_path, fitted) -> None:
    tok, t, _ = fitted
    tok.save(tmp_path / "pose_bins.json")
    back = PoseTokenizer.load(tmp_path / "pose_bins.json")
    np.testing.assert_array_equal(back.encode_translation(t[:100]), tok.encode_translation(t[:100]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        PoseTokenizer.load(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text('{"format_version": 1, "num_bins": 4, "edges": {"trans_z": [0, 1]}}')
    with pytest.raises(ValueError, match="edges.trans_z"):
        PoseTokenizer.load(tmp_path / "short.json")
    with pytest.raises(ValueError, match="does not exist"):
        PoseTokenizer.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="fitted"):
        PoseTokenizer(8).encode_translation(np.zeros(3))


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    return se3.T_from_xyz_rpy(np.r_[rng.normal(0, 0.15, 2), rng.uniform(0.4, 1.5)], rng.uniform(-3, 3, 3))


def test_tuple_and_trajectory_round_trip(fitted) -> None:
    tok, _, _ = fitted
    rng = np.random.default_rng(2)
    tuples = [PoseTuple("red cup", (0.31, 0.77), _random_pose(rng), np.array([0.08, 0.08, 0.12])),
              PoseTuple("drawer handle", (0.9, 0.05), _random_pose(rng))]
    text = encode_tuples(tuples, tok)
    assert " ; " in text and text.startswith("red cup <loc0788><loc0317>")
    back = parse_tuples(text, tok)
    assert [b.category for b in back] == ["red cup", "drawer handle"]
    for a, b in zip(tuples, back):
        assert np.allclose(a.center_uv, b.center_uv, atol=0.5 / 1024 + 1e-12)
        assert np.linalg.norm(a.T_cam_obj[:3, 3] - b.T_cam_obj[:3, 3]) < 0.01
        assert se3.rotation_angle(a.T_cam_obj[:3, :3].T @ b.T_cam_obj[:3, :3]) < 0.01
    assert back[1].size is None and back[0].size is not None
    traj = PoseTrajectory("gripper", [_random_pose(rng) for _ in range(5)])
    tb = parse_trajectory(encode_trajectory(traj, tok), tok)
    assert len(tb.poses) == 5
    assert max(np.linalg.norm(a[:3, 3] - b[:3, 3]) for a, b in zip(traj.poses, tb.poses)) < 0.01


def test_malformed_output_gives_parse_error_with_position(fitted) -> None:
    tok, _, _ = fitted
    good = encode_tuples([PoseTuple("cup", (0.5, 0.5), _random_pose(np.random.default_rng(3)))], tok)
    for bad in [good[: len(good) // 2], good.replace("<rot_", "<trans_z_", 1), "cup <loc0001>", "<loc0001>",
                good + " <size_1>", "", "cup <loc0001><loc0002> hello", good.replace("trans_z", "trans_zz")]:
        with pytest.raises(PoseParseError) as info:
            parse_tuples(bad, tok)
        assert info.value.position >= 0
    tuples, errors = parse_tuples_lenient(good + " ; junk <loc0003>", tok)
    assert len(tuples) == 1 and len(errors) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab ;<>_0123456789") + ["<loc0012>", "<rot_5>", "<trans_xy_3>",
                                                              "<trans_z_9>", "<size_2>", "<rot_99999>"]),
                max_size=40).map("".join))
def test_any_garbage_raises_only_parse_errors(text: str) -> None:
    tok = PoseTokenizer(16).with_default_edges()
    try:
        parse_tuples(text, tok)
    except PoseParseError:
        pass
    try:
        parse_trajectory(text, tok)
    except PoseParseError:
        pass
    parse_tuples_lenient(text, tok)


def test_offline_tokenizer_single_ids_round_trip_and_save(tmp_path) -> None:
    from transformers import AutoTokenizer

    from posevla.model.text_tokenizer import build_offline_tokenizer, extend_tokenizer, pose_token_ids

    pt = PoseTokenizer(16).with_default_edges()
    tok = build_offline_tokenizer(pt)
    text = "Pick up the café cup <loc0012><loc1023> <trans_xy_3><trans_z_15> <rot_0><size_7>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for t in ("<loc0012>", "<trans_xy_3>", "<rot_0>", "<size_7>", "<image>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    groups = pose_token_ids(tok, pt)
    assert groups["rot"].shape == (16,) and len(set(np.concatenate(list(groups.values())))) == 64
    assert extend_tokenizer(tok, pt) == 0  # idempotent
    tok.save_pretrained(tmp_path / "tok")
    back = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert back(text, add_special_tokens=False)["input_ids"] == ids
