"""Turn observations (+ targets) into the tensor batches the model consumes; shared by inference and training.

A training sample has an Observation and at least one target: `actions` (chunk, action_dim) in the model
layout, unnormalised (see io_transforms.XTrainerOutputs.target_vector), and/or `pose_text`, a pose-token
answer (see pose_sequence). Prompts follow PaliGemma: <bos> + instruction + "\\n".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from posevla.model.config import PoseVLAConfig
from posevla.model.io_transforms import XTrainerInputs, to_model_actions
from posevla.model.normalization import NormStats
from posevla.types import Observation


@dataclass
class TrainingSample:
    observation: Observation
    actions: np.ndarray | None = None
    pose_text: str | None = None


def _pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


class Batcher:
    """Observation(s) -> dict of tensors on a device."""

    def __init__(self, cfg: PoseVLAConfig, tokenizer, norm: NormStats) -> None:
        self.cfg, self.tokenizer, self.norm = cfg, tokenizer, norm
        self.inputs = XTrainerInputs(cfg)
        self._prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(self, instruction: str) -> list[int]:
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            text = instruction.strip().lower()
            body = self.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
            ids = [self.tokenizer.bos_token_id, *body][: self.cfg.max_prompt_tokens]
            if len(self._prompt_cache) < 256:
                self._prompt_cache[instruction] = ids
        return ids

    def observation_arrays(self, observations: list[Observation]) -> dict[str, np.ndarray]:
        return self._observation_arrays(observations)[0]

    def _observation_arrays(self, observations: list[Observation]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Model arrays and the unnormalised states (batch, state_dim)."""
        per = [self.inputs(o) for o in observations]
        out = {k: np.stack([p[k] for p in per]) for k in per[0]}
        raw_state = out["state"].astype(np.float64)
        out["state"] = self.norm.normalize_state(out["state"]).astype(np.float32)
        if not self.cfg.state_input:  # the normalised state's mean: the model cannot read the robot's pose
            out["state"][:] = 0.0
        prompts = [self.prompt_ids(o.instruction) for o in observations]
        out["prompt_ids"], out["prompt_mask"] = _pad(prompts, self.tokenizer.pad_token_id)
        return out, raw_state

    def collate(self, samples: list[TrainingSample]) -> dict[str, np.ndarray]:
        out, raw_state = self._observation_arrays([s.observation for s in samples])
        if all(s.actions is not None for s in samples):
            acts = np.stack([np.asarray(s.actions, dtype=np.float64) for s in samples])
            if acts.shape[1:] != (self.cfg.chunk_length, self.cfg.action_dim):
                raise ValueError(f"actions have shape {acts.shape[1:]}, expected "
                                 f"({self.cfg.chunk_length}, {self.cfg.action_dim})")
            acts = to_model_actions(acts, raw_state, self.cfg)
            out["actions"] = self.norm.normalize_action(acts).astype(np.float32)
        if all(s.pose_text is not None for s in samples):
            rows, types, loss = [], [], []
            for s in samples:
                p = self.prompt_ids(s.observation.instruction)
                a = self.tokenizer(s.pose_text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                rows.append(p + a)
                types.append([0] * len(p) + [1] * len(a))
                loss.append([0] * len(p) + [1] * len(a))
            out["ntp_ids"], out["ntp_mask"] = _pad(rows, self.tokenizer.pad_token_id)
            out["ntp_token_types"], _ = _pad(types, 0)
            out["ntp_loss_mask"], _ = _pad(loss, 0)
        return out

    @staticmethod
    def to_torch(arrays: dict[str, np.ndarray], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(v))
            if t.is_floating_point():
                t = t.to(dtype=torch.float32 if k in ("state", "actions", "T_base_ref") else dtype)
            out[k] = t.to(device, non_blocking=True)
        return out
