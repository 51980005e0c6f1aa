"""PoseVLAPolicy: the inference API every part of the stack uses (ROS policy node, trainer, tools).

    policy = PoseVLAPolicy.from_pretrained(path, device=None)   # CUDA bf16 when present, else CPU fp32
    policy = PoseVLAPolicy.from_pi0(pi0_dir)                     # transformers- or LeRobot-format pi0 weights
    policy.warmup()
    chunk = policy.predict(observation)                          # ActionChunk in the reference camera frame
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from posevla.model import checkpoint as ckpt
from posevla.model.batching import Batcher, TrainingSample
from posevla.model.config import MODALITIES, PoseVLAConfig
from posevla.model.device import select_device
from posevla.model.io_transforms import XTrainerOutputs
from posevla.model.network import PoseVLAModel, materialize_buffers
from posevla.model.normalization import NormStats
from posevla.model.pose_sequence import PoseTuple, parse_tuples_lenient
from posevla.model.pose_tokens import PoseTokenizer
from posevla.model.text_tokenizer import IMAGE_TOKEN, build_offline_tokenizer, extend_tokenizer, token_id
from posevla.types import ActionChunk, ArmState, ModelView, Observation, RobotState


def _extend_rows(old: torch.Tensor, rows: int) -> torch.Tensor:
    """Embedding table with `rows` rows: new rows (pose tokens) start at the mean embedding plus small noise."""
    if rows <= old.shape[0]:
        return old
    new = old.float().mean(0, keepdim=True) + 0.01 * old.float().std() * torch.randn(rows - old.shape[0], old.shape[1])
    return torch.cat([old, new.to(old.dtype)], dim=0)


class PoseVLAPolicy:
    def __init__(self, cfg: PoseVLAConfig, model: PoseVLAModel, tokenizer, pose_tok: PoseTokenizer,
                 norm: NormStats, device: torch.device, dtype: torch.dtype) -> None:
        self.config, self.model, self.tokenizer, self.pose_tokenizer = cfg, model, tokenizer, pose_tok
        self.norm, self.device, self.dtype = norm, device, dtype
        self.batcher = Batcher(cfg, tokenizer, norm)
        self.outputs = XTrainerOutputs(cfg)
        self.model.to(device=device, dtype=dtype).eval()  # RoPE / time frequencies stay fp32 (network.py)
        self.last_timing: dict[str, float] = {}
        # the flow's starting noise is N(0, I) x this (1: sample as trained; 0: start every chunk from zero noise,
        # a deterministic chunk for an observation -- on the twin 66/80 against 59/80, docs/closed_loop.md)
        self.flow_noise_scale = 1.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: PoseVLAConfig | str | Path, seed: int = 0, device: str | None = None,
                    norm: NormStats | None = None, pose_tok: PoseTokenizer | None = None,
                    dtype: torch.dtype | None = None, io_width: int | None = None) -> PoseVLAPolicy:
        """A randomly initialised model with an offline tokenizer (tests, demos, training from scratch).

        dtype: parameter dtype (default: bf16 on CUDA, fp32 on CPU; training passes torch.float32)."""
        if not isinstance(cfg, PoseVLAConfig):
            cfg = PoseVLAConfig.from_yaml(cfg)
        pose_tok = pose_tok or PoseTokenizer(cfg.num_pose_bins).with_default_edges()
        tokenizer = build_offline_tokenizer(pose_tok)
        torch.manual_seed(seed)
        model = PoseVLAModel(cfg, len(tokenizer), token_id(tokenizer, IMAGE_TOKEN),
                             tokenizer.pad_token_id, io_width)
        dev, auto_dtype = select_device(device)
        return cls(cfg, model, tokenizer, pose_tok, norm or NormStats.identity(cfg.state_dim, cfg.action_dim),
                   dev, dtype or auto_dtype)

    @classmethod
    def from_paligemma(cls, paligemma_dir: str | Path, overrides: dict | None = None, device: str | None = None,
                       seed: int = 0, dtype: torch.dtype | None = None) -> PoseVLAPolicy:
        """Start from a stock PaliGemma directory on disk (e.g. paligemma-3b-pt-224): its vision tower, projector
        and language model are loaded; pose tokens, geometry embeddings and the action expert are added
        (geometry zero-initialised, so the VLM's outputs are unchanged until trained)."""
        from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

        path = Path(paligemma_dir)
        try:
            pg_cfg = PaliGemmaConfig.from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a local PaliGemma directory: {exc}") from exc
        v: Any = pg_cfg.vision_config
        t: Any = pg_cfg.text_config
        cfg = PoseVLAConfig.from_dict({
            "image_size": v.image_size, "patch_size": v.patch_size,
            "vision": {k: getattr(v, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads")},
            "text": {k: getattr(t, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                "num_attention_heads", "num_key_value_heads", "head_dim")},
            **(overrides or {})}, str(path))
        pose_tok = PoseTokenizer(cfg.num_pose_bins).with_default_edges()
        extend_tokenizer(tokenizer, pose_tok)
        pg = PaliGemmaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        # PaliGemma uses SigLIP's token outputs; a pooling head, if the checkpoint has one, is unused.
        state = {k: v for k, v in pg.model.state_dict().items() if not k.startswith("vision_tower.head.")}
        emb_key = "language_model.embed_tokens.weight"
        old = state[emb_key]
        vocab = max(len(tokenizer), old.shape[0])
        torch.manual_seed(seed)
        model = PoseVLAModel(cfg, vocab, pg_cfg.image_token_id, tokenizer.pad_token_id)
        state[emb_key] = _extend_rows(old, vocab)
        missing, unexpected = model.vlm.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: PaliGemma weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        dev, auto_dtype = select_device(device)
        return cls(cfg, model, tokenizer, pose_tok, NormStats.identity(cfg.state_dim, cfg.action_dim), dev,
                   dtype or auto_dtype)

    @classmethod
    def from_pi0(cls, pi0_dir: str | Path, config: PoseVLAConfig | str | Path | None = None,
                 tokenizer: str | Path | None = None, device: str | None = None, dtype: torch.dtype | None = None,
                 seed: int = 0) -> PoseVLAPolicy:
        """Start from a pi0 checkpoint directory: transformers format (`config.json` with model_type pi0 +
        model.safetensors) or LeRobot format (keys paligemma_with_expert.*; `config.json` with type pi0).

        Sizes: from the transformers config, or for LeRobot files (whose config names variants, not sizes) from
        `config` (default models/posevla_3b.yaml, which has pi0's sizes); every tensor's shape is checked. The
        state/action projections keep the checkpoint's width (32 for pi0), pose-token rows are appended to the
        embedding table (mean + small noise), the geometry embeddings start at zero output, the expert's unused
        word embedding is dropped. Built on the meta device: no random copy of the model is materialised.
        tokenizer: a PaliGemma tokenizer directory when pi0_dir has none."""
        import json

        from posevla.model.geometry_embed import GeometryEmbedding

        path = Path(pi0_dir)
        if not path.is_dir():
            raise ValueError(f"pi0 checkpoint {path} is not a directory")
        state, fmt = ckpt.pi0_state_dict(path)
        source = path / "config.json" if fmt == "transformers" else (
            config if config is not None and not isinstance(config, PoseVLAConfig) else
            "the given model config" if config is not None else "models/posevla_3b.yaml")
        if config is None:
            from posevla.paths import default_path

            config = default_path("models", "posevla_3b.yaml")
        cfg = config if isinstance(config, PoseVLAConfig) else PoseVLAConfig.from_yaml(config)
        if fmt == "transformers":
            try:
                meta = json.loads((path / "config.json").read_text())
                v, t, e = meta["vlm_config"]["vision_config"], meta["vlm_config"]["text_config"], meta["dit_config"]
                d = cfg.to_dict()
                d.update(image_size=v["image_size"], patch_size=v["patch_size"],
                         vision={k: v[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads")},
                         text={k: t[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads", "num_key_value_heads", "head_dim")},
                         expert={k: e[k] for k in ("hidden_size", "intermediate_size")})
                cfg = PoseVLAConfig.from_dict(d, str(path / "config.json"))
            except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path / 'config.json'}: not a transformers PI0 config ({exc!r})") from exc
        tok_dir = Path(tokenizer) if tokenizer else path
        try:
            tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"no tokenizer in {tok_dir} (pass a PaliGemma tokenizer directory): {exc}") from exc
        pose_tok = PoseTokenizer(cfg.num_pose_bins).with_default_edges()
        extend_tokenizer(tok, pose_tok)
        for key in (ckpt.EMBED_KEY, "pi0.embed_action_time.action_in_proj.weight"):
            if key not in state:
                raise ValueError(f"pi0 checkpoint {path}: no tensor {key}")
        vocab = max(len(tok), state[ckpt.EMBED_KEY].shape[0])
        torch.manual_seed(seed)
        state[ckpt.EMBED_KEY] = _extend_rows(state[ckpt.EMBED_KEY], vocab)
        io_width = state["pi0.embed_action_time.action_in_proj.weight"].shape[1]
        with torch.device("meta"):
            model = PoseVLAModel(cfg, vocab, token_id(tok, IMAGE_TOKEN), tok.pad_token_id, io_width)
        model.geometry = GeometryEmbedding(cfg.patch_size, int(cfg.vision["hidden_size"]))  # new: zero output
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("geometry.")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"pi0 checkpoint {path} ({fmt} format) does not fit: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, tensor in state.items():
            if tensor.shape != own[name].shape:
                raise ValueError(f"pi0 checkpoint {path}: tensor {name} has shape {tuple(tensor.shape)}, the model "
                                 f"config expects {tuple(own[name].shape)} (sizes from {source})")
        model.load_state_dict(state, strict=False, assign=True)
        materialize_buffers(model)
        dev, auto_dtype = select_device(device)
        return cls(cfg, model, tok, pose_tok, NormStats.identity(cfg.state_dim, cfg.action_dim), dev,
                   dtype or auto_dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, compile: bool = False,
                        dtype: torch.dtype | None = None) -> PoseVLAPolicy:
        """Load a Pose-VLA checkpoint directory (see checkpoint.py). The model is built on the meta device and the
        weights are assigned from the file, so no random copy is ever materialised."""
        path = Path(path)
        ckpt.check_directory(path)
        cfg = PoseVLAConfig.from_yaml(path / ckpt.CONFIG)
        pose_tok = PoseTokenizer.load(path / ckpt.POSE_BINS)
        if pose_tok.num_bins != cfg.num_pose_bins:
            raise ValueError(f"{path / ckpt.POSE_BINS}: num_bins={pose_tok.num_bins} but config says "
                             f"{cfg.num_pose_bins}")
        norm = NormStats.load(path / ckpt.NORM_STATS, cfg.state_dim, cfg.action_dim)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path / ckpt.TOKENIZER, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"tokenizer {path / ckpt.TOKENIZER} cannot be loaded: {exc}") from exc
        image_id = token_id(tokenizer, IMAGE_TOKEN)
        from safetensors import safe_open

        try:
            with safe_open(str(path / ckpt.WEIGHTS), "pt") as f:
                vocab = f.get_slice("pi0.model.vlm.language_model.embed_tokens.weight").get_shape()[0]
                io_width = f.get_slice("pi0.embed_action_time.action_in_proj.weight").get_shape()[1]
        except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
            raise ValueError(f"checkpoint weights {path / ckpt.WEIGHTS} are corrupt or unreadable: {exc}") from exc
        with torch.device("meta"):
            model = PoseVLAModel(cfg, vocab, image_id, tokenizer.pad_token_id, io_width)
        ckpt.load_weights(model, path / ckpt.WEIGHTS, assign=True)
        materialize_buffers(model)
        dev, auto_dtype = select_device(device)
        policy = cls(cfg, model, tokenizer, pose_tok, norm, dev, dtype or auto_dtype)
        if compile:
            policy.model.pi0 = torch.compile(policy.model.pi0)  # type: ignore[assignment]  # a compiled module
        return policy

    def save_pretrained(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a checkpoint directory; state_dict replaces the model's own (the trainer passes LoRA-merged weights)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.to_yaml(path / ckpt.CONFIG)
        ckpt.save_weights(self.model, path / ckpt.WEIGHTS, state_dict)
        self.pose_tokenizer.save(path / ckpt.POSE_BINS)
        self.norm.save(path / ckpt.NORM_STATS)
        self.tokenizer.save_pretrained(path / ckpt.TOKENIZER)
        return path

    def set_norm_stats(self, norm: NormStats) -> None:
        self.norm = norm
        self.batcher.norm = norm

    # ------------------------------------------------------------------ inference
    def make_batch(self, samples: list[TrainingSample]) -> dict[str, torch.Tensor]:
        return Batcher.to_torch(self.batcher.collate(samples), self.device, self.dtype)

    def _noise(self, batch: int, seed: int | None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        shape = (batch, self.config.chunk_length, self.config.action_dim)
        return (torch.randn(shape, generator=gen) * self.flow_noise_scale).to(self.device, self.dtype)

    @torch.inference_mode()
    def predict(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None,
                reuse_prefix_cache: bool = True) -> ActionChunk:
        """One action chunk for one observation, in the reference view's optical frame."""
        if modalities not in MODALITIES:
            raise ValueError(f"modalities={modalities!r} must be one of {MODALITIES}")
        t0 = time.perf_counter()
        arrays = self.batcher.observation_arrays([observation])
        batch = Batcher.to_torch(arrays, self.device, self.dtype)
        t1 = time.perf_counter()
        sampled = self.model.sample_actions(batch, self._noise(1, noise_seed), modalities=modalities,
                                            reuse_prefix_cache=reuse_prefix_cache)
        actions = sampled[0].float().cpu().numpy()
        t2 = time.perf_counter()
        if not np.all(np.isfinite(actions)):
            raise ValueError("model produced NaN or inf actions")
        chunk = self.outputs(self.norm.unnormalize_action(actions.astype(np.float64)), observation)
        self.last_timing = {"preprocess_s": t1 - t0, "model_s": t2 - t1, "postprocess_s": time.perf_counter() - t2}
        return chunk

    @torch.inference_mode()
    def predict_poses(self, observation: Observation, max_new_tokens: int = 64, modalities: str = "full"
                      ) -> tuple[str, list[PoseTuple]]:
        """Greedy pose-sequence decoding: the raw text and the tuples that parse (malformed ones are dropped)."""
        batch = Batcher.to_torch(self.batcher.observation_arrays([observation]), self.device, self.dtype)
        ids = self.model.generate(batch, max_new_tokens, self.tokenizer.eos_token_id, modalities)[0].tolist()
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        text = self.tokenizer.decode(ids)
        tuples, _errors = parse_tuples_lenient(text, self.pose_tokenizer)
        return text, tuples

    def warmup(self) -> float:
        """Run the model once on a synthetic observation so the first real call is not slow. Returns seconds."""
        t0 = time.perf_counter()
        self.predict(self.synthetic_observation(), noise_seed=0)
        return time.perf_counter() - t0

    def synthetic_observation(self, instruction: str = "warm up") -> Observation:
        """A well-formed observation of the model's size (for warm-up and benchmarks)."""
        from posevla.geometry.intrinsics import CameraIntrinsics
        from posevla.geometry.raymap import raymap

        s = self.config.image_size
        intr = CameraIntrinsics(s * 0.9, s * 0.9, (s - 1) / 2, (s - 1) / 2, s, s)
        rng = np.random.default_rng(0)
        views = {}
        for name in self.config.views:
            depth = np.stack([rng.uniform(0.3, 1.5, (s, s)), np.ones((s, s))], -1).astype(np.float32)
            views[name] = ModelView(name, rng.integers(0, 255, (s, s, 3), dtype=np.uint8), raymap(intr), depth, intr,
                                    f"{name}_camera_color_optical_frame", 0, np.eye(4))
        arms = {a: ArmState(np.eye(4), np.zeros(6), 0.5, 0) for a in self.config.arms}
        return Observation(views, RobotState(arms, 0), instruction, 0)
