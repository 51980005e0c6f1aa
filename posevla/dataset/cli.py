"""`posevla dataset check|info PATH`: validate or summarise recorded episodes (a file, a task or a root folder)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from posevla.dataset import xtrainer_import
from posevla.dataset.check import check_episode
from posevla.dataset.format import list_incomplete
from posevla.dataset.reader import EpisodeReader


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", metavar="{check,info,import-xtrainer}", required=True)
    c = sub.add_parser("check", help="report missing frames, timestamp gaps, NaNs, frozen cameras, missing calibration")
    c.add_argument("path", type=Path, help="an episode .h5, a task folder or a dataset root")
    c.add_argument("--gap-factor", type=float, default=2.0, help="a stamp gap over this many frame periods is reported")
    c.add_argument("--frozen-frames", type=int, default=10, help="identical consecutive images that count as frozen")
    i = sub.add_parser("info", help="one line per episode: frames, duration, task, instruction, success")
    i.add_argument("path", type=Path)
    xtrainer_import.add_parser(sub)


def episodes_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return sorted(p for p in path.rglob("episode_*.h5") if ".incomplete" not in p.parts)


def run(args: argparse.Namespace) -> int:
    if args.dataset_command == "import-xtrainer":
        return xtrainer_import.run(args)
    try:
        eps = episodes_under(args.path)
    except FileNotFoundError as exc:
        print(f"posevla dataset: {exc}", file=sys.stderr)
        return 2
    incomplete = [p for d in {e.parent for e in eps} | ({args.path} if args.path.is_dir() else set())
                  for p in list_incomplete(d)]
    if args.dataset_command == "info":
        for p in eps:
            with EpisodeReader(p) as ep:
                m = ep.meta
                dur = ep.num_frames / float(m.get("fps") or 1)
                print(f"{p}: {ep.num_frames} frames, {dur:.1f} s, task={m.get('task')!r}, "
                      f"instruction={m.get('instruction')!r}, success={m.get('success')}")
        for p in incomplete:
            print(f"{p}: INCOMPLETE (kept aside after a crash or an aborted recording)")
        return 0
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
    print(f"{len(eps)} episodes checked, {bad} with problems, {len(incomplete)} incomplete")
    return 1 if bad else 0
