"""Kernels per flow step of the torch_graphs engine (`posevla bench infer_ops`): the denoising loop is bound by
kernel launches, not arithmetic, so the number of operators per step is the figure to drive down.

Counts aten operators (views excluded; about one CUDA kernel each without torch.compile) in the prefix and in
the 10-step loop on the CPU, for the tiny config with 2 and with 3 expert layers: the difference is the cost
of one expert layer, the rest the per-step fixed part, so the full-size step (18 layers) follows without
building the 3B model. Both attentions (sdpa, matmul). Figures: runs/bench/infer_ops.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from posevla.model.config import PoseVLAConfig
from posevla.model.engines import bench as table
from posevla.model.policy import PoseVLAPolicy
from posevla.tools.latency_plot import BENCH_OUT

REPO = Path(__file__).resolve().parents[1]
FULL_LAYERS = PoseVLAConfig.from_yaml(REPO / "models" / "posevla_3b.yaml").text["num_hidden_layers"]


def per_layer(attention: str = "sdpa") -> dict[str, float]:
    counts = {}
    for layers in (2, 3):
        cfg = PoseVLAConfig.from_yaml(REPO / "models" / "tiny.yaml")
        cfg.text = {**cfg.text, "num_hidden_layers": layers}
        policy = PoseVLAPolicy.from_config(cfg, seed=0, device="cpu")
        counts[layers] = table.count_ops(policy, attention=attention)
    layer = counts[3]["step"] - counts[2]["step"]
    fixed = counts[2]["step"] - 2 * layer
    return {"per_expert_layer": layer, "per_step_fixed": fixed, "per_step_full_size": fixed + FULL_LAYERS * layer,
            "prefix_per_layer": counts[3]["prefix"] - counts[2]["prefix"]}


def main() -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)
    out = {}
    print(f"| attention | ops per expert layer | fixed per step | per step at full size ({FULL_LAYERS} layers) | "
          "x10 steps | prefix ops per VLM layer |\n|---|---|---|---|---|---|")
    for attention in ("sdpa", "matmul"):
        r = out[attention] = per_layer(attention)
        print(f"| {attention} | {r['per_expert_layer']} | {r['per_step_fixed']} | {r['per_step_full_size']} | "
              f"{10 * r['per_step_full_size']} | {r['prefix_per_layer']} |")
    path = BENCH_OUT / "infer_ops.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
