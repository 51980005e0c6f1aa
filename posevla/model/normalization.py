"""Normalisation of state and actions with statistics computed once and saved beside the checkpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STD_FLOOR = 1e-3


@dataclass
class NormStats:
    """z-scoring of state and action vectors (model layout). Identity until fitted."""

    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray

    @classmethod
    def identity(cls, state_dim: int, action_dim: int) -> NormStats:
        return cls(np.zeros(state_dim), np.ones(state_dim), np.zeros(action_dim), np.ones(action_dim))

    @classmethod
    def fit(cls, states: np.ndarray, actions: np.ndarray) -> NormStats:
        """states (N, Ds), actions (N, ..., Da): per-dimension mean and std (std floored at 1e-3)."""
        s = np.asarray(states, dtype=np.float64).reshape(-1, np.shape(states)[-1])
        a = np.asarray(actions, dtype=np.float64).reshape(-1, np.shape(actions)[-1])
        for name, x in (("states", s), ("actions", a)):
            if not np.all(np.isfinite(x)):
                raise ValueError(f"cannot fit normalisation: {name} contain NaN or inf")
        return cls(s.mean(0), np.maximum(s.std(0), STD_FLOOR), a.mean(0), np.maximum(a.std(0), STD_FLOOR))

    def normalize_state(self, x: np.ndarray) -> np.ndarray:
        return (x - self.state_mean) / self.state_std

    def normalize_action(self, x: np.ndarray) -> np.ndarray:
        return (x - self.action_mean) / self.action_std

    def unnormalize_action(self, x: np.ndarray) -> np.ndarray:
        return x * self.action_std + self.action_mean

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({k: getattr(self, k).tolist() for k in
                                          ("state_mean", "state_std", "action_mean", "action_std")}, indent=1))

    @classmethod
    def load(cls, path: str | Path, state_dim: int, action_dim: int) -> NormStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read normalisation statistics {path}: {exc}") from exc
        out = {}
        for key, dim in (("state_mean", state_dim), ("state_std", state_dim), ("action_mean", action_dim),
                         ("action_std", action_dim)):
            arr = np.asarray(data.get(key, []), dtype=np.float64)
            if arr.shape != (dim,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"normalisation statistics {path}: field {key} must be {dim} finite numbers")
            if key.endswith("std") and np.any(arr <= 0):
                raise ValueError(f"normalisation statistics {path}: field {key} must be positive")
            out[key] = arr
        return cls(**out)
