"""What every inference engine shares: observation -> fixed-shape inputs (present views, prompt bucket) in pinned
host buffers -> engine -> ActionChunk, with per-stage timings. Engines differ in `stage` and `execute`.

Two stages, callable from two threads (posevla.model.serving.PipelinedRunner runs them concurrently):
  stage(arrays, noise)  preprocessing: fill one free *slot* of host buffers (pinned on CUDA) and queue its
                        host -> device copy on the engine's copy stream, recording a CUDA event
  execute(staged)       model: the compute stream waits for that event (no host sync), the slot's device
                        tensors go into the engine's inputs, the model runs, actions come back to the host
Each shape key (present views, prompt bucket) has a small pool of slots, so observation n+1 can be staged
while observation n's slot is still being read by the model. `sample` / `predict` run the same two stages
back to back (the sequential path). Shapes are fixed per key so graph-based engines capture once per key.
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from posevla.model.config import MODALITIES
from posevla.model.engines import ENGINES
from posevla.model.engines.static_kv import prompt_bucket
from posevla.types import ActionChunk, Observation

__all__ = ["ENGINES", "Engine", "ShapeKey", "Staged", "StaticInputs", "modality_keep"]

MAX_SLOTS = 4  # per shape key: one being executed, one staged and waiting, one being staged, one spare


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


@dataclass(eq=False)
class Staged:
    """One observation's inputs staged for `Engine.execute` (made by `Engine.stage`). `slot` is the engine's buffer
    set holding them (returned to the pool by `Engine.release`); `ready` the CUDA event recorded after their host ->
    device copies (None off CUDA); `data` whatever else the engine made for this call (e.g. OrtValues)."""

    key: ShapeKey
    slot: Any
    ready: Any = None
    data: Any = None
    released: bool = field(default=False)


class Engine(ABC):
    """observation -> ActionChunk with the policy's pre/post-processing; `stage` + `execute` is the model call."""

    name = "base"

    def __init__(self, policy) -> None:
        self.policy = policy
        self.config = policy.config
        self.device = policy.device
        self.last_timing: dict[str, float] = {}
        # CUDA work issued by the staging thread (allocations, copies, event waits) must not run while the model
        # thread captures a CUDA graph: both hold this lock for those sections
        self.cuda_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._free: dict[ShapeKey, list[Any]] = {}
        self._made: dict[ShapeKey, int] = {}
        self._copy_stream: torch.cuda.Stream | None = None

    # ------------------------------------------------------------------ slots
    @property
    def copy_stream(self) -> torch.cuda.Stream | None:
        """The side stream host -> device copies are queued on (CUDA only; created on first use)."""
        if self.device.type != "cuda":
            return None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        return self._copy_stream

    def _acquire(self, key: ShapeKey, make: Callable[[], Any]) -> Any:
        with self._pool_lock:
            free = self._free.setdefault(key, [])
            if free:
                return free.pop()
            if self._made.get(key, 0) >= MAX_SLOTS:
                raise RuntimeError(f"engine {self.name}: all {MAX_SLOTS} input slots of {key} are in use "
                                   "(staged inputs that are never executed must be released)")
            self._made[key] = self._made.get(key, 0) + 1
        return make()

    def release(self, staged: Staged) -> None:
        """Give a staged slot back (execute does; a runner that drops a superseded Staged must)."""
        with self._pool_lock:
            if not staged.released:
                staged.released = True
                self._free.setdefault(staged.key, []).append(staged.slot)

    def slots(self, key: ShapeKey) -> int:
        """Slots allocated for a shape key so far."""
        return self._made.get(key, 0)

    def shape_key(self, arrays: dict[str, np.ndarray]) -> ShapeKey:
        if arrays["view_mask"].shape[0] != 1:
            raise ValueError("engines take one observation at a time")
        views = int(arrays["view_mask"][0].sum())
        return ShapeKey(views, prompt_bucket(arrays["prompt_ids"].shape[1], self.config.max_prompt_tokens))

    def noise(self, seed: int | None) -> torch.Tensor:
        """(1, chunk, action_dim) fp32 on the CPU, from the same generator and scale as PoseVLAPolicy._noise."""
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        noise = torch.randn((1, self.config.chunk_length, self.config.action_dim), generator=gen)
        return noise * float(getattr(self.policy, "flow_noise_scale", 1.0))

    @abstractmethod
    def stage(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> Staged:
        """Preprocessing stage: Batcher arrays of one observation + noise (1, chunk, A) into a free slot of the
        engine's input buffers for their ShapeKey (host -> device copies queued, not awaited)."""

    @abstractmethod
    def execute(self, staged: Staged) -> np.ndarray:
        """Model stage: staged inputs -> normalised actions (chunk, A) float32 on the host; releases the slot."""

    @torch.inference_mode()
    def sample(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> np.ndarray:
        """stage + execute (one observation's Batcher arrays, noise (1, chunk, A) fp32) -> actions (chunk, A)."""
        return self.execute(self.stage(arrays, noise, modalities))

    @torch.inference_mode()
    def preprocess(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None) -> Staged:
        """Observation -> Batcher arrays -> staged inputs (everything before the model)."""
        arrays = self.policy.batcher.observation_arrays([observation])
        return self.stage(arrays, self.noise(noise_seed), modalities)

    def postprocess(self, actions: np.ndarray, observation: Observation) -> ActionChunk:
        """Normalised actions (chunk, A) -> ActionChunk in the observation's frame and stamp."""
        if not np.all(np.isfinite(actions)):
            raise ValueError(f"engine {self.name} produced NaN or inf actions")
        return self.policy.outputs(self.policy.norm.unnormalize_action(actions.astype(np.float64)), observation)

    def warmup(self, observation: Observation | None = None) -> float:
        """Build / capture / export for the observation's shape (default: the synthetic one). Returns seconds."""
        t0 = time.perf_counter()
        self.predict(observation or self.policy.synthetic_observation(), noise_seed=0)
        return time.perf_counter() - t0

    @torch.inference_mode()
    def predict(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None) -> ActionChunk:
        """Same contract as PoseVLAPolicy.predict; last_timing has preprocess_s, model_s, postprocess_s."""
        t0 = time.perf_counter()
        staged = self.preprocess(observation, modalities, noise_seed)
        t1 = time.perf_counter()
        actions = self.execute(staged)
        t2 = time.perf_counter()
        chunk = self.postprocess(actions, observation)
        self.last_timing = {"preprocess_s": t1 - t0, "model_s": t2 - t1, "postprocess_s": time.perf_counter() - t2}
        return chunk

    def close(self) -> None:
        """Release sessions / graphs / slots; subclasses extend this."""
        self.last_timing = {}
        with self._pool_lock:
            self._free.clear()
            self._made.clear()
