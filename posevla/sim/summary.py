"""`posevla benchmark summary`: pool trial results and show where on the table a policy fails.

  posevla benchmark summary runs/e16_direct_*/results.json              # direct rollouts, pooled
  posevla benchmark summary runs/closed_loop/results.json --bins 3      # a closed-loop run, per condition

Reads the results.json files that `posevla benchmark rollout --out` and `posevla benchmark closed-loop` write
(per-seed success), pools trials of the same condition (a seed counted once; a seed seen twice with different
outcomes is an error), and prints per condition the success rate with its 95 % Wilson interval and the success
by cube placement: x (forward of base_link), y (left) and yaw, each range of the task cut into --bins equal
intervals. The placement of a seed comes from the task's own sampler (posevla.sim.task.PickLiftTask), so the
table needs no extra field in older result files.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posevla.sim.task import PickLiftTask
from posevla.tools.trial import wilson_interval


@dataclass(frozen=True)
class Trials:
    """Pooled trials of one condition: seeds and their outcomes (aligned)."""

    seeds: tuple[int, ...]
    success: tuple[bool, ...]

    @property
    def successes(self) -> int:
        return int(sum(self.success))


def load_trials(paths: list[Path]) -> dict[str, Trials]:
    """{condition: Trials} pooled over result files. A direct-rollout file's condition is its modalities (+
    '_miscalibrated' when its calibration was perturbed); a closed-loop file names its conditions. ValueError naming
    the file for a file that is not a result file, and for a seed with two different outcomes in one condition."""
    pooled: dict[str, dict[int, bool]] = {}
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot be read as JSON ({exc})") from exc
        if isinstance(doc, dict) and isinstance(doc.get("conditions"), dict):
            groups = doc["conditions"]
        elif isinstance(doc, dict) and "success_per_seed" in doc:
            cond = str(doc.get("rollout", {}).get("modalities", "full"))
            groups = {cond + ("_miscalibrated" if doc.get("perturbed_calibration") else ""): doc}
        else:
            raise ValueError(f"{path}: not a results.json of `posevla benchmark rollout` or `closed-loop` "
                             "(no 'success_per_seed' or 'conditions')")
        for cond, g in groups.items():
            seeds, ok = g.get("seeds"), g.get("success_per_seed")
            if not isinstance(seeds, list) or not isinstance(ok, list) or len(seeds) != len(ok):
                raise ValueError(f"{path}: condition {cond!r} needs equally long 'seeds' and 'success_per_seed'")
            d = pooled.setdefault(cond, {})
            for s, o in zip(seeds, ok):
                if int(s) in d and d[int(s)] != bool(o):
                    raise ValueError(f"{path}: seed {s} of condition {cond!r} has two different outcomes")
                d[int(s)] = bool(o)
    return {c: Trials(tuple(sorted(d)), tuple(d[s] for s in sorted(d))) for c, d in pooled.items()}


def placement_table(trials: Trials, task: PickLiftTask, bins: int) -> list[tuple[str, list[tuple[float, float, int, int]]]]:
    """[(axis, [(low, high, successes, trials) per interval])] for x (m), y (m) and yaw (deg) over the task's
    ranges; the last interval of each axis includes its upper end."""
    states = [task.sample(s) for s in trials.seeds]
    ok = np.array(trials.success, dtype=bool)
    rows = []
    for axis, values, (lo, hi), scale in (
            ("x_m", [st.cube_xy[0] for st in states], task.x_range, 1.0),
            ("y_m", [st.cube_xy[1] for st in states], task.y_range, 1.0),
            ("yaw_deg", [st.cube_yaw for st in states], task.yaw_range, 180.0 / np.pi)):
        v = np.asarray(values, dtype=float)
        edges = np.linspace(lo, hi, bins + 1)
        idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
        rows.append((axis, [(float(edges[b] * scale), float(edges[b + 1] * scale), int(ok[idx == b].sum()),
                             int((idx == b).sum())) for b in range(bins)]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posevla benchmark summary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(ap)
    return run_summary(ap.parse_args(argv))


def add_summary_parser(sub) -> None:
    _add_args(sub.add_parser("summary", help="pool results.json files; success with interval and by cube placement",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", type=Path, nargs="+", help="results.json files (or run folders holding one)")
    p.add_argument("--bins", type=int, default=4, help="intervals per placement axis")


def run_summary(args: argparse.Namespace) -> int:
    prog = "posevla benchmark summary"
    if args.bins < 1:
        print(f"{prog}: --bins must be >= 1 (got {args.bins})", file=sys.stderr)
        return 2
    paths = [p / "results.json" if p.is_dir() else p for p in args.results]
    try:
        pooled = load_trials(paths)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    task = PickLiftTask()
    for cond, t in pooled.items():
        n = len(t.seeds)
        if n == 0:
            print(f"{cond}: no trials")
            continue
        lo, hi = wilson_interval(t.successes, n)
        print(f"{cond}: {t.successes}/{n} = {t.successes / n:.2f}, 95 % Wilson [{lo:.2f}, {hi:.2f}]")
        for axis, cells in placement_table(t, task, args.bins):
            print(f"  {axis:<8}" + "  ".join(f"[{a:.3g}, {b:.3g}] {k}/{m}" for a, b, k, m in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
