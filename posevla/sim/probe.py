"""`posevla benchmark probe`: does a checkpoint's first move depend on where the cube is? (seconds, no trials)

At the start pose every episode has the same robot state and the same wrist views (the wrist cameras look at the
empty table), so only the head camera says where the cube is. The probe resets the twin for each seed, takes one
observation through the direct rollout's observation builder, asks the policy for one chunk (deterministic flow),
maps it to base_link with the head calibration and compares the chunk's last point (the task arm's TCP,
`chunk_length x control_dt` seconds ahead) with the cube's placement: slope and correlation per axis, and how many
seeds got a distinct chunk. A policy that reads the head camera moves its first chunk with the cube (the scripted
pick: slope ~0.8 in x and y); one that ignores it returns one chunk for every placement (slope 0) and can only
find the cube later, with the wrist camera, from wherever that mean path leads.

    posevla benchmark probe --checkpoint runs/closed_loop/train/checkpoint        # 40 held-out seeds, ~10 s
    posevla benchmark probe --policy scripted                                      # reference: the scripted pick
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from posevla.paths import calibration_dir, default_path
from posevla.sim.tasks import TASKS


def add_probe_parser(sub) -> None:
    p = sub.add_parser("probe", help="first chunk vs cube placement: does the policy read the head camera?",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="Pose-VLA checkpoint folder (required unless --policy scripted)")
    p.add_argument("--policy", choices=("checkpoint", "scripted"), default="checkpoint")
    p.add_argument("--task", choices=tuple(TASKS), default="pick_cube", help="the twin's task (posevla.sim.tasks)")
    p.add_argument("--seeds", choices=("heldout", "train"), default="heldout", help="placements: held-out or training")
    p.add_argument("--trials", type=int, default=40, help="placements probed (default %(default)s)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--robot-config", type=Path, default=default_path("config", "xtrainer_sim_robot.yaml"))
    p.add_argument("--calibration-dir", type=Path, default=calibration_dir())
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write probe.json here")


def _check(args: argparse.Namespace) -> str | None:
    if args.policy == "checkpoint" and args.checkpoint is None:
        return "--checkpoint is required (or --policy scripted)"
    if args.checkpoint is not None and not (args.checkpoint / "config.yaml").is_file():
        return f"--checkpoint {args.checkpoint}: no config.yaml"
    if not 3 <= args.trials <= 1000:
        return f"--trials must lie in [3, 1000] (got {args.trials})"
    if not args.robot_config.is_file():
        return f"--robot-config {args.robot_config} does not exist"
    if not args.calibration_dir.is_dir():
        return f"--calibration-dir {args.calibration_dir} is not a folder"
    return None


def first_chunk_targets(rollout, seeds: list[int]) -> np.ndarray:
    """Per seed (rows): cube x, y (base_link, m) and the task arm's last chunk point x, y, z (base_link, m), from the
    first observation after the rollout's reset and settle."""
    from posevla.calibration.transforms import CameraToBase, PoseHistory
    from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder

    cfg, world, policy = rollout.cfg, rollout.world, rollout.policy
    arm = world.task.arm
    rows = []
    for seed in seeds:
        if hasattr(policy, "reset"):
            policy.reset()
        state = world.reset(seed)
        world.step(int(round(cfg.settle_s / world.model.opt.timestep)))
        t_ns = 1_000_000_000
        histories = {a: PoseHistory(max_len=8, tolerance_ns=10**9) for a in world.arms}
        for a in world.arms:
            histories[a].add(t_ns, world.T_base_tcp(a))
        to_base = CameraToBase(rollout.stack_calibs, histories)
        builder = ObservationBuilder(BuilderConfig(image_size=policy.config.image_size, max_age_s=1e9, slop_s=1e9,
                                                   reference_view=policy.config.reference_view,
                                                   crops=dict(policy.config.view_crops)), to_base)
        obs = builder.build(rollout._frames(t_ns), rollout._state(t_ns), world.task.instruction, t_ns)
        chunk = to_base.chunk_to_base(policy.predict(obs, modalities=cfg.modalities))
        end = chunk.arms[arm].T[-1][:3, 3]
        rows.append((*state.cube_xy, *end))
    return np.asarray(rows, dtype=float)


def summarize(rows: np.ndarray) -> dict:
    """Slope and correlation of the chunk's end against the cube, per axis; distinct chunks (1 mm apart)."""
    out: dict = {"n": len(rows)}
    for k, axis in enumerate("xy"):
        cube, end = rows[:, k], rows[:, 2 + k]
        flat = np.ptp(end) < 1e-6
        out[f"slope_{axis}"] = 0.0 if flat else float(np.polyfit(cube, end, 1)[0])
        out[f"corr_{axis}"] = 0.0 if flat else float(np.corrcoef(cube, end)[0, 1])
    ends = np.round(rows[:, 2:4] / 0.001).astype(int)
    out["distinct_chunks"] = len({tuple(e) for e in ends})
    return out


def run_probe(args: argparse.Namespace) -> int:
    why = _check(args)
    if why:
        print(f"posevla benchmark probe: {why}", file=sys.stderr)
        return 2
    import torch

    from posevla.model.config import PoseVLAConfig
    from posevla.sim.rollout import DirectRollout, RolloutConfig, ScriptedPolicy
    from posevla.sim.task import heldout_seeds, train_seeds

    torch.set_num_threads(args.threads)

    class _Holder:  # what the rollout needs of a policy before the scripted one exists
        def __init__(self, config: PoseVLAConfig) -> None:
            self.config = config

    holder: Any
    if args.policy == "scripted":
        holder = _Holder(PoseVLAConfig.from_yaml(args.checkpoint / "config.yaml" if args.checkpoint
                                                 else default_path("models", "closed_loop.yaml")))
    else:
        from posevla.model.policy import PoseVLAPolicy

        try:
            holder = PoseVLAPolicy.from_pretrained(args.checkpoint, device="cpu")
        except (ValueError, FileNotFoundError, KeyError) as exc:
            print(f"posevla benchmark probe: --checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
            return 2
        holder.flow_noise_scale = 0.0
    from posevla.sim.tasks import make_task

    r = DirectRollout(holder, args.robot_config, args.calibration_dir, RolloutConfig(width=args.width, height=args.height),
                      task=make_task(args.task))
    if args.policy == "scripted":
        r.policy = ScriptedPolicy(holder.config, r)
    seeds = (heldout_seeds if args.seeds == "heldout" else train_seeds)(args.trials)
    try:
        rows = first_chunk_targets(r, seeds)
    finally:
        r.close()
    s = summarize(rows)
    order = np.argsort(rows[:, 1])
    print("  cube x   cube y  |  chunk end x   y      z   (base_link, m; sorted by cube y)")
    for i in order:
        print(f"  {rows[i, 0]:.3f}    {rows[i, 1]:.3f}   |  {rows[i, 2]:.3f}      {rows[i, 3]:.3f}  {rows[i, 4]:.3f}")
    print(f"[probe] {s['n']} placements: chunk end vs cube -- x slope {s['slope_x']:.2f} (corr {s['corr_x']:.2f}), "
          f"y slope {s['slope_y']:.2f} (corr {s['corr_y']:.2f}); {s['distinct_chunks']} distinct first chunks "
          f"(1 mm apart)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe.json").write_text(json.dumps({**s, "seeds": seeds, "rows": rows.tolist(),
                                                         "columns": ["cube_x", "cube_y", "end_x", "end_y", "end_z"],
                                                         "checkpoint": str(args.checkpoint)}, indent=1))
    return 0
