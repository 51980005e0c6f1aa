"""Hand-eye calibration: the solver against known transforms, ChArUco detection on rendered images, and
`posevla calibrate handeye` end to end on recorded episodes (eye-in-hand wrist camera, eye-to-hand head)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.handeye import CharucoBoard, detect_board, solve_hand_eye, still_frames
from posevla.cli import main
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.tools.synthetic_board import render_board
from posevla.types import ArmState, RobotState

BOARD = CharucoBoard()
INTR = CameraIntrinsics(600.0, 600.0, 319.5, 239.5, 640, 480)
X_WRIST = se3.T_from_xyz_rpy([0.03, -0.06, 0.05], [0.1, -0.2, 1.5])  # T_tcp_cam
X_HEAD = se3.T_from_xyz_rpy([0.10, 0.0, 0.75], [-2.3, 0.0, -1.57])  # T_base_cam
T_BASE_BOARD = se3.T_from_xyz_rpy([0.35, -0.1, 0.0], [np.pi, 0.0, 0.3])  # board on the table, z into it
T_TCP_BOARD = se3.T_from_xyz_rpy([-0.14, -0.10, 0.12], [0.0, 0.0, 0.0])  # board held in the gripper


def views_of_board(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """T_cam_target for n varied camera placements that see the whole board (0.35-0.5 m, tilts <= 30 deg)."""
    centre = np.array([BOARD.cols * BOARD.square_m / 2, BOARD.rows * BOARD.square_m / 2, 0.0])
    out = []
    for _ in range(n):
        tilt, az, roll = np.deg2rad(rng.uniform(8, 30)), rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(-30, 30))
        d = rng.uniform(0.35, 0.5)
        pos = centre + d * np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), -np.cos(tilt)])
        z = (centre - pos) / np.linalg.norm(centre - pos)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        R = np.column_stack([x, np.cross(z, x), z]) @ Rotation.from_rotvec([0, 0, roll]).as_matrix()
        out.append(se3.invert_T(se3.make_T(R, pos)))
    return out


def poses(kind: str, T_cam_target: list[np.ndarray]) -> list[np.ndarray]:
    """T_base_tcp that produce these board views."""
    if kind == "eye_in_hand":  # T_base_tcp = T_base_board @ inv(T_cam_board) @ inv(X)
        return [T_BASE_BOARD @ se3.invert_T(T) @ se3.invert_T(X_WRIST) for T in T_cam_target]
    return [X_HEAD @ T @ se3.invert_T(T_TCP_BOARD) for T in T_cam_target]  # board in the gripper


def _angle_deg(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.rad2deg(se3.rotation_angle(A[:3, :3].T @ B[:3, :3])))


@pytest.mark.parametrize("kind", ["eye_in_hand", "eye_to_hand"])
def test_solver_recovers_the_transform(kind: str) -> None:
    rng = np.random.default_rng(3)
    views = views_of_board(15, rng)
    robot = poses(kind, views)
    X = X_WRIST if kind == "eye_in_hand" else X_HEAD
    exact = solve_hand_eye(kind, robot, views)
    assert np.abs(exact.T - X).max() < 1e-6 and exact.summary["translation_mm"] < 1e-3
    # measurement noise of a real setup: 0.3 mm / 0.05 deg on the robot, 0.5 mm / 0.1 deg on the board
    noisy_r = [T @ se3.make_T(Rotation.from_rotvec(rng.normal(0, np.deg2rad(0.05), 3)).as_matrix(),
                              rng.normal(0, 3e-4, 3)) for T in robot]
    noisy_c = [se3.make_T(Rotation.from_rotvec(rng.normal(0, np.deg2rad(0.1), 3)).as_matrix(),
                          rng.normal(0, 5e-4, 3)) @ T for T in views]
    res = solve_hand_eye(kind, noisy_r, noisy_c)
    assert np.linalg.norm(res.T[:3, 3] - X[:3, 3]) < 3e-3 and _angle_deg(res.T, X) < 0.3
    assert 0.1 < res.summary["translation_mm"] < 5 and res.summary["samples"] == 15


def test_solver_refuses_too_few_or_mismatched_samples() -> None:
    views = views_of_board(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 3"):
        solve_hand_eye("eye_in_hand", poses("eye_in_hand", views), views)
    with pytest.raises(ValueError, match="2 TCP poses but 1 board poses"):
        solve_hand_eye("eye_in_hand", poses("eye_in_hand", views), views[:1])
    with pytest.raises(ValueError, match="kind 'eye_on_hand'"):
        solve_hand_eye("eye_on_hand", [], [])


def test_board_detection_on_rendered_images() -> None:
    for T in views_of_board(5, np.random.default_rng(1)):
        found = detect_board(render_board(BOARD, T, INTR), INTR, BOARD)
        assert found is not None
        assert np.linalg.norm(found[:3, 3] - T[:3, 3]) < 1.5e-3 and _angle_deg(found, T) < 0.3
    assert detect_board(np.full((480, 640, 3), 128, np.uint8), INTR, BOARD) is None
    with pytest.raises(ValueError, match="marker size"):
        CharucoBoard(7, 5, 0.04, 0.05)


def write_calibration_episode(root: Path, kind: str, n_poses: int = 14) -> Path:
    """The operator's recording: the arm stops at each pose for 6 frames and moves for 3 frames in between."""
    rng = np.random.default_rng(11 if kind == "eye_in_hand" else 12)
    cam = "left_wrist" if kind == "eye_in_hand" else "head"
    arm = "left" if kind == "eye_in_hand" else "right"
    views = views_of_board(n_poses, rng)
    robot = poses(kind, views)
    meta = {"instruction": "hand-eye calibration", "fps": 15.0, "cameras": {cam: "123456789012"}, "calibration": {}}
    w = EpisodeWriter(root, "calib", meta, {cam: INTR}, min_free_bytes=1)
    t, k = 1_700_000_000_000_000_000, 0
    frames: list[tuple[np.ndarray, np.ndarray]] = []  # (T_base_tcp, T_cam_target)
    for i in range(n_poses):
        frames += [(robot[i], views[i])] * 6
        if i + 1 < n_poses:
            for a in (0.25, 0.5, 0.75):  # moving: TCP and view interpolated (never a valid sample)
                Tr = se3.slerp_T(robot[i], robot[i + 1], a)
                frames.append((Tr, se3.slerp_T(views[i], views[i + 1], a)))
    for T_tcp, T_view in frames:
        other = se3.T_from_xyz_rpy([0.3, 0.3, 0.2], [np.pi, 0, 0])
        arms = {arm: ArmState(T_tcp, np.zeros(6), 0.5, t), ("right" if arm == "left" else "left"): ArmState(other, np.zeros(6), 0.5, t)}
        rec = FrameRecord(t, {cam: render_board(BOARD, T_view, INTR)}, {cam: np.zeros((480, 640), np.uint16)},
                          {cam: t}, RobotState(arms, t), np.zeros(14))
        while not w.add_frame(rec):
            time.sleep(0.001)
        t += int(1e9 / 15)
        k += 1
    return w.finish(success=True)


@pytest.mark.parametrize("kind", ["eye_in_hand", "eye_to_hand"])
def test_calibrate_handeye_cli_from_an_episode(tmp_path: Path, kind: str, capsys) -> None:
    ep = write_calibration_episode(tmp_path / "data", kind)
    cam, X = ("left_wrist", X_WRIST) if kind == "eye_in_hand" else ("head", X_HEAD)
    out = tmp_path / f"{cam}_camera.yaml"
    args = ["calibrate", "handeye", "--episode", str(ep), "--camera", cam, "--out", str(out),
            "--plot", str(tmp_path / "residuals.png")] + (["--arm", "right"] if kind == "eye_to_hand" else [])
    assert main(args) == 0, capsys.readouterr()
    text = capsys.readouterr().out
    assert "14 still poses, board seen in 14" in text
    calib = HandEyeCalibration.load(out, expected_serial="123456789012")
    assert calib.kind == kind and calib.child_frame == f"{cam}_camera_color_optical_frame"
    assert calib.parent_frame == ("left_tcp" if kind == "eye_in_hand" else "base_link")
    assert np.linalg.norm(calib.T_parent_child[:3, 3] - X[:3, 3]) < 2e-3
    assert _angle_deg(calib.T_parent_child, X) < 0.3
    assert calib.residuals["samples"] == 14 and calib.residuals["translation_mm"] < 3.0
    assert (tmp_path / "residuals.png").stat().st_size > 10_000


def test_calibrate_handeye_refuses_bad_requests(tmp_path: Path, capsys) -> None:
    ep = write_calibration_episode(tmp_path / "data", "eye_in_hand", n_poses=5)
    out = tmp_path / "x.yaml"
    assert main(["calibrate", "handeye", "--episode", str(ep), "--camera", "head", "--arm", "left", "--out", str(out)]) == 2
    assert "no camera 'head'" in capsys.readouterr().err
    assert main(["calibrate", "handeye", "--episode", str(ep), "--camera", "left_wrist", "--arm", "right"]) == 2
    assert "the left_wrist camera is on the left arm" in capsys.readouterr().err
    assert main(["calibrate", "handeye", "--episode", str(ep), "--camera", "left_wrist", "--out", str(out),
                 "--max-residual-mm", "0.0001"]) == 1
    assert "not written" in capsys.readouterr().err and not out.exists()


def test_still_frames_skip_motion() -> None:
    T = [se3.T_from_xyz_rpy([0.3, 0, 0.2], [np.pi, 0, 0])] * 6 + \
        [se3.T_from_xyz_rpy([0.3 + 0.01 * i, 0, 0.2], [np.pi, 0, 0]) for i in range(1, 4)] + \
        [se3.T_from_xyz_rpy([0.34, 0, 0.2], [np.pi, 0, 0])] * 6
    idx = still_frames(np.stack(T))
    assert list(idx) == [2, 3, 11, 12]


def test_board_image_command(tmp_path: Path, capsys) -> None:
    assert main(["calibrate", "board", "--out", str(tmp_path / "b.png"), "--board", "7x5"]) == 0
    import cv2

    img = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (5 * 200 + 200, 7 * 200 + 200)
    assert main(["calibrate", "board", "--board", "seven"]) == 2
    assert "--board 'seven'" in capsys.readouterr().err
