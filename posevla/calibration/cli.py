"""`posevla calibrate`: hand-eye calibration from a recorded episode, written as a calibration file.

Procedure: start the collect graph (teleop + recorder), record one episode in which the arm stops (about one
second each) at 15-30 poses with large rotations (20-45 deg) about at least two different axes while the camera
sees the ChArUco board; for a wrist camera the board lies still on the table, for the head camera the board is
held in the gripper. Then:

  posevla calibrate board --out board.png      # the printable board (print at 100 %, measure a square)
  posevla calibrate handeye --episode data/calib/episode_000000.h5 --camera left_wrist
  posevla calibrate handeye --episode data/calib/episode_000001.h5 --camera head --arm right
  posevla calibrate verify --episode data/pick/episode_000003.h5 --camera head --out overlay.png

handeye: still frames are found from the TCP poses (moving frames are never used), one sample is kept per pose,
each board view is checked (corner count, spread, reprojection error, PnP ambiguity), the robot motions are
checked to determine the camera pose at all (refused otherwise, naming the motions to add), outlier views are
removed with their reason, OpenCV's four solvers are run and the best one starts a joint refinement of the
corner reprojection error over all views. All solvers and the refined result are printed side by side with
the 1-sigma uncertainty of the result, which must be below --max-sigma-mm / --max-sigma-deg for the file
(calibration/<camera>_camera.yaml) to be written. Where the episode has depth, the board's distance from depth
is compared with PnP's: a mismatch over --depth-tolerance means the printed square is not --square.

verify: projects the TCP of each arm, predicted through the calibration, into frames of a recorded episode and
saves the overlay (PNG): the dot and axes must sit on the gripper's fingertip centre.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.handeye import CharucoBoard, detect_view, one_per_pose, still_frames
from posevla.calibration.pipeline import CalibrationReport, calibrate
from posevla.calibration.views import BoardView, ViewChecks, board_depth_ratio
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.paths import default_path

CAMERAS = ("head", "left_wrist", "right_wrist")
MAX_SIGMA_MM = 1.0  # 1-sigma per axis; at 0.4 m working distance 0.25 deg moves a point by 1.7 mm
MAX_SIGMA_DEG = 0.25
DEPTH_TOLERANCE = 0.02  # 1 % of scale error moves the result by ~3.5-4 mm at 0.4 m (measured in issue 13)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    sub = p.add_subparsers(dest="calibrate_command", metavar="ACTION", required=True)
    h = sub.add_parser("handeye", help="solve a hand-eye calibration from a recorded episode")
    h.add_argument("--episode", type=Path, required=True, help="episode (.h5) recorded for the calibration")
    h.add_argument("--camera", choices=CAMERAS, required=True, help="which camera to calibrate")
    h.add_argument("--arm", choices=("left", "right"), default=None,
                   help="head camera: the arm holding the board (wrist cameras: implied by --camera)")
    h.add_argument("--out", type=Path, default=None, help=f"calibration file (default: {default_path('calibration', '<camera>_camera.yaml')})")
    h.add_argument("--serial", default=None, help="camera serial (default: from the episode's metadata)")
    h.add_argument("--max-sigma-mm", type=float, default=MAX_SIGMA_MM,
                   help="refuse to write when the 1-sigma translation along any axis exceeds this (default: %(default)s)")
    h.add_argument("--max-sigma-deg", type=float, default=MAX_SIGMA_DEG,
                   help="refuse to write when the 1-sigma rotation about any axis exceeds this (default: %(default)s)")
    h.add_argument("--max-residual-mm", type=float, default=10.0,
                   help="refuse to write above this median board-pose spread (gross inconsistency; default: %(default)s)")
    h.add_argument("--max-residual-deg", type=float, default=2.0,
                   help="refuse to write above this median board-pose spread (default: %(default)s)")
    h.add_argument("--max-view-rms-px", type=float, default=ViewChecks.max_rms_px,
                   help="reject a view whose PnP reprojection RMS exceeds this (default: %(default)s)")
    h.add_argument("--depth-tolerance", type=float, default=DEPTH_TOLERANCE,
                   help="warn when depth and PnP disagree on the board's distance by more than this fraction "
                        "(default: %(default)s)")
    h.add_argument("--plot", type=Path, default=None, help="save a per-sample residual plot (PNG)")
    v = sub.add_parser("verify", help="overlay the TCP predicted through a calibration on a recorded episode (PNG)")
    v.add_argument("--episode", type=Path, required=True, help="any recorded episode (.h5) with that camera")
    v.add_argument("--camera", choices=CAMERAS, required=True, help="which camera's image to draw on")
    v.add_argument("--calibration", type=Path, default=None,
                   help=f"calibration file (default: {default_path('calibration', '<camera>_camera.yaml')})")
    v.add_argument("--frames", type=int, default=4, help="how many evenly spaced frames to show (default: %(default)s)")
    v.add_argument("--out", type=Path, required=True, help="overlay PNG to write")
    for q in (h, sub.add_parser("board", help="write the printable ChArUco board image")):
        q.add_argument("--board", default="7x5", help="squares, COLSxROWS (default: %(default)s)")
        q.add_argument("--square", type=float, default=0.04, help="square size in metres (default: %(default)s)")
        q.add_argument("--marker", type=float, default=0.03, help="marker size in metres (default: %(default)s)")
        q.add_argument("--dictionary", default="DICT_5X5_100", help="ArUco dictionary (default: %(default)s)")
    sub.choices["board"].add_argument("--out", type=Path, default=Path("charuco_board.png"), help="PNG to write")


@dataclass
class Samples:
    frames: list[int]  # episode frame of each sample
    T_base_tcp: list[np.ndarray]
    views: list[BoardView]
    depth_ratio: list[float | None]
    serial: str
    intr: CameraIntrinsics
    still: int


def _tcp_poses(ep, arm: str, path: Path) -> np.ndarray:
    try:
        tcp = ep.array(f"observations/tcp_pose/{arm}")
    except KeyError as exc:
        raise ValueError(f"{path}: no observations/tcp_pose/{arm} (the {arm} arm was not recorded)") from exc
    if not np.all(np.isfinite(tcp)):
        raise ValueError(f"{path}: observations/tcp_pose/{arm} has missing (NaN) poses")
    return np.stack([se3.T_from_pos_quat(r[:3], r[3:]) for r in tcp])


def _samples(args: argparse.Namespace, board: CharucoBoard, arm: str, checks: ViewChecks) -> Samples:
    from tqdm import tqdm

    from posevla.dataset.reader import EpisodeReader

    with EpisodeReader(args.episode) as ep:
        if args.camera not in ep.camera_names:
            raise ValueError(f"{args.episode}: no camera {args.camera!r} (it has {ep.camera_names})")
        T_base_tcp = _tcp_poses(ep, arm, args.episode)
        idx = one_per_pose(still_frames(T_base_tcp), T_base_tcp)
        serial = args.serial if args.serial is not None else str(ep.meta.get("cameras", {}).get(args.camera, ""))
        intr = ep.intrinsics[args.camera]
        s = Samples([], [], [], [], serial, intr, len(idx))
        for i in tqdm(idx, desc=f"detecting the board in {args.camera}", unit="pose", disable=not sys.stderr.isatty()):
            view = detect_view(ep.rgb(args.camera, int(i)), intr, board, checks)
            if view.n == 0:
                continue  # board not in view at all: not a sample
            depth = ep.raw_depth(args.camera, int(i)).astype(np.float32) * np.float32(ep.depth_scale[args.camera])
            s.frames.append(int(i))
            s.T_base_tcp.append(T_base_tcp[i])
            s.views.append(view)
            s.depth_ratio.append(board_depth_ratio(view, depth, intr) if view.ok else None)
    print(f"{args.episode}: {s.still} still poses, board seen in {len(s.frames)}")
    return s


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


def _diff(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    return (float(np.linalg.norm(A[:3, 3] - B[:3, 3]) * 1e3),
            float(np.rad2deg(se3.rotation_angle(A[:3, :3].T @ B[:3, :3]))))


def print_report(rep: CalibrationReport, frames: list[int], parent: str) -> None:
    """The side-by-side solver table, the uncertainty and the refused views (what the README shows)."""
    print(f"motions: {rep.observability.summary()}")
    print(f"  {'solver':<11} {'reproj RMS px':>13} {'spread mm':>10} {'spread deg':>10} {'vs refined mm':>13} "
          f"{'vs refined deg':>14}")
    for r in rep.solvers:
        if r.X is None:
            print(f"  {r.name:<11} refused: {r.note}")
            continue
        dmm, ddeg = _diff(r.X, rep.X)
        print(f"  {r.name:<11} {r.rms_px:>13.3f} {r.spread_mm:>10.2f} {r.spread_deg:>10.3f} {dmm:>13.2f} {ddeg:>14.3f}"
              f"  {r.note}")
    st, sr = rep.sigma_translation_mm, rep.sigma_rotation_deg
    print(f"uncertainty (1 sigma, {parent} axes): translation x {st[0]:.2f} y {st[1]:.2f} z {st[2]:.2f} mm; "
          f"rotation x {sr[0]:.3f} y {sr[1]:.3f} z {sr[2]:.3f} deg")
    if rep.rejected:
        print(f"rejected views ({len(rep.rejected)} of {len(frames)}):")
        for i, why in rep.rejected:
            print(f"  frame {frames[i]}: {why}")
    else:
        print(f"rejected views: none of {len(frames)}")


def _handeye(args: argparse.Namespace) -> int:
    for name in ("max_sigma_mm", "max_sigma_deg", "max_view_rms_px", "depth_tolerance"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be > 0")
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
    s = _samples(args, board, arm, ViewChecks(max_rms_px=args.max_view_rms_px))
    rep = calibrate(kind, s.T_base_tcp, s.views, s.intr)
    print(f"{kind} {parent} -> {args.camera}: {len(rep.used)} views used, refined from {rep.start}")
    print_report(rep, s.frames, parent)
    p, q = se3.pos_quat_from_T(rep.X)
    print(f"  T_{parent}_{args.camera}: xyz {np.round(p, 4).tolist()} m, quaternion xyzw {np.round(q, 5).tolist()}")

    ratios = [r for i in rep.used if (r := s.depth_ratio[i]) is not None]
    depth_ratio = float(np.median(ratios)) if ratios else None
    if depth_ratio is None:
        print("depth scale check: no valid depth at the board corners, not checked")
    elif abs(depth_ratio - 1) > args.depth_tolerance:
        print(f"WARNING depth scale check: depth puts the board at {depth_ratio:.3f} x the PnP distance "
              f"({len(ratios)} views; tolerance {args.depth_tolerance:.0%}): is the printed square really "
              f"{args.square * 1e3:.1f} mm? Measure it; {args.square * depth_ratio * 1e3:.1f} mm would match the "
              "depth", file=sys.stderr)
    else:
        print(f"depth scale check: depth / PnP distance {depth_ratio:.3f} over {len(ratios)} views, within "
              f"{args.depth_tolerance:.0%}")
    res = rep.result
    if res is None:
        raise RuntimeError("calibration produced no result")  # calibrate() always sets it
    summ = res.summary
    if args.plot:
        _plot(args.plot, [s.frames[i] for i in rep.used], res, f"hand-eye residuals, {args.camera} ({kind}, refined)")
        print(f"  residual plot: {args.plot}")
    st, sr = rep.sigma_translation_mm, rep.sigma_rotation_deg
    if st.max() > args.max_sigma_mm or sr.max() > args.max_sigma_deg:
        print(f"not written: 1-sigma uncertainty {st.max():.2f} mm / {sr.max():.3f} deg above --max-sigma-mm "
              f"{args.max_sigma_mm} / --max-sigma-deg {args.max_sigma_deg}: record more poses with larger rotations "
              "about different axes, the board larger in the image", file=sys.stderr)
        return 1
    if summ["translation_mm"] > args.max_residual_mm or summ["rotation_deg"] > args.max_residual_deg:
        print(f"not written: residuals (median board-pose spread {summ['translation_mm']:.2f} mm / "
              f"{summ['rotation_deg']:.3f} deg) above --max-residual-mm {args.max_residual_mm} / --max-residual-deg "
              f"{args.max_residual_deg} (board detection, still poses and the board size are the usual causes)",
              file=sys.stderr)
        return 1
    residual = {k: v if k == "samples" else round(float(v), 4) for k, v in summ.items()}
    residual.update(reprojection_rms_px=round(rep.refined.rms_px, 4), views_rejected=len(rep.rejected))
    if depth_ratio is not None:
        residual["depth_scale_ratio"] = round(depth_ratio, 4)
    calib = HandEyeCalibration(kind, parent, f"{args.camera}_camera_color_optical_frame", rep.X, s.serial,
                               method=f"joint reprojection refinement from opencv {rep.start}, ChArUco {args.board} "
                                      f"{args.square * 1e3:.1f}/{args.marker * 1e3:.1f} mm, {args.episode.name}",
                               date=datetime.date.today().isoformat(), residuals=residual,
                               uncertainty={"translation_mm": [round(float(x), 4) for x in st],
                                            "rotation_deg": [round(float(x), 5) for x in sr]})
    out = args.out or default_path("calibration", f"{args.camera}_camera.yaml")
    calib.save(out)
    HandEyeCalibration.load(out)  # what the stack will read back
    print(f"  written: {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from posevla.calibration.verify import render_overlay

    if args.frames < 1:
        raise ValueError(f"--frames {args.frames}: must be >= 1")
    path = args.calibration or default_path("calibration", f"{args.camera}_camera.yaml")
    calib = HandEyeCalibration.load(path)
    expected = f"{args.camera}_camera_color_optical_frame"
    if calib.child_frame != expected:
        raise ValueError(f"--calibration {path}: calibrates {calib.child_frame}, not {expected}")
    lines = render_overlay(args.episode, args.camera, calib, args.frames, args.out)
    for line in lines:
        print(line)
    print(f"overlay: {args.out} (the dots and axes must sit on each gripper's TCP, between the fingertips)")
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
        return {"handeye": _handeye, "board": _board, "verify": _verify}[args.calibrate_command](args)
    except (ValueError, np.linalg.LinAlgError, cv2.error, OSError) as exc:
        msg = str(exc).strip().splitlines()[-1] if isinstance(exc, cv2.error) else str(exc)
        print(f"posevla calibrate {args.calibrate_command}: {msg}", file=sys.stderr)
        return 2
