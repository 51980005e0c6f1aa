"""Pose-VLA: geometry-aware PaliGemma VLA shared by the ROS 2 nodes, the offline trainer and the tools.

Pure Python (numpy/scipy/torch); nothing here imports ROS. Heavy parts (torch, transformers) are
imported lazily so that `import posevla` stays fast for the geometry, data and control code.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["PoseVLAPolicy", "__version__"]


def __getattr__(name: str):  # lazy import of the torch-based inference API
    if name == "PoseVLAPolicy":
        from posevla.model.policy import PoseVLAPolicy

        return PoseVLAPolicy
    raise AttributeError(f"module 'posevla' has no attribute {name!r}")
