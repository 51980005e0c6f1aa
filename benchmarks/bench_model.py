"""Model latency per inference engine (`posevla bench model [--device cuda --config models/posevla_3b.yaml]`).

Every engine (eager reference with the prefix KV reused, eager with the prefix recomputed every step,
transformers' own PI0ForConditionalGeneration.sample_actions as the in-run anchor, the static-cache /
CUDA-graph engine, its torch.compile'd variant on CUDA, onnxruntime) at the same sizes: p50/p90 per
chunk, first-call time, peak memory, max |difference| from the eager actions. Default: the tiny config on the
CPU with 1 and 3 views (slow, a check that every path runs). Histograms: runs/bench/model.png, figures:
runs/bench/model.json.
"""
from __future__ import annotations

from pathlib import Path

import torch

from posevla.model.engines import bench as table
from posevla.tools.latency_plot import BENCH_OUT

REPO = Path(__file__).resolve().parents[1]


def main(device: str = "cpu", config: str | Path | None = None, iters: int | None = None) -> list[table.Row]:
    config = Path(config) if config else REPO / "models" / "tiny.yaml"
    cuda = torch.device(device).type == "cuda"
    if not cuda:  # one thread: torch and onnxruntime alike, and stable on a shared CPU
        torch.set_num_threads(1)
    policy = table.build_policy(config, device)
    print(f"{config.name}: {table.describe(policy)}")
    engines = ["torch", "torch_recompute", "transformers_pi0", "torch_graphs", "onnxruntime"]
    if cuda:  # last: slowest to build (on the CPU its C++ compilation takes minutes)
        engines.append("torch_graphs_compiled")
    print(table.HEADER)
    rows = table.run_table(policy, views=(1, 3), iters=iters or (20 if cuda else 10), engines=tuple(engines),
                           onnx_options={} if cuda else {"intra_op_threads": 1})
    meta = {"config": str(config), "device": str(policy.device), "describe": table.describe(policy),
            "title": f"Pose-VLA chunk latency, {config.stem} on {policy.device}"}
    for path in table.save(rows, meta, BENCH_OUT / "model.json", BENCH_OUT, "model"):
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
