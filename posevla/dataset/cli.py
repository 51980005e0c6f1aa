"""`posevla dataset check|info|view|export-lerobot|import-lerobot|convert|import-xtrainer`: validate, summarise, look at and move
recorded episodes (an episode file, a task folder or a dataset root).

Only complete episodes count: files under hidden folders (`.incomplete/`, `.discarded/`) are listed apart
and never checked or counted as data. Bad input -> one line naming it, exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from posevla.dataset import format as F
from posevla.dataset import xtrainer_import
from posevla.dataset.video import X264_PRESETS, X264_TUNES, ColourCodec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", metavar="{check,info,view,export-lerobot,import-lerobot,convert,import-xtrainer}",
                                required=True)
    c = sub.add_parser("check", help="report missing frames, timestamp gaps, NaNs, frozen cameras, missing calibration")
    c.add_argument("path", type=Path, help="an episode .h5, a task folder or a dataset root")
    c.add_argument("--gap-factor", type=float, default=2.0, help="a stamp gap over this many frame periods is reported")
    c.add_argument("--frozen-frames", type=int, default=10, help="identical consecutive images that count as frozen")
    i = sub.add_parser("info", help="one line per episode: frames, duration, storage, size, task, instruction, success")
    i.add_argument("path", type=Path, help="an episode .h5, a task folder or a dataset root")
    v = sub.add_parser("view", help="open an episode in the rerun viewer, or export it (.rrd recording, .mp4 video)")
    v.add_argument("episode", type=Path, help="an episode .h5")
    v.add_argument("--save", type=Path, help="write a rerun recording (.rrd) instead of opening the viewer")
    v.add_argument("--mp4", type=Path, help="write a headless MP4 overview (cameras, depth, TCP/gripper traces)")
    v.add_argument("--connect", metavar="URL", help="send to a running rerun viewer (e.g. rerun+http://host:9876/proxy)")
    v.add_argument("--stride", type=int, default=1, help="use every n-th frame (>= 1)")
    e = sub.add_parser("export-lerobot", help="write episodes as a LeRobot v3.0 dataset (parquet + mp4 + meta/)")
    e.add_argument("paths", type=Path, nargs="+", help="episode files or folders")
    e.add_argument("--out", type=Path, required=True, help="output dataset folder (must not exist)")
    e.add_argument("--crf", type=int, default=18, help="H.264 quality of the exported colour videos (0..51)")
    m = sub.add_parser("import-lerobot", help="convert a local LeRobot v3.0 dataset into episodes of this format")
    m.add_argument("dataset", type=Path, help="LeRobot dataset folder (meta/info.json, data/, videos/)")
    m.add_argument("--out", type=Path, required=True, help="dataset root to write <task>/episode_*.h5 into")
    m.add_argument("--task", help="task folder name (default: the dataset folder name)")
    m.add_argument("--episodes", type=int, nargs="*", help="episode indices to import (default: all)")
    k = sub.add_parser("convert", help="re-encode episodes into another storage format (e.g. jpeg -> video)")
    k.add_argument("paths", type=Path, nargs="+", help="episode files or folders")
    k.add_argument("--out", type=Path, required=True, help="dataset root to write <task>/episode_*.h5 into")
    k.add_argument("--storage", choices=F.STORAGE_FORMATS, default="video", help="target storage format")
    d = ColourCodec()
    k.add_argument("--colour-preset", choices=X264_PRESETS, default=d.preset, help="x264 preset of the colour streams")
    k.add_argument("--colour-crf", type=int, default=d.crf, help="x264 constant quality of the colour streams (0..51)")
    k.add_argument("--colour-tune", choices=X264_TUNES, default=d.tune, help="x264 tuning of the colour streams")
    k.add_argument("--colour-gop", type=int, default=d.gop, help="frames between colour keyframes (1..300)")
    k.add_argument("--depth-every", type=int, default=1,
                   help="store the depth of every k-th frame only (1: all; 3: 10 Hz at 30 fps; docs/datasets.md)")
    xtrainer_import.add_parser(sub)


def episodes_under(path: Path) -> list[Path]:
    """Complete episodes: the file itself, or every episode_NNNNNN.h5 below a folder outside hidden folders."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return sorted(p for p in path.rglob("episode_*.h5") if F.EPISODE_RE.match(p.name) and not F.is_hidden(p, path))


def _aside(path: Path, folder: str) -> list[Path]:
    """Files in hidden `folder`s (.incomplete / .discarded) of every task folder at or below path."""
    if not path.is_dir():
        return []
    dirs = [d for d in [path / folder, *path.rglob(folder)] if d.is_dir()]
    return sorted({p for d in dirs for p in d.glob("episode_*")})


def _info(eps: list[Path]) -> int:
    from posevla.dataset.reader import EpisodeReader

    unreadable = 0
    for p in eps:
        try:
            with EpisodeReader(p) as ep:
                m = ep.meta
                dur = ep.num_frames / float(m.get("fps") or 1)
                short = {k: n for k, n in ep.stream_lengths().items() if n != ep.num_frames}
                note = f", TRUNCATED streams {short}" if short else ""
                every = max(ep.depth_every.values(), default=1)
                storage = ep.storage + (f" (depth every {every} frames)" if every > 1 else "")
                print(f"{p}: {ep.num_frames} frames, {dur:.1f} s, {storage}, {p.stat().st_size / 1e6:.1f} MB, "
                      f"task={m.get('task')!r}, instruction={m.get('instruction')!r}, success={m.get('success')}{note}")
        except (ValueError, OSError, KeyError) as exc:  # a truncated or damaged file: report it, go on
            unreadable += 1
            print(f"{p}: UNREADABLE ({exc})")
    return unreadable


def run(args: argparse.Namespace) -> int:
    cmd = args.dataset_command
    try:
        if cmd == "view":
            from posevla.dataset.viewer import run_view
            return run_view(args)
        if cmd == "export-lerobot":
            from posevla.dataset.lerobot_io import export_lerobot
            eps = [e for p in args.paths for e in episodes_under(p)]
            out = export_lerobot(eps, args.out, crf=args.crf)
            print(f"wrote LeRobot v3.0 dataset {out} ({len(eps)} episodes)")
            return 0
        if cmd == "import-lerobot":
            from posevla.dataset.lerobot_io import import_lerobot
            written = import_lerobot(args.dataset, args.out, task=args.task, episodes=args.episodes)
            print(f"imported {len(written)} episodes into {written[0].parent if written else args.out}")
            return 0
        if cmd == "import-xtrainer":
            return xtrainer_import.run(args)
        if cmd == "convert":
            from posevla.dataset.convert import convert_episode
            eps = [e for p in args.paths for e in episodes_under(p)]
            for p in tqdm(eps, desc="converting", unit="episode", disable=len(eps) < 2):
                codec = ColourCodec(preset=args.colour_preset, crf=args.colour_crf, tune=args.colour_tune,
                                    gop=args.colour_gop)
                print(f"{p} -> {convert_episode(p, args.out, storage=args.storage, colour_codec=codec, depth_every=args.depth_every)}")
            return 0
        eps = episodes_under(args.path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"posevla dataset {cmd}: {exc}", file=sys.stderr)
        return 2
    incomplete = _aside(args.path, F.INCOMPLETE_DIR)
    discarded = _aside(args.path, F.DISCARDED_DIR)
    if cmd == "info":
        unreadable = _info(eps)
        for p in incomplete:
            print(f"{p}: INCOMPLETE (kept aside after a crash or an aborted recording; not part of the dataset)")
        for p in discarded:
            print(f"{p}: DISCARDED (moved aside by the operator; not part of the dataset)")
        print(f"{len(eps)} episodes, {unreadable} unreadable, {len(incomplete)} incomplete, {len(discarded)} discarded")
        return 1 if unreadable else 0
    from posevla.dataset.check import check_episode

    bad = 0
    for p in tqdm(eps, desc="checking episodes", unit="episode", disable=len(eps) < 2):
        rep = check_episode(p, args.gap_factor, args.frozen_frames)
        status = "ok" if rep.ok else "PROBLEMS"
        print(f"{p}: {rep.num_frames} frames: {status}")
        for problem in rep.problems:
            print(f"    - {problem}")
        bad += not rep.ok
    for p in incomplete:
        print(f"{p}: incomplete episode (not part of the dataset)")
    for p in discarded:
        print(f"{p}: discarded episode (not part of the dataset)")
    print(f"{len(eps)} episodes checked, {bad} with problems, {len(incomplete)} incomplete, {len(discarded)} discarded")
    return 1 if bad else 0
