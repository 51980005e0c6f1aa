"""Geometry priors as tokens: raymaps (3 channels) and depth priors [D, M] (2 channels), patchified with the
vision tower's patch size and embedded to its hidden size, then ADDED to the SigLIP output tokens (before
the multimodal projector, as the authors' public code does).

Bias-free layers with a zero-initialised output projection: at initialisation, and whenever an input is
all zeros (a masked modality), the geometry adds exactly nothing, so a pretrained PaliGemma's output is
unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class PatchPriorEmbed(nn.Module):
    """(B, C, S, S) -> (B, (S/p)^2, D): patch conv, GELU, zero-initialised linear; no biases."""

    def __init__(self, in_channels: int, patch_size: int, hidden_size: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)  # row-major patch order, as SigLIP's embeddings
        return self.out(nn.functional.gelu(h))


class GeometryEmbedding(nn.Module):
    def __init__(self, patch_size: int, hidden_size: int) -> None:
        super().__init__()
        self.ray = PatchPriorEmbed(3, patch_size, hidden_size)
        self.depth = PatchPriorEmbed(2, patch_size, hidden_size)

    def forward(self, raymaps: torch.Tensor, depth_priors: torch.Tensor) -> torch.Tensor:
        return self.ray(raymaps) + self.depth(depth_priors)


def modality_keep_masks(batch: int, modalities: str | None, p_drop_ray: float, p_drop_depth: float,
                        training: bool, device: torch.device, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (B,) float keep factors for ray and depth: random in training, from `modalities` at inference."""
    if training:
        ray = (torch.rand(batch, generator=generator, device=device) >= p_drop_ray).float()
        depth = (torch.rand(batch, generator=generator, device=device) >= p_drop_depth).float()
        return ray, depth
    mode = modalities or "full"
    ray_on = mode in ("rgb+ray", "full")
    depth_on = mode in ("rgb+depth", "full")
    return (torch.full((batch,), float(ray_on), device=device), torch.full((batch,), float(depth_on), device=device))


def view_keep_mask(batch: int, views: tuple[str, ...], p_drop_view: dict[str, float], device: torch.device,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) keep factors (training only): view v of a sample hidden with probability p_drop_view.get(v, 0)."""
    p = torch.tensor([float(p_drop_view.get(v, 0.0)) for v in views], device=device)
    return (torch.rand(batch, len(views), generator=generator, device=device) >= p).float()
