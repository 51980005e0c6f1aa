"""Observation -> chunk through the policy runner, sequential vs pipelined (`posevla bench infer_pipeline
[--device cuda --config models/posevla_3b.yaml]`).

posevla.model.serving.PipelinedRunner around the torch_graphs engine, fed like the cameras (a new observation
every 1/camera_hz s, newest wins), at 30 Hz (the robot's cameras) and at 200 Hz (a camera faster than the
model: the chunk period shows what overlapping the preprocessing and host -> device copy with the model buys).
Per row: p50/p90 of the observation -> chunk latency (ms), the chunk period and every stage's p50. Default:
the tiny config on the CPU (one thread). Figures: runs/bench/infer_pipeline.json.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from posevla.model.engines import bench as table
from posevla.tools.latency_plot import BENCH_OUT

REPO = Path(__file__).resolve().parents[1]


def main(device: str = "cpu", config: str | Path | None = None, chunks: int = 30) -> list[table.Row]:
    config = Path(config) if config else REPO / "models" / "tiny.yaml"
    if torch.device(device).type != "cuda":
        torch.set_num_threads(1)
    policy = table.build_policy(config, device)
    print(f"{config.name}: {table.describe(policy)}")
    print(table.HEADER)
    rows: list[table.Row] = []
    for hz in (30.0, 200.0):
        for row in table.pipeline_rows(policy, "torch_graphs", views=len(policy.config.views), chunks=chunks,
                                       camera_hz=hz):
            row.name = f"{row.name} @ {hz:g} Hz"
            rows.append(row)
            print(row.line(), flush=True)
    out = BENCH_OUT / "infer_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": str(config), "describe": table.describe(policy),
                               "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
