"""Held-out evaluation: predicted vs recorded action chunks on episodes the model never trained on.

For every held-out sample the model samples a chunk (Euler flow steps from seeded noise, as on the robot), which
is compared with the recorded future TCP poses, per arm and per horizon step k (k * control_dt seconds ahead):

* position error in millimetres: per axis in the reference camera's optical frame (x right, y down, z forward)
  and in base_link (rotated by the episode's calibration, R_base_ref), and the Euclidean norm (the same in
  both frames: a rigid change of frame preserves lengths);
* rotation error in degrees: the geodesic angle of R_pred^T R_true (frame-independent as well);
* gripper opening error (0..1).

Also the held-out flow-matching loss with fixed noise and flow times (comparable between evaluations).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from posevla.geometry import se3
from posevla.model.config import ARM_ACTION_DIM, PoseVLAConfig
from posevla.model.io_transforms import XTrainerInputs, from_model_actions


def chunk_errors(pred: np.ndarray, true: np.ndarray, R_base_ref: np.ndarray, cfg: PoseVLAConfig
                 ) -> dict[str, dict[str, np.ndarray]]:
    """pred, true: (N, chunk, action_dim) unnormalised actions in the reference frame; R_base_ref (N, 3, 3).

    Returns per arm: 'pos_mm' (N, chunk) norm, 'cam_mm' / 'base_mm' (N, chunk, 3) absolute per-axis errors,
    'rot_deg' (N, chunk), 'gripper' (N, chunk)."""
    out = {}
    for i, arm in enumerate(cfg.arms):
        p = pred[..., i * ARM_ACTION_DIM:(i + 1) * ARM_ACTION_DIM]
        t = true[..., i * ARM_ACTION_DIM:(i + 1) * ARM_ACTION_DIM]
        d_cam = (p[..., :3] - t[..., :3]) * 1e3
        d_base = np.einsum("nij,nkj->nki", R_base_ref, d_cam)
        R_p = se3.matrix_from_rot6d(p[..., 3:9])
        R_t = se3.matrix_from_rot6d(t[..., 3:9])
        out[arm] = {"pos_mm": np.linalg.norm(d_cam, axis=-1), "cam_mm": np.abs(d_cam), "base_mm": np.abs(d_base),
                    "rot_deg": np.degrees(se3.rotation_angle(np.swapaxes(R_p, -1, -2) @ R_t)),
                    "gripper": np.abs(p[..., 9] - t[..., 9])}
    return out


def pick_samples(n: int, max_samples: int) -> list[int]:
    """Up to max_samples indices spread evenly over 0..n-1 (deterministic)."""
    if n == 0:
        return []
    k = min(n, max_samples)
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


@torch.no_grad()
def evaluate(policy, data, max_samples: int = 64, batch_size: int = 8, seed: int = 0,
             autocast_dtype: torch.dtype | None = None) -> dict:
    """Sample chunks for up to max_samples held-out samples of `data` (an EpisodeChunkDataset) and compare.

    Leaves the global RNG as it found it (so evaluating never changes a training run's random stream)."""
    cfg, model, device = policy.config, policy.model, policy.device
    inputs = XTrainerInputs(cfg)
    was_training = model.training
    model.eval()
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    gen = torch.Generator().manual_seed(seed)
    preds, trues, rots, losses = [], [], [], []
    idx = pick_samples(len(data), max_samples)
    for start in range(0, len(idx), batch_size):
        samples = [data[i] for i in idx[start:start + batch_size]]
        arrays = policy.batcher.collate(samples)
        batch = {k: v.to(device) for k, v in
                 type(policy.batcher).to_torch(arrays, torch.device("cpu"), torch.float32).items()}
        b = len(samples)
        noise = torch.randn((b, cfg.chunk_length, cfg.action_dim), generator=gen).to(device)
        times = (torch.rand((b,), generator=gen) * 0.999 + 0.001).to(device)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else torch.autocast(device.type, enabled=False))
        with ctx:
            losses.append(float(model.flow_loss(batch, noise=noise, timestep=times)) * b)
            actions = model.sample_actions(batch, noise)
        raw_states = np.stack([inputs.state_vector(s.observation.state, inputs.reference_pose(s.observation))
                               for s in samples])
        preds.append(from_model_actions(policy.norm.unnormalize_action(actions.float().cpu().numpy().astype(np.float64)),
                                        raw_states, cfg))
        trues.append(np.stack([s.actions for s in samples]))
        rots.append(np.stack([inputs.reference_pose(s.observation)[:3, :3] for s in samples]))
    torch.set_rng_state(rng_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    model.train(was_training)
    if not idx:
        raise ValueError("no held-out samples to evaluate")
    errs = chunk_errors(np.concatenate(preds), np.concatenate(trues), np.concatenate(rots), cfg)
    result: dict = {"samples": len(idx), "val_loss": float(np.sum(losses) / len(idx)),
                    "horizon_s": (np.arange(cfg.chunk_length) * cfg.control_dt).tolist(), "arms": {}}
    for arm, e in errs.items():
        result["arms"][arm] = {
            "pos_mm": e["pos_mm"].mean(0).tolist(), "rot_deg": e["rot_deg"].mean(0).tolist(),
            "gripper": e["gripper"].mean(0).tolist(),
            "camera_xyz_mm": e["cam_mm"].mean(0).tolist(), "base_xyz_mm": e["base_mm"].mean(0).tolist(),
            "mean_pos_mm": float(e["pos_mm"].mean()), "mean_rot_deg": float(e["rot_deg"].mean()),
            "first_pos_mm": float(e["pos_mm"][:, 0].mean()), "last_pos_mm": float(e["pos_mm"][:, -1].mean())}
    return result


def summary_line(result: dict) -> str:
    parts = [f"held-out {result['samples']} samples, val loss {result['val_loss']:.4f}"]
    for arm, r in result["arms"].items():
        parts.append(f"{arm}: {r['mean_pos_mm']:.1f} mm / {r['mean_rot_deg']:.2f} deg mean "
                     f"({r['first_pos_mm']:.1f} mm at step 0, {r['last_pos_mm']:.1f} mm at the last step)")
    return "; ".join(parts)


def save_evaluation(result: dict, out: Path, step: int) -> None:
    """<out>/eval.json (latest, with its step) and <out>/eval_errors.png (errors per horizon step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"step": step, **result}, indent=1))
    arms = list(result["arms"])
    t = np.asarray(result["horizon_s"])
    fig, axes = plt.subplots(2, len(arms), figsize=(5.5 * len(arms), 6), squeeze=False)
    for j, arm in enumerate(arms):
        r = result["arms"][arm]
        ax = axes[0, j]
        ax.plot(t, r["pos_mm"], lw=2, color="k", label="|error| (any frame)")
        for k, axis in enumerate("xyz"):
            ax.plot(t, np.asarray(r["camera_xyz_mm"])[:, k], lw=1, ls="--", color=f"C{k}", label=f"camera {axis}")
            ax.plot(t, np.asarray(r["base_xyz_mm"])[:, k], lw=1, ls=":", color=f"C{k}", label=f"base_link {axis}")
        ax.set_title(f"{arm} arm, step {step}")
        ax.set_ylabel("position error (mm)")
        ax.legend(fontsize=7, ncol=2)
        ax = axes[1, j]
        ax.plot(t, r["rot_deg"], lw=2, color="C3")
        ax.set_ylabel("rotation error (deg)")
        ax.set_xlabel("horizon (s)")
    fig.tight_layout()
    fig.savefig(out / "eval_errors.png", dpi=100)
    plt.close(fig)
