"""What every inference engine shares: observation -> fixed-shape inputs (present views, prompt bucket) in pinned
host buffers -> engine -> ActionChunk, with per-stage timings. Engines differ only in `_sample`.

Shapes are fixed per (present views, prompt bucket) so graph-based engines capture once per key; the host
buffers for a key are allocated once (pinned when the engine runs on CUDA) and copied to the device with
non_blocking=True, so the copy is queued behind the previous call's work instead of synchronising.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from posevla.model.config import MODALITIES
from posevla.model.engines import ENGINES
from posevla.model.engines.static_kv import prompt_bucket
from posevla.types import ActionChunk, Observation

__all__ = ["ENGINES", "Engine", "ShapeKey", "StaticInputs", "modality_keep"]


@dataclass(frozen=True)
class ShapeKey:
    views: int  # views present in the observation
    prompt: int  # prompt bucket (tokens)


def modality_keep(modalities: str) -> tuple[float, float]:
    """[ray, depth] keep factors at inference (see geometry_embed.modality_keep_masks)."""
    if modalities not in MODALITIES:
        raise ValueError(f"modalities={modalities!r} must be one of {MODALITIES}")
    return float(modalities in ("rgb+ray", "full")), float(modalities in ("rgb+depth", "full"))


class StaticInputs:
    """Model inputs of one ShapeKey as host tensors (pinned on CUDA), filled in place from Batcher arrays."""

    FIELDS = ("pixel_values", "raymaps", "depth_priors", "keep", "prompt_ids", "prompt_mask", "state", "noise")

    def __init__(self, like: dict[str, torch.Tensor], pin: bool) -> None:
        self.host = {k: torch.empty(like[k].shape, dtype=like[k].dtype, pin_memory=pin) for k in self.FIELDS}

    def fill(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, keep: tuple[float, float], pad_id: int) -> None:
        present = np.flatnonzero(arrays["view_mask"][0])
        h = self.host
        for k in ("pixel_values", "raymaps", "depth_priors"):
            h[k].copy_(torch.from_numpy(np.ascontiguousarray(arrays[k][:, present])))
        h["keep"].copy_(torch.tensor(keep, dtype=torch.float32))
        ids, mask = arrays["prompt_ids"], arrays["prompt_mask"]
        h["prompt_ids"].fill_(pad_id)
        h["prompt_mask"].zero_()
        h["prompt_ids"][:, :ids.shape[1]].copy_(torch.from_numpy(ids))
        h["prompt_mask"][:, :mask.shape[1]].copy_(torch.from_numpy(mask.astype(bool)))
        h["state"].copy_(torch.from_numpy(arrays["state"].astype(np.float32)))
        h["noise"].copy_(noise.float())

    def copy_to(self, device_inputs: dict[str, torch.Tensor]) -> None:
        for k in self.FIELDS:
            device_inputs[k].copy_(self.host[k], non_blocking=True)


class Engine(ABC):
    """observation -> ActionChunk with the policy's pre/post-processing; `_sample` is the engine's model call."""

    name = "base"

    def __init__(self, policy) -> None:
        self.policy = policy
        self.config = policy.config
        self.device = policy.device
        self.last_timing: dict[str, float] = {}

    def shape_key(self, arrays: dict[str, np.ndarray]) -> ShapeKey:
        if arrays["view_mask"].shape[0] != 1:
            raise ValueError("engines take one observation at a time")
        views = int(arrays["view_mask"][0].sum())
        return ShapeKey(views, prompt_bucket(arrays["prompt_ids"].shape[1], self.config.max_prompt_tokens))

    def noise(self, seed: int | None) -> torch.Tensor:
        """(1, chunk, action_dim) fp32 on the CPU, from the same generator as PoseVLAPolicy._noise."""
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        return torch.randn((1, self.config.chunk_length, self.config.action_dim), generator=gen)

    @abstractmethod
    def prepare(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> ShapeKey:
        """Preprocessing stage: Batcher arrays of one observation + noise (1, chunk, A) into the engine's input
        buffers for their ShapeKey (host -> device copies queued, not awaited)."""

    @abstractmethod
    def run(self, key: ShapeKey) -> np.ndarray:
        """Model stage: the prepared inputs -> normalised actions (chunk, A) float32 on the host."""

    @torch.inference_mode()
    def sample(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> np.ndarray:
        """prepare + run (one observation's Batcher arrays, noise (1, chunk, A) fp32) -> actions (chunk, A)."""
        return self.run(self.prepare(arrays, noise, modalities))

    def warmup(self, observation: Observation | None = None) -> float:
        """Build / capture / export for the observation's shape (default: the synthetic one). Returns seconds."""
        t0 = time.perf_counter()
        self.predict(observation or self.policy.synthetic_observation(), noise_seed=0)
        return time.perf_counter() - t0

    @torch.inference_mode()
    def predict(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None) -> ActionChunk:
        """Same contract as PoseVLAPolicy.predict; last_timing has preprocess_s, model_s, postprocess_s."""
        t0 = time.perf_counter()
        arrays = self.policy.batcher.observation_arrays([observation])
        key = self.prepare(arrays, self.noise(noise_seed), modalities)
        t1 = time.perf_counter()
        actions = self.run(key)
        t2 = time.perf_counter()
        if not np.all(np.isfinite(actions)):
            raise ValueError(f"engine {self.name} produced NaN or inf actions")
        chunk = self.policy.outputs(self.policy.norm.unnormalize_action(actions.astype(np.float64)), observation)
        self.last_timing = {"preprocess_s": t1 - t0, "model_s": t2 - t1, "postprocess_s": time.perf_counter() - t2}
        return chunk

    def close(self) -> None:
        """Release sessions / graphs; subclasses extend this."""
        self.last_timing = {}
