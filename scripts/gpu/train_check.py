#!/usr/bin/env python3
"""GPU training check: peak memory and step time of every single-GPU training option at full size, and the
one-step "fraction of weights changed at lr 1e-5" check of fp32 master weights under bf16 autocast.

    PYTHONPATH=. python scripts/gpu/train_check.py                                   # CUDA, models/posevla_3b.yaml
    python scripts/gpu/train_check.py --device cpu --config models/tiny.yaml         # the same on the CPU (< 60 s)

Random weights with the real PaliGemma vocabulary (257,152 tokens + 4 x num_pose_bins pose tokens), state/action
width 32 (pi0's heads), batch 8 (CPU: 2) of three 224 px views with raymaps and depth priors and a 16-token prompt,
flow-matching loss. Each row builds the model afresh, applies the option as `posevla train` does (frozen weights in
bf16 on CUDA, LoRA via peft when installed, fp32 trainable weights, bf16 autocast on CUDA), runs one warm-up step
and --steps timed steps, and reports torch.cuda.max_memory_allocated. Rows whose library is missing (peft,
bitsandbytes) or that run out of memory say so. Prints a table and writes $OUT/train_check.json (or --out).
Needs only torch, transformers, numpy, pyyaml (+ peft, bitsandbytes if present).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# (row name, --train mode, gradient checkpointing, optimizer)
ROWS = (
    ("all", "all", False, "adamw-fused"),
    ("all + ckpt", "all", True, "adamw-fused"),
    ("all + ckpt + 8bit", "all", True, "adamw-8bit"),
    ("no-vision + ckpt", "no-vision", True, "adamw-fused"),
    ("lora", "lora", False, "adamw-fused"),
    ("lora + ckpt (default on CUDA)", "lora", True, "adamw-fused"),
    ("expert", "expert", False, "adamw-fused"),
    ("expert + ckpt", "expert", True, "adamw-fused"),
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--config", default=str(REPO / "models" / "posevla_3b.yaml"), help="model config YAML")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default 8 on CUDA, 2 on the CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 3 on CUDA, 2 on the CPU)")
    p.add_argument("--rows", default=None, help=f"comma-separated subset of: {', '.join(r[0] for r in ROWS)}")
    p.add_argument("--budget-s", type=float, default=210.0, help="wall-clock budget; later rows are skipped to fit")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else runs/bench)")
    return p.parse_args(argv)


def fail(msg: str) -> int:
    print(f"train_check: {msg}", file=sys.stderr)
    return 2


def build(cfg, vocab: int, device, seed: int = 0):
    import torch

    from posevla.model.network import PoseVLAModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = PoseVLAModel(cfg, vocab, 257152 if vocab > 257152 else 3, 0, io_width=32)
    return model


def make_batch(cfg, batch: int, vocab: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    s, v = cfg.image_size, len(cfg.views)
    out = {"pixel_values": torch.rand((batch, v, 3, s, s), generator=g) * 2 - 1,
           "raymaps": torch.randn((batch, v, 3, s, s), generator=g),
           "depth_priors": torch.rand((batch, v, 2, s, s), generator=g),
           "view_mask": torch.ones((batch, v), dtype=torch.bool),
           "prompt_ids": torch.randint(0, min(vocab, 257152), (batch, 16), generator=g),
           "prompt_mask": torch.ones((batch, 16), dtype=torch.long),
           "state": torch.randn((batch, cfg.state_dim), generator=g),
           "actions": torch.randn((batch, cfg.chunk_length, cfg.action_dim), generator=g)}
    return {k: t.to(device) for k, t in out.items()}


def run_row(name: str, mode: str, ckpt: bool, opt_name: str, cfg, vocab: int, batch: dict, device, steps: int,
            fraction_check: bool) -> dict:
    import torch

    from posevla.training import options as opts
    from posevla.training.train import autocast, freeze_unused

    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    row: dict = {"row": name, "train": mode, "grad_checkpointing": ckpt, "optimizer": opt_name}
    if mode == "lora" and not opts.peft_available():
        return {**row, "skipped": "peft is not installed"}
    if opt_name == "adamw-8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return {**row, "skipped": "bitsandbytes is not installed"}
        if not cuda:
            return {**row, "skipped": "8-bit AdamW needs CUDA"}
    if not cuda and opt_name == "adamw-fused":
        opt_name = row["optimizer"] = "adamw"
    model = opt = None
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t_build = time.perf_counter()
        model = build(cfg, vocab, device)
        model.train()
        opts.apply_train_mode(model, mode, 16)
        model.to(device)
        if ckpt:
            model.enable_gradient_checkpointing()
        unused = freeze_unused(model, batch, amp)
        if amp is not None:
            opts.cast_frozen(model, amp)
        params = [p for p in model.parameters() if p.requires_grad]
        row["trainable_M"] = sum(p.numel() for p in params) / 1e6
        row["total_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        row["no_gradient_tensors"] = len(unused)
        row["build_s"] = time.perf_counter() - t_build
        opt = opts.make_optimizer(params, opt_name, 1e-5, 1e-4, device)
        snapshot = None
        if fraction_check:  # every 3rd trainable tensor (bounded copy), compared after the first step
            snapshot = [(p, p.detach().clone()) for p in params[::3]]
        times = []
        for k in range(steps + 1):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast(device, amp):
                loss = model(batch)["loss"]
            loss.backward()
            if snapshot is not None:
                grads = [(p.grad is not None) and p.grad.ne(0) for p, _ in snapshot]
            torch.nn.utils.clip_grad_norm_(params, 1e9)  # as training does (a huge bound: no change to the step)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if snapshot is not None:
                changed = got = 0
                for (p, before), g in zip(snapshot, grads):
                    if g is False:
                        continue
                    got += int(g.sum())
                    changed += int((p.detach() != before)[g].sum())
                row["changed_fraction_lr1e-5"] = changed / max(got, 1)
                row["checked_weights_M"] = got / 1e6
                snapshot = None
            if cuda:
                torch.cuda.synchronize(device)
            if k:
                times.append(time.perf_counter() - t0)
            row["loss"] = float(loss.detach())
        row["step_ms"] = 1e3 * sorted(times)[len(times) // 2]
        row["samples_per_s"] = batch["state"].shape[0] / (row["step_ms"] / 1e3)
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.cuda.OutOfMemoryError as exc:
        row["skipped"] = f"out of memory ({str(exc).splitlines()[0][:80]})"
    finally:
        del model, opt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse(argv)
    import torch

    from posevla.model.config import PoseVLAConfig

    try:
        cfg = PoseVLAConfig.from_yaml(args.config)
    except (OSError, ValueError) as exc:
        return fail(f"--config {args.config}: {exc}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device {args.device}: CUDA is not available (use --device cpu)")
    names = [r[0] for r in ROWS]
    wanted = names if args.rows is None else [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in wanted if r not in names]
    if unknown:
        return fail(f"--rows: unknown row(s) {unknown}; known: {names}")
    args.steps = args.steps if args.steps is not None else (3 if device.type == "cuda" else 2)
    if args.steps < 1:
        return fail(f"--steps must be >= 1, got {args.steps}")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: threads only add synchronisation (and contention on shared hosts)
    vocab = 257152 + 4 * cfg.num_pose_bins
    bs = args.batch_size or (8 if device.type == "cuda" else 2)
    batch = make_batch(cfg, bs, vocab, device)
    print(f"train_check: {args.config} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"vocabulary {vocab}, batch {bs} x {len(cfg.views)} views at {cfg.image_size} px, "
          f"{'bf16 autocast over fp32 master weights' if device.type == 'cuda' else 'fp32'}", flush=True)
    rows = []
    per_row = None
    for name, mode, ckpt, opt_name in ROWS:
        if name not in wanted:
            continue
        elapsed = time.perf_counter() - t_start
        if per_row is not None and elapsed + 1.5 * per_row > args.budget_s:
            rows.append({"row": name, "train": mode, "skipped": f"time budget ({elapsed:.0f} s of {args.budget_s:.0f} s used)"})
            continue
        t0 = time.perf_counter()
        row = run_row(name, mode, ckpt, opt_name, cfg, vocab, batch, device, args.steps, fraction_check=mode == "all"
                      and "changed_fraction_lr1e-5" not in {k for r in rows for k in r})
        if "skipped" not in row:
            per_row = max(per_row or 0.0, time.perf_counter() - t0)
        rows.append(row)
        print(f"  {name:<20} " + (row["skipped"] if "skipped" in row else
              f"{row['trainable_M']:8.1f} M trained  {row['step_ms']:8.1f} ms/step  {row['samples_per_s']:6.1f} samples/s"
              + (f"  peak {row['peak_gib']:6.1f} GiB" if "peak_gib" in row else "")), flush=True)
    print(f"\n  {'option':<20} {'trained':>10} {'step':>10} {'samples/s':>10} {'peak':>10}")
    for r in rows:
        if "skipped" in r:
            print(f"  {r['row']:<20} skipped: {r['skipped']}")
        else:
            peak = f"{r['peak_gib']:.1f} GiB" if "peak_gib" in r else "n/a"
            print(f"  {r['row']:<20} {r['trainable_M']:>8.1f} M {r['step_ms']:>7.1f} ms {r['samples_per_s']:>10.1f} {peak:>10}")
    frac = next((r for r in rows if "changed_fraction_lr1e-5" in r), None)
    if frac:
        print(f"\n  one AdamW step at lr 1e-5, fp32 master weights{' under bf16 autocast' if device.type == 'cuda' else ''}: "
              f"{100 * frac['changed_fraction_lr1e-5']:.3f} % of {frac['checked_weights_M']:.1f} M checked weights "
              f"with a gradient changed")
    out_dir = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": str(args.config), "device": str(device), "vocab": vocab, "batch": bs, "views": len(cfg.views),
            "image_size": cfg.image_size, "steps": args.steps, "wall_s": time.perf_counter() - t_start}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    (out_dir / "train_check.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n  wrote {out_dir / 'train_check.json'} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
