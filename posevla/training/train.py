"""`posevla train`: flow-matching post-training of Pose-VLA on recorded episodes, one process or torchrun (DDP).

  posevla train --data data/pick_red_cube --config models/tiny.yaml --steps 2000 --out runs/pick     # CPU, tiny
  posevla train --data data/pick --init-pi0 /data/pi0_base --steps 20000 --out runs/pick               # one GPU
  posevla train --data data/pick --init-pi0 /data/pi0_base --steps 20000 --out runs/pick --resume      # continue
  torchrun --standalone --nproc_per_node 8 -m posevla.training.train --data data/pick --init-pi0 /data/pi0_base \\
      --train all --steps 30000 --batch-size 4 --out runs/pick                                        # 8 GPUs, DDP

Weights: a model config (random), a Pose-VLA checkpoint (--init), a pi0 checkpoint in transformers or LeRobot
format (--init-pi0) or a stock PaliGemma directory (--paligemma).

Precision: parameters are kept in fp32 (the optimizer's master weights) and the forward/backward pass runs under
bf16 autocast on CUDA (--precision). Frozen weights are stored in bf16 there. The checkpoint is served in bf16 by
the policy with RoPE and flow-time frequencies kept in fp32.

Memory (one GPU): --train chooses what is trained (all | no-vision | lora | expert; auto = all for a random model,
else lora when peft is installed, else expert; with gradient checkpointing, on by default on CUDA, both fit 24 GB at full size: measured
peaks 20.4 / 18.3 GiB at batch 8 on an H200), --[no-]grad-checkpointing, --optimizer (adamw | adamw-fused |
adamw-8bit). The run prints the memory plan of every mode; --plan prints it and exits.

Weight averaging: --ema-decay d keeps an exponential moving average of the trained weights (posevla.training.ema);
checkpoints and held-out evaluations then use the average, resume states keep both.

Data: episodes are split by episode into training and held-out (--val-episodes); --workers processes decode,
resize and build raymaps; the run prints data vs model samples/s. Held-out action errors per horizon step and
arm (mm, deg; camera frame and base_link) are reported every --eval-every steps and at the end.

Several processes: under torchrun every rank trains on its own share of the samples with DistributedDataParallel
(gloo on CPU, NCCL on GPUs). Tensors that receive no gradient from the objective are found on the first batch and
frozen, so DDP needs no unused-parameter search. Each rank holds a full replica: at full size use --train lora or
expert (or several 80 GB GPUs for --train all). FSDP is not offered.

Run folder: checkpoint/ (loadable by PoseVLAPolicy.from_pretrained, with normalisation statistics and
run_config.yaml), checkpoint_<step>/ every --save-every steps, resume/ (resume states), run_config.yaml,
train_log.csv, loss.png, eval.json, eval_errors.png. --resume continues from the newest resume state and
reaches the same weights as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from posevla.paths import default_path

# Arguments that may differ between a run and its --resume (everything else must match).
RESUME_MAY_CHANGE = ("resume", "workers", "device", "eval_every", "eval_samples")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("--data", nargs="+", help="episode files or task folders (required unless --plan)")
    p.add_argument("--include-failed", action="store_true",
                   help="also train on episodes marked failed found in --data folders (default: left out)")
    p.add_argument("--exclude-segments", type=Path,
                   help="YAML: episode file -> [[t0_s, t1_s], ...] where no sample starts (e.g. a deliberate error "
                        "in a recovery demonstration; the correction after it is still learned)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, default=default_path("models", "tiny.yaml"),
                     help="model config (random init; default: %(default)s)")
    src.add_argument("--init", type=Path, help="Pose-VLA checkpoint to fine-tune")
    src.add_argument("--init-pi0", type=Path, help="pi0 checkpoint directory (transformers or LeRobot format)")
    src.add_argument("--paligemma", type=Path, help="local PaliGemma directory to start from")
    p.add_argument("--pi0-config", type=Path, default=None,
                   help="with --init-pi0 in LeRobot format: model config giving the sizes (default models/posevla_3b.yaml)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="with --init-pi0: PaliGemma tokenizer directory when the checkpoint has none")
    p.add_argument("--out", type=Path, help="run folder (required unless --plan)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest resume state")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps in the whole run")
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay to 10 %%")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and save "
                        "and evaluate it instead of the raw weights (0: off)")
    p.add_argument("--norm-stats", choices=("fit", "init"), default="fit",
                   help="state/action normalisation: fit it on --data (default) or keep the --init checkpoint's, so "
                        "fine-tuning starts from the outputs the checkpoint already gives (needs --init)")
    p.add_argument("--stride", type=int, default=1, help="use every n-th frame as a sample")
    p.add_argument("--save-every", type=int, default=0,
                   help="save checkpoint_<step> and a resume state every n steps (0: only at the end)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation, the data order and the noise")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: CUDA when present)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="autocast dtype over fp32 master weights (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--train", default="auto", choices=("auto", "all", "no-vision", "lora", "expert"),
                   help="what is trained (auto: all for a random model from --config; from pretrained weights lora "
                        "when peft is installed, else expert; see the memory plan)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank for --train lora")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute layer activations in backward (default: on for CUDA; with the default lora mode the "
                        "full-size peak at batch 8 is 20.4 GiB on an H200, 36.1 GiB without)")
    p.add_argument("--optimizer", default="auto", choices=("auto", "adamw", "adamw-fused", "adamw-8bit"),
                   help="auto: adamw-fused on CUDA, adamw on CPU; adamw-8bit needs bitsandbytes")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: build batches in-process)")
    p.add_argument("--cache-gb", type=float, default=0.0,
                   help="keep built samples in the training process's RAM up to this many GB (compact, bit-identical; "
                        "posevla.training.sample_cache), so later epochs decode nothing: ~0.34 MB per sample at 168 px "
                        "with two views; needs --workers 0; not with image augmentation (0: off)")
    p.add_argument("--val-episodes", type=int, default=-1,
                   help="held-out episodes (default: 10 %% of the episodes, at least 1 when there are 2 or more)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate on held-out episodes every n steps (0: at the end)")
    p.add_argument("--eval-samples", type=int, default=64, help="held-out samples per evaluation")
    p.add_argument("--plan", action="store_true", help="print the memory plan of every --train mode and exit")


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _make_policy(args: argparse.Namespace, device: str):
    """The policy with fp32 parameters (master weights), whatever the device."""
    from posevla.model.policy import PoseVLAPolicy

    fp32 = torch.float32
    if args.init:
        return PoseVLAPolicy.from_pretrained(args.init, device=device, dtype=fp32)
    if args.init_pi0:
        return PoseVLAPolicy.from_pi0(args.init_pi0, config=args.pi0_config, tokenizer=args.tokenizer,
                                      device=device, dtype=fp32, seed=args.seed)
    if args.paligemma:
        return PoseVLAPolicy.from_paligemma(args.paligemma, device=device, dtype=fp32)
    return PoseVLAPolicy.from_config(args.config, seed=args.seed, device=device, dtype=fp32)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: None means plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def freeze_unused(model: torch.nn.Module, batch: dict[str, torch.Tensor], amp: torch.dtype | None) -> list[str]:
    """Run one forward/backward pass (RNG left untouched) and freeze every trainable tensor that gets no gradient
    (e.g. the VLM's last-layer MLP and final norm under a flow-only objective: only its keys/values are used)."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with autocast(device, amp):
            loss = model(batch)["loss"]
        loss.backward()
    unused = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            unused.append(name)
        p.grad = None
    return unused


def _plot(log: list[dict], evals: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="training loss")
    k = max(1, len(loss) // 20)
    if len(loss) >= k:
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", color="C3",
                label="held-out loss (fixed noise)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_config(args: argparse.Namespace) -> dict:
    """The run's arguments as plain YAML-able values (saved as run_config.yaml and in every resume state)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k.startswith("_") or k == "command":
            continue
        out[k] = [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
    return out


NEWER_OPTION_DEFAULTS = {"norm_stats": "fit"}  # options added after runs were saved: their default behaves as before


def _check_resume_args(saved: dict, now: dict, path: Path) -> None:
    for key in sorted(set(saved) | set(now)):
        if key in RESUME_MAY_CHANGE:
            continue
        if key not in saved and now.get(key) in (None, False, 0, NEWER_OPTION_DEFAULTS.get(key)):
            continue  # an option newer than the run, left at its default
        if saved.get(key) != now.get(key):
            raise ValueError(f"--resume: --{key.replace('_', '-')} is {now.get(key)!r} but the run in {path} used "
                             f"{saved.get(key)!r}")


def _after_step(step: int) -> None:
    """Called after every completed step (and its saves); does nothing (tests replace it to kill a run)."""


def _print_plan(policy_model: torch.nn.Module, args: argparse.Namespace, optimizer: str, mode: str | None,
                frozen_bytes: int) -> None:
    from posevla.training.options import plan_table

    print(f"[train] memory plan ({sum(p.numel() for p in policy_model.parameters()) / 1e6:.1f} M parameters, "
          f"optimizer {optimizer}, frozen weights {frozen_bytes} bytes each):\n"
          + plan_table(policy_model, optimizer, args.lora_rank, frozen_bytes, mode), flush=True)


def show_plan(args: argparse.Namespace) -> None:
    """--plan: the memory table for the chosen model, counted on a meta-device model (no memory, no data)."""
    from posevla.model.config import PoseVLAConfig
    from posevla.model.network import PoseVLAModel

    if args.init or args.init_pi0 or args.paligemma:
        raise ValueError("--plan counts a model config: use --config (e.g. models/posevla_3b.yaml)")
    cfg = PoseVLAConfig.from_yaml(args.config)
    vocab = 257152 + 4 * cfg.num_pose_bins  # PaliGemma's vocabulary plus the pose tokens
    with torch.device("meta"):
        model = PoseVLAModel(cfg, vocab, 257152, 0, io_width=32)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    optimizer = args.optimizer if args.optimizer != "auto" else ("adamw-fused" if device.type == "cuda" else "adamw")
    print(f"[train] {args.config}: vocabulary {vocab} (PaliGemma + pose tokens), state/action width 32")
    _print_plan(model, args, optimizer, None, 2)


def train(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from posevla.model.io_transforms import fit_norm_stats
    from posevla.model.normalization import NormStats
    from posevla.training import options as opts
    from posevla.training import resume as rs
    from posevla.training.ema import ParamEMA
    from posevla.training.episode_dataset import (
        EpisodeChunkDataset,
        find_episodes,
        read_exclude_segments,
        split_episodes,
    )
    from posevla.training.evaluate import evaluate, save_evaluation, summary_line
    from posevla.training.loader import BatchBuilder, EpochBatchOrder, ThroughputMeter, make_loader

    if args.plan:
        show_plan(args)
        return {}
    if not args.data or not args.out:
        raise ValueError("--data and --out are required")
    for name in ("steps", "batch_size", "lora_rank", "eval_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.ema_decay == 0.0 or 0.0 < args.ema_decay < 1.0):
        raise ValueError(f"--ema-decay must be 0 (off) or in (0, 1), got {args.ema_decay}")
    if args.cache_gb < 0 or (args.cache_gb > 0 and args.workers > 0):
        raise ValueError(f"--cache-gb must be >= 0 and needs --workers 0 (the cache lives in the training process), "
                         f"got --cache-gb {args.cache_gb} --workers {args.workers}")
    if args.norm_stats == "init" and not args.init:
        raise ValueError("--norm-stats init keeps the statistics of an --init checkpoint: give --init")
    mode = opts.resolve_train_mode(args.train, pretrained=bool(args.init or args.init_pi0 or args.paligemma))
    out = Path(args.out)
    config_now = run_config(args)
    state_path = None
    if args.resume:
        state_path = rs.latest_state(out)
        if state_path is None:
            raise ValueError(f"--resume: no resume state under {out / rs.STATE_DIR} (was --save-every set?)")
        saved = yaml.safe_load((out / "run_config.yaml").read_text()) if (out / "run_config.yaml").exists() else {}
        _check_resume_args(saved, config_now, out)

    rank, world, local_rank = _dist()
    device = resolve_device(args.device, local_rank, torch.cuda.is_available())
    device_name = str(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed + rank)
    policy = _make_policy(args, device_name)
    cfg = policy.config
    amp = amp_dtype(args.precision, device)
    optimizer_name = args.optimizer if args.optimizer != "auto" else ("adamw-fused" if device.type == "cuda" else "adamw")

    episodes = find_episodes(args.data, include_failed=args.include_failed)
    n_val = args.val_episodes if args.val_episodes >= 0 else (max(1, len(episodes) // 10) if len(episodes) >= 2 else 0)
    train_eps, val_eps = split_episodes(episodes, n_val)
    exclude = read_exclude_segments(args.exclude_segments, episodes) if args.exclude_segments else None
    data = EpisodeChunkDataset(train_eps, cfg, stride=args.stride, exclude_s=exclude)
    data.aug_seed = args.seed + 1000 * rank
    if data.augments:
        print(f"[train] image augmentation: random crops to {cfg.aug_crop_scale:.2f}-1 of each view's region "
              f"(intrinsics exact), brightness/contrast +-{cfg.aug_color:.2f}", flush=True)
    if any(p > 0 for p in cfg.p_drop_view.values()):
        print(f"[train] view dropout: {', '.join(f'{v} hidden in {p:.0%} of the samples' for v, p in cfg.p_drop_view.items())}"
              f" (training only; every view is read at inference)", flush=True)
    if exclude:
        print(f"[train] --exclude-segments: {data.excluded_samples} sample start(s) left out in {len(exclude)} "
              f"episode(s)", flush=True)
    if data.unmeasured_gripper_samples:
        print(f"[train] {data.unmeasured_gripper_samples} frame(s) not used as samples: a gripper opening was not "
              "measured there (NaN in observations/qpos; `posevla dataset check` lists the episodes)", flush=True)
    val_data = EpisodeChunkDataset(val_eps, cfg, stride=args.stride) if val_eps else None
    if len(data) < args.batch_size:
        raise ValueError(f"{len(data)} samples in {len(train_eps)} episode(s), fewer than --batch-size {args.batch_size}")
    if args.norm_stats == "fit":
        states, actions = data.state_and_action_rows(seed=args.seed)  # same subset on every rank
        policy.set_norm_stats(fit_norm_stats(states, actions, cfg))
    else:
        print(f"[train] --norm-stats init: normalisation kept from {args.init}", flush=True)

    model = policy.model
    model.train()
    opts.apply_train_mode(model, mode, args.lora_rank)
    model.to(device)  # LoRA adapters are created on the CPU
    if args.grad_checkpointing if args.grad_checkpointing is not None else device.type == "cuda":
        model.enable_gradient_checkpointing()
    order = EpochBatchOrder(np.arange(rank, len(data), world), args.batch_size, args.seed + 1000 * rank)
    cache = None
    if args.cache_gb > 0 and data.augments:
        print("[train] --cache-gb: not used, the model config augments images (every draw differs)", flush=True)
    elif args.cache_gb > 0:
        from posevla.training.sample_cache import SampleCache

        cache = SampleCache(data, int(args.cache_gb * 1e9), data.depth_scales())
    builder = BatchBuilder(cache if cache is not None else data, policy.batcher)
    probe = {k: v.to(device) for k, v in builder[order.batch(0)].items() if k != "build_s"}
    unused = freeze_unused(model, probe, amp)
    del probe
    frozen_bytes = 4
    if amp is not None and device.type == "cuda":
        opts.cast_frozen(model, amp)
        frozen_bytes = 2
    params = [p for p in model.parameters() if p.requires_grad]
    opt = opts.make_optimizer(params, optimizer_name, args.lr, args.weight_decay, device)
    ema = ParamEMA(model, args.ema_decay) if args.ema_decay > 0 else None

    start, log, evals = 0, [], []
    if state_path is not None:
        payload = rs.load_state(state_path, model, opt, rank, world)
        start, log, evals = int(payload["step"]), list(payload["log"]), list(payload.get("evals", []))
        policy.set_norm_stats(NormStats(**{k: np.asarray(v) for k, v in payload["norm"].items()}))
        if ema is not None:
            if "ema" not in payload:
                raise ValueError(f"--resume: {state_path} holds no EMA weights (the run was started without --ema-decay)")
            ema.load_state_dict(payload["ema"], str(state_path))
    if start >= args.steps:
        raise ValueError(f"--resume: the run in {out} already completed {start} of --steps {args.steps}")
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
    else:
        wrapped = model
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.yaml").write_text(yaml.safe_dump(config_now, sort_keys=False))
        n_all = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in params)
        print(f"[train] {len(episodes)} episode(s), {len(data)} samples, {world} process(es) on {device_name} "
              f"({len(train_eps)} training episode(s), {len(val_eps)} held out), {n_all / 1e6:.2f} M parameters, "
              f"{n_train / 1e6:.2f} M trained (--train {mode}), precision "
              f"{'bf16 autocast, fp32 master weights' if amp else 'fp32'}, optimizer {optimizer_name}", flush=True)
        if unused:
            print(f"[train] {len(unused)} tensor(s) get no gradient from this objective and are frozen "
                  f"(e.g. {unused[0]})", flush=True)
        _print_plan(model, args, optimizer_name, mode, frozen_bytes)
        if state_path is not None:
            print(f"[train] resumed from {state_path} at step {start}", flush=True)

    loader = make_loader(builder, EpochBatchOrder(order.indices, args.batch_size, order.seed, start, args.steps - start),
                         args.workers, pin_memory=device.type == "cuda")
    meter = ThroughputMeter(args.workers)

    def run_eval(step: int) -> None:
        if rank != 0 or val_data is None or len(val_data) == 0:
            return
        with ema.swapped_in() if ema is not None else contextlib.nullcontext():
            result = evaluate(policy, val_data, args.eval_samples, args.batch_size, args.seed, amp)
        evals.append({"step": step, "val_loss": result["val_loss"]})
        save_evaluation(result, out, step)
        print(f"[train] step {step} {summary_line(result)}", flush=True)

    def save(step: int, final: bool) -> None:
        rngs: list | None = None
        if not final and world > 1:  # every rank's RNG goes into rank 0's resume state
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, rs.rng_state())
        if rank != 0:
            return
        target = out / ("checkpoint" if final else f"checkpoint_{step}")
        with ema.swapped_in() if ema is not None else contextlib.nullcontext():
            policy.save_pretrained(target, state_dict=opts.export_state_dict(model))
        (target / "run_config.yaml").write_text(yaml.safe_dump(config_now, sort_keys=False))
        if not final:
            norm = {k: getattr(policy.norm, k).tolist() for k in ("state_mean", "state_std", "action_mean", "action_std")}
            extra = {"log": log, "evals": evals, "norm": norm, "args": config_now}
            if ema is not None:
                extra["ema"] = ema.state_dict()
            rs.save_state(out, step, model, opt, extra, rngs)

    bar = tqdm(range(start, args.steps), desc="train", disable=rank != 0 or not sys.stderr.isatty(),
               initial=start, total=args.steps)
    it = iter(loader)
    t_run = time.perf_counter()
    for step in bar:
        t0 = time.perf_counter()
        cpu_batch = next(it)
        t1 = time.perf_counter()
        build_s = float(cpu_batch.pop("build_s"))
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu_batch.items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        with autocast(device, amp):
            loss = wrapped(batch)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {float(loss)} (check the data and --lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, args.clip))
        opt.step()
        if ema is not None:
            ema.update(step + 1)
        value = float(loss.detach())
        if world > 1:
            t = torch.tensor([value], device=device)
            torch.distributed.all_reduce(t)
            value = float(t) / world
        t2 = time.perf_counter()
        meter.add(args.batch_size, build_s, t1 - t0, t2 - t1)
        log.append({"step": step, "loss": value, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                    "data_wait_s": t1 - t0, "step_s": t2 - t1})
        bar.set_postfix(loss=f"{value:.4f}")
        every = max(1, args.steps // 10)
        if rank == 0 and not sys.stderr.isatty() and (step % every == 0 or step == args.steps - 1):
            print(f"[train] step {step:6d} loss {value:.4f} lr {log[-1]['lr']:.2e} grad {grad_norm:.2f}; "
                  f"{meter.line()}" + (f"; {cache.line()}" if cache is not None else ""), flush=True)
        done = step + 1
        if args.eval_every and done % args.eval_every == 0 and done < args.steps:
            run_eval(done)
        if args.save_every and done % args.save_every == 0 and done < args.steps:
            save(done, final=False)
        _after_step(done)
    del it, loader
    if world > 1:  # every rank must hold the same weights after the last synchronised step
        with torch.no_grad():
            local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(device)
        sums = [torch.zeros_like(local) for _ in range(world)]
        torch.distributed.all_gather(sums, local)
        spread = float(max(abs(float(x) - float(sums[0])) for x in sums))
        if rank == 0:
            print(f"[train] {world} ranks agree on the weights (checksum spread {spread:.2e})" if spread < 1e-6
                  else f"[train] WARNING: ranks disagree on the weights (checksum spread {spread:.2e})", flush=True)
    if rank == 0:
        run_eval(args.steps)
        save(args.steps, final=True)
        with open(out / "train_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(log[0]))
            w.writeheader()
            w.writerows(log)
        _plot(log, evals, out / "loss.png")
        print(f"[train] {meter.line()}" + (f"; {cache.line()}" if cache is not None else ""), flush=True)
        print(f"[train] saved {out / 'checkpoint'}; loss {np.mean([r['loss'] for r in log[:10]]):.4f} (first 10 steps) -> "
              f"{np.mean([r['loss'] for r in log[-10:]]):.4f} (last 10); {time.perf_counter() - t_run:.1f} s", flush=True)
    data.close()
    if val_data is not None:
        val_data.close()
    if world > 1:  # every rank has saved and printed what it must (see posevla.training.dist_exit)
        from posevla.training.dist_exit import leave_after_barrier

        leave_after_barrier()
    return {"log": log, "rank": rank, "world": world, "evals": evals, "rates": meter.rates()}


def run(args: argparse.Namespace) -> int:
    try:
        train(args)
    except (ValueError, FloatingPointError) as exc:
        print(f"posevla train: {exc}", file=sys.stderr)
        return 2
    return 0


def resolve_device(name: str | None, local_rank: int, cuda_available: bool) -> torch.device:
    """The training device: `--device` as given, with an index (`cuda` -> this process's GPU `cuda:<local_rank>`:
    torch.cuda.set_device refuses a CUDA device without one); default CUDA when present, else the CPU."""
    if not name:
        return torch.device(f"cuda:{local_rank}" if cuda_available else "cpu")
    device = torch.device(name)
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posevla train")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
