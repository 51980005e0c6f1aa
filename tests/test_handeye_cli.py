"""`posevla calibrate handeye | verify` end to end on recorded episodes (issue 13): the side-by-side report, the
uncertainty saved with the file, refused views, the depth scale warning, refusals without a traceback, and the
verify overlay. Boards and camera differ from the defaults (9x6 squares of 30 mm, 848x480 intrinsics)."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation
from test_handeye_trust import BOARD, INTR, Y_TRUE, views_of_board

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.verify import ARM_COLOURS_RGB, project_tcp
from posevla.cli import main
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.tools.synthetic_board import render_board, render_board_depth, robot_poses
from posevla.types import ArmState, RobotState

# a wrist camera 12 cm behind the TCP, looking along the tool z axis: the TCP is in its view
X_WRIST = se3.T_from_xyz_rpy([0.015, -0.04, -0.12], [0.05, -0.04, 1.5])
BOARD_ARGS = ["--board", "9x6", "--marker", "0.022", "--dictionary", "DICT_4X4_100"]
STILL = 5  # frames per pose (still_frames looks 2 frames either side)


def write_episode(root: Path, views: list[np.ndarray], depth: bool, hidden: int | None = None) -> Path:
    """Eye-in-hand recording on the left wrist: STILL identical frames per pose; view `hidden` shows only a
    2-square strip of the board (a row of corners)."""
    cam = "left_wrist"
    robot = robot_poses("eye_in_hand", views, X_WRIST, Y_TRUE)
    meta = {"instruction": "hand-eye calibration", "fps": 15.0, "cameras": {cam: "SER-42"}, "calibration": {}}
    w = EpisodeWriter(root, "calib", meta, {cam: INTR}, min_free_bytes=1)
    t = 1_700_000_000_000_000_000
    other = se3.T_from_xyz_rpy([0.3, -0.3, 0.2], [np.pi, 0, 0])
    s = BOARD.square_m
    for k, (T_tcp, T_view) in enumerate(zip(robot, views)):
        rgb = render_board(BOARD, T_view, INTR, visible_m=(0.0, s, 9 * s, 3 * s) if k == hidden else None)
        d = render_board_depth(BOARD, T_view, INTR) if depth else np.zeros((INTR.height, INTR.width), np.float32)
        for _ in range(STILL):
            arms = {"left": ArmState(T_tcp, np.zeros(6), 0.5, t), "right": ArmState(other, np.zeros(6), 0.5, t)}
            rec = FrameRecord(t, {cam: rgb}, {cam: d}, {cam: t}, RobotState(arms, t), np.zeros(14))
            deadline = time.monotonic() + 120
            while not w.add_frame(rec):
                assert time.monotonic() < deadline, "episode writer stalled"
                time.sleep(0.002)
            t += int(1e9 / 15)
    return w.finish(success=True)


@pytest.fixture(scope="module")
def episode(tmp_path_factory) -> Path:
    return write_episode(tmp_path_factory.mktemp("calib"), views_of_board(13, np.random.default_rng(31)), depth=True,
                         hidden=4)


def _handeye(ep: Path, out: Path, *extra: str) -> int:
    return main(["calibrate", "handeye", "--episode", str(ep), "--camera", "left_wrist", "--out", str(out),
                 *BOARD_ARGS, *extra])


def test_report_uncertainty_and_refused_view_written_with_the_file(episode: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "left_wrist_camera.yaml"
    assert _handeye(episode, out, "--square", "0.03") == 0, capsys.readouterr()
    text = capsys.readouterr()
    print(text.out)
    assert "13 still poses, board seen in 13" in text.out
    lines = text.out.splitlines()
    table = [ln.split() for ln in lines if ln.strip().split(" ")[0] in ("tsai", "park", "horaud", "daniilidis", "refined")]
    assert [r[0] for r in table] == ["tsai", "park", "horaud", "daniilidis", "refined"]
    assert all(float(r[1]) < 0.5 for r in table)  # reprojection RMS px, noiseless renders
    assert float(table[-1][1]) <= min(float(r[1]) for r in table[:-1])
    assert "uncertainty (1 sigma, left_tcp axes): translation x" in text.out
    assert "rejected views (1 of 13):" in text.out and "corners nearly collinear" in text.out
    assert "depth scale check: depth / PnP distance 1.00" in text.out and "WARNING" not in text.err
    calib = HandEyeCalibration.load(out, expected_serial="SER-42")
    e_mm = np.linalg.norm(calib.T_parent_child[:3, 3] - X_WRIST[:3, 3]) * 1e3
    assert e_mm < 1.5 and np.rad2deg(se3.rotation_angle(calib.T_parent_child[:3, :3].T @ X_WRIST[:3, :3])) < 0.2
    assert set(calib.uncertainty) == {"translation_mm", "rotation_deg"}
    assert 0 < max(calib.uncertainty["translation_mm"]) < 1.0 and 0 < max(calib.uncertainty["rotation_deg"]) < 0.25
    assert calib.residuals["samples"] == 12 and calib.residuals["views_rejected"] == 1
    assert abs(calib.residuals["depth_scale_ratio"] - 1) < 0.01
    assert "refinement from opencv" in calib.method


def test_wrong_square_size_is_flagged_by_depth(episode: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w.yaml"
    assert _handeye(episode, out, "--square", "0.031") == 0
    err = capsys.readouterr().err
    assert "WARNING depth scale check: depth puts the board at 0.968 x the PnP distance" in err, err
    assert "is the printed square really 31.0 mm" in err and "30.0 mm would match" in err


def test_uncertainty_gate_and_bad_arguments(episode: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g.yaml"
    assert _handeye(episode, out, "--square", "0.03", "--max-sigma-mm", "0.0001") == 1
    assert "not written: 1-sigma uncertainty" in capsys.readouterr().err and not out.exists()
    assert _handeye(episode, out, "--square", "0.03", "--max-sigma-deg", "-1") == 2
    assert "--max-sigma-deg -1.0: must be > 0" in capsys.readouterr().err


def test_singular_solver_result_is_refused_without_traceback(episode: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cv2, "calibrateHandEye", lambda *a, **k: (np.diag([1.0, 1.0, -1.0]), np.zeros((3, 1))))
    out = tmp_path / "s.yaml"
    assert _handeye(episode, out, "--square", "0.03") == 2
    err = capsys.readouterr().err
    assert "every hand-eye solver failed (tsai: not a rotation (determinant -1.000)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_single_axis_recording_is_refused_with_the_motions_to_add(tmp_path: Path, capsys) -> None:
    T0 = views_of_board(1, np.random.default_rng(8))[0]
    views = [se3.make_T(Rotation.from_rotvec([0, 0, a]).as_matrix(), [0.01 * np.sin(5 * a), 0.0, 0.0]) @ T0
             for a in np.deg2rad(np.linspace(-40, 40, 8))]
    ep = write_episode(tmp_path / "data", views, depth=False)
    out = tmp_path / "d.yaml"
    assert _handeye(ep, out, "--square", "0.03") == 2
    err = capsys.readouterr().err
    assert "refused" in err and "all about nearly one axis" in err and "add poses rotated 20-45 deg" in err
    assert "Traceback" not in err and not out.exists()


def test_verify_overlay_puts_the_tcp_where_the_calibration_predicts(episode: Path, tmp_path: Path, capsys) -> None:
    calib_path = tmp_path / "c.yaml"
    assert _handeye(episode, calib_path, "--square", "0.03") == 0
    capsys.readouterr()
    png = tmp_path / "overlay.png"
    assert main(["calibrate", "verify", "--episode", str(episode), "--camera", "left_wrist", "--calibration",
                 str(calib_path), "--frames", "4", "--out", str(png)]) == 0
    text = capsys.readouterr().out
    calib = HandEyeCalibration.load(calib_path)
    (u, v), _ = project_tcp(se3.invert_T(calib.T_parent_child), INTR)  # own TCP: a fixed pixel of a wrist camera
    assert 0 <= u < INTR.width and 0 <= v < INTR.height
    assert f"frame 0 left TCP: pixel ({u:.1f}, {v:.1f})" in text
    img = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert img.shape == (2 * INTR.height, 2 * INTR.width, 3)
    for r0, c0 in ((0, 0), (0, INTR.width), (INTR.height, 0), (INTR.height, INTR.width)):
        np.testing.assert_array_equal(img[r0 + int(round(v)), c0 + int(round(u))], ARM_COLOURS_RGB["left"])
    # a calibration of another camera is refused, naming the file
    wrong = HandEyeCalibration.load(calib_path)
    data = wrong.to_dict()
    data.update(parent_frame="right_tcp", child_frame="right_wrist_camera_color_optical_frame")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    assert main(["calibrate", "verify", "--episode", str(episode), "--camera", "left_wrist", "--calibration",
                 str(tmp_path / "r.yaml"), "--out", str(png)]) == 2
    assert "calibrates right_wrist_camera_color_optical_frame, not left_wrist" in capsys.readouterr().err
