"""Inference engines for PoseVLAPolicy: `torch` (eager reference), `torch_graphs` (static KV cache, CUDA graphs),
`onnxruntime` (ONNX export run by onnxruntime: CPU, CUDA or TensorRT execution provider). See docs/inference.md.

    engine = make_engine(policy, "torch_graphs")
    engine.warmup()
    chunk = engine.predict(observation)      # same contract as PoseVLAPolicy.predict
"""
from __future__ import annotations

from posevla.model.engines.base import ENGINES, Engine


def make_engine(policy, name: str, **options) -> Engine:
    """Build the named engine around a loaded PoseVLAPolicy; unknown names or options raise ValueError."""
    if name == "torch":
        from posevla.model.engines.torch_engines import EagerEngine

        cls = EagerEngine
    elif name == "torch_graphs":
        from posevla.model.engines.torch_engines import GraphEngine

        cls = GraphEngine
    elif name == "onnxruntime":
        from posevla.model.engines.onnx_engine import OnnxEngine

        cls = OnnxEngine
    else:
        raise ValueError(f"engine {name!r} must be one of {list(ENGINES)}")
    try:
        return cls(policy, **options)
    except TypeError as exc:
        raise ValueError(f"engine {name!r}: invalid options {sorted(options)}: {exc}") from exc


__all__ = ["ENGINES", "Engine", "make_engine"]
