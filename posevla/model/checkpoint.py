"""Checkpoint directories: save and load with safetensors, refusing mismatched or corrupt files by name.

Layout of a checkpoint directory (everything loads from local paths; no hub access):
  config.yaml        PoseVLAConfig
  model.safetensors  all weights (PaliGemma, geometry embeddings, action expert)
  pose_bins.json     PoseTokenizer bin edges
  norm_stats.json    state/action normalisation statistics
  tokenizer/         the text tokenizer (with pose tokens)
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
POSE_BINS = "pose_bins.json"
NORM_STATS = "norm_stats.json"
TOKENIZER = "tokenizer"
REQUIRED = (CONFIG, WEIGHTS, POSE_BINS, NORM_STATS, TOKENIZER)


def check_directory(path: Path) -> None:
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        raise ValueError(f"checkpoint {path} is missing {missing}")


def save_weights(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "producer": "posevla"})


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into `module`; every missing, unexpected or mis-shaped tensor is named."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"checkpoint weights {path} are corrupt or unreadable: {exc}") from exc
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint weights {path} do not match the model: missing tensors {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected tensors {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"checkpoint weights {path}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(own[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"checkpoint weights {path}: tensor {name} contains NaN or inf")
    module.load_state_dict(state, strict=True)
