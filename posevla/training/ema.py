"""Exponential moving average (EMA) of the trained weights, as diffusion/flow policies are usually deployed
(Diffusion Policy, openpi's `ema_decay`): the saved checkpoints and the held-out evaluations use the average, the
optimizer keeps stepping the raw weights.

After optimizer step t (1-based) the average moves by the warmed-up decay d_t = min(decay, (1 + t) / (10 + t)),
    ema <- d_t * ema + (1 - d_t) * w,
so early averages are not dominated by the initial weights. The average is kept in fp32 on the parameters'
device for the trainable parameters only (frozen ones do not change).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def warmed_decay(decay: float, step: int) -> float:
    """The decay used after optimizer step `step` (1-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class ParamEMA:
    """EMA of `model`'s trainable parameters (by name)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> float:
        """Fold the current weights in after optimizer step `step` (1-based); returns the decay used."""
        d = warmed_decay(self.decay, step)
        for name, p in self.params.items():
            self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        return d

    @contextmanager
    @torch.no_grad()
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; the raw ones come back afterwards."""
        raw = {n: p.detach().clone() for n, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.copy_(raw[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        if set(state) != set(self.shadow):
            raise ValueError(f"{source}: its EMA weights do not match this run's trainable parameters")
        for name, value in state.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(f"{source}: EMA weight {name} has shape {tuple(value.shape)}, "
                                 f"the model {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(value)
