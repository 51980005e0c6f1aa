"""`posevla benchmark rollout`: direct (ROS-free, simulated-time) trials of a checkpoint on the twin.

  posevla benchmark rollout --checkpoint runs/closed_loop/train/checkpoint              # 20 held-out seeds
  posevla benchmark rollout --checkpoint CKPT --seeds train --trials 8                  # training placements
  posevla benchmark rollout --checkpoint CKPT --modalities rgb                          # RGB-only ablation
  posevla benchmark rollout --checkpoint CKPT --perturb-calibration                     # head calib 2 cm / 2 deg off
  posevla benchmark rollout --policy scripted --trials 3                                # pipeline check

The same observation builder, hand-eye transform, ChunkExecutor and IK as the ROS graph (posevla.sim.rollout),
without transport or wall clock: a trial costs its renders and model calls only (~4 s per 12 s trial, tiny model,
2 cores), so model and training choices can be screened on many seeds; `posevla benchmark closed-loop` then
confirms them through the unchanged graph in real time. Prints one line per trial and the success rate with its
95 % Wilson interval; --out writes results.json and rollouts.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from posevla.control.executor import BLEND_MODES
from posevla.paths import calibration_dir, default_path
from posevla.sim.tasks import TASKS
from posevla.tools.trial import wilson_interval

MODALITIES = ("full", "rgb", "rgb+ray", "rgb+depth")


def add_rollout_parser(sub) -> None:
    p = sub.add_parser("rollout", help="direct (ROS-free) trials of a checkpoint on the twin, in simulated time",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="Pose-VLA checkpoint folder (required unless --policy scripted)")
    p.add_argument("--policy", choices=("checkpoint", "scripted"), default="checkpoint",
                   help="scripted: the scripted demonstration with the true placement (a pipeline check)")
    p.add_argument("--task", choices=tuple(TASKS), default="pick_cube",
                   help="the twin's task (posevla.sim.tasks; hand_over needs --trial-s ~25)")
    p.add_argument("--seeds", choices=("heldout", "train"), default="heldout", help="placements: held-out or training")
    p.add_argument("--first-seed", type=int, default=0, help="offset into the seed range")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--trial-s", type=float, default=12.0, help="simulated seconds per trial")
    p.add_argument("--replan-s", type=float, default=0.15, help="seconds between observations (policy pace)")
    p.add_argument("--latency-s", type=float, default=0.1, help="observation -> chunk at the executor (s)")
    p.add_argument("--modalities", choices=MODALITIES, default="full", help="geometry the policy reads")
    p.add_argument("--blend", choices=BLEND_MODES, default="ensemble", help="executor chunk blending")
    p.add_argument("--flow-noise-scale", type=float, default=1.0,
                   help="the flow's starting noise is N(0, I) x this (1: sampled as trained; 0: deterministic chunks)")
    p.add_argument("--perturb-calibration", action="store_true",
                   help="the stack (observation builder and executor) reads a head calibration moved by 2 cm / 2 deg; "
                        "the twin renders the true one")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--robot-config", type=Path, default=default_path("config", "xtrainer_sim_robot.yaml"))
    p.add_argument("--calibration-dir", type=Path, default=calibration_dir())
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write results.json and rollouts.png here")


def _check(args: argparse.Namespace) -> str | None:
    if args.policy == "checkpoint" and args.checkpoint is None:
        return "--checkpoint is required (or --policy scripted)"
    if args.checkpoint is not None and not (args.checkpoint / "config.yaml").is_file():
        return f"--checkpoint {args.checkpoint}: no config.yaml (not a checkpoint folder)"
    for name in ("trials", "width", "height", "threads"):
        if getattr(args, name) < 1:
            return f"--{name} must be >= 1 (got {getattr(args, name)})"
    for name in ("trial_s", "replan_s"):
        if not getattr(args, name) > 0:
            return f"--{name.replace('_', '-')} must be > 0 (got {getattr(args, name)})"
    if args.latency_s < 0 or args.first_seed < 0:
        return "--latency-s and --first-seed must be >= 0"
    if not 0.0 <= args.flow_noise_scale <= 1.0:
        return f"--flow-noise-scale must lie in [0, 1] (got {args.flow_noise_scale})"
    if not args.robot_config.is_file():
        return f"--robot-config {args.robot_config} does not exist"
    if not args.calibration_dir.is_dir():
        return f"--calibration-dir {args.calibration_dir} is not a folder"
    return None


def run_rollout(args: argparse.Namespace) -> int:
    why = _check(args)
    if why:
        print(f"posevla benchmark rollout: {why}", file=sys.stderr)
        return 2
    import torch

    from posevla.model.config import PoseVLAConfig
    from posevla.sim.benchmark import _rollout_strip, perturbed_calibration
    from posevla.sim.rollout import DirectRollout, RolloutConfig, ScriptedPolicy
    from posevla.sim.task import heldout_seeds, train_seeds

    torch.set_num_threads(args.threads)
    if args.policy == "scripted":
        policy = None
        config = PoseVLAConfig.from_yaml(args.checkpoint / "config.yaml" if args.checkpoint
                                         else default_path("models", "closed_loop.yaml"))
    else:
        from posevla.model.policy import PoseVLAPolicy

        try:
            policy = PoseVLAPolicy.from_pretrained(args.checkpoint, device="cpu")
            policy.flow_noise_scale = args.flow_noise_scale
        except (ValueError, FileNotFoundError, KeyError) as exc:
            print(f"posevla benchmark rollout: --checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
            return 2
        config = policy.config
    tmp = tempfile.TemporaryDirectory()
    stack_calib = perturbed_calibration(args.calibration_dir, Path(tmp.name)) if args.perturb_calibration else None
    cfg = RolloutConfig(trial_s=args.trial_s, replan_s=args.replan_s, latency_s=args.latency_s, width=args.width,
                        height=args.height, modalities=args.modalities, blend=args.blend)

    class _Cfg:  # what the rollout needs of a policy before the scripted one exists
        config = None

    holder = policy if policy is not None else _Cfg()
    holder.config = config
    try:
        from posevla.sim.tasks import make_task

        r = DirectRollout(holder, args.robot_config, args.calibration_dir, cfg, stack_calibration_dir=stack_calib,
                          task=make_task(args.task))
    except ValueError as exc:
        print(f"posevla benchmark rollout: {exc}", file=sys.stderr)
        return 2
    if policy is None:
        r.policy = ScriptedPolicy(config, r)
    seeds = (heldout_seeds if args.seeds == "heldout" else train_seeds)(args.first_seed + args.trials)[args.first_seed:]
    results, t0 = [], time.monotonic()
    try:
        for i, seed in enumerate(seeds):
            res = r.trial(seed, keep_frames=args.out is not None and i < 4)
            results.append(res)
            ok = sum(x.success for x in results)
            print(f"[rollout] {i + 1}/{len(seeds)} seed {seed}: {'success' if res.success else 'fail   '} cube z "
                  f"{res.cube_z_m:.3f} m, TCP travel {res.tcp_travel_m:.2f} m, {res.chunks} chunks, closest grasp "
                  f"{res.min_grasp_dist_m * 100:.1f} cm  | {ok}/{i + 1}  {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        r.close()
        tmp.cleanup()
    ok = sum(x.success for x in results)
    lo, hi = wilson_interval(ok, len(results))
    print(f"[rollout] success {ok}/{len(results)} = {ok / len(results):.2f}, 95 % Wilson [{lo:.2f}, {hi:.2f}] "
          f"({args.task}, {args.seeds} seeds, modalities {args.modalities}, "
          f"{'perturbed' if args.perturb_calibration else 'true'} calibration)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"task": args.task, "checkpoint": str(args.checkpoint), "policy": args.policy, "seeds": [x.seed for x in results],
                   "success_per_seed": [x.success for x in results], "successes": ok, "trials": len(results),
                   "wilson95": [lo, hi], "rollout": vars(cfg), "perturbed_calibration": args.perturb_calibration,
                   "flow_noise_scale": args.flow_noise_scale,
                   "cube_z_m": [x.cube_z_m for x in results], "closest_grasp_m": [x.min_grasp_dist_m for x in results]}
        (args.out / "results.json").write_text(json.dumps(summary, indent=1))
        _rollout_strip({args.modalities: results}, args.out / "rollouts.png")
    return 0
