#!/usr/bin/env python3
"""GPU inference check: the full model-latency table and parity against eager, in one process.

    PYTHONPATH=. python scripts/gpu/infer_check.py                       # CUDA, models/posevla_3b.yaml, 3 views
    python scripts/gpu/infer_check.py --device cpu --config models/tiny.yaml   # the same on the CPU (< 60 s)

Random weights, bf16 on CUDA (fp32 on CPU), the config's flow steps (10). Rows, in this order (the most
important first, so a tight --budget-s drops the slow anchors, not the answer):
  torch                    eager, prefix KV reused (the reference every parity is measured against)
  torch_graphs             static KV cache + CUDA graphs (the robot's engine)
  e2e_sequential/pipelined observation -> chunk through posevla.model.serving.PipelinedRunner (torch_graphs)
  transformers_pi0         transformers' PI0ForConditionalGeneration.sample_actions, same sizes (the anchor)
  torch_graphs_matmul      the graph engine with the flow step's attention as GEMMs + fp32 softmax
  torch_graphs_cudnn/_efficient  (CUDA) the graph engine with attention restricted to one SDPA kernel
  torch_graphs_compiled    (CUDA) prefix and flow step torch.compile'd, then captured (first call ~1 min)
  onnxruntime              needs onnx + onnxruntime; on CUDA only with onnxruntime-gpu (else skipped, saying why)
  torch_recompute          eager, prefix recomputed every step
A row is skipped, not started, when the budget left is below its reserve; every row runs in its own try/except
and $OUT/infer_check.json (or --out) is rewritten after every row (meta.partial until the end), so a stopped
run keeps what it measured. Then: parity of every engine against eager, the goals (p50 < 30 ms, peak < 8 GB on
the GPU, best graph row), and on CUDA last the fp32 parity (model cast to fp32, TF32 off). Writes the
histograms into the JSON and infer_check.png when matplotlib is installed. Needs only torch, transformers,
numpy, pyyaml, safetensors (+ onnxruntime, onnx, matplotlib if present). The default full-size run on an
H100/H200 takes ~2-3 minutes including the model build (--budget-s 180).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# measurement order; the CPU default drops the CUDA-only rows
ALL = ("torch", "torch_graphs", "e2e", "transformers_pi0", "torch_graphs_matmul", "torch_graphs_cudnn",
       "torch_graphs_efficient", "torch_graphs_compiled", "onnxruntime", "torch_recompute")
CUDA_ONLY = ("torch_graphs_cudnn", "torch_graphs_efficient", "torch_graphs_compiled")
GOAL_P50_MS = 30.0
GOAL_PEAK_GB = 8.0
# parity tolerance vs eager (normalised action units): fp32 arithmetic reordered on the CPU; on CUDA the eager
# path runs the Euler integration in bf16 while the engines keep x in fp32 (and onnxruntime runs fp16)
TOL = {"cpu": 1e-4, "cuda": 0.1}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--config", default=str(REPO / "models" / "posevla_3b.yaml"), help="model config YAML")
    p.add_argument("--views", default="3", help="comma-separated view counts, e.g. 1,3 (default 3)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per row (default 20)")
    p.add_argument("--engines", default=None,
                   help=f"comma-separated rows, measured in this order: {','.join(ALL)} (default: all; on the CPU "
                        f"without {','.join(CUDA_ONLY)}: no CUDA kernels there, and the C++ compilation takes minutes)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd row")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="wall-clock budget in seconds, model build included (default 180); rows that would not fit "
                        "are skipped")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else runs/bench)")
    p.add_argument("--no-fp32-parity", action="store_true",
                   help="skip the final fp32 parity check (the model cast to fp32, torch_graphs vs eager)")
    return p.parse_args(argv)


def fail(msg: str) -> int:
    print(f"infer_check: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse(argv)
    config = Path(args.config)
    if not config.is_file():
        return fail(f"--config {config}: no such model config file")
    cpu_default = args.engines is None and args.device.strip().lower() == "cpu"
    engines = tuple(e for e in (args.engines or ",".join(ALL)).split(",") if e)
    if cpu_default:
        engines = tuple(e for e in engines if e not in CUDA_ONLY)
    unknown = [e for e in engines if e not in ALL]
    if unknown:
        return fail(f"--engines: unknown {unknown}; choose from {list(ALL)}")
    if "torch" in engines:  # the reference first: every parity needs it
        engines = ("torch", *(e for e in engines if e != "torch"))
    if args.no_compile:
        engines = tuple(e for e in engines if e != "torch_graphs_compiled")
    if args.budget_s <= 0:
        return fail(f"--budget-s {args.budget_s}: must be > 0")
    try:
        views = tuple(int(v) for v in args.views.split(","))
    except ValueError:
        return fail(f"--views {args.views!r}: expected comma-separated integers")
    if args.iters < 1:
        return fail(f"--iters {args.iters}: must be >= 1")
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        return fail(f"--device {args.device!r}: not a torch device")
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device {args.device}: CUDA is not available")
    if device.type not in ("cuda", "cpu"):
        return fail(f"--device {args.device}: only cuda or cpu")
    from posevla.model.engines import bench as table

    out_dir = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "bench")
    try:
        policy = table.build_policy(config, str(device))
    except ValueError as exc:
        return fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: one line and a JSON saying so
        table.save([], {"config": str(config), "device": str(device), "partial": True,
                        "error": f"model build: {type(exc).__name__}: {exc}"}, out_dir / "infer_check.json", None, "")
        print(f"infer_check: model build failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    bad = [v for v in views if not 1 <= v <= len(policy.config.views)]
    if bad:
        return fail(f"--views {bad}: the config has {len(policy.config.views)} views")
    if device.type == "cpu":  # one thread for torch and onnxruntime alike: comparable, stable on a shared CPU
        torch.set_num_threads(1)
    build_s = time.perf_counter() - t0
    print(f"{config.name}: {table.describe(policy)}; built in {build_s:.1f} s", flush=True)
    print(table.HEADER, flush=True)
    partial = {"config": str(config), "device": str(device), "describe": table.describe(policy), "partial": True}

    def save_partial(rows_so_far: list) -> None:  # the rows so far survive a stopped run
        partial["wall_s"] = time.perf_counter() - t0
        table.save(rows_so_far, partial, out_dir / "infer_check.json", None, "infer_check")

    save_partial([])
    # on CUDA ~20 s stay for the final fp32 parity check
    reserve_s = 20.0 if device.type == "cuda" and not args.no_fp32_parity else 0.0
    rows = table.run_table(policy, views=views, iters=args.iters, engines=engines,
                           budget_s=args.budget_s - build_s - reserve_s,
                           onnx_options={"intra_op_threads": 1} if device.type == "cpu" else {},
                           log=lambda line: print(line, flush=True), on_row=save_partial)
    tol = TOL[device.type]
    print(f"\nparity vs eager (max |diff| of normalised actions, tolerance {tol:g}):")
    parity_ok = True
    for r in rows:
        if r.max_abs_diff is not None:
            ok = r.max_abs_diff <= tol
            parity_ok &= ok
            print(f"  {r.name:<24} {r.views} view(s): {r.max_abs_diff:.2e} {'ok' if ok else 'OVER TOLERANCE'}")
    goals = {}
    for nv in views:  # the fastest graph row per view count (compiled or not, any attention kernel)
        graph_rows = [r for r in rows if r.views == nv and r.name.startswith("torch_graphs") and r.p50_ms is not None]
        if device.type != "cuda" or not graph_rows:
            continue
        best = min(graph_rows, key=lambda r: r.p50_ms)
        goals[f"{best.name} {nv} view(s) p50 {best.p50_ms:.1f} ms < {GOAL_P50_MS:g} ms"] = best.p50_ms < GOAL_P50_MS
        peak_gb = best.peak_gib * 2**30 / 1e9
        goals[f"{best.name} {nv} view(s) peak {peak_gb:.2f} GB < {GOAL_PEAK_GB:g} GB"] = peak_gb < GOAL_PEAK_GB
    for text, ok in goals.items():
        print(f"goal {text}: {'met' if ok else 'MISSED'}")
    meta = {"config": str(config), "device": str(device), "describe": table.describe(policy), "views": list(views),
            "iters": args.iters, "tolerance": tol, "parity_ok": parity_ok, "goals": goals, "fp32_parity": {},
            "wall_s": time.perf_counter() - t0,
            "title": f"Pose-VLA chunk latency, {config.stem}, {table.describe(policy).split('= ')[-1].split(',')[0]}"}
    for path in table.save(rows, meta, out_dir / "infer_check.json", out_dir, "infer_check"):
        print(f"wrote {path}")
    # last, after the table is safe on disk: the graph path with the model cast to fp32 (TF32 off)
    if not args.no_fp32_parity and device.type == "cuda":
        fp32_tol = TOL["cpu"] * 10
        if time.perf_counter() - t0 < args.budget_s - 20:
            try:
                fp32 = table.fp32_parity(policy, max(views))
            except Exception as exc:  # noqa: BLE001 - reported; the table above stands
                fp32 = {}
                print(f"fp32 parity failed: {type(exc).__name__}: {exc}")
            for name, diff in fp32.items():
                ok = diff <= fp32_tol
                parity_ok &= ok
                print(f"parity {name} vs eager, {max(views)} view(s), model in fp32 (TF32 off): {diff:.2e} "
                      f"{'ok' if ok else 'OVER TOLERANCE'} (tolerance {fp32_tol:g})")
            meta.update(fp32_parity=fp32, parity_ok=parity_ok, wall_s=time.perf_counter() - t0)
            table.save(rows, meta, out_dir / "infer_check.json", None, "infer_check")
        else:
            print("fp32 parity skipped: budget spent")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0 if parity_ok else 1


if __name__ == "__main__":
    sys.exit(main())
