"""Convert a checkpoint of the Pose-VLA authors' code base (github.com/hetolin/PoseVLA) into a checkpoint directory
of this project (`PoseVLAPolicy.from_pretrained` loads it).

    posevla convert-authors SRC DST [--config models/posevla_3b.yaml] [--bins bins.json] [--priors fit|zero]

The authors' `save_pretrained()` output is LeRobot's policy layout: `config.json` (`type: posevla`) and
`model.safetensors` (or shards with `model.safetensors.index.json`), the PaliGemma tokenizer beside them. Their
module tree (read from their public code, not run): `model.paligemma_with_expert.paligemma` (a transformers 4.x
PaliGemmaForConditionalGeneration), `model.paligemma_with_expert.gemma_expert` (GemmaForCausalLM, word embedding
removed), `model.{state_proj, action_in_proj, action_out_proj, action_time_mlp_in, action_time_mlp_out}` (pi0), and
with `add_prior` two prior embeddings `model.paligemma_with_expert.PatchEmbedDust3R_Mlp_{rays,depth}`: pixel
unshuffle by the SigLIP patch size, then an MLP `fc1: C*p*p -> 4*D`, GELU, `fc2: 4*D -> D` (with biases), added to
the SigLIP output tokens before the projector, as ours are.

What is converted:
- PaliGemma, the expert and the projections: renamed with the LeRobot pi0 tables of `checkpoint.py` (one source of
  truth for those names); PaliGemma's tied embedding may be stored as its LM head.
- Pose-token rows: the authors name their tokens `<transXY..>`, `<transZ..>`, `<rot..>`, `<size..>` (zero-padded
  bin numbers, ids after PaliGemma's vocabulary, in the order their tokenizer added them); ours are `<trans_xy_k>`,
  `<trans_z_k>`, `<rot_k>`, `<size_k>`. Each of our pose tokens gets the learned row of the authors' token for the
  same bin (translation, size: same bin index, their percentile edges become our edges; rotation: their uniform
  bins `round-down((a + pi) / 2pi * (R - 1))` differ from ours, so each of our bins takes the row of the authors' bin
  holding its centre). Their rows stay where they were (their tokens remain in the tokenizer, unused).
- Prior embeddings: ours (patch conv D -> GELU -> linear D -> D, no biases, zero output for a zero input) cannot hold
  theirs (hidden width 4*D, biases) exactly. `--priors fit` (default) distils theirs into ours on synthetic raymaps
  and depth priors of this stack's input format and reports the relative error; `--priors zero` starts ours at zero
  output (as `from_pi0`).
- Refused by name (exit 2): pi0.5 checkpoints (adaRMS-conditioned expert norms: not in this model), unknown or
  missing tensors, shapes that do not fit the model config, token ids beyond the embedding table.

The bin edges: the authors keep them in a pickle (`bin_stats/nonuniform_bins.pkl`); pickles can run code when loaded,
so this tool never reads one. Export its arrays once, yourself, to JSON (keys as in the pickle: `percentiles_txy`,
`percentiles_tz`, `percentiles_sxyz`, optionally `token_list_txy/tz/rxyz/sxyz`) and pass `--bins FILE.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.nn import functional as F

from posevla.model import checkpoint as ckpt
from posevla.model.config import PoseVLAConfig
from posevla.model.pose_tokens import GROUPS, PoseTokenizer

AUTHORS_TYPE = "posevla"
INDEX = "model.safetensors.index.json"
# Their prior embeddings: module suffix -> our GeometryEmbedding part and input channels.
PRIOR_MODULES = {"rays": ("ray", 3), "depth": ("depth", 2)}
PRIOR_PREFIX = "paligemma_with_expert.PatchEmbedDust3R_Mlp_"
PRIOR_PARAMS = ("proj.2.fc1.weight", "proj.2.fc1.bias", "proj.2.fc2.weight", "proj.2.fc2.bias")
# pi0.5 tensors (time MLP for adaRMS instead of the action-time MLP; adaptive norms with a dense layer).
PI05_MARKERS = (re.compile(r"^time_mlp_(in|out)\."), re.compile(r"layernorm\.dense\.|\.norm\.dense\."))
# Our pose-token group -> (key suffix in the authors' bin file, token pattern of their gen_tokens naming).
AUTHOR_GROUPS = {"trans_xy": ("txy", "transXY"), "trans_z": ("tz", "transZ"), "rot": ("rxyz", "rot"),
                 "size": ("sxyz", "size")}
BINS_KEYS = {f"percentiles_{s}" for s in ("txy", "tz", "sxyz")} | {f"token_list_{s}" for s, _ in AUTHOR_GROUPS.values()}
PRIOR_MODES = ("fit", "zero")
# For messages only: our name prefix -> the authors' (transformers 4.x PaliGemma inside LeRobot's policy).
AUTHORS_NAMES = (("pi0.model.vlm.vision_tower.", "model.paligemma_with_expert.paligemma.vision_tower.vision_model."),
                 ("pi0.model.vlm.multi_modal_projector.", "model.paligemma_with_expert.paligemma.multi_modal_projector."),
                 ("pi0.model.vlm.language_model.", "model.paligemma_with_expert.paligemma.language_model.model."),
                 ("pi0.model.dit.", "model.paligemma_with_expert.gemma_expert.model."),
                 ("pi0.embed_action_time.", "model."), ("pi0.action_out_proj.", "model.action_out_proj."))


def authors_name(ours: str) -> str:
    """The authors' name of one of our tensors (for messages)."""
    return next((new + ours[len(old):] for old, new in AUTHORS_NAMES if ours.startswith(old)), ours)


@dataclass
class ConversionReport:
    """What the conversion did, in numbers (printed by the CLI, asserted by the tests)."""

    source_tensors: int = 0
    mapped: int = 0
    dropped: list[str] = field(default_factory=list)
    priors: str = "absent"
    prior_fit_error: dict[str, float] = field(default_factory=dict)  # part -> relative RMS error (0 = exact)
    embedding_rows: tuple[int, int] = (0, 0)  # (authors', ours)
    pose_rows_moved: dict[str, int] = field(default_factory=dict)
    pose_rows_fresh: dict[str, int] = field(default_factory=dict)
    io_width: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"tensors: {self.source_tensors} read, {self.mapped} mapped onto this model, "
               f"{len(self.dropped)} dropped ({', '.join(self.dropped) if self.dropped else 'none'})",
               f"embedding table: {self.embedding_rows[0]} rows -> {self.embedding_rows[1]} rows",
               "pose-token rows moved: " + (", ".join(f"{g} {n}" for g, n in self.pose_rows_moved.items()) or "none"),
               "pose-token rows new (mean + noise): " + (", ".join(f"{g} {n}" for g, n in self.pose_rows_fresh.items())
                                                        or "none"),
               f"state/action width: {self.io_width} (the robot's vectors are zero-padded to it)",
               f"prior embeddings: {self.priors}" + "".join(f", {k} relative error {v:.3f}"
                                                             for k, v in self.prior_fit_error.items())]
        return out + [f"note: {n}" for n in self.notes]


# ------------------------------------------------------------------ reading the source
def read_authors_config(src: Path) -> dict:
    path = src / "config.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{path} does not exist: not an authors' checkpoint directory (their model/ folder)") from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("type") != AUTHORS_TYPE:
        got = meta.get("type") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: field type={got!r}, expected {AUTHORS_TYPE!r} (for pi0 checkpoints use --init-pi0)")
    if meta.get("pi05") is True:
        raise ValueError(f"{path}: field pi05=true: a pi0.5 expert (adaRMS time conditioning) cannot be held by this "
                         "model's pi0 expert")
    return meta


def _read_file(path: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            for name in names or []:
                if name not in keys:
                    raise ValueError(f"{path} lacks tensor {name} that {INDEX} places there")
            return {k: f.get_tensor(k) for k in (names if names is not None else keys)}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path} is corrupt or unreadable: {exc}") from exc


def read_authors_tensors(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards `model.safetensors.index.json` lists."""
    index = src / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: no readable weight_map ({exc!r})") from exc
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: field weight_map must be a mapping")
        shards: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            shards.setdefault(str(file), []).append(name)
        out: dict[str, torch.Tensor] = {}
        for file, names in shards.items():
            path = src / file
            if not path.is_file():
                raise ValueError(f"{index}: shard {file} (tensor {names[0]}) does not exist")
            out.update(_read_file(path, names))
        return out
    path = src / ckpt.WEIGHTS
    if not path.is_file():
        raise ValueError(f"{src} has neither {ckpt.WEIGHTS} nor {INDEX}")
    return _read_file(path)


def map_authors_names(raw: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str],
                                                              dict[str, dict[str, torch.Tensor]], list[str]]:
    """Authors' tensors -> (ours by our name, our name -> their name, prior MLP tensors per part, dropped names).

    Unknown tensors and pi0.5 tensors are errors naming the first offender."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    priors: dict[str, dict[str, torch.Tensor]] = {}
    dropped: list[str] = []
    lm_head: tuple[str, torch.Tensor] | None = None
    for key in sorted(raw):
        k = key.removeprefix("model.")
        if any(p.search(k) for p in PI05_MARKERS):
            raise ValueError(f"tensor {key} belongs to a pi0.5 expert (adaRMS / time MLP), which this model lacks")
        if k.startswith(PRIOR_PREFIX):
            module, _, param = k[len(PRIOR_PREFIX):].partition(".")
            if module not in PRIOR_MODULES or param not in PRIOR_PARAMS:
                raise ValueError(f"unknown tensor {key} (prior embedding parameters are "
                                 f"{PRIOR_PREFIX}{{rays,depth}}.{{{','.join(PRIOR_PARAMS)}}})")
            priors.setdefault(PRIOR_MODULES[module][0], {})[param] = raw[key]
            continue
        if k in ckpt.PI0_LEROBOT_LM_HEADS:
            lm_head = (key, raw[key])
            continue
        name = next((new + k[len(old):] for old, new in ckpt.PI0_LEROBOT_RENAMES if k.startswith(old)), None)
        if name is None and k.startswith(ckpt.PI0_DROPPED):
            dropped.append(key)
            continue
        if name is None:
            raise ValueError(f"unknown tensor {key}: no place for it in this model")
        for old, new in ckpt.PI0_LEROBOT_INFIXES:
            name = name.replace(old, new)
        if name.startswith(ckpt.PI0_DROPPED):
            dropped.append(key)
            continue
        out[name] = raw[key]
        origin[name] = key
    if lm_head is not None:
        if ckpt.EMBED_KEY in out:
            dropped.append(lm_head[0])  # tied to the input embedding; the embedding itself is kept
        else:
            out[ckpt.EMBED_KEY], origin[ckpt.EMBED_KEY] = lm_head[1], lm_head[0]
    for part, params in priors.items():
        lacking = [p for p in PRIOR_PARAMS if p not in params]
        if lacking:
            their = next(m for m, (ours, _) in PRIOR_MODULES.items() if ours == part)
            raise ValueError(f"missing tensor model.{PRIOR_PREFIX}{their}.{lacking[0]}")
    if priors and set(priors) != {"ray", "depth"}:
        raise ValueError(f"missing tensors model.{PRIOR_PREFIX}"
                         f"{'depth' if 'ray' in priors else 'rays'}.* (the checkpoint has only one prior embedding)")
    return out, origin, priors, dropped


# ------------------------------------------------------------------ pose tokens
def read_bins_file(path: Path) -> dict[str, list]:
    """The authors' bin edges and token lists, exported to JSON (never unpickled here)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"bins file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"bins file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"bins file {path}: top level must be a mapping")
    unknown = sorted(set(data) - BINS_KEYS)
    if unknown:
        raise ValueError(f"bins file {path}: unknown key {unknown[0]} (known: {', '.join(sorted(BINS_KEYS))})")
    for key in ("percentiles_txy", "percentiles_tz"):
        if key not in data:
            raise ValueError(f"bins file {path}: key {key} is missing")
    for key, value in data.items():
        if not isinstance(value, list) or not value:
            raise ValueError(f"bins file {path}: key {key} must be a non-empty list")
        if key.startswith("percentiles_"):
            arr = np.asarray(value, dtype=np.float64) if all(isinstance(v, (int, float)) for v in value) else None
            if arr is None or arr.ndim != 1 or arr.size < 3 or not np.all(np.isfinite(arr)) or np.any(np.diff(arr) < 0):
                raise ValueError(f"bins file {path}: key {key} must be at least 3 finite non-decreasing numbers")
        elif not all(isinstance(v, str) for v in value):
            raise ValueError(f"bins file {path}: key {key} must be a list of token strings")
    return data


def _authors_tokens(vocab: dict[str, int], group: str, bins: dict[str, list] | None) -> list[str]:
    """The authors' token strings of one group in bin order: from the bin file's token list, else their naming
    scheme `<prefix{k:0{width}d}>` (width = digits of the last bin) found in the tokenizer."""
    suffix, prefix = AUTHOR_GROUPS[group]
    listed = (bins or {}).get(f"token_list_{suffix}")
    if listed is not None:
        absent = [t for t in listed if t not in vocab]
        if absent:
            raise ValueError(f"bins file: token_list_{suffix} names {absent[0]}, which the authors' tokenizer lacks")
        return list(listed)
    pattern = re.compile(rf"^<{prefix}(\d+)>$")
    found = {m.group(1): t for t in vocab if (m := pattern.match(t))}
    if not found:
        return []
    n = len(found)
    width = len(str(n - 1))
    expected = [f"{k:0{width}d}" for k in range(n)]
    if sorted(found) != expected:
        raise ValueError(f"authors' tokenizer: the {n} <{prefix}..> tokens are not numbered 0..{n - 1} with "
                         f"{width} digits (pass token_list_{suffix} in --bins)")
    return [found[k] for k in expected]


def _edges(bins: dict[str, list], key: str, n: int, report: ConversionReport) -> np.ndarray:
    arr = np.asarray(bins[key], dtype=np.float64)
    if arr.size != n + 1:
        raise ValueError(f"bins file: key {key} has {arr.size} edges, its tokens need {n + 1}")
    ties = 0
    span = max(arr[-1] - arr[0], 1e-6)
    for i in range(1, arr.size):  # repeated percentiles (ties in their data): nudge apart, as our fit does
        if arr[i] <= arr[i - 1]:
            arr[i] = arr[i - 1] + span * 1e-9
            ties += 1
    if ties:
        report.notes.append(f"{key}: {ties} repeated edge(s) nudged apart by {span * 1e-9:.2e}")
    return arr


def pose_token_plan(vocab: dict[str, int], bins: dict[str, list] | None, fresh: bool, default_bins: int,
                    report: ConversionReport) -> tuple[PoseTokenizer, dict[str, list[int]]]:
    """Our PoseTokenizer and, per group, the authors' token id to copy for each of our bins (empty: new rows)."""
    tokens = {g: _authors_tokens(vocab, g, bins) for g in GROUPS}
    present = {g: t for g, t in tokens.items() if t}
    if fresh or not present:
        if present:
            report.notes.append("--fresh-pose-tokens: the authors' pose-token rows are not carried over")
        return PoseTokenizer(default_bins).with_default_edges(), {}
    if bins is None:
        g = next(iter(present))
        raise ValueError(f"the authors' tokenizer has {len(present[g])} {present[g][0]}.. tokens: pass --bins "
                         "FILE.json with their percentiles (see --help), or --fresh-pose-tokens to start ours anew")
    n = len(tokens["trans_xy"])
    if n < 2:
        raise ValueError("authors' tokenizer: no <transXY..> tokens although --bins was given")
    pose_tok = PoseTokenizer(n)
    pose_tok.edges["trans_xy"] = _edges(bins, "percentiles_txy", n, report)
    if len(tokens["trans_z"]) != n:
        raise ValueError(f"authors' tokenizer: {len(tokens['trans_z'])} <transZ..> tokens but {n} <transXY..> tokens "
                         "(this model uses one bin count for every group)")
    pose_tok.edges["trans_z"] = _edges(bins, "percentiles_tz", n, report)
    plan: dict[str, list[int]] = {g: [vocab[t] for t in tokens[g]] for g in ("trans_xy", "trans_z")}
    if "percentiles_sxyz" in bins:
        if len(tokens["size"]) != n:
            raise ValueError(f"authors' tokenizer: {len(tokens['size'])} <size..> tokens, expected {n}")
        pose_tok.edges["size"] = _edges(bins, "percentiles_sxyz", n, report)
        plan["size"] = [vocab[t] for t in tokens["size"]]
    else:
        report.notes.append("no percentiles_sxyz: size tokens start anew with edges 0..1 m")
    rot = tokens["rot"]
    if len(rot) >= 2:  # their bin of each of our bin centres
        r = len(rot)
        plan["rot"] = [vocab[rot[min(int(math.floor((j + 0.5) / n * (r - 1))), r - 1)]] for j in range(n)]
        if r != n:
            report.notes.append(f"rotation: the authors' {r} uniform bins resampled onto our {n} (nearest-below bin)")
    return pose_tok.with_default_edges(), plan


# ------------------------------------------------------------------ prior embeddings
def _ray_patches(n: int, p: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 3*p*p) raymap patches K^-1 [u, v, 1] of the model view (size px) of pinhole cameras with a horizontal
    field of view of 40-110 deg (RealSense D455 colour: 90 deg, D405: 87 deg)."""
    half = torch.tan(torch.deg2rad(20 + 35 * torch.rand(n, 1, generator=gen)))  # tan(fov / 2)
    step = 2 * half / size  # 1 / focal length in pixels
    centre = (torch.rand(n, 2, generator=gen) * 2 - 1) * half * (1 - p / size)
    offs = torch.arange(p, dtype=torch.float32) - (p - 1) / 2
    x = centre[:, 0, None, None] + step[:, :, None] * offs[None, None, :]  # varies along columns
    y = centre[:, 1, None, None] + step[:, :, None] * offs[None, :, None]  # along rows
    x, y = x.expand(n, p, p), y.expand(n, p, p)
    return torch.stack([x, y, torch.ones_like(x)], dim=1).reshape(n, -1)


def _depth_patches(n: int, p: int, size: int, gen: torch.Generator) -> torch.Tensor:  # noqa: ARG001 - same signature
    """(n, 2*p*p) depth-prior patches [D (m), M]: sloped planes 0.1-4 m, full, partly invalid or sparse masks."""
    offs = torch.arange(p, dtype=torch.float32) - (p - 1) / 2
    d0 = 0.1 + 3.9 * torch.rand(n, 1, 1, generator=gen)
    gx, gy = [(torch.rand(n, 1, 1, generator=gen) * 2 - 1) * 0.03 * d0 for _ in range(2)]
    depth = (d0 + gx * offs[None, None, :] + gy * offs[None, :, None]).clamp(min=0.05)
    kind = torch.rand(n, 1, 1, generator=gen)
    keep = torch.where(kind < 0.5, 1.0, torch.where(kind < 0.75, 0.5, 0.05))  # full / holes / sparse
    mask = (torch.rand(n, p, p, generator=gen) < keep).float()
    return torch.stack([depth * mask, mask], dim=1).reshape(n, -1)


def _authors_prior(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The authors' prior MLP on pixel-unshuffled patches (channel-major c*p*p + row*p + col, as a conv kernel)."""
    h = F.gelu(F.linear(x, params["proj.2.fc1.weight"].float(), params["proj.2.fc1.bias"].float()))
    return F.linear(h, params["proj.2.fc2.weight"].float(), params["proj.2.fc2.bias"].float())


def fit_prior(params: dict[str, torch.Tensor], channels: int, patch: int, image_size: int, hidden: int, steps: int,
              seed: int = 0, batch: int = 1024, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, float]:
    """Distil the authors' prior MLP into our bias-free conv -> GELU -> linear: returns (conv weight (D, C, p, p),
    linear weight (D, D), relative RMS error on held-out patches; 1.0 is what a zero output would score)."""
    fan_in = channels * patch * patch
    w1 = params["proj.2.fc1.weight"]
    if w1.shape[1] != fan_in or params["proj.2.fc2.weight"].shape[0] != hidden:
        raise ValueError(f"prior embedding ({channels} channels): fc1 {tuple(w1.shape)} / fc2 "
                         f"{tuple(params['proj.2.fc2.weight'].shape)} do not fit patch {patch} and width {hidden}")
    sample = _ray_patches if channels == 3 else _depth_patches
    gen = torch.Generator().manual_seed(seed)
    teacher = {k: v.to(device) for k, v in params.items()}
    conv = torch.nn.Linear(fan_in, hidden, bias=False, device=device)
    out = torch.nn.Linear(hidden, hidden, bias=False, device=device)
    opt = torch.optim.Adam([*conv.parameters(), *out.parameters()], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in range(steps):
        x = sample(batch, patch, image_size, gen).to(device)
        with torch.no_grad():
            y = _authors_prior(teacher, x)
        loss = F.mse_loss(out(F.gelu(conv(x))), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        x = sample(4 * batch, patch, image_size, torch.Generator().manual_seed(seed + 1)).to(device)
        y = _authors_prior(teacher, x)
        err = float((out(F.gelu(conv(x))) - y).norm() / y.norm().clamp(min=1e-12))
    return conv.weight.detach().cpu().reshape(hidden, channels, patch, patch), out.weight.detach().cpu(), err


# ------------------------------------------------------------------ conversion
def _load_tokenizer(path: Path):  # noqa: ANN202 - a transformers tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"no tokenizer in {path} (pass the authors' tokenizer directory with --tokenizer): "
                         f"{exc}") from exc


def convert(src: str | Path, dst: str | Path, config: str | Path | PoseVLAConfig | None = None,
            tokenizer: str | Path | None = None, bins: str | Path | None = None, priors: str = "fit",
            fit_steps: int = 1500, fresh_pose_tokens: bool = False, dtype: torch.dtype = torch.float32,
            device: str = "cpu", seed: int = 0) -> ConversionReport:
    """Convert the authors' checkpoint directory `src` into our checkpoint directory `dst` (see the module doc).

    config: our model sizes (default models/posevla_3b.yaml, pi0's sizes); num_pose_bins is taken from the authors'
    bins when their pose tokens are carried over. Raises ValueError naming the file, key or tensor at fault."""
    from posevla.model.geometry_embed import GeometryEmbedding
    from posevla.model.network import PoseVLAModel, materialize_buffers
    from posevla.model.normalization import NormStats
    from posevla.model.policy import PoseVLAPolicy, _extend_rows
    from posevla.model.text_tokenizer import IMAGE_TOKEN, extend_tokenizer

    src, dst = Path(src), Path(dst)
    if priors not in PRIOR_MODES:
        raise ValueError(f"--priors {priors!r} must be one of {PRIOR_MODES}")
    if not src.is_dir():
        raise ValueError(f"authors' checkpoint {src} is not a directory")
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"output directory {dst} exists and is not empty")
    report = ConversionReport()
    meta = read_authors_config(src)
    raw = read_authors_tensors(src)
    report.source_tensors = len(raw)
    state, origin, prior_params, report.dropped = map_authors_names(raw)
    del raw
    if config is None:
        from posevla.paths import models_dir

        try:
            config = models_dir() / "posevla_3b.yaml"
        except FileNotFoundError as exc:
            raise ValueError(f"no default model config ({exc}): pass --config") from exc
    cfg = config if isinstance(config, PoseVLAConfig) else PoseVLAConfig.from_yaml(config)

    # vocabulary: the authors' tokenizer, their rows kept, our pose tokens appended with their learned rows
    tok = _load_tokenizer(Path(tokenizer) if tokenizer else src)
    vocab = tok.get_vocab()
    if IMAGE_TOKEN not in vocab:
        raise ValueError(f"the authors' tokenizer has no {IMAGE_TOKEN} token (is it PaliGemma's?)")
    if ckpt.EMBED_KEY not in state:
        raise ValueError("missing tensor model.paligemma_with_expert.paligemma.language_model.model.embed_tokens."
                         "weight (or its tied lm_head.weight)")
    emb = state[ckpt.EMBED_KEY]
    rows = emb.shape[0]
    beyond = [t for t, i in vocab.items() if i >= rows]
    if beyond:
        raise ValueError(f"the authors' tokenizer token {beyond[0]} has id {vocab[beyond[0]]}, but tensor "
                         f"{origin[ckpt.EMBED_KEY]} has only {rows} rows")
    bins_data = read_bins_file(Path(bins)) if bins is not None else None
    pose_tok, plan = pose_token_plan(vocab, bins_data, fresh_pose_tokens, cfg.num_pose_bins, report)
    if pose_tok.num_bins != cfg.num_pose_bins:
        report.notes.append(f"num_pose_bins {cfg.num_pose_bins} -> {pose_tok.num_bins} (the authors' bins)")
        cfg = PoseVLAConfig.from_dict({**cfg.to_dict(), "num_pose_bins": pose_tok.num_bins})
    extend_tokenizer(tok, pose_tok)
    size = max(rows, len(tok))
    torch.manual_seed(seed)
    n_new = pose_tok.num_bins * len(GROUPS)
    fresh = _extend_rows(emb, rows + 2 * n_new)[rows:]  # mean + small noise, for any row that is ours to start
    table = torch.cat([emb, fresh[:size - rows]], dim=0)
    spare = iter(fresh[n_new:])
    for g in GROUPS:
        ours = tok.convert_tokens_to_ids([pose_tok.token(g, k) for k in range(pose_tok.num_bins)])
        if g in plan:
            table[ours] = emb[plan[g]]
            report.pose_rows_moved[g] = len(ours)
        else:
            for i in ours:
                if i < rows:  # a row of theirs beyond their tokenizer (padding) now belongs to our token
                    table[i] = next(spare)
            report.pose_rows_fresh[g] = len(ours)
    state[ckpt.EMBED_KEY] = table
    report.embedding_rows = (rows, size)

    # shapes against our model built on the meta device
    in_proj = "pi0.embed_action_time.action_in_proj.weight"
    if in_proj not in state:
        raise ValueError("missing tensor model.action_in_proj.weight")
    report.io_width = int(state[in_proj].shape[1])
    with torch.device("meta"):
        model = PoseVLAModel(cfg, size, tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.pad_token_id, report.io_width)
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("geometry."))
    if missing:
        raise ValueError(f"missing tensor {authors_name(missing[0])} (this model's {missing[0]}; {len(missing)} "
                         "missing in all; sizes: --config)")
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"tensor {origin.get(unexpected[0], unexpected[0])} has no place in the model of "
                         f"{config if not isinstance(config, PoseVLAConfig) else 'the given config'} (sizes: --config)")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"tensor {origin.get(name, name)} has shape {tuple(tensor.shape)}, this model's {name} "
                             f"needs {tuple(own[name].shape)} (sizes: --config)")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"tensor {origin.get(name, name)} contains NaN or inf")
    report.mapped = len(state)
    model.load_state_dict(state, strict=False, assign=True)
    del state

    # prior embeddings
    model.geometry = GeometryEmbedding(cfg.patch_size, int(cfg.vision["hidden_size"]))  # zero output
    if prior_params and priors == "fit":
        hidden = int(cfg.vision["hidden_size"])
        for part, (channels, module) in {"ray": (3, model.geometry.ray), "depth": (2, model.geometry.depth)}.items():
            conv_w, out_w, err = fit_prior(prior_params[part], channels, cfg.patch_size, cfg.image_size, hidden, fit_steps,
                                           seed=seed, device=device)
            with torch.no_grad():
                module.patch.weight.copy_(conv_w)
                module.out.weight.copy_(out_w)
            report.prior_fit_error[part] = err
        report.priors = f"fitted to the authors' MLPs ({fit_steps} steps each)"
    elif prior_params:
        report.priors = "the authors' MLPs dropped (--priors zero): ours start at zero output"
        report.dropped += [f"model.{PRIOR_PREFIX}{m}.{p}" for m in PRIOR_MODULES for p in PRIOR_PARAMS]
    else:
        report.priors = "none in the checkpoint (add_prior off): ours start at zero output"
    materialize_buffers(model)

    if meta.get("add_image_token"):
        report.notes.append("add_image_token=true: the authors wrapped each view in <imageN>..</imageN>; this stack "
                            "does not, so prompts differ from their training")
    chunk = meta.get("chunk_size")
    if isinstance(chunk, int) and chunk != cfg.chunk_length:
        report.notes.append(f"the authors' chunk_size {chunk} differs from chunk_length {cfg.chunk_length} "
                            "(no weight depends on it)")
    report.notes.append("normalisation statistics are identity: the authors normalise outside the model; "
                        "fit this robot's with posevla train")
    policy = PoseVLAPolicy(cfg, model, tok, pose_tok, NormStats.identity(cfg.state_dim, cfg.action_dim),
                           torch.device("cpu"), dtype)
    policy.save_pretrained(dst)
    return report


# ------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("src", type=Path, help="the authors' checkpoint directory (their <step>/model/: config.json with "
                                          "type posevla, model.safetensors or model.safetensors.index.json + shards)")
    p.add_argument("dst", type=Path, help="output: a Pose-VLA checkpoint directory (must not exist or be empty)")
    p.add_argument("--config", type=Path, default=None,
                   help="our model config giving the sizes (default models/posevla_3b.yaml: pi0's sizes)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="the authors' tokenizer directory, when SRC has none (their pose tokens added)")
    p.add_argument("--bins", type=Path, default=None,
                   help="JSON with the authors' bin edges (percentiles_txy, percentiles_tz[, percentiles_sxyz], "
                        "optional token_list_*), exported from their nonuniform_bins.pkl")
    p.add_argument("--fresh-pose-tokens", action="store_true",
                   help="do not carry the authors' pose-token rows over; ours start at the mean embedding")
    p.add_argument("--priors", choices=PRIOR_MODES, default="fit",
                   help="prior embeddings: fit ours to the authors' MLPs (default) or start ours at zero output")
    p.add_argument("--fit-steps", type=int, default=1500, help="Adam steps per prior embedding for --priors fit")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights as written (float32: training keeps fp32 master weights)")
    p.add_argument("--device", default="cpu", help="device for --priors fit (cpu, cuda)")


def run(args: argparse.Namespace) -> int:
    if args.fit_steps < 0:
        print("posevla convert-authors: --fit-steps must be >= 0", file=sys.stderr)
        return 2
    try:
        report = convert(args.src, args.dst, config=args.config, tokenizer=args.tokenizer, bins=args.bins,
                         priors=args.priors, fit_steps=args.fit_steps, fresh_pose_tokens=args.fresh_pose_tokens,
                         dtype=getattr(torch, args.dtype), device=args.device)
    except ValueError as exc:
        print(f"posevla convert-authors: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"wrote {args.dst} (load with PoseVLAPolicy.from_pretrained or posevla train --init)")
    return 0
