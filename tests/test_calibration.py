"""Calibration files (schema and refusals) and the camera-to-base transform of chunks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from posevla.calibration.files import HandEyeCalibration, file_sha256, load_calibrations
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.geometry import se3
from posevla.types import ActionChunk, ArmChunk

REPO = Path(__file__).resolve().parents[1]


def test_shipped_calibrations_load_and_hash() -> None:
    calibs = load_calibrations(REPO / "calibration")
    assert set(calibs) == {"head_camera_color_optical_frame", "left_wrist_camera_color_optical_frame",
                           "right_wrist_camera_color_optical_frame"}
    assert calibs["left_wrist_camera_color_optical_frame"].arm == "left"
    assert len(file_sha256(REPO / "calibration" / "head_camera.yaml")) == 64


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((REPO / "calibration" / "head_camera.yaml").read_text())
    mutate(data)
    p = tmp_path / "calib.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["transform"]["matrix"][0].__setitem__(0, 2.0), "transform.matrix"),
    (lambda d: d["transform"].__setitem__("xyz", [0.0, 0.0, 0.0]), "disagree"),
    (lambda d: d.__setitem__("child_frame", "tail_camera"), "child_frame"),
    (lambda d: d.__setitem__("parent_frame", "world"), "parent_frame"),
    (lambda d: d.__setitem__("kind", "eye_on_head"), "kind"),
    (lambda d: d.pop("camera_serial"), "camera_serial"),
    (lambda d: d.__setitem__("schema_version", 7), "schema_version"),
])
def test_bad_calibration_files_are_refused_naming_file_and_field(tmp_path, mutate, field) -> None:
    p = _write(tmp_path, mutate)
    with pytest.raises(ValueError, match=f"calib.yaml.*{field}"):
        HandEyeCalibration.load(p)


def test_serial_mismatch_and_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="camera_serial.*123"):
        HandEyeCalibration.load(REPO / "calibration" / "head_camera.yaml", expected_serial="123")
    with pytest.raises(ValueError, match="does not exist"):
        HandEyeCalibration.load(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("transform: [unclosed")
    with pytest.raises(ValueError, match="broken.yaml"):
        HandEyeCalibration.load(tmp_path / "broken.yaml")


def test_save_load_round_trip(tmp_path) -> None:
    T = se3.T_from_xyz_rpy([0.01, -0.07, 0.02], [0.1, -0.2, 0.3])
    c = HandEyeCalibration("eye_in_hand", "right_tcp", "right_wrist_camera_color_optical_frame", T, "42", "tsai",
                           "2026-11-24", {"translation_mm": 0.8, "rotation_deg": 0.2, "samples": 25})
    back = HandEyeCalibration.load(c.save(tmp_path / "w.yaml"))
    np.testing.assert_allclose(back.T_parent_child, T, atol=1e-12)
    assert back.residuals["samples"] == 25 and back.camera_serial == "42"


def test_uncertainty_round_trip_and_refusals(tmp_path) -> None:
    T = se3.T_from_xyz_rpy([0.01, -0.07, 0.02], [0.1, -0.2, 0.3])
    c = HandEyeCalibration("eye_in_hand", "left_tcp", "left_wrist_camera_color_optical_frame", T, "42", "refined",
                           "2026-11-26", {"samples": 20}, uncertainty={"translation_mm": [0.25, 0.3, 0.15],
                                                                      "rotation_deg": [0.04, 0.05, 0.2]})
    back = HandEyeCalibration.load(c.save(tmp_path / "u.yaml"))
    assert back.uncertainty == {"translation_mm": [0.25, 0.3, 0.15], "rotation_deg": [0.04, 0.05, 0.2]}
    assert HandEyeCalibration.load(REPO / "calibration" / "head_camera.yaml").uncertainty == {}  # optional
    for bad, fld in [({"translation_mm": [0.1, 0.1], "rotation_deg": [0.1, 0.1, 0.1]}, "uncertainty_1sigma.translation_mm"),
                     ({"translation_mm": [0.1, 0.1, 0.1], "rotation_deg": [0.1, -0.1, 0.1]}, "uncertainty_1sigma.rotation_deg"),
                     ({"translation_mm": [0.1, 0.1, 0.1]}, "uncertainty_1sigma.rotation_deg"),
                     ({"translation_mm": [1, 1, 1], "rotation_deg": [1, 1, 1], "scale": [1]}, "uncertainty_1sigma.scale"),
                     ([0.1], "uncertainty_1sigma")]:
        p = _write(tmp_path, lambda d, bad=bad: d.__setitem__("uncertainty_1sigma", bad))
        with pytest.raises(ValueError, match=f"calib.yaml: field {fld}"):
            HandEyeCalibration.load(p)
    p = _write(tmp_path, lambda d: d["residuals"].__setitem__("samples", "many"))
    with pytest.raises(ValueError, match="field residuals values must be numbers"):
        HandEyeCalibration.load(p)


def _chunk(frame: str, stamp: int, T: np.ndarray) -> ActionChunk:
    return ActionChunk(frame, stamp, 0.02, {"left": ArmChunk(T, np.linspace(0, 1, len(T)))})


def test_head_chunk_to_base_matches_independent_composition() -> None:
    calibs = load_calibrations(REPO / "calibration")
    tf = CameraToBase(calibs, {})
    rng = np.random.default_rng(0)
    T_cam = se3.T_from_xyz_rpy(rng.normal(0, 0.2, (5, 3)) + [0, 0, 0.8], rng.uniform(-1, 1, (5, 3)))
    out = tf.chunk_to_base(_chunk("head_camera_color_optical_frame", 10, T_cam))
    T_base_head = calibs["head_camera_color_optical_frame"].T_parent_child
    for k in range(5):
        p_cam = T_cam[k][:3, 3]
        np.testing.assert_allclose(out.arms["left"].T[k][:3, 3], T_base_head[:3, :3] @ p_cam + T_base_head[:3, 3])
    assert out.frame_id == "base_link" and out.stamp_ns == 10


def test_wrist_chunk_uses_tcp_pose_interpolated_at_the_observation_stamp() -> None:
    calibs = load_calibrations(REPO / "calibration")
    hist = PoseHistory()
    T_a = se3.T_from_xyz_rpy([0.4, 0.3, 0.3], [np.pi, 0, 0])
    T_b = se3.T_from_xyz_rpy([0.5, 0.3, 0.2], [np.pi, 0, 0.4])
    hist.add(1_000_000_000, T_a)
    hist.add(1_100_000_000, T_b)
    hist.add(1_200_000_000, T_b)  # the latest pose: must NOT be used for a stamp in between
    tf = CameraToBase(calibs, {"left": hist})
    T_cam = np.tile(np.eye(4), (2, 1, 1))
    out = tf.chunk_to_base(_chunk("left_wrist_camera_color_optical_frame", 1_050_000_000, T_cam))
    T_mid = se3.slerp_T(T_a, T_b, 0.5)
    expected = T_mid @ calibs["left_wrist_camera_color_optical_frame"].T_parent_child
    np.testing.assert_allclose(out.arms["left"].T[0], expected, atol=1e-12)
    with pytest.raises(ValueError, match="after the newest TCP pose"):
        tf.chunk_to_base(_chunk("left_wrist_camera_color_optical_frame", 3_000_000_000, T_cam))
    with pytest.raises(ValueError, match="no calibration"):
        tf.chunk_to_base(_chunk("kitchen_camera", 1, T_cam))
    with pytest.raises(ValueError, match="right arm"):
        tf.chunk_to_base(_chunk("right_wrist_camera_color_optical_frame", 1, T_cam))
