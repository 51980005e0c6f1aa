"""`posevla dataset view EPISODE`: look at a recorded episode.

- rerun (rerun-sdk): the three cameras (colour, depth with its pinhole model, in 3D where the calibration
  puts them), the TCP traces in base_link, grippers, actions (per joint), per-stream stamp age and frame
  intervals (gaps), and the calibration drawn as frames: `T_base_head` for the head camera, `T_tcp_wrist`
  under each moving TCP for the wrist cameras. Timelines: `frame` (index) and `capture_time` (the
  recording tick's stamp). Opens a viewer (`rr.spawn`), sends to one (`--connect`), or saves a
  recording file (`--save x.rrd`, headless) that `rerun x.rrd` opens anywhere.
- A headless MP4 overview for sharing (`--mp4 x.mp4`): cameras on top, colourised depth below, TCP
  height/gripper traces with a cursor and stamp-gap marks at the bottom.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from posevla.dataset.reader import EpisodeReader
from posevla.dataset.video import write_video_file
from posevla.geometry import se3
from posevla.types import ARM_NAMES

TILE_W, TILE_H = 320, 240
PLOT_H = 160


def _calibrations(ep: EpisodeReader) -> dict[str, dict]:
    """child_frame -> calibration dict (parent_frame, transform.matrix) copied into the episode's meta."""
    out = {}
    for entry in (ep.meta.get("calibration") or {}).values():
        try:
            d = yaml.safe_load(entry.get("yaml", "")) or {}
        except yaml.YAMLError:
            continue
        if isinstance(d, dict) and "child_frame" in d and "transform" in d:
            out[str(d["child_frame"])] = d
    return out


def _tcp(ep: EpisodeReader) -> dict[str, np.ndarray]:
    return {a: ep.array(f"observations/tcp_pose/{a}") for a in ARM_NAMES}


# ---------------------------------------------------------------------------------------------- rerun
def log_rerun(ep: EpisodeReader, stride: int = 1, save: Path | None = None, connect: str | None = None,
              spawn: bool = False) -> None:
    """Log the episode to rerun: to a file (save), a running viewer (connect) or a new viewer (spawn)."""
    import rerun as rr

    from posevla import viewer  # the entity layout and helpers shared with the live view (`posevla view`)

    rec = viewer.open_recording("posevla_episode", str(ep.path), save=save, connect=connect, spawn=spawn)
    tcp = _tcp(ep)
    stamps = {"frame": ep.array("stamps/frame"), "robot": ep.array("stamps/robot"),
              **{c: ep.camera_stamps(c) for c in ep.camera_names}}
    qpos, action = ep.array("observations/qpos"), ep.array("action")
    calib = _calibrations(ep)
    viewer.log_world(rec)
    rec.log("info", rr.TextDocument(f"{ep.path}\ntask: {ep.meta.get('task')}\ninstruction: {ep.meta.get('instruction')}\n"
                                    f"success: {ep.meta.get('success')}\nstorage: {ep.storage}"), static=True)
    for arm in ARM_NAMES:
        ok = np.all(np.isfinite(tcp[arm]), axis=1)
        if ok.any():
            rec.log(f"world/base_link/{arm}_tcp_trace", rr.LineStrips3D([tcp[arm][ok, :3]]), static=True)
    cam_entity = {}
    for cam in ep.camera_names:
        frame_id = f"{cam}_camera_color_optical_frame"
        c = calib.get(frame_id)  # no calibration: image space only (cameras/<cam>)
        cam_entity[cam] = viewer.log_camera_mount(rec, cam, str(c.get("parent_frame", "")) if c else None,
                                                  np.asarray(c["transform"]["matrix"], float) if c else None)
        viewer.log_pinhole(rec, cam_entity[cam], ep.intrinsics[cam])
    period = 1e9 / float(ep.meta.get("fps") or 30.0)
    for i in range(0, ep.num_frames, stride):
        rec.set_time("frame", sequence=i)
        rec.set_time("capture_time", timestamp=np.datetime64(int(stamps["frame"][i]), "ns"))
        for arm in ARM_NAMES:
            if np.all(np.isfinite(tcp[arm][i])):
                viewer.log_tcp(rec, arm, se3.T_from_pos_quat(tcp[arm][i][:3], tcp[arm][i][3:]))
        for k, arm in enumerate(ARM_NAMES):
            rec.log(f"robot/{arm}/gripper", rr.Scalars(float(qpos[i, k * 7 + 6])))
            rec.log(f"action/{arm}/gripper", rr.Scalars(float(action[i, k * 7 + 6])))
            for j in range(6):
                rec.log(f"action/{arm}/joint{j + 1}", rr.Scalars(float(action[i, k * 7 + j])))
                rec.log(f"robot/{arm}/joint{j + 1}", rr.Scalars(float(qpos[i, k * 7 + j])))
        for name, st in stamps.items():
            if name != "frame":  # how old each stream's sample was at the recording tick (ms)
                rec.log(f"stamps/age_ms/{name}", rr.Scalars((int(stamps["frame"][i]) - int(st[i])) * 1e-6))
            if i > 0:
                gap = (int(st[i]) - int(st[i - 1])) * 1e-6
                rec.log(f"stamps/interval_ms/{name}", rr.Scalars(gap))
                if name == "frame" and gap > 2 * period * 1e-6:
                    rec.log("stamps/gaps", rr.TextLog(f"frame {i}: {gap:.0f} ms since the previous tick",
                                                      level="WARN"))
        for cam in ep.camera_names:
            viewer.log_rgb(rec, cam_entity[cam], ep.rgb(cam, i))
            if ep.depth_source(cam, i) == i:  # depth_every > 1: depth is logged when it was captured (and held)
                viewer.log_depth(rec, cam_entity[cam], ep.raw_depth(cam, i), 1.0 / ep.depth_scale[cam])
    viewer.close_recording(rec, saved=save is not None)


# ---------------------------------------------------------------------------------------------- mp4
def _colour_depth(raw: np.ndarray, scale: float, max_m: float = 2.0) -> np.ndarray:
    d = raw.astype(np.float32) * scale
    img = cv2.applyColorMap(np.clip(d / max_m * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    img[raw == 0] = 0  # invalid depth: black
    return img


def _plot_strip(ep: EpisodeReader, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Static strip (PLOT_H x width RGB) of TCP z and gripper per arm over the episode, and the x of each frame."""
    n = ep.num_frames
    img = np.full((PLOT_H, width, 3), 24, np.uint8)
    xs = np.linspace(8, width - 8, max(n, 2))[:n]
    tcp, qpos = _tcp(ep), ep.array("observations/qpos")
    colours = {"left": (80, 160, 255), "right": (255, 140, 60)}
    for k, arm in enumerate(ARM_NAMES):
        for series, y0, y1, style in ((tcp[arm][:, 2], 10, PLOT_H // 2 - 6, 2), (qpos[:, k * 7 + 6], PLOT_H // 2 + 6,
                                                                                  PLOT_H - 10, 1)):
            ok = np.isfinite(series)
            if ok.sum() < 2:
                continue
            lo, hi = float(np.min(series[ok])), float(np.max(series[ok]))
            ys = y1 - (series - lo) / (hi - lo + 1e-9) * (y1 - y0)
            pts = np.stack([xs[ok], ys[ok]], 1).astype(np.int32)
            cv2.polylines(img, [pts], False, colours[arm], style, cv2.LINE_AA)
    fps = float(ep.meta.get("fps") or 30.0)
    gaps = np.flatnonzero(np.diff(ep.array("stamps/frame")) > 2e9 / fps) + 1
    for g in gaps:  # recording gaps: red ticks
        cv2.line(img, (int(xs[g]), 0), (int(xs[g]), 8), (255, 0, 0), 2)
    cv2.putText(img, "TCP z (top), gripper (bottom): left blue, right orange; red ticks = stamp gaps",
                (8, PLOT_H - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (200, 200, 200), 1, cv2.LINE_AA)
    return img, xs


def overview_frames(ep: EpisodeReader, stride: int = 1):
    """Yield the overview canvas (RGB uint8) of every `stride`-th frame."""
    cams = ep.camera_names
    width = TILE_W * max(len(cams), 1)
    strip, xs = _plot_strip(ep, width)
    stamps = ep.array("stamps/frame")
    for i in range(0, ep.num_frames, stride):
        top = [cv2.resize(ep.rgb(c, i), (TILE_W, TILE_H), interpolation=cv2.INTER_AREA) for c in cams]
        mid = [cv2.resize(_colour_depth(ep.raw_depth(c, i), ep.depth_scale[c]), (TILE_W, TILE_H),
                          interpolation=cv2.INTER_NEAREST) for c in cams]
        for c, tile in zip(cams, top):
            cv2.putText(tile, c, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        plot = strip.copy()
        cv2.line(plot, (int(xs[i]), 0), (int(xs[i]), PLOT_H - 12), (255, 255, 255), 1)
        t = (int(stamps[i]) - int(stamps[0])) * 1e-9
        cv2.putText(plot, f"frame {i}/{ep.num_frames - 1}  t={t:6.2f} s", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
        yield np.ascontiguousarray(np.vstack([np.hstack(top), np.hstack(mid), plot]))


def export_mp4(ep: EpisodeReader, out: Path, stride: int = 1) -> int:
    """Write the overview MP4 (H.264, playable in browsers); returns the number of frames."""
    fps = float(ep.meta.get("fps") or 30.0) / stride
    return write_video_file(out, overview_frames(ep, stride), fps, crf=23, gop=int(max(fps, 1)))


def run_view(args: argparse.Namespace) -> int:
    if args.stride < 1:
        print(f"posevla dataset view: --stride {args.stride} must be >= 1", file=sys.stderr)
        return 2
    if not args.episode.is_file():
        print(f"posevla dataset view: {args.episode} is not an episode file", file=sys.stderr)
        return 2
    try:
        ep = EpisodeReader(args.episode)
    except ValueError as exc:
        print(f"posevla dataset view: {exc}", file=sys.stderr)
        return 2
    with ep:
        if args.mp4:
            n = export_mp4(ep, args.mp4, args.stride)
            print(f"wrote {args.mp4} ({n} frames)")
        if args.save or args.connect or not args.mp4:
            try:
                import rerun  # noqa: F401
            except ImportError:
                print("posevla dataset view: the viewer needs rerun-sdk (pip install rerun-sdk); --mp4 works without it",
                      file=sys.stderr)
                return 2
            log_rerun(ep, args.stride, save=args.save, connect=args.connect, spawn=not (args.save or args.connect))
            if args.save:
                print(f"wrote {args.save} (open it with: rerun {args.save})")
    return 0
