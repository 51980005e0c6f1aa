"""Resumable training state: <out>/resume/step_<N>.pt, written atomically (temporary file + rename), so a run
killed at any moment (SIGKILL, power loss) leaves the last complete state behind.

A state holds the trainable parameters (frozen ones come back from the same initialisation), the optimizer, the
step (which fixes the learning rate and the data position: see loader.EpochBatchOrder), the RNG states, the
normalisation statistics, the log so far and the run's arguments.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

STATE_DIR = "resume"
KEEP = 2


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(out: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
               rng_per_rank: list[dict] | None = None) -> Path:
    """Write the state after `step` completed steps; keeps the newest KEEP states. rng_per_rank: every process's
    RNG states under torchrun (rank 0 writes them all; the weights and optimizer are the same on every rank)."""
    folder = Path(out) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    payload = {"step": step, "model": trainable, "optimizer": optimizer.state_dict(),
               "rng": rng_per_rank or [rng_state()], **extra}
    final = folder / f"step_{step:08d}.pt"
    tmp = folder / f".step_{step:08d}.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in sorted(folder.glob("step_*.pt"))[:-KEEP]:
        old.unlink()
    return final


def latest_state(out: Path) -> Path | None:
    states = sorted((Path(out) / STATE_DIR).glob("step_*.pt"))
    return states[-1] if states else None


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int = 0,
               world: int = 1) -> dict:
    """Put a saved state into model and optimizer and restore this rank's RNGs; returns the payload."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise ValueError(f"resume state {path} is unreadable: {exc}") from exc
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    saved = set(payload["model"])
    if saved != trainable:
        raise ValueError(f"resume state {path} does not match this run's trainable parameters: "
                         f"missing {sorted(trainable - saved)[:3]}, unexpected {sorted(saved - trainable)[:3]}")
    with torch.no_grad():
        for name, value in payload["model"].items():
            if value.shape != params[name].shape:
                raise ValueError(f"resume state {path}: {name} has shape {tuple(value.shape)}, "
                                 f"the model {tuple(params[name].shape)}")
            params[name].copy_(value)
    if len(payload["rng"]) != world:
        raise ValueError(f"resume state {path} was written by {len(payload['rng'])} process(es), this run has {world}")
    optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"][rank])
    return payload
