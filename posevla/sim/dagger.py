"""Takeover episodes on the twin (DAgger-style): a checkpoint drives the direct rollout for a random time, then
the scripted expert takes over from wherever the arm and cube are (`scripted_pick_from`) and completes the pick.
Each trial is written as an episode in the project's format (all twin cameras, robot state, commands), and an
exclude-segments file marks the policy's part, so `posevla train --exclude-segments` starts samples only where
the expert drives: corrections from the states the policy itself reaches (the demonstrations never visit them).

    python -m posevla.sim.dagger --checkpoint runs/cl2/e4/checkpoint --out runs/dagger --episodes 100
    posevla train --init runs/cl2/e4/checkpoint --data <demos> runs/dagger/data/pick_cube \\
        --exclude-segments runs/dagger/exclude.yaml ...

Training placements only (seeds --first-seed..; the held-out evaluation seeds start at 1 000 000).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from posevla.paths import calibration_dir, default_path
from posevla.sim.rollout import MissRule
from posevla.sim.task import PickLiftTask


def collect(checkpoint: Path, out: Path, episodes: int, first_seed: int, takeover_s: tuple[float, float],
            trial_s: float, width: int, height: int, robot_yaml: Path, calib_dir: Path, seed: int = 0,
            log=print, task: PickLiftTask | None = None, miss: MissRule | None = None, threads: int = 2) -> dict:
    """Record `episodes` takeover trials; returns counts and the paths written. task: the placement ranges the
    seeds draw from (default: the benchmark's). miss: take over when the policy misses its grasp (`MissRule`)
    instead of at a random time; a trial in which the policy lifts the cube itself ends there and is not kept
    (it holds no correction)."""
    import torch

    from posevla.calibration.files import episode_calibration_meta, load_calibrations
    from posevla.dataset.writer import EpisodeWriter, FrameRecord
    from posevla.model.policy import PoseVLAPolicy
    from posevla.sim.rollout import DirectRollout, RolloutConfig

    torch.set_num_threads(threads)
    policy = PoseVLAPolicy.from_pretrained(checkpoint, device="cpu")
    r = DirectRollout(policy, robot_yaml, calib_dir, RolloutConfig(trial_s=trial_s, width=width, height=height),
                      task=task)
    calibs = load_calibrations(calib_dir)
    calib_meta = episode_calibration_meta(c.path for c in calibs.values() if c.path is not None)
    intr = {c: r.renderer.intrinsics(c) for c in r.renderer.camera_ids}
    rng = np.random.default_rng([seed, first_seed])
    root = out / "data"
    exclude: dict[str, list[list[float]]] = {}
    lifted, kept, own_lifts, t_start = 0, 0, 0, time.monotonic()
    try:
        for i, s in enumerate(range(first_seed, first_seed + episodes)):
            t_take = float(rng.uniform(*takeover_s))
            operator = "dagger takeover on a miss" if miss is not None else f"dagger takeover {t_take:.2f} s"
            meta = {"instruction": r.world.task.instruction, "operator": operator,
                    "fps": 10.0, "cameras": {c: f"TWIN-{c.upper()}" for c in intr},
                    "software_version": "posevla 0.1.0", "start_time_ns": time.time_ns(), "calibration": calib_meta}
            writer = EpisodeWriter(root, "pick_cube", meta, intr, min_free_bytes=64 * 1024 * 1024)

            def record(t_ns, frames, state, command, writer=writer) -> None:
                rec = FrameRecord(t_ns, {c: f.rgb for c, f in frames.items()}, {c: f.depth for c, f in frames.items()},
                                  {c: t_ns for c in frames}, state, command)
                while not writer.add_frame(rec):
                    time.sleep(0.005)

            xy = r.world.task.sample(s).cube_xy
            if miss is None:
                res = r.trial(s, takeover_s=t_take, record=record)
            else:
                res = r.trial(s, record=record, miss=miss, stop_on_success=True)
                if res.takeover_at_s is None:
                    writer.discard()
                    own_lifts += res.success
                    log(f"[dagger] {i + 1}/{episodes} seed {s} (cube at {xy[0]:.3f}, {xy[1]:.3f}): no miss "
                        f"({'the policy lifted it' if res.success else 'no takeover'}), not kept | {kept} kept  "
                        f"{time.monotonic() - t_start:.0f} s")
                    continue
                t_take = res.takeover_at_s
            path = writer.finish(success=bool(res.success))
            lifted += res.success
            kept += 1
            exclude[str(Path(path).resolve())] = [[0.0, round(t_take, 3)]]
            log(f"[dagger] {i + 1}/{episodes} seed {s} (cube at {xy[0]:.3f}, {xy[1]:.3f}): takeover at {t_take:.1f} s, "
                f"{'lifted' if res.success else 'not lifted'} | {lifted}/{kept}  {time.monotonic() - t_start:.0f} s")
    finally:
        r.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "exclude.yaml").write_text(yaml.safe_dump(exclude, sort_keys=True))
    return {"episodes": episodes, "kept": kept, "lifted": lifted, "own_lifts": own_lifts, "data": root / "pick_cube",
            "exclude": out / "exclude.yaml"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posevla.sim.dagger", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="Pose-VLA checkpoint that drives first")
    p.add_argument("--out", type=Path, required=True, help="run folder (data/pick_cube/, exclude.yaml)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=0, help="training placement seeds first.. (< 1000000)")
    p.add_argument("--takeover-s", type=float, nargs=2, default=(1.0, 6.0), metavar=("MIN", "MAX"),
                   help="the expert takes over at a time uniform in [MIN, MAX] s")
    p.add_argument("--takeover-on-miss", action="store_true",
                   help="take over when the policy misses its grasp (closed for --miss-closed-s with the cube down) or "
                        "at --miss-latest-s without a lift, instead of at --takeover-s; trials the policy lifts itself "
                        "are not kept: the episodes show recoveries from the policy's own misses")
    p.add_argument("--miss-closed-s", type=float, default=MissRule.closed_s, help="(default %(default)s)")
    p.add_argument("--miss-latest-s", type=float, default=MissRule.latest_s, help="(default %(default)s)")
    p.add_argument("--trial-s", type=float, default=14.0, help="simulated seconds per episode")
    nominal = PickLiftTask()
    p.add_argument("--x-range", type=float, nargs=2, default=nominal.x_range, metavar=("LO", "HI"),
                   help="cube placements, base_link x (m); wider than the evaluation's %(default)s puts its edges "
                        "inside the training distribution")
    p.add_argument("--y-range", type=float, nargs=2, default=nominal.y_range, metavar=("LO", "HI"),
                   help="cube placements, base_link y (m) (default %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default %(default)s; 1 when running two collectors on two cores)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--robot-config", type=Path, default=default_path("config", "xtrainer_sim_robot.yaml"))
    p.add_argument("--calibration-dir", type=Path, default=calibration_dir())
    args = p.parse_args(argv)
    prog = "posevla.sim.dagger"
    lo, hi = args.takeover_s
    checks = [(not (args.checkpoint / "config.yaml").is_file(), f"--checkpoint {args.checkpoint}: no config.yaml"),
              (args.episodes < 1, "--episodes must be >= 1"),
              (args.threads < 1, "--threads must be >= 1"),
              (not 0 <= args.first_seed < 1_000_000 - args.episodes,
               "--first-seed: training placements only (seeds below 1000000)"),
              (not 0 <= lo <= hi < args.trial_s, f"--takeover-s {lo} {hi}: need 0 <= MIN <= MAX < --trial-s"),
              (args.takeover_on_miss and not 0 < args.miss_closed_s < args.miss_latest_s < args.trial_s,
               "--miss-closed-s / --miss-latest-s: need 0 < CLOSED < LATEST < --trial-s"),
              (not args.robot_config.is_file(), f"--robot-config {args.robot_config} does not exist"),
              (not args.calibration_dir.is_dir(), f"--calibration-dir {args.calibration_dir} is not a folder"),
              (not args.x_range[0] < args.x_range[1], f"--x-range {args.x_range}: need LO < HI"),
              (not args.y_range[0] < args.y_range[1], f"--y-range {args.y_range}: need LO < HI")]
    for bad, why in checks:
        if bad:
            print(f"{prog}: {why}", file=sys.stderr)
            return 2
    info = collect(args.checkpoint, args.out, args.episodes, args.first_seed, (lo, hi), args.trial_s, args.width,
                   args.height, args.robot_config, args.calibration_dir,
                   task=PickLiftTask(x_range=tuple(args.x_range), y_range=tuple(args.y_range)),
                   miss=MissRule(closed_s=args.miss_closed_s, latest_s=args.miss_latest_s)
                   if args.takeover_on_miss else None, threads=args.threads)
    print(f"[dagger] {info['kept']} of {info['episodes']} trials kept, {info['lifted']} lifted"
          + (f" ({info['own_lifts']} lifted by the policy itself, not kept)" if args.takeover_on_miss else "")
          + f"; episodes in {info['data']}, exclude segments {info['exclude']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
