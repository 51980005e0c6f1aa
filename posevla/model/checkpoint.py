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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

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


def save_weights(module: torch.nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write `module`'s state dict (or the given one, e.g. with LoRA adapters merged) to a safetensors file."""
    source = module.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
    save_file(state, str(path), metadata={"format": "pt", "producer": "posevla"})


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, each in its own 64-byte-aligned allocation (safetensors' views into one
    buffer can be misaligned, which changes CPU kernels' rounding: a loaded model would not be bit-identical)."""
    out = {}
    with safe_open(str(path), "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            out[name] = t if t.data_ptr() % 64 == 0 else t.clone()
    return out


# Tensors that older checkpoints hold and the model no longer has (the expert's unused word embedding).
DROPPED = ("pi0.model.dit.embed_tokens.weight",)


def load_weights(module: torch.nn.Module, path: Path, assign: bool = False) -> None:
    """Load a safetensors file into `module`; every missing, unexpected or mis-shaped tensor is named.

    assign=True puts the file's tensors into the module as they are (for a module built on the meta device)."""
    try:
        state = read_tensors(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"checkpoint weights {path} are corrupt or unreadable: {exc}") from exc
    for name in DROPPED:
        state.pop(name, None)
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
    module.load_state_dict(state, strict=True, assign=assign)


# ------------------------------------------------------------------ pi0 checkpoints
# LeRobot / openpi PyTorch key prefixes -> ours (first match wins). Both the current layout
# (paligemma.model.{vision_tower,multi_modal_projector,language_model}) and the older one
# (paligemma.{vision_tower,multi_modal_projector}, paligemma.language_model.model) are accepted.
PI0_LEROBOT_RENAMES = (
    ("paligemma_with_expert.paligemma.model.", "pi0.model.vlm."),
    ("paligemma_with_expert.paligemma.language_model.", "pi0.model.vlm.language_model."),
    ("paligemma_with_expert.paligemma.vision_tower.", "pi0.model.vlm.vision_tower."),
    ("paligemma_with_expert.paligemma.multi_modal_projector.", "pi0.model.vlm.multi_modal_projector."),
    ("paligemma_with_expert.gemma_expert.model.", "pi0.model.dit."),
    ("state_proj.", "pi0.embed_action_time.state_proj."),
    ("action_in_proj.", "pi0.embed_action_time.action_in_proj."),
    ("action_time_mlp_in.", "pi0.embed_action_time.action_time_mlp_in."),
    ("action_time_mlp_out.", "pi0.embed_action_time.action_time_mlp_out."),
    ("action_out_proj.", "pi0.action_out_proj."),
)
# PaliGemma's LM head is tied to the input embeddings; LeRobot's files may hold only the head.
PI0_LEROBOT_LM_HEADS = ("paligemma_with_expert.paligemma.lm_head.weight",
                        "paligemma_with_expert.paligemma.language_model.lm_head.weight")
# Never used by Pose-VLA: the expert's word embedding / LM head, pi0's dataset normalisation buffers.
PI0_DROPPED = ("paligemma_with_expert.gemma_expert.lm_head.", "pi0.model.dit.embed_tokens.",
               "pi0.embed_action_time.sinusoid_embeds.", "normalize_", "unnormalize_")
EMBED_KEY = "pi0.model.vlm.language_model.embed_tokens.weight"


# LeRobot names -> transformers 5 module names inside the VLM (SigLIP without its vision_model level, Gemma
# without the model level of a causal LM).
PI0_LEROBOT_INFIXES = ((".vision_tower.vision_model.", ".vision_tower."), (".language_model.model.", ".language_model."))


def pi0_format(directory: Path) -> str:
    """'transformers' (config.json with model_type pi0: PI0ForConditionalGeneration.save_pretrained) or 'lerobot'
    (PI0Policy / openpi PyTorch weights: config.json with type pi0, keys paligemma_with_expert.*)."""
    import json

    try:
        meta = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"pi0 checkpoint {directory}: config.json is missing or unreadable ({exc})") from exc
    if meta.get("model_type") == "pi0":
        return "transformers"
    if meta.get("type") == "pi0":
        return "lerobot"
    raise ValueError(f"pi0 checkpoint {directory}/config.json: neither model_type: pi0 (transformers) nor "
                     f"type: pi0 (LeRobot)")


def _transformers_pi0_state(directory: Path) -> dict[str, torch.Tensor]:
    """transformers reads its own layout (it renames the hub's keys on load); no random initialisation is run."""
    from transformers import PI0ForConditionalGeneration

    try:
        model = PI0ForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"pi0 checkpoint {directory} (transformers format) cannot be loaded: {exc}") from exc
    return {"pi0." + k: v for k, v in model.state_dict().items()}


def pi0_state_dict(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A pi0 checkpoint's tensors under Pose-VLA's names, and its format. Unknown tensors are named as errors."""
    directory = Path(directory)
    fmt = pi0_format(directory)
    if fmt == "transformers":
        raw = _transformers_pi0_state(directory)
    else:
        path = directory / WEIGHTS
        if not path.is_file():
            raise ValueError(f"pi0 checkpoint {directory} has no {WEIGHTS}")
        try:
            raw = read_tensors(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"pi0 checkpoint weights {path} are corrupt or unreadable: {exc}") from exc
    out: dict[str, torch.Tensor] = {}
    lm_head = None
    unknown: list[str] = []
    for key, value in raw.items():
        name: str | None
        if fmt == "transformers":
            name = key
        else:
            k = key.removeprefix("model.")
            if k in PI0_LEROBOT_LM_HEADS:
                lm_head = value
                continue
            name = next((new + k[len(old):] for old, new in PI0_LEROBOT_RENAMES if k.startswith(old)), None)
            if name is None:
                name = k if k.startswith(PI0_DROPPED) else None
            for old, new in PI0_LEROBOT_INFIXES:
                name = name.replace(old, new) if name else None
        if name is None:
            unknown.append(key)
            continue
        if name.startswith(PI0_DROPPED):
            continue
        out[name] = value
    if unknown:
        raise ValueError(f"pi0 checkpoint {directory}: unknown tensors {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
    if EMBED_KEY not in out and lm_head is not None:
        out[EMBED_KEY] = lm_head
    return out, fmt
