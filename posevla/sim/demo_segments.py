"""The deliberate error of perturbed (DART-style) twin demonstrations, as segments the trainer leaves out.

A perturbed demonstration (`ApproachOffset`) first flies to a point above the cube that is off by 1.2-6 cm, then
corrects. Its recorded actions during that first approach *are* the error: chunks that start there teach the
policy to miss. DART labels the perturbed states with the expert's correct action; the recorded equivalent is to
start no sample inside the deliberate approach, while the frames after it (off-centre view + the correcting
motion) are learned. `posevla train --exclude-segments FILE` reads what this module writes.

An episode is recognised from what it recorded, not from its seed: the left TCP starts moving at t_move (the
first robot frame 2 mm from the start), the scripted approach ends `ScriptTiming.approach` seconds later, and the
grasp is where the gripper command first falls below 0.5. If the TCP at the approach's end is more than
`min_offset_m` (horizontal, base_link) from the grasp point, [0, approach end) is excluded.

    python -m posevla.sim.demo_segments runs/cl/data/pick_cube --out runs/cl/exclude.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from posevla.sim.task import ScriptTiming


def approach_error_segment(tcp_xyz_m: np.ndarray, stamps_ns: np.ndarray, gripper_cmd: np.ndarray,
                           timing: ScriptTiming = ScriptTiming(), min_offset_m: float = 0.005
                           ) -> tuple[float, float] | None:
    """[0, approach end) in seconds from the first stamp when the approach ended off the grasp point, else None.
    tcp_xyz_m: (N, 3) left TCP in base_link; gripper_cmd: (N,) commanded opening (1 open, 0 closed)."""
    t_s = (stamps_ns - stamps_ns[0]) * 1e-9
    moved = np.nonzero(np.linalg.norm(tcp_xyz_m - tcp_xyz_m[0], axis=1) > 0.002)[0]
    if moved.size == 0:
        return None
    i_move = int(moved[0])
    closing = np.nonzero((gripper_cmd < 0.5) & (np.arange(len(gripper_cmd)) > i_move))[0]
    if closing.size == 0:
        return None
    t_end = t_s[i_move] + timing.approach
    i_end = int(np.argmin(np.abs(t_s - t_end)))
    offset = float(np.linalg.norm(tcp_xyz_m[i_end, :2] - tcp_xyz_m[int(closing[0]), :2]))
    return (0.0, float(t_end)) if offset > min_offset_m else None


def perturbed_segments(episodes: list[Path], timing: ScriptTiming = ScriptTiming(), min_offset_m: float = 0.005
                       ) -> dict[str, list[list[float]]]:
    """{resolved episode path: [[0, approach end]]} for the episodes whose approach ended off the grasp point."""
    from posevla.dataset.reader import EpisodeReader

    out: dict[str, list[list[float]]] = {}
    for path in episodes:
        with EpisodeReader(path) as ep:
            seg = approach_error_segment(ep.array("observations/tcp_pose/left")[:, :3], ep.array("stamps/robot"),
                                         ep.array("action")[:, 6], timing, min_offset_m)
        if seg is not None:
            out[str(Path(path).resolve())] = [list(seg)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posevla.sim.demo_segments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="episode files or task folders of twin demonstrations")
    p.add_argument("--out", type=Path, required=True, help="YAML for posevla train --exclude-segments")
    p.add_argument("--min-offset-m", type=float, default=0.005, help="approach error that counts as deliberate")
    args = p.parse_args(argv)
    from posevla.training.episode_dataset import find_episodes

    try:
        episodes = find_episodes(args.data)
        segs = perturbed_segments(episodes, min_offset_m=args.min_offset_m)
    except (ValueError, OSError, KeyError) as exc:
        print(f"posevla demo_segments: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(yaml.safe_dump(segs))
    print(f"{len(segs)} of {len(episodes)} episode(s) with a deliberate approach error -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
