"""`posevla bench`: run every benchmarks/bench_*.py (or the ones named) and print their figures."""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="benchmark names (e.g. geometry model executor); default: all")
    parser.add_argument("--list", action="store_true", help="list the available benchmarks and exit")
    parser.add_argument("--device", default=None,
                        help="device for benchmarks that take one (model): cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--config", default=None,
                        help="model config YAML for benchmarks that take one (model; default models/tiny.yaml)")


def _available() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def run(args: argparse.Namespace) -> int:
    available = _available()
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    options = {k: v for k, v in (("device", args.device), ("config", args.config)) if v is not None}
    if args.config is not None and not Path(args.config).is_file():
        print(f"--config {args.config}: no such model config file", file=sys.stderr)
        return 2
    if args.device is not None:
        import torch

        try:
            dev = torch.device(args.device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and not torch.cuda.is_available()):
            print(f"--device {args.device}: not cpu or an available CUDA device", file=sys.stderr)
            return 2
    failed = []
    for name in args.names or list(available):
        print(f"\n=== benchmark: {name} ({available[name].relative_to(BENCH_DIR.parent)}) ===", flush=True)
        t0 = time.perf_counter()
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", available[name])
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {available[name]}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            accepted = inspect.signature(module.main).parameters
            module.main(**{k: v for k, v in options.items() if k in accepted})
        except Exception:  # report and go on with the other benchmarks
            traceback.print_exc()
            failed.append(name)
        print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    if failed:
        print(f"\nbenchmarks that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0
