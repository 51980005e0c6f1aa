"""`posevla pretrain`: the paper's pose pre-training (next-token prediction on pose-token answers).

  posevla tokenizer fit --data mixture.yaml --out runs/bins.json               # bins from the data first
  posevla pretrain --stage grounding --data grounding.yaml --bins runs/bins.json \\
      --config models/posevla_3b.yaml --steps 20000 --out runs/pre1            # stage 1: 3D grounding
  posevla pretrain --stage trajectory --data trajectory.yaml --init runs/pre1/checkpoint \\
      --steps 20000 --out runs/pre2                                            # stage 2: trajectories
  torchrun --nproc_per_node 8 -m posevla.pretrain.train --stage grounding ...  # several GPUs (DDP)
  posevla pretrain --stage grounding --eval-only --init runs/pre1/checkpoint --eval-data test.yaml

--data is a mixture file (sources on disk with weights; see posevla.pretrain.mixture and
docs/pretraining.md for the layouts). Start from a model config (random weights; --paligemma for a stock
PaliGemma) with bins from `posevla tokenizer fit` (--bins), or continue a Pose-VLA checkpoint (--init,
its bins are kept). Each prior (raymap, depth) is kept with probability 1 - --modality-dropout per sample
(the authors keep each with 0.5); sources without depth have that modality masked anyway. AdamW, linear
warm-up then cosine decay from --lr to --min-lr (paper: 5e-5 -> 2.5e-6, 1000 warm-up steps), bf16 autocast
on CUDA. --cotrain-flow F makes a fraction F of the steps flow-matching steps on the episodes sources' action
chunks (the post-training objective, normalisation fitted and saved). With --eval-data the grounding AP at IoU 0.15 (confidence 1.0, category in the prompt) is measured
every --eval-every steps and at the end. Rank 0 writes <out>/checkpoint (pose bins stored with it),
<out>/checkpoint_<step> every --save-every steps, <out>/pretrain_log.csv and <out>/eval.json.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ("grounding", "trajectory")
# Arguments that may differ between a run and its --resume (everything else must match).
RESUME_MAY_CHANGE = ("resume", "device", "eval_every", "eval_questions", "eval_data", "max_new_tokens", "save_every")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("--stage", choices=STAGES, required=True, help="grounding (stage 1) or trajectory (stage 2)")
    p.add_argument("--data", type=Path, help="mixture YAML of training sources (see docs/pretraining.md)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, default=REPO / "models" / "tiny.yaml", help="model config (random init)")
    src.add_argument("--init", type=Path, help="Pose-VLA checkpoint to continue (its pose bins are kept)")
    src.add_argument("--paligemma", type=Path, help="local PaliGemma directory to start from")
    p.add_argument("--bins", type=Path, help="pose_bins.json from `posevla tokenizer fit` (not with --init)")
    p.add_argument("--token-init", choices=("ordinal", "random"), default="random",
                   help="with --config (random weights): ordinal = smooth embeddings for the <loc> and pose tokens "
                        "so neighbouring bins start alike (posevla.pretrain.token_init); random = as built. "
                        "--init and --paligemma keep their embeddings")
    p.add_argument("--out", type=Path, help="run folder (required unless --eval-only)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=2.5e-6, help="learning rate at the end of the cosine")
    p.add_argument("--warmup", type=int, default=1000, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--modality-dropout", type=float, default=0.5, help="probability of dropping each prior per sample")
    p.add_argument("--shuffle-buffer", type=int, default=32, help="samples buffered per source for shuffling")
    p.add_argument("--cotrain-flow", type=float, default=0.0,
                   help="fraction of steps that train flow matching on the episodes sources' action chunks "
                        "(posevla train's targets; normalisation fitted and saved), 0: none")
    p.add_argument("--eval-data", type=Path, help="mixture YAML of held-out grounding sources")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every n steps (0: only at the end)")
    p.add_argument("--eval-questions", type=int, default=200, help="questions drawn from --eval-data")
    p.add_argument("--eval-only", action="store_true", help="evaluate --init on --eval-data and exit")
    p.add_argument("--max-new-tokens", type=int, default=96, help="answer budget when evaluating")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save checkpoint_<step> and a resume state (weights, optimiser, RNGs) every n steps")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest resume state (same arguments; bit-identical "
                        "continuation: the data streams are fast-forwarded without decoding)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: CUDA when present)")


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def make_policy(args: argparse.Namespace, device: str):
    """The model to pre-train, in float32 (autocast gives bf16 on CUDA), with the pose bins to train with."""
    from posevla.model.policy import PoseVLAPolicy
    from posevla.model.pose_tokens import PoseTokenizer

    if args.init is not None:
        if args.bins is not None:
            raise ValueError("--bins cannot change the bins of an --init checkpoint (its pose tokens were trained "
                             "with them); start from --config or --paligemma to use new bins")
        policy = PoseVLAPolicy.from_pretrained(args.init, device=device)
    else:
        if args.paligemma is not None:
            policy = PoseVLAPolicy.from_paligemma(args.paligemma, device=device, seed=args.seed)
        else:
            policy = PoseVLAPolicy.from_config(args.config, seed=args.seed, device=device)
            if args.token_init == "ordinal":
                from posevla.pretrain.token_init import ordinal_token_init

                ordinal_token_init(policy, seed=args.seed)
        if args.bins is not None:
            bins = PoseTokenizer.load(args.bins)
            if bins.num_bins != policy.config.num_pose_bins:
                raise ValueError(f"--bins {args.bins}: num_bins={bins.num_bins} but the model config has "
                                 f"num_pose_bins={policy.config.num_pose_bins}")
            policy.pose_tokenizer.edges.update(bins.edges)
        elif not args.eval_only:
            print("[pretrain] no --bins: using the tokenizer's default uniform bins (run `posevla tokenizer fit`)",
                  flush=True)
    policy.model.to(torch.float32)
    policy.dtype = torch.float32
    return policy


def eval_samples(path: Path, policy, n: int, seed: int) -> list:
    """`n` grounding questions drawn from a mixture (fixed seed, so every evaluation sees the same ones)."""
    from posevla.pretrain.mixture import Mixture, read_mixture

    specs = [s for s in read_mixture(path) if s.format in ("omni3d", "bop")]
    if not specs:
        raise ValueError(f"--eval-data {path}: needs at least one omni3d or bop source")
    mix = Mixture(specs, policy.config, policy.pose_tokenizer, seed=seed + 12345, buffer=1)
    return [next(mix) for _ in range(n)]


def evaluate(policy, samples: list, args: argparse.Namespace) -> dict:
    from posevla.pretrain.evaluation import evaluate_grounding

    return evaluate_grounding(policy, samples, batch_size=max(1, args.batch_size),
                              max_new_tokens=args.max_new_tokens)


def _report(tag: str, res: dict) -> str:
    d = res["decode"]
    return (f"[pretrain] {tag}: AP15 {res['ap']:.1f} on {res['questions']} questions "
            f"({', '.join(f'{k} {v:.1f}' for k, v in ((c, r['ap']) for c, r in res['per_category'].items()))}); "
            f"malformed tuples {d['malformed_tuples']}, unparsable answers {d['unparsable_answers']}, "
            f"wrong category {d['wrong_category']}, truncated {d['truncated']}")


def pretrain(args: argparse.Namespace) -> dict:
    from posevla.pretrain.mixture import GROUNDING_FORMATS, TRAJECTORY_FORMATS, Mixture, read_mixture

    for name, ok in (("steps", args.steps >= 1), ("batch_size", args.batch_size >= 1), ("lr", args.lr > 0),
                     ("min_lr", 0 <= args.min_lr <= args.lr), ("warmup", args.warmup >= 0), ("clip", args.clip > 0),
                     ("weight_decay", args.weight_decay >= 0), ("shuffle_buffer", args.shuffle_buffer >= 1),
                     ("eval_every", args.eval_every >= 0), ("eval_questions", args.eval_questions >= 1),
                     ("max_new_tokens", args.max_new_tokens >= 1), ("save_every", args.save_every >= 0),
                     ("cotrain_flow", 0.0 <= args.cotrain_flow <= 1.0)):
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} is out of range (see --help)")
    if not 0.0 <= args.modality_dropout <= 1.0:
        raise ValueError(f"--modality-dropout={args.modality_dropout} must be in [0, 1]")
    if args.eval_only:
        if args.eval_data is None:
            raise ValueError("--eval-only needs --eval-data")
    elif args.data is None or args.out is None:
        raise ValueError("--data and --out are required for training")
    from posevla.training import resume as rs
    from posevla.training.train import _check_resume_args, run_config

    config_now = run_config(args)
    state_path = None
    if args.resume:
        if args.eval_only:
            raise ValueError("--resume continues a training run; it does not go with --eval-only")
        state_path = rs.latest_state(args.out)
        if state_path is None:
            raise ValueError(f"--resume: no resume state under {Path(args.out) / rs.STATE_DIR} (was --save-every set?)")
        saved_path = Path(args.out) / "run_config.yaml"
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else {}
        _check_resume_args({k: v for k, v in saved.items() if k not in RESUME_MAY_CHANGE},
                           {k: v for k, v in config_now.items() if k not in RESUME_MAY_CHANGE}, Path(args.out))
    rank, world, local_rank = _dist()
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch.manual_seed(args.seed + rank)
    policy = make_policy(args, device)
    cfg = policy.config
    held_out = eval_samples(args.eval_data, policy, args.eval_questions, args.seed) if args.eval_data else []
    if args.eval_only:
        res = evaluate(policy, held_out, args)
        print(_report("eval", res), flush=True)
        return {"eval": [res]}
    specs = read_mixture(args.data)
    wanted = GROUNDING_FORMATS if args.stage == "grounding" else TRAJECTORY_FORMATS
    if not any(s.format in wanted for s in specs):
        raise ValueError(f"--data {args.data}: stage {args.stage} needs at least one source of format {wanted}")
    cfg.p_drop_ray = cfg.p_drop_depth = float(args.modality_dropout)  # recorded in the saved config
    data = Mixture(specs, cfg, policy.pose_tokenizer, seed=args.seed, rank=rank, world=world,
                   buffer=args.shuffle_buffer)
    flow_data, flow_share = None, None
    if args.cotrain_flow > 0:
        from posevla.model.io_transforms import fit_norm_stats
        from posevla.model.normalization import NormStats
        from posevla.pretrain.mixture import episode_paths
        from posevla.training.episode_dataset import EpisodeChunkDataset, find_episodes

        paths = [p for s in specs if s.format in TRAJECTORY_FORMATS for p in episode_paths(s, cfg.arms)]
        if not paths:
            raise ValueError(f"--cotrain-flow needs an episodes or lerobot source in --data {args.data}")
        flow_data = EpisodeChunkDataset(find_episodes(paths), cfg)
        states, actions = flow_data.state_and_action_rows(seed=args.seed)  # same subset on every rank
        policy.set_norm_stats(fit_norm_stats(states, actions, cfg))
        flow_share = np.arange(rank, len(flow_data), world)
    step_rng = np.random.default_rng(args.seed)  # the same on every rank: all ranks take the same kind of step
    flow_rng = np.random.default_rng([args.seed, rank])
    model = policy.model
    model.train()
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            find_unused_parameters=True)  # the action expert takes no part in next-token prediction
    else:
        wrapped = model
    params = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start, log, evals = 0, [], []
    if state_path is not None:  # the trainer's resume state: trainable weights, optimiser, every rank's RNGs
        payload = rs.load_state(state_path, model, opt, rank, world)
        start, log, evals = int(payload["step"]), list(payload["log"]), list(payload["evals"])
        if start >= args.steps:
            raise ValueError(f"--resume: the run in {args.out} already completed {start} of --steps {args.steps}")
        if "norm" in payload:
            from posevla.model.normalization import NormStats

            policy.set_norm_stats(NormStats(**{k: np.asarray(v) for k, v in payload["norm"].items()}))
        for _ in range(start):  # the data streams where they were: same draws, nothing decoded
            if flow_data is not None and flow_share is not None and step_rng.random() < args.cotrain_flow:
                flow_rng.choice(flow_share, args.batch_size)
            else:
                data.skip(args.batch_size)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.yaml").write_text(yaml.safe_dump(config_now, sort_keys=False))
        if state_path is not None:
            print(f"[pretrain] resumed from {state_path} at step {start}", flush=True)
        print(f"[pretrain] stage {args.stage}: {len(specs)} source(s) "
              f"{[(s.name, s.format, s.weight) for s in specs]}, {world} process(es) on {device}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    t0 = time.perf_counter()

    def save_resume_state(step: int) -> None:
        rngs: list | None = None
        if world > 1:  # every rank's RNG goes into rank 0's resume state
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, rs.rng_state())
        if rank != 0:
            return
        policy.save_pretrained(out / f"checkpoint_{step}")
        extra = {"log": log, "evals": evals, "args": config_now}
        if flow_data is not None:
            extra["norm"] = {k: getattr(policy.norm, k).tolist()
                             for k in ("state_mean", "state_std", "action_mean", "action_std")}
        rs.save_state(out, step, model, opt, extra, rngs)

    for step in range(start, args.steps):
        flow_step = flow_data is not None and step_rng.random() < args.cotrain_flow
        if flow_step:  # flow matching on action chunks (no pose text: compute_loss gives the flow loss only)
            assert flow_data is not None and flow_share is not None
            batch = policy.make_batch([flow_data[int(i)] for i in flow_rng.choice(flow_share, args.batch_size)])
        else:
            batch = policy.make_batch([s.sample for s in itertools.islice(data, args.batch_size)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.warmup, args.lr, args.min_lr)
        with autocast:
            loss = wrapped(batch)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {float(loss)} (check the data and --lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, args.clip))
        opt.step()
        value = float(loss.detach())
        if world > 1:
            t = torch.tensor([value], device=device)
            torch.distributed.all_reduce(t)
            value = float(t) / world
        log.append({"step": step, "kind": "flow" if flow_step else "ntp", "loss": value,
                    "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm, "time_s": time.perf_counter() - t0})
        if rank == 0 and (step % max(1, args.steps // 10) == 0 or step == args.steps - 1):
            print(f"[pretrain] step {step:6d} {log[-1]['kind']} loss {value:.4f} lr {log[-1]['lr']:.2e} grad {grad_norm:.2f}", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save_resume_state(step + 1)
        if rank == 0 and held_out and args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            res = evaluate(policy, held_out, args)
            res["step"] = step + 1
            evals.append(res)
            print(_report(f"step {step + 1}", res), flush=True)
    data.close()
    if flow_data is not None:
        flow_data.close()
    if rank == 0:
        if held_out:
            res = evaluate(policy, held_out, args)
            res["step"] = args.steps
            evals.append(res)
            print(_report(f"step {args.steps}", res), flush=True)
            (out / "eval.json").write_text(json.dumps(evals, indent=1))
        policy.save_pretrained(out / "checkpoint")
        with open(out / "pretrain_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(log[0]))
            w.writeheader()
            w.writerows(log)
        ntp = [r["loss"] for r in log if r["kind"] == "ntp"] or [float("nan")]
        print(f"[pretrain] saved {out / 'checkpoint'}; next-token loss {np.mean(ntp[:10]):.4f} "
              f"(first 10 steps) -> {np.mean(ntp[-10:]):.4f} (last 10); "
              f"{log[-1]['time_s']:.1f} s; samples per source {dict(data.drawn)}", flush=True)
    if world > 1:  # every rank has saved and printed what it must (see posevla.training.dist_exit)
        from posevla.training.dist_exit import leave_after_barrier

        leave_after_barrier()
    return {"log": log, "eval": evals, "policy": policy}


def run(args: argparse.Namespace) -> int:
    try:
        pretrain(args)
    except (ValueError, FloatingPointError) as exc:
        print(f"posevla pretrain: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posevla pretrain")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
