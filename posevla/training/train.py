"""`posevla train`: flow-matching post-training of Pose-VLA on recorded episodes, single process or torchrun.

  posevla train --data data/pick_red_cube --config models/tiny.yaml --steps 2000 --out runs/pick
  torchrun --nproc_per_node 8 -m posevla.training.train --data data/pick --init /data/posevla-pretrained \\
      --steps 30000 --batch-size 4 --out runs/pick --fsdp

Start from a model config (random weights), a Pose-VLA checkpoint (--init) or a stock PaliGemma directory
(--paligemma). Under torchrun every rank trains on its own share of the samples (DistributedDataParallel,
gloo on CPU, NCCL on GPUs; --fsdp shards parameters on GPUs). Normalisation statistics are fitted on the
data and saved with the checkpoint. Rank 0 writes <out>/checkpoint (and checkpoint_<step> every
--save-every steps), <out>/train_log.csv and <out>/loss.png.
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

REPO = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    p.add_argument("--data", nargs="+", required=True, help="episode files or task folders")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, default=REPO / "models" / "tiny.yaml", help="model config (random init)")
    src.add_argument("--init", type=Path, help="Pose-VLA checkpoint to fine-tune")
    src.add_argument("--paligemma", type=Path, help="local PaliGemma directory to start from")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then cosine decay to 10 %%")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--stride", type=int, default=1, help="use every n-th frame as a sample")
    p.add_argument("--save-every", type=int, default=0, help="also save checkpoint_<step> every n steps (0: only at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: CUDA when present)")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP (CUDA, torchrun)")


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
    from posevla.model.policy import PoseVLAPolicy

    if args.init:
        return PoseVLAPolicy.from_pretrained(args.init, device=device)
    if args.paligemma:
        return PoseVLAPolicy.from_paligemma(args.paligemma, device=device)
    return PoseVLAPolicy.from_config(args.config, seed=args.seed, device=device)


def _plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log])
    loss = np.array([r["loss"] for r in log])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(loss) // 20)
    if len(loss) >= k:
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from posevla.model.normalization import NormStats
    from posevla.training.episode_dataset import EpisodeChunkDataset, find_episodes

    rank, world, local_rank = _dist()
    if args.device:
        device = args.device
    else:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch.manual_seed(args.seed + rank)
    policy = _make_policy(args, device)
    cfg = policy.config
    episodes = find_episodes(args.data)
    data = EpisodeChunkDataset(episodes, cfg, stride=args.stride)
    if len(data) < args.batch_size:
        raise ValueError(f"{len(data)} samples in {len(episodes)} episode(s), fewer than --batch-size {args.batch_size}")
    states, actions = data.state_and_action_rows(seed=args.seed)  # same subset on every rank
    policy.set_norm_stats(NormStats.fit(states, actions))
    model = policy.model
    model.train()
    if world > 1:
        if args.fsdp:
            if not device.startswith("cuda"):
                raise ValueError("--fsdp needs CUDA devices")
            from torch.distributed.fsdp import FullyShardedDataParallel

            wrapped = FullyShardedDataParallel(model, use_orig_params=True)
        else:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
                find_unused_parameters=True)
    else:
        wrapped = model
    params = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    rng = np.random.default_rng(args.seed + 1000 * rank)
    share = np.arange(rank, len(data), world)  # this rank's samples
    order, pos = rng.permutation(share), 0
    log: list[dict] = []
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"[train] {len(episodes)} episode(s), {len(data)} samples, {world} process(es) on {device}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    bar = tqdm(range(args.steps), desc="train", disable=rank != 0 or not sys.stderr.isatty())
    t0 = time.perf_counter()
    for step in bar:
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(share), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        batch = policy.make_batch([data[int(i)] for i in idx])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
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
        log.append({"step": step, "loss": value, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                    "time_s": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{value:.4f}")
        if rank == 0 and not sys.stderr.isatty() and (step % max(1, args.steps // 10) == 0 or step == args.steps - 1):
            print(f"[train] step {step:6d} loss {value:.4f} lr {log[-1]['lr']:.2e} grad {grad_norm:.2f}", flush=True)
        if rank == 0 and args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            policy.save_pretrained(out / f"checkpoint_{step + 1}")
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
        policy.save_pretrained(out / "checkpoint")
        with open(out / "train_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(log[0]))
            w.writeheader()
            w.writerows(log)
        _plot(log, out / "loss.png")
        print(f"[train] saved {out / 'checkpoint'}; loss {np.mean([r['loss'] for r in log[:10]]):.4f} (first 10 steps) -> "
              f"{np.mean([r['loss'] for r in log[-10:]]):.4f} (last 10); {log[-1]['time_s']:.1f} s", flush=True)
    data.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return {"log": log, "rank": rank, "world": world}


def run(args: argparse.Namespace) -> int:
    try:
        train(args)
    except (ValueError, FloatingPointError) as exc:
        print(f"posevla train: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posevla train")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
