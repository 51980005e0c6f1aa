"""Inference engines for PoseVLAPolicy: `torch` (eager reference), `torch_graphs` (static KV cache, CUDA graphs),
`onnxruntime` (ONNX export run by onnxruntime: CPU, CUDA or TensorRT execution provider). See docs/inference.md.

    engine = make_engine(policy, "torch_graphs")
    engine.warmup()
    chunk = engine.predict(observation)      # same contract as PoseVLAPolicy.predict

Importing this package does not import torch (the ROS node reads ENGINES before loading the model).
"""
from __future__ import annotations

ENGINES = ("torch", "torch_graphs", "onnxruntime")


def make_engine(policy, name: str, **options):
    """Build the named engine around a loaded PoseVLAPolicy; unknown names or options raise ValueError."""
    cls: type
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


__all__ = ["ENGINES", "make_engine"]
