"""What a fine-tune trains and how, so that it fits one GPU: parameter groups, freezing, LoRA (peft), gradient
checkpointing, optimizers, and a printed memory plan.

Parameter groups of PoseVLAModel (by name prefix):
  vision     SigLIP vision tower                    pi0.model.vlm.vision_tower.*
  projector  multimodal projector                   pi0.model.vlm.multi_modal_projector.*
  language   Gemma language model (with embeddings) pi0.model.vlm.language_model.*
  geometry   raymap / depth-prior embeddings        geometry.*
  expert     action expert and its projections      every other pi0.* tensor

--train modes (what receives gradients):
  all        every group
  no-vision  all but the vision tower
  lora       projector, geometry, expert, and rank-r LoRA adapters on the language model's attention and MLP
             projections (peft); the vision tower and the language model's own weights are frozen
  expert     projector, geometry, expert; vision tower and language model frozen
Frozen weights need no gradients or optimizer state, and under bf16 autocast on CUDA they are stored in bf16.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TRAIN_MODES = ("all", "no-vision", "lora", "expert")
OPTIMIZERS = ("adamw", "adamw-fused", "adamw-8bit")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUP_PREFIXES = (("vision", "pi0.model.vlm.vision_tower."), ("projector", "pi0.model.vlm.multi_modal_projector."),
                  ("language", "pi0.model.vlm.language_model."), ("geometry", "geometry."))
FROZEN_GROUPS = {"all": (), "no-vision": ("vision",), "lora": ("vision", "language"), "expert": ("vision", "language")}


def group_of(name: str) -> str:
    for group, prefix in GROUP_PREFIXES:
        if name.startswith(prefix):
            return group
    return "expert"


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_train_mode(mode: str, pretrained: bool = True) -> str:
    """'auto' -> 'lora' when peft is installed, else 'expert' (both fit a 24 GB card at full size), when starting
    from pretrained weights; 'all' when starting from a randomly initialised model (a model config alone): LoRA or
    the expert alone would leave the vision tower and the language model random (the closed-loop benchmark's tiny
    model: loss 0.79 after 3000 LoRA steps vs 0.39 after 500 steps of 'all')."""
    if mode == "auto":
        if not pretrained:
            return "all"
        return "lora" if peft_available() else "expert"
    if mode not in TRAIN_MODES:
        raise ValueError(f"--train {mode!r} must be one of {('auto', *TRAIN_MODES)}")
    if mode == "lora" and not peft_available():
        raise ValueError("--train lora needs peft (pip install peft), or choose --train expert")
    return mode


def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def language_model(model: nn.Module) -> nn.Module:
    """The Gemma language model inside a PoseVLAPolicy (where LoRA adapters go)."""
    lm = getattr(getattr(getattr(getattr(model, "pi0", None), "model", None), "vlm", None), "language_model", None)
    if not isinstance(lm, nn.Module):
        raise ValueError("model has no pi0.model.vlm.language_model (not a PoseVLAPolicy)")
    return lm


def apply_train_mode(model: nn.Module, mode: str, lora_rank: int = 16, lora_alpha: float | None = None) -> None:
    """Freeze the groups `mode` leaves out; for 'lora', inject adapters into the language model (in place)."""
    frozen = FROZEN_GROUPS[mode]
    for name, p in model.named_parameters():
        p.requires_grad_(group_of(name) not in frozen)
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        if lora_rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {lora_rank}")
        lm = language_model(model)
        config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha or lora_rank,  # type: ignore[arg-type]  # float ok lora_dropout=0.0, bias="none",
                            target_modules=list(LORA_TARGETS))
        inject_adapter_in_model(config, lm)
        for name, p in lm.named_parameters():
            p.requires_grad_(".lora_" in name)


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store frozen floating-point parameters in `dtype` (they need no fp32 master copy). Returns how many."""
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += 1
    return n


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every LoRA adapter merged into its base weight and the adapter tensors dropped,
    i.e. the plain PoseVLAModel layout that PoseVLAPolicy.from_pretrained loads."""
    state = model.state_dict()
    if not any(".lora_" in k for k in state):
        return state
    merged = {}
    for name, layer in _lora_layers(model):
        with torch.no_grad():
            base = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters)
            merged[f"{name}.base_layer.weight"] = (base.float() + delta).to(base.dtype)
    out = {}
    for k, v in state.items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = merged.get(k, v)
    return out


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw-fused":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw-8bit":
        if device.type != "cuda":
            raise ValueError("--optimizer adamw-8bit needs a CUDA device")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ValueError("--optimizer adamw-8bit needs bitsandbytes (pip install bitsandbytes)") from exc
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"--optimizer {name!r} must be one of {('auto', *OPTIMIZERS)}")


@dataclass
class Plan:
    mode: str
    optimizer: str
    trainable: int
    frozen: int
    static_bytes: int

    def row(self) -> str:
        mem = (f"{self.static_bytes / 2**30:>9.1f} GiB" if self.static_bytes >= 2**30
               else f"{self.static_bytes / 2**20:>9.1f} MiB")
        return f"  {self.mode:<10} {self.optimizer:<12} {self.trainable / 1e6:>11.2f} M {self.frozen / 1e6:>9.2f} M {mem}"


def plan(model: nn.Module, mode: str, optimizer: str, lora_rank: int, frozen_bytes: int) -> Plan:
    """Parameter counts and static memory (fp32 weights + fp32 grads + optimizer state for trainable parameters,
    `frozen_bytes` per frozen parameter) of a mode, counted on `model` (a meta-device model is fine). Activations
    come on top: they depend on batch, views and gradient checkpointing (measure them with
    scripts/gpu/train_check.py)."""
    frozen_groups = FROZEN_GROUPS[mode]
    trainable = frozen = 0
    for name, p in model.named_parameters():
        if group_of(name) in frozen_groups:
            frozen += p.numel()
        else:
            trainable += p.numel()
    if mode == "lora":
        for name, m in language_model(model).named_modules():
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS:
                trainable += lora_rank * (m.in_features + m.out_features)
    opt_bytes = 2 if optimizer == "adamw-8bit" else 8
    return Plan(mode, optimizer, trainable, frozen, trainable * (4 + 4 + opt_bytes) + frozen * frozen_bytes)


def plan_table(model: nn.Module, optimizer: str, lora_rank: int, frozen_bytes: int, chosen: str | None = None) -> str:
    lines = [f"  {'--train':<10} {'optimizer':<12} {'trainable':>13} {'frozen':>11} {'static mem':>13}"]
    for mode in TRAIN_MODES:
        p = plan(model, mode, optimizer, lora_rank, frozen_bytes)
        lines.append(p.row() + ("   <- this run" if mode == chosen else ""))
    lines.append("  static mem = weights + gradients + optimizer state; activations come on top "
                 "(--grad-checkpointing shrinks them)")
    return "\n".join(lines)
