"""Ordinal initialisation of the `<loc>` and pose-token embeddings of a randomly initialised model.

A stock PaliGemma already knows its 1024 `<locNNNN>` tokens; a model built from a config (`--config`, random
weights) does not: every `<loc>` and pose bin is an unrelated random vector, so a bin never seen in training
means nothing, and neighbouring bins share nothing. This module gives each ordered token group a smooth
embedding: random Fourier features of the bin's normalised position x = k / (K - 1),

    e_k = s * (a g + sqrt(1 - a^2) sqrt(2) cos(w * x_k + b)),   w ~ N(0, 1 / bandwidth^2),  b ~ U(0, 2 pi)

so that e_k . e_l / D ~ s^2 (a^2 + (1 - a^2) exp(-(x_k - x_l)^2 / (2 bandwidth^2))) (a Gaussian kernel plus a
direction g ~ N(0, I) shared by the group, so the model can pick the group as a whole). With the LM head tied to the
input embeddings (PaliGemma's), neighbouring bins then get similar logits and a bin seen rarely is still near
the bins around it. The scale s keeps the norm of the rows it replaces. Rotation bins wrap around
(x_k = angle, features cos/sin of integer frequencies), translation, size and `<loc>` bins do not.

Used by `posevla pretrain --token-init ordinal` (with --config); checkpoints and
--paligemma starts keep their embeddings.
"""
from __future__ import annotations

import numpy as np
import torch

from posevla.model.text_tokenizer import LOC_TOKENS, pose_token_ids

# bandwidth in units of the group's normalised range [0, 1] (0.08: ~2.5 bins of 32, ~80 <loc> bins of 1024)
BANDWIDTH = {"loc": 0.08, "trans_xy": 0.08, "trans_z": 0.08, "size": 0.08, "rot": 0.08}
GROUP_SHARE = 0.5  # part of each row that is the group's own direction (so a group can be chosen as a whole)


def _features(x: np.ndarray, dim: int, bandwidth: float, periodic: bool, rng: np.random.Generator) -> np.ndarray:
    """(K,) positions in [0, 1] -> (K, dim) rows with unit mean square norm whose dot product decays with distance."""
    if periodic:  # integer frequencies keep the features periodic in x with period 1
        w = np.round(rng.normal(0.0, 1.0 / (2 * np.pi * bandwidth), dim)) * 2 * np.pi
    else:
        w = rng.normal(0.0, 1.0 / bandwidth, dim)
    b = rng.uniform(0.0, 2 * np.pi, dim)
    return np.sqrt(2.0) * np.cos(x[:, None] * w[None, :] + b[None, :])


@torch.no_grad()
def ordinal_token_init(policy, seed: int = 0) -> dict[str, int]:
    """Overwrite the input embeddings (tied LM head) of the `<loc>` tokens and of every pose-token group with
    smooth ordinal embeddings (see the module docstring). Returns {group: number of rows written}."""
    emb = policy.model.vlm.get_input_embeddings().weight
    rng = np.random.default_rng(seed)
    tok = policy.tokenizer
    groups: dict[str, np.ndarray] = {"loc": np.asarray(tok.convert_tokens_to_ids(list(LOC_TOKENS)), np.int64)}
    groups.update(pose_token_ids(tok, policy.pose_tokenizer))
    if np.any(groups["loc"] == tok.unk_token_id):
        raise ValueError("the tokenizer has no <loc> tokens")
    scale = float(emb.float().pow(2).mean().sqrt())  # rms of an entry, as the random rows had
    written = {}
    for name, ids in groups.items():
        k = len(ids)
        x = np.arange(k) / max(1, k - 1) if name != "rot" else np.arange(k) / k
        smooth = _features(x, emb.shape[1], BANDWIDTH[name], name == "rot", rng)
        group = rng.normal(0.0, 1.0, emb.shape[1])
        rows = (GROUP_SHARE * group[None, :] + np.sqrt(1.0 - GROUP_SHARE**2) * smooth) * scale
        emb[torch.as_tensor(ids, device=emb.device)] = torch.as_tensor(rows, dtype=emb.dtype, device=emb.device)
        written[name] = k
    return written
