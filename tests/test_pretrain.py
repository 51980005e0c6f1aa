"""Pose pre-training data path: readers, targets, exact 3D IoU, AP15, robust decoding, tokenizer fit, mixtures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from posevla.geometry import se3
from posevla.model.config import PoseVLAConfig
from posevla.model.pose_sequence import parse_tuples
from posevla.model.pose_tokens import PoseTokenizer
from posevla.pretrain import synthetic
from posevla.pretrain.bop import BOPReader
from posevla.pretrain.boxes import Box3D, box_iou_3d, omni3d_dimensions, omni3d_size_xyz
from posevla.pretrain.evaluation import DecodeStats, average_precision, decode_answer
from posevla.pretrain.mixture import Mixture, fit_values, read_mixture
from posevla.pretrain.omni3d import Omni3DReader
from posevla.pretrain.records import ViewMaker, model_pixel
from posevla.pretrain.targets import NO_OBJECT, grounding_samples

REPO = Path(__file__).resolve().parents[1]
CFG = PoseVLAConfig.from_yaml(REPO / "models" / "tiny.yaml")


def box(c, s, rpy=(0.0, 0.0, 0.0)) -> Box3D:
    return Box3D(se3.T_from_xyz_rpy(np.array(c, float), np.array(rpy, float)), np.array(s, float))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return synthetic.write_dataset(tmp_path_factory.mktemp("syn"), 12, "train", seed=3)


def mixture_file(tmp: Path, data: dict, weights=(1.0, 1.0)) -> Path:
    path = tmp / "mix.yaml"
    path.write_text(yaml.safe_dump({"sources": [
        {"name": "o3d", "format": "omni3d", "json": str(data["omni3d_json"]), "image_root": str(data["omni3d_root"]),
         "depth_root": str(data["omni3d_depth_root"]), "weight": weights[0]},
        {"name": "bop", "format": "bop", "root": str(data["bop_root"]), "split": "train",
         "object_names": str(data["bop_root"] / "object_names.json"), "weight": weights[1]}]}))
    return path


# ------------------------------------------------------------------------------------------ IoU
@pytest.mark.parametrize("a, b, expected", [
    (box([0, 0, 1], [1, 1, 1]), box([0, 0, 1], [1, 1, 1]), 1.0),                           # identical
    (box([0, 0, 1], [1, 1, 1]), box([0.5, 0, 1], [1, 1, 1]), 1 / 3),                       # shifted by half
    (box([0, 0, 1], [1, 1, 1]), box([0.25, 0.25, 1.25], [1, 1, 1]), 0.421875 / (2 - 0.421875)),  # shifted in 3 axes
    (box([0, 0, 1], [2, 1, 1]), box([0, 0, 1], [2, 1, 1], (0, 0, np.pi / 2)), 1 / 3),      # rotated 90 deg
    (box([0, 0, 1], [1, 1, 1]), box([0, 0, 1], [1, 1, 1], (0, np.pi / 2, 0)), 1.0),        # cube rotated 90 deg
    (box([0, 0, 1], [1, 1, 1]), box([0, 0, 1], [1, 1, 1], (0, 0, np.pi / 4)), 1 / np.sqrt(2)),  # 45 deg: octagon
    (box([0, 0, 1], [1, 1, 1]), box([3, 0, 1], [1, 1, 1]), 0.0),                           # disjoint
    (box([0, 0, 1], [1, 1, 1]), box([1, 0, 1], [1, 1, 1]), 0.0),                           # touching faces
    (box([0, 0, 1], [1, 1, 1]), box([0.1, -0.2, 1.05], [0.5, 0.4, 0.3]), 0.06),            # nested
    (box([0, 0, 1], [0.2, 0.3, 0.4], (0.3, -0.7, 1.1)), box([0, 0, 1], [0.2, 0.3, 0.4], (0.3, -0.7, 1.1)), 1.0),
])
def test_iou_analytic_cases(a: Box3D, b: Box3D, expected: float) -> None:
    assert box_iou_3d(a, b) == pytest.approx(expected, abs=1e-6)
    assert box_iou_3d(b, a) == pytest.approx(expected, abs=1e-6)


def test_iou_matches_monte_carlo_for_general_orientations() -> None:
    """An independent estimate: the fraction of uniform samples in the union that lie in both boxes."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = box(rng.uniform(-0.05, 0.05, 3) + [0, 0, 1], rng.uniform(0.1, 0.3, 3), rng.uniform(-np.pi, np.pi, 3))
        b = box(rng.uniform(-0.05, 0.05, 3) + [0, 0, 1], rng.uniform(0.1, 0.3, 3), rng.uniform(-np.pi, np.pi, 3))
        p = rng.uniform(-0.4, 0.4, (400_000, 3)) + [0, 0, 1]

        def inside(bx: Box3D, p: np.ndarray = p) -> np.ndarray:
            local = se3.transform_points(se3.invert_T(bx.T_cam_obj), p)
            return np.all(np.abs(local) <= bx.size_xyz / 2, axis=1)

        ia, ib = inside(a), inside(b)
        mc = np.count_nonzero(ia & ib) / max(1, np.count_nonzero(ia | ib))
        assert box_iou_3d(a, b) == pytest.approx(mc, abs=0.01)


def test_corner_order_and_omni3d_dimensions() -> None:
    b = Box3D(np.eye(4), omni3d_size_xyz([0.3, 0.2, 0.1]))  # width 0.3 (z), height 0.2 (y), length 0.1 (x)
    c = b.corners()
    np.testing.assert_allclose(c[0], [-0.05, -0.1, -0.15])
    np.testing.assert_allclose(c[1], [0.05, -0.1, -0.15])
    np.testing.assert_allclose(c[2], [0.05, 0.1, -0.15])
    np.testing.assert_allclose(c[6], [0.05, 0.1, 0.15])
    np.testing.assert_allclose(omni3d_dimensions(b.size_xyz), [0.3, 0.2, 0.1])


# ------------------------------------------------------------------------------------------ readers
def test_readers_round_trip_generated_files(data: dict) -> None:
    o3d = list(Omni3DReader(data["omni3d_json"], data["omni3d_root"], data["omni3d_depth_root"]))
    bop = list(BOPReader(data["bop_root"], "train", data["bop_root"] / "object_names.json"))
    truth = data["scenes"]
    assert len(o3d) == len(bop) == len(truth) == 12
    n = 0
    for a, b, s in zip(o3d, bop, truth):
        for img in (a, b):
            np.testing.assert_allclose(img.intrinsics.K, s.intrinsics.K, atol=1e-12)
            assert (img.intrinsics.width, img.intrinsics.height) == (s.intrinsics.width, s.intrinsics.height)
            assert [o.category for o in img.objects] == [o.model.name for o in s.objects]
            for o, so in zip(img.objects, s.objects):
                np.testing.assert_allclose(o.box.T_cam_obj, so.box.T_cam_obj, atol=1e-9)
                np.testing.assert_allclose(o.box.size_xyz, so.box.size_xyz, atol=1e-12)
                assert box_iou_3d(o.box, so.box) == pytest.approx(1.0, abs=1e-6)
                n += 1
            np.testing.assert_array_equal(img.load_rgb(), s.rgb)
        assert np.abs(a.load_depth() - s.depth_m).max() <= 0.0005 + 1e-6  # mm quantisation
        assert np.abs(b.load_depth() - s.depth_m).max() <= 0.00005 + 1e-6  # BOP depth_scale 0.1 mm
        for o, so in zip(a.objects, s.objects):
            assert o.box2d == pytest.approx(so.box2d)
    assert n > 12


def test_omni3d_reader_skips_invalid_objects_and_names_bad_fields(tmp_path: Path, data: dict) -> None:
    doc = json.loads(Path(data["omni3d_json"]).read_text())
    doc["annotations"][0]["valid3D"] = False
    doc["annotations"][1]["behind_camera"] = True
    doc["annotations"][2]["R_cam"] = (-np.eye(3)).tolist()  # det -1: not a rotation
    path = tmp_path / "o.json"
    path.write_text(json.dumps(doc))
    r = Omni3DReader(path, data["omni3d_root"])
    total = sum(len(i.objects) for i in r)
    assert total == len(doc["annotations"]) - 3
    assert r.skipped == {"not valid3D": 1, "behind camera": 1, "R_cam not a rotation": 1}
    assert all(i.depth_path is None for i in r)  # no depth_root: the depth modality is masked
    del doc["annotations"][3]["center_cam"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="annotation 3 field 'center_cam'"):
        list(Omni3DReader(path, data["omni3d_root"]))


def test_intrinsics_follow_the_resize_pad_exactly(data: dict) -> None:
    """The box centre's source pixel, mapped into the model image, lies on the ray of the 3D centre."""
    img = next(iter(Omni3DReader(data["omni3d_json"], data["omni3d_root"], data["omni3d_depth_root"])))
    view = ViewMaker(CFG.image_size)(img)
    assert view.rgb.shape == (CFG.image_size, CFG.image_size, 3)
    assert view.depth_prior is not None and view.depth_prior[..., 1].any()
    assert not view.depth_prior[0, :, 1].any()  # the pad rows (160x120 -> 112x84 + 14 rows each side) are masked
    for o in img.objects:
        c = o.box.centre
        uv_src = np.array([img.intrinsics.fx * c[0] / c[2] + img.intrinsics.cx,
                           img.intrinsics.fy * c[1] / c[2] + img.intrinsics.cy])
        uv = model_pixel(uv_src, img.intrinsics, view.intrinsics)
        ray = view.intrinsics.K_inv @ np.r_[uv, 1.0]
        np.testing.assert_allclose(ray, c / c[2], atol=1e-12)
        # and the raymap at the nearest model pixel is within half a pixel's ray of it
        i, j = int(round(uv[0])), int(round(uv[1]))
        assert np.abs(view.raymap[j, i, :2] - ray[:2]).max() <= 0.5 / view.intrinsics.fx + 1e-6


# ------------------------------------------------------------------------------------------ targets
def fitted_tokenizer(data: dict, tmp: Path, num_bins: int = 256) -> PoseTokenizer:
    t, s, _ = fit_values(read_mixture(mixture_file(tmp, data)))
    return PoseTokenizer(num_bins).fit(t, s)


def test_grounding_targets_decode_within_half_a_bin(data: dict, tmp_path: Path) -> None:
    tok = fitted_tokenizer(data, tmp_path)
    views = ViewMaker(CFG.image_size)
    checked = 0
    for img in Omni3DReader(data["omni3d_json"], data["omni3d_root"], data["omni3d_depth_root"]):
        samples = grounding_samples(img, views(img), CFG, tok, np.random.default_rng(0), negatives=5)
        for s in samples:
            text = s.sample.pose_text
            objs = sorted((o for o in img.objects if o.category == s.category), key=lambda o: o.distance_m)
            if not objs:
                assert text == NO_OBJECT and s.gt_boxes == []
                continue
            tuples = parse_tuples(text, tok)
            assert len(tuples) == len(objs)
            dists = [o.distance_m for o in objs]
            assert dists == sorted(dists)  # nearest first
            for tp, o in zip(tuples, objs):
                assert tp.category == s.category
                xyz, rpy = se3.xyz_rpy_from_T(o.box.T_cam_obj)
                dxyz, drpy = se3.xyz_rpy_from_T(tp.T_cam_obj)
                lo, hi = tok.bin_bounds("trans_xy", tok.encode_translation(xyz)[:2])
                assert np.all(np.abs(dxyz[:2] - xyz[:2]) <= (hi - lo) / 2 + 1e-12)
                lo, hi = tok.bin_bounds("trans_z", tok.encode_translation(xyz)[2:])
                assert abs(dxyz[2] - xyz[2]) <= (hi - lo)[0] / 2 + 1e-12
                wrapped = (drpy - rpy + np.pi) % (2 * np.pi) - np.pi
                assert np.all(np.abs(wrapped) <= np.pi / tok.num_bins + 1e-9)
                lo, hi = tok.bin_bounds("size", tok.encode_size(o.box.size_xyz))
                assert np.all(np.abs(tp.size - o.box.size_xyz) <= (hi - lo) / 2 + 1e-12)
                checked += 1
    assert checked >= 12


# ------------------------------------------------------------------------------------------ AP and decoding
def test_average_precision_hand_computed() -> None:
    g1, g2 = box([0, 0, 1], [0.1, 0.1, 0.1]), box([0.3, 0, 1], [0.1, 0.1, 0.1])
    far = box([0, 0, 2], [0.1, 0.1, 0.1])
    assert average_precision([("cup", "a", [g1], [g1]), ("cup", "b", [g2], [g2])])["ap"] == pytest.approx(100.0)
    # one hit, one miss: precision 1 up to recall 0.5 (51 of the 101 recall points), 0 after
    res = average_precision([("cup", "a", [g1], [g1]), ("cup", "b", [far], [g2])])
    assert res["ap"] == pytest.approx(100.0 * 51 / 101)
    assert res["per_category"]["cup"] == {"ap": pytest.approx(100 * 51 / 101), "gt": 2, "tp": 1, "fp": 1}
    # a duplicate of a matched box is a false positive; a category without ground truth is not averaged
    res = average_precision([("cup", "a", [g1, g1], [g1]), ("bowl", "a", [far], [])])
    assert res["per_category"]["cup"]["fp"] == 1 and "bowl" not in res["per_category"]
    assert res["ap"] == pytest.approx(100.0)
    # IoU just under 0.15 misses, just over matches
    shift = box([0.0739, 0, 1], [0.1, 0.1, 0.1])  # IoU = 0.0261/0.1739 = 0.1501
    assert average_precision([("cup", "a", [shift], [g1])])["ap"] == pytest.approx(100.0)
    shift = box([0.0741, 0, 1], [0.1, 0.1, 0.1])
    assert average_precision([("cup", "a", [shift], [g1])])["ap"] == 0.0


def test_decoding_counts_malformed_output_and_never_raises(data: dict, tmp_path: Path) -> None:
    tok = fitted_tokenizer(data, tmp_path, 64)
    good = "red box <loc0100><loc0200> <trans_xy_3><trans_xy_4><trans_z_5> <rot_1><rot_2><rot_3> <size_1><size_2><size_3>"
    stats = DecodeStats()
    assert len(decode_answer(good + " ; " + good, "red box", tok, stats)) == 2
    assert decode_answer(NO_OBJECT, "red box", tok, stats) == [] and stats.no_object == 1
    assert decode_answer(good.replace("red", "blue"), "red box", tok, stats) == [] and stats.wrong_category == 1
    assert decode_answer(good.rsplit(" ", 1)[0], "red box", tok, stats) == [] and stats.missing_size == 1
    assert decode_answer(good + " ; red box <loc0100>", "red box", tok, stats) != []
    assert stats.malformed_tuples == 1
    assert decode_answer(good.replace("trans_z_5", "trans_z_999"), "red box", tok, stats) == []  # bin out of range
    rng = np.random.default_rng(0)
    pieces = ["red box", " ", ";", "<loc0001>", "<trans_xy_1>", "<trans_z_2>", "<rot_3>", "<size_4>", "<size_9999>",
              "<", ">", "\u00e9", "<eos>", "no object", "\n"]
    before = stats.answers
    for _ in range(300):
        text = "".join(pieces[i] for i in rng.integers(len(pieces), size=rng.integers(0, 30)))
        decode_answer(text, "red box", tok, stats)
    decode_answer(None, "red box", tok, stats)  # type: ignore[arg-type]
    assert stats.answers == before + 301
    assert stats.unparsable_answers > 100


# ------------------------------------------------------------------------------------------ mixtures and CLI
def test_mixture_draws_sources_by_weight(data: dict, tmp_path: Path) -> None:
    tok = PoseTokenizer(64).with_default_edges()
    mix = Mixture(read_mixture(mixture_file(tmp_path, data, (3.0, 1.0))), CFG, tok, seed=0, buffer=4)
    samples = [next(mix) for _ in range(160)]
    share = mix.drawn["o3d"] / 160
    assert 0.62 <= share <= 0.88  # 0.75 expected; binomial sd 0.034
    assert {s.source for s in samples} == {"o3d", "bop"}
    assert all(s.sample.pose_text for s in samples)


@pytest.mark.parametrize("entry, message", [
    ({"format": "omni3d", "json": "a.json", "image_root": ".", "colour": 1}, "unknown field(s) ['colour']"),
    ({"format": "bop", "root": "."}, "sources[0].split is required"),
    ({"format": "lerobot", "root": "."}, "sources[0].cache is required"),
    ({"format": "rosbag"}, "sources[0].format='rosbag'"),
    ({"format": "bop", "root": ".", "split": "x", "weight": -1}, "sources[0].weight=-1.0"),
])
def test_mixture_errors_name_the_field(tmp_path: Path, entry: dict, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"sources": [entry]}))
    with pytest.raises(ValueError, match=None) as err:
        read_mixture(path)
    assert message in str(err.value) and str(path) in str(err.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posevla.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_tokenizer_fit_cli_reports_worst_case_error(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "bins.json"
    r = run_cli("tokenizer", "fit", "--data", str(mixture_file(tmp_path, data)), "--out", str(out), "--num-bins", "32")
    assert r.returncode == 0, r.stderr
    assert "worst-case error" in r.stdout and "trans_z" in r.stdout
    tok = PoseTokenizer.load(out)
    assert tok.num_bins == 32
    rep = json.loads(out.with_suffix(".report.json").read_text())
    e = tok.edges["trans_z"]
    assert rep["trans_z"]["worst_case_mm"] == pytest.approx(np.diff(e).max() / 2 * 1000)
    assert rep["trans_z"]["max_error_on_sample_mm"] <= rep["trans_z"]["worst_case_mm"] + 1e-9
    # equal frequency: every z bin holds about the same number of the fitted values
    t, _s, _ = fit_values(read_mixture(mixture_file(tmp_path, data)))
    counts = np.bincount(tok.encode_translation(t)[:, 2], minlength=32)
    assert counts.max() - counts.min() <= 2


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sources": [{"format": "omni3d", "json": "x.json", "image_root": ".", "wat": 1}]}))
    for args in (("pretrain", "--stage", "grounding", "--data", str(bad), "--out", str(tmp_path / "o")),
                 ("tokenizer", "fit", "--data", str(bad), "--out", str(tmp_path / "b.json")),
                 ("pretrain", "--stage", "grounding", "--data", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)),
                 ("pretrain", "--stage", "grounding", "--data", str(bad), "--out", str(tmp_path), "--lr", "-1")):
        r = run_cli(*args)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("pretrain", "--help")
    assert r.returncode == 0 and "torchrun" in r.stdout and "--stage" in r.stdout


def test_synthetic_focal_scale_zooms_and_bad_values_exit_2(tmp_path: Path) -> None:
    """--focal-scale sets fx = fy = scale x width: the same scene seen 1.5/0.95 times larger (box 2D size)."""
    wide, zoom = synthetic.default_intrinsics(160, 120), synthetic.default_intrinsics(160, 120, focal_scale=1.5)
    assert wide.fx == pytest.approx(152.0) and zoom.fx == zoom.fy == pytest.approx(240.0)
    a = synthetic.make_scene(np.random.default_rng(4), wide, max_objects=1, fixed_camera=True, max_yaw_deg=0.0)
    b = synthetic.make_scene(np.random.default_rng(4), zoom, max_objects=1, fixed_camera=True, max_yaw_deg=0.0)
    np.testing.assert_allclose(a.objects[0].box.centre, b.objects[0].box.centre)  # same scene
    (ax0, _, ax1, _), (bx0, _, bx1, _) = a.objects[0].box2d, b.objects[0].box2d
    assert (bx1 - bx0) / (ax1 - ax0) == pytest.approx(1.5 / 0.95, rel=0.1)
    r = subprocess.run([sys.executable, "-m", "posevla.pretrain.synthetic", "--out", str(tmp_path / "s"),
                        "--focal-scale", "0"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "posevla synthetic: --focal-scale 0.0 must be in [0.2, 5]", r.stderr


def test_image_blind_baseline_answers_the_medoid_box() -> None:
    """The constant-answer baseline: the training box overlapping most others, scored like a model's answers."""
    from posevla.pretrain.evaluation import best_constant_answer, constant_answer_ap
    from posevla.pretrain.targets import PretrainSample

    train = [box([0, 0, 1], [0.1, 0.1, 0.1]), box([0.05, 0, 1], [0.1, 0.1, 0.1]), box([0.1, 0, 1], [0.1, 0.1, 0.1]),
             box([0.5, 0, 1], [0.1, 0.1, 0.1])]
    const = best_constant_answer({"cup": train})
    np.testing.assert_allclose(const["cup"].centre, [0.05, 0, 1])  # overlaps 3 of 4 at IoU >= 0.15 (1/3), the others 2 or 1
    held_out = [PretrainSample(None, "s", "cup", [box([0.06, 0, 1], [0.1, 0.1, 0.1])], "a"),  # IoU 0.82: hit
                PretrainSample(None, "s", "cup", [box([0.5, 0, 1], [0.1, 0.1, 0.1])], "b"),   # miss
                PretrainSample(None, "s", "mug", [box([0, 0, 1], [0.1, 0.1, 0.1])], "c")]     # no answer for mug
    res = constant_answer_ap(const, held_out)
    # cup: TP then FP, recall 0.5 at precision 1 -> 51 of 101 recall points; mug: no prediction -> 0
    assert res["per_category"]["cup"]["ap"] == pytest.approx(100 * 51 / 101)
    assert res["per_category"]["mug"]["ap"] == 0.0 and res["ap"] == pytest.approx(100 * 51 / 101 / 2)
