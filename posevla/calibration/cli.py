"""`posevla calibrate`: hand-eye calibration from a recorded episode, written as a calibration file.

Procedure: start the collect graph (teleop + recorder), record one episode in which the arm stops (about one
second each) at 15-30 poses with large rotations about different axes while the camera sees the ChArUco
board; for a wrist camera the board lies still on the table, for the head camera the board is held in the
gripper. Then:

  posevla calibrate handeye --episode data/calib/episode_000000.h5 --camera left_wrist
  posevla calibrate handeye --episode data/calib/episode_000001.h5 --camera head --arm right
  posevla calibrate board --out board.png      # the printable board (print at 100 %, measure a square)

Still frames are found from the TCP poses (moving frames are never used), one sample is kept per pose, the
board is detected, OpenCV's solvers are compared and the best is written to calibration/<camera>_camera.yaml
with its residuals; --plot saves a per-sample residual plot.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import cv2
import numpy as np

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.handeye import CharucoBoard, detect_board, one_per_pose, solve_hand_eye, still_frames
from posevla.geometry import se3

CALIB_DIR = Path(__file__).resolve().parents[2] / "calibration"
CAMERAS = ("head", "left_wrist", "right_wrist")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    sub = p.add_subparsers(dest="calibrate_command", metavar="ACTION", required=True)
    h = sub.add_parser("handeye", help="solve a hand-eye calibration from a recorded episode")
    h.add_argument("--episode", type=Path, required=True, help="episode (.h5) recorded for the calibration")
    h.add_argument("--camera", choices=CAMERAS, required=True, help="which camera to calibrate")
    h.add_argument("--arm", choices=("left", "right"), default=None,
                   help="head camera: the arm holding the board (wrist cameras: implied by --camera)")
    h.add_argument("--out", type=Path, default=None, help="calibration file (default: calibration/<camera>_camera.yaml)")
    h.add_argument("--serial", default=None, help="camera serial (default: from the episode's metadata)")
    h.add_argument("--max-residual-mm", type=float, default=3.0, help="refuse to write above this median residual")
    h.add_argument("--max-residual-deg", type=float, default=0.5, help="refuse to write above this median residual")
    h.add_argument("--plot", type=Path, default=None, help="save a per-sample residual plot (PNG)")
    for q in (h, sub.add_parser("board", help="write the printable ChArUco board image")):
        q.add_argument("--board", default="7x5", help="squares, COLSxROWS (default: %(default)s)")
        q.add_argument("--square", type=float, default=0.04, help="square size in metres (default: %(default)s)")
        q.add_argument("--marker", type=float, default=0.03, help="marker size in metres (default: %(default)s)")
        q.add_argument("--dictionary", default="DICT_5X5_100", help="ArUco dictionary (default: %(default)s)")
    sub.choices["board"].add_argument("--out", type=Path, default=Path("charuco_board.png"), help="PNG to write")


def _samples(args: argparse.Namespace, board: CharucoBoard, arm: str):
    from tqdm import tqdm

    from posevla.dataset.reader import EpisodeReader

    with EpisodeReader(args.episode) as ep:
        if args.camera not in ep.camera_names:
            raise ValueError(f"{args.episode}: no camera {args.camera!r} (it has {ep.camera_names})")
        tcp = ep.array(f"observations/tcp_pose/{arm}")
        if not np.all(np.isfinite(tcp)):
            raise ValueError(f"{args.episode}: observations/tcp_pose/{arm} has missing (NaN) poses")
        T_base_tcp = np.stack([se3.T_from_pos_quat(r[:3], r[3:]) for r in tcp])
        idx = one_per_pose(still_frames(T_base_tcp), T_base_tcp)
        serial = args.serial if args.serial is not None else str(ep.meta.get("cameras", {}).get(args.camera, ""))
        intr = ep.intrinsics[args.camera]
        robot, board_poses, used = [], [], []
        for i in tqdm(idx, desc=f"detecting the board in {args.camera}", unit="pose", disable=not sys.stderr.isatty()):
            T = detect_board(ep.rgb(args.camera, int(i)), intr, board)
            if T is not None:
                robot.append(T_base_tcp[i])
                board_poses.append(T)
                used.append(int(i))
    print(f"{args.episode}: {len(idx)} still poses, board seen in {len(used)}")
    return robot, board_poses, used, serial


def _plot(path: Path, used: list[int], result, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    x = np.arange(len(used))
    axes[0].bar(x, result.translation_mm, color="tab:blue")
    axes[0].set_ylabel("translation (mm)")
    axes[1].bar(x, result.rotation_deg, color="tab:orange")
    axes[1].set_ylabel("rotation (deg)")
    axes[1].set_xlabel("sample (episode frame)")
    axes[1].set_xticks(x, [str(i) for i in used], rotation=90, fontsize=7)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _handeye(args: argparse.Namespace) -> int:
    board = CharucoBoard.parse(args.board, args.square, args.marker, args.dictionary)
    if args.camera == "head":
        if args.arm is None:
            raise ValueError("--arm: the head camera is calibrated against the arm holding the board; say which")
        kind, arm, parent = "eye_to_hand", args.arm, "base_link"
    else:
        arm = args.camera.removesuffix("_wrist")
        if args.arm not in (None, arm):
            raise ValueError(f"--arm {args.arm}: the {args.camera} camera is on the {arm} arm")
        kind, parent = "eye_in_hand", f"{arm}_tcp"
    robot, board_poses, used, serial = _samples(args, board, arm)
    result = solve_hand_eye(kind, robot, board_poses)
    s = result.summary
    print(f"{kind} {parent} -> {args.camera}: {s['samples']} samples, solver {result.method}; residual median "
          f"{s['translation_mm']:.2f} mm / {s['rotation_deg']:.3f} deg, max {s['translation_mm_max']:.2f} mm / "
          f"{s['rotation_deg_max']:.3f} deg")
    p, q = se3.pos_quat_from_T(result.T)
    print(f"  T_{parent}_{args.camera}: xyz {np.round(p, 4).tolist()} m, quaternion xyzw {np.round(q, 5).tolist()}")
    if args.plot:
        _plot(args.plot, used, result, f"hand-eye residuals, {args.camera} ({kind}, {result.method})")
        print(f"  residual plot: {args.plot}")
    if s["translation_mm"] > args.max_residual_mm or s["rotation_deg"] > args.max_residual_deg:
        print(f"not written: residuals above --max-residual-mm {args.max_residual_mm} / --max-residual-deg "
              f"{args.max_residual_deg} (board detection, still poses and the board size are the usual causes)",
              file=sys.stderr)
        return 1
    calib = HandEyeCalibration(kind, parent, f"{args.camera}_camera_color_optical_frame", result.T, serial,
                               method=f"opencv calibrateHandEye {result.method}, ChArUco {args.board} "
                                      f"{args.square * 1e3:.0f}/{args.marker * 1e3:.0f} mm, {args.episode.name}",
                               date=datetime.date.today().isoformat(),
                               residuals={k: v if k == "samples" else round(float(v), 4) for k, v in s.items()})
    out = args.out or CALIB_DIR / f"{args.camera}_camera.yaml"
    calib.save(out)
    HandEyeCalibration.load(out)  # what the stack will read back
    print(f"  written: {out}")
    return 0


def _board(args: argparse.Namespace) -> int:
    board = CharucoBoard.parse(args.board, args.square, args.marker, args.dictionary)
    img = board.image(px_per_square=200, margin_px=100)
    if not cv2.imwrite(str(args.out), img):
        raise ValueError(f"--out {args.out}: cannot write the image")
    print(f"{args.out}: {board.cols}x{board.rows} squares of {args.square * 1e3:.0f} mm, markers "
          f"{args.marker * 1e3:.0f} mm ({args.dictionary}); print at 100 % and check a square with a ruler")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return {"handeye": _handeye, "board": _board}[args.calibrate_command](args)
    except ValueError as exc:
        print(f"posevla calibrate {args.calibrate_command}: {exc}", file=sys.stderr)
        return 2
