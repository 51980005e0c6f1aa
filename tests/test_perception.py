"""Synchroniser semantics and the observation builder (staleness, geometry, camera poses)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from posevla.calibration.files import load_calibrations
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.projection import project
from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder, StaleObservation
from posevla.perception.sync import ApproximateTimeSync
from posevla.types import CameraFrame

REPO = Path(__file__).resolve().parents[1]
MS = 1_000_000


def test_sync_emits_sets_within_slop_and_counts_drops() -> None:
    rng = np.random.default_rng(0)
    streams = ["head", "left_wrist", "right_wrist"]
    got = []
    sync = ApproximateTimeSync(streams, slop_s=0.010, queue_size=5, callback=got.append)
    dropped_frames = {7, 13, 21}
    for k in range(40):
        base = 1_000 * MS + k * 33 * MS
        for s in rng.permutation(streams):
            if s == "right_wrist" and k in dropped_frames:
                continue  # the camera skipped a frame
            sync.add(s, base + int(rng.integers(-3 * MS, 3 * MS)), (s, k))
    assert len(got) == 40 - len(dropped_frames) - 1 or len(got) == 40 - len(dropped_frames)
    for out in got:
        ks = {v[1] for v in out.values()}
        assert len(ks) == 1  # never mixes frames of different instants
    assert sync.stats()["dropped"] >= 2 * len(dropped_frames) - 2  # the partners of the skipped frames


def test_sync_never_pairs_beyond_slop() -> None:
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.005)
    assert sync.add("a", 0, 1) is None
    assert sync.add("b", 6 * MS, 2) is None
    assert sync.add("b", 4 * MS, 3) == {"a": 1, "b": 3}


def _frame(name: str, stamp: int, intr: CameraIntrinsics, depth: float = 1.0) -> CameraFrame:
    rgb = np.zeros((intr.height, intr.width, 3), np.uint8)
    d = np.full((intr.height, intr.width), depth, np.float32)
    return CameraFrame(name, rgb, d, intr, stamp, f"{name}_camera_color_optical_frame")


def _builder(hist: PoseHistory | None = None) -> ObservationBuilder:
    calibs = load_calibrations(REPO / "calibration")
    return ObservationBuilder(BuilderConfig(image_size=112, max_age_s=0.3, slop_s=0.02),
                              CameraToBase(calibs, {"left": hist or PoseHistory(), "right": PoseHistory()}))


def test_builder_makes_model_views_with_exact_geometry_and_poses() -> None:
    intr = CameraIntrinsics(386.0, 386.0, 319.5, 239.5, 640, 480)
    hist = PoseHistory()
    T_a, T_b = se3.T_from_xyz_rpy([0.4, 0.3, 0.3], [np.pi, 0, 0]), se3.T_from_xyz_rpy([0.5, 0.3, 0.3], [np.pi, 0, 0])
    hist.add(900 * MS, T_a)
    hist.add(1_100 * MS, T_b)
    b = _builder(hist)
    head = _frame("head", 1_000 * MS, intr)
    head.depth[10:20, 10:20] = np.nan
    wrist = _frame("left_wrist", 1_005 * MS, intr)
    obs = b.build({"left_wrist": wrist, "head": head}, None, "pick", now_ns=1_050 * MS)
    assert list(obs.views) == ["head", "left_wrist"] and obs.stamp_ns == 1_000 * MS
    v = obs.views["head"]
    assert v.rgb.shape == (112, 112, 3) and v.raymap.shape == (112, 112, 3) and v.depth_prior.shape == (112, 112, 2)
    assert np.isfinite(v.depth_prior).all()
    # a 3D point projects to the same ray through raw and model intrinsics
    p = np.array([0.1, -0.05, 0.8])
    uv = project(p, v.intrinsics)
    ray = v.raymap[int(round(uv[1])), int(round(uv[0]))]
    assert np.allclose(ray[:2] * 0.8, p[:2], atol=0.8 / v.intrinsics.fx)
    # wrist pose uses the TCP pose at the wrist image's stamp (interpolated), not the newest one
    expected = se3.slerp_T(T_a, T_b, 105 / 200) @ load_calibrations(REPO / "calibration")[wrist.frame_id].T_parent_child
    np.testing.assert_allclose(obs.views["left_wrist"].T_base_cam, expected, atol=1e-12)


def test_builder_refuses_stale_spread_inconsistent_and_future_frames() -> None:
    intr = CameraIntrinsics(386.0, 386.0, 319.5, 239.5, 640, 480)
    b = _builder()
    with pytest.raises(StaleObservation, match="too old"):
        b.build({"head": _frame("head", 0, intr)}, None, "x", now_ns=1_000 * MS)
    with pytest.raises(StaleObservation, match="too far apart"):
        b.build({"head": _frame("head", 1_000 * MS, intr), "right_wrist": _frame("right_wrist", 1_050 * MS, intr)},
                None, "x", now_ns=1_060 * MS)
    bad = _frame("head", 1_000 * MS, intr)
    bad.depth = np.zeros((240, 320), np.float32)
    with pytest.raises(StaleObservation, match="camera_info says 640x480"):
        b.build({"head": bad}, None, "x", now_ns=1_010 * MS)
    with pytest.raises(StaleObservation, match="future"):
        b.build({"head": _frame("head", 2_000 * MS, intr)}, None, "x", now_ns=1_000 * MS)
    with pytest.raises(StaleObservation, match="left_wrist camera pose"):
        b.build({"left_wrist": _frame("left_wrist", 1_000 * MS, intr)}, None, "x", now_ns=1_010 * MS)
    assert sum(b.refusals.values()) == 5


def test_view_crop_keeps_geometry_exact_and_only_crops_its_view() -> None:
    """A region of interest (model config view_crops) enlarges that region in the model image; a marked pixel
    lands where the model intrinsics project its 3D point, the raymap there is its ray, other views stay whole."""
    from posevla.model.config import PoseVLAConfig

    intr = CameraIntrinsics(139.0, 139.0, 79.5, 59.5, 160, 120)
    region = [0.0875, 0.0833, 0.4125, 0.5167]  # 52 x 52 px of 160 x 120, as models/closed_loop_roi.yaml
    calibs = load_calibrations(REPO / "calibration")
    hist = PoseHistory()
    hist.add(900 * MS, se3.T_from_xyz_rpy([0.4, 0.3, 0.3], [np.pi, 0, 0]))
    hist.add(1_100 * MS, se3.T_from_xyz_rpy([0.4, 0.3, 0.3], [np.pi, 0, 0]))
    b = ObservationBuilder(BuilderConfig(image_size=168, max_age_s=0.3, slop_s=0.02, crops={"head": region}),
                           CameraToBase(calibs, {"left": hist, "right": PoseHistory()}))
    p = np.array([-0.22, -0.10, 1.0])  # a point inside the region (optical frame, m)
    u, v = project(p, intr)
    head, wrist = _frame("head", 1_000 * MS, intr), _frame("left_wrist", 1_000 * MS, intr)
    head.rgb[int(round(v)), int(round(u))] = (255, 0, 0)
    head.depth[int(round(v)), int(round(u))] = 0.5
    obs = b.build({"head": head, "left_wrist": wrist}, None, "pick", now_ns=1_010 * MS)
    vh, vw = obs.views["head"], obs.views["left_wrist"]
    assert vh.intrinsics.fx == pytest.approx(139.0 * 168 / 52) and vh.intrinsics.width == 168
    assert vw.intrinsics.fx == pytest.approx(139.0 * 168 / 160)  # not cropped: resize with pad
    um, vm = project(p, vh.intrinsics)
    A = vh.intrinsics.K @ intr.K_inv  # source pixel -> model pixel (crop and resize are affine)
    mark = A @ [round(u), round(v), 1.0]  # the marked source pixel's centre
    red = np.argwhere(vh.rgb[..., 0] > 40)
    assert red.size and np.abs(red.mean(0) - mark[1::-1]).max() < 0.6  # the mark, ~3.2 model px wide, centred there
    assert np.abs(mark[:2] - [um, vm]).max() < 0.5 * 168 / 52 + 1e-9  # within half a source pixel of the point
    ray = vh.raymap[int(round(vm)), int(round(um))]
    assert np.allclose(ray[:2], p[:2] / p[2], atol=1.0 / vh.intrinsics.fx)
    near = np.argwhere(vh.depth_prior[..., 0] > 0)  # nearest-neighbour depth: the 0.5 m pixel is there too
    assert near.size
    with pytest.raises(ValueError, match="view_crops"):
        PoseVLAConfig(views=("head",), view_crops={"left_wrist": region})
    with pytest.raises(ValueError, match="view_crops"):
        PoseVLAConfig(views=("head",), view_crops={"head": [0.5, 0.0, 0.4, 1.0]})
