"""The Pose-VLA network: PaliGemma (SigLIP + Gemma) with geometry priors, plus a pi0-style action expert.

Built on transformers' native `PI0ForConditionalGeneration`: its VLM is a PaliGemmaModel and its expert
("dit") is a smaller Gemma whose layers attend to the VLM's per-layer keys/values of the prefix through
the KV cache (pi0's shared self-attention: the prefix is bidirectional, the state token and the action
tokens attend to the prefix, actions bidirectionally among themselves). We add only what it lacks:

1. `embed_prefix`: SigLIP tokens + geometry priors (added at the SigLIP output) -> projector, for 1-3 views
   with a per-view mask, followed by the prompt embeddings.
2. `ntp_loss` / `generate`: next-token prediction over pose-token sequences with prefix-LM masking
   (image + prompt bidirectional, answer causal), logits from the tied input embeddings.
3. `flow_loss` / `sample_actions`: flow matching (pi0 conventions: x_t = t*noise + (1-t)*actions,
   target velocity noise - actions, t ~ Beta(1.5, 1), Euler from t=1 to 0) with the prefix KV cache
   computed once and reused across steps (or recomputed each step, for the benchmark).

Forward pass, top to bottom: images -> vision tower -> (+ geometry) -> projector -> [image | prompt] embeds
-> Gemma with cache -> expert over [state | noisy actions + time] -> velocity -> Euler steps.

Precision: the frequencies of RoPE and of the flow-time embedding and Gemma's embedding scale are fp32 buffers
that `.to(torch.bfloat16)` leaves in fp32 (`keep_fp32_buffers`), so a model cast for bf16 inference computes
positions and times exactly as the fp32 model it was trained as. Training keeps fp32 parameters and runs under
bf16 autocast (see posevla.training.train).

State/action width: the expert's state and action projections may be wider than the robot's vectors (pi0's
checkpoints use 32); state, actions and flow noise are zero-padded to that width (in training and at inference
alike), the prediction is cut back, and the loss covers the robot's dimensions only. The expert's word embedding is never used (it only reads embeddings) and is removed.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F
from transformers import PI0Config, PI0ForConditionalGeneration
from transformers.models.gemma.modeling_gemma import GemmaRotaryEmbedding, GemmaTextScaledWordEmbedding
from transformers.models.pi0.modeling_pi0 import PI0TimestepEmbeddings

from posevla.model.config import PoseVLAConfig
from posevla.model.geometry_embed import GeometryEmbedding, modality_keep_masks, view_keep_mask


# ------------------------------------------------------------------ fp32 buffers
def _fp32_masters(module: nn.Module) -> dict[str, torch.Tensor]:
    """Freshly computed fp32 values of the precision-critical buffers of one module ({} for other modules)."""
    with torch.device("cpu"):
        if isinstance(module, GemmaRotaryEmbedding):
            if module.rope_type == "default":
                inv_freq, _ = module.compute_default_rope_parameters(module.config)
            else:  # scaled RoPE variants: the module's own value (built in fp32 at construction)
                inv_freq = module.original_inv_freq.detach().to("cpu", torch.float32)
            return {"inv_freq": inv_freq.float(), "original_inv_freq": inv_freq.float().clone()}
        if isinstance(module, PI0TimestepEmbeddings):
            return {"sinusoid_freq": PI0TimestepEmbeddings.compute_freqs(module.config).float()}
        if isinstance(module, GemmaTextScaledWordEmbedding):
            return {"embed_scale": torch.tensor(float(module.scalar_embed_scale), dtype=torch.float32)}
    return {}


class _KeepFP32Buffers:
    """Mixin: after any `.to()/.half()/.bfloat16()` (all go through `_apply`), the listed buffers are reset to
    their fp32 master values on the new device, never to a rounded copy."""

    _fp32_master: dict[str, torch.Tensor]

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - torch's signature
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        for name, master in self._fp32_master.items():
            buf = self._buffers.get(name)  # type: ignore[attr-defined]
            if buf is not None and buf.device.type != "meta":
                self._buffers[name] = master.to(buf.device)  # type: ignore[attr-defined]
        return out


class FP32GemmaRotaryEmbedding(_KeepFP32Buffers, GemmaRotaryEmbedding):
    """GemmaRotaryEmbedding whose inverse frequencies stay fp32."""


class FP32PI0TimestepEmbeddings(_KeepFP32Buffers, PI0TimestepEmbeddings):
    """PI0's flow-time embedding whose sinusoid frequencies stay fp32."""


class FP32GemmaTextScaledWordEmbedding(_KeepFP32Buffers, GemmaTextScaledWordEmbedding):
    """Gemma's word embedding whose scale sqrt(hidden) stays fp32."""


# module-level classes (picklable); other subclasses get one made on first use
_FP32_CLASSES: dict[type, type] = {GemmaRotaryEmbedding: FP32GemmaRotaryEmbedding,
                                   PI0TimestepEmbeddings: FP32PI0TimestepEmbeddings,
                                   GemmaTextScaledWordEmbedding: FP32GemmaTextScaledWordEmbedding}


def keep_fp32_buffers(root: nn.Module) -> list[str]:
    """Make RoPE / time-embedding frequencies and embedding scales immune to dtype casts; returns their names."""
    names = []
    for prefix, module in root.named_modules():
        masters = _fp32_masters(module)
        if not masters:
            continue
        cls = type(module)
        if not issubclass(cls, _KeepFP32Buffers):
            if cls not in _FP32_CLASSES:
                _FP32_CLASSES[cls] = type(f"FP32Buffers{cls.__name__}", (_KeepFP32Buffers, cls), {})
            module.__class__ = _FP32_CLASSES[cls]
        module._fp32_master = masters
        for name, master in masters.items():
            buf = module._buffers.get(name)
            if buf is not None and buf.device.type != "meta":
                module._buffers[name] = master.to(buf.device)
            names.append(f"{prefix}.{name}" if prefix else name)
    return names


def materialize_buffers(root: nn.Module, device: torch.device | str = "cpu") -> None:
    """After building on the meta device and loading parameters with assign=True, give the non-persistent buffers
    (not in any checkpoint) their values: fp32 masters, SigLIP's position ids. Any other meta tensor is an error."""
    for prefix, module in root.named_modules():
        masters = getattr(module, "_fp32_master", {})
        for name, buf in list(module._buffers.items()):
            if buf is None or buf.device.type != "meta":
                continue
            if name in masters:
                module._buffers[name] = masters[name].to(device)
            elif name == "position_ids":
                module._buffers[name] = torch.arange(buf.shape[-1], device=device).expand(buf.shape).contiguous()
            else:
                raise ValueError(f"buffer {prefix}.{name} is still on the meta device after loading")
    left = [n for n, p in root.named_parameters() if p.device.type == "meta"]
    if left:
        raise ValueError(f"parameters not loaded from the checkpoint: {left[:5]}{'...' if len(left) > 5 else ''}")


def build_pi0_config(cfg: PoseVLAConfig, vocab_size: int, image_token_id: int, io_width: int | None = None
                     ) -> PI0Config:
    text = dict(cfg.text)
    expert = dict(cfg.expert)
    # The expert attends to the VLM's cached keys/values layer by layer: same depth and attention geometry.
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
        expert[key] = text[key]
    expert.setdefault("intermediate_size", 4 * expert["hidden_size"])
    vision = {"model_type": "siglip_vision_model", "image_size": cfg.image_size, "patch_size": cfg.patch_size,
              "vision_use_head": False, **cfg.vision}
    vlm = {"model_type": "paligemma", "text_config": {"model_type": "gemma", "vocab_size": vocab_size, **text},
           "vision_config": vision, "projection_dim": text["hidden_size"], "image_token_id": image_token_id}
    width = io_width or max(cfg.state_dim, cfg.action_dim)
    if width < max(cfg.state_dim, cfg.action_dim):
        raise ValueError(f"state/action width {width} is narrower than the robot's {max(cfg.state_dim, cfg.action_dim)}")
    pi0 = PI0Config(vlm_config=vlm, dit_config={"model_type": "gemma", "vocab_size": vocab_size, **expert},
                    chunk_size=cfg.chunk_length, max_state_dim=width, max_action_dim=width,
                    num_inference_steps=cfg.flow_steps)
    dit: Any = pi0.dit_config
    dit.vocab_size = 1  # the expert reads embeddings only: no (vocab x hidden) table is built for it
    return pi0


class PoseVLAModel(nn.Module):
    """Pure model: tensors in, tensors out. Knows nothing of robots (see io_transforms for that)."""

    def __init__(self, cfg: PoseVLAConfig, vocab_size: int, image_token_id: int, pad_token_id: int,
                 io_width: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_token_id = pad_token_id
        self.pi0 = PI0ForConditionalGeneration(build_pi0_config(cfg, vocab_size, image_token_id, io_width))
        self.pi0.model.dit.embed_tokens = None  # unused: the expert is fed embeddings, never token ids
        self.geometry = GeometryEmbedding(cfg.patch_size, int(cfg.vision["hidden_size"]))
        self.fp32_buffers = keep_fp32_buffers(self)

    @property
    def vlm(self) -> Any:  # transformers' PaliGemma model (Any: nn.Module.__getattr__ types submodules loosely)
        return self.pi0.model.vlm

    @property
    def io_width(self) -> int:
        """Width of the expert's state/action projections (>= the robot's action_dim; pi0 checkpoints: 32)."""
        return int(self.pi0.config.max_action_dim)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the last dimension to io_width."""
        extra = self.io_width - x.shape[-1]
        return F.pad(x, (0, extra)) if extra > 0 else x

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them: every SigLIP encoder layer
        (transformers' own checkpointing) and the MLP of every Gemma layer of the VLM and the expert (the largest
        activations: 8x the width). Gemma's attention stays outside: it writes the KV cache shared by the VLM and
        the expert, which a recomputation would write twice (transformers turns the cache off instead)."""
        tower = self.vlm.vision_tower
        if hasattr(tower, "activation_checkpointing_enable"):  # transformers >= 5.x name
            tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pi0: Any = self.pi0
        for layers in (self.vlm.language_model.layers, pi0.model.dit.layers):
            for layer in layers:
                mlp = layer.mlp
                if getattr(mlp, "_posevla_checkpointed", False):
                    continue

                def forward(x: torch.Tensor, _inner=mlp.forward, _mlp=mlp) -> torch.Tensor:
                    if _mlp.training and torch.is_grad_enabled():
                        return torch.utils.checkpoint.checkpoint(_inner, x, use_reentrant=False)
                    return _inner(x)

                mlp.forward = forward
                mlp._posevla_checkpointed = True

    # ------------------------------------------------------------------ prefix
    def embed_images(self, pixel_values: torch.Tensor, raymaps: torch.Tensor, depth_priors: torch.Tensor,
                     modalities: str | None = None) -> torch.Tensor:
        """(B, V, 3|3|2, S, S) -> (B, V * tokens_per_view, D_text) image tokens with geometry priors."""
        b, v = pixel_values.shape[:2]
        vis = self.vlm.vision_tower(pixel_values.flatten(0, 1)).last_hidden_state  # (B*V, n, Dv)
        keep_ray, keep_depth = modality_keep_masks(b, modalities, self.cfg.p_drop_ray, self.cfg.p_drop_depth,
                                                   self.training, pixel_values.device)
        keep_ray = keep_ray.to(vis.dtype).repeat_interleave(v)[:, None, None, None]
        keep_depth = keep_depth.to(vis.dtype).repeat_interleave(v)[:, None, None, None]
        if self.training or keep_ray.any() or keep_depth.any():  # training: same graph every step (DDP)
            vis = vis + self.geometry(raymaps.flatten(0, 1).to(vis.dtype) * keep_ray,
                                      depth_priors.flatten(0, 1).to(vis.dtype) * keep_depth)
        img = self.vlm.multi_modal_projector(vis)
        return img.reshape(b, v * img.shape[1], img.shape[2])

    def embed_prefix(self, batch: dict[str, torch.Tensor], text_ids: torch.Tensor, text_mask: torch.Tensor,
                     modalities: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[image tokens of every view | text] embeddings and their 2D attention mask (1 = attend)."""
        img = self.embed_images(batch["pixel_values"], batch["raymaps"], batch["depth_priors"], modalities)
        n = self.cfg.tokens_per_view
        view_mask = batch["view_mask"].to(text_mask.dtype)
        if self.training and self.cfg.p_drop_view:
            view_mask = view_mask * view_keep_mask(view_mask.shape[0], self.cfg.views, self.cfg.p_drop_view,
                                                   view_mask.device).to(view_mask.dtype)
        img_mask = view_mask.repeat_interleave(n, dim=1)
        txt = self.vlm.get_input_embeddings()(text_ids).to(img.dtype)
        return torch.cat([img, txt], dim=1), torch.cat([img_mask, text_mask], dim=1)

    def prefix_cache(self, embeds: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(mask)
        out = self.vlm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                       token_type_ids=token_type_ids, use_cache=True)
        return out

    # ------------------------------------------------------------------ next-token prediction
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head tied to the input embeddings (as PaliGemma's)."""
        return F.linear(hidden, self.vlm.get_input_embeddings().weight)

    def ntp_loss(self, batch: dict[str, torch.Tensor], modalities: str | None = None) -> torch.Tensor:
        """Cross-entropy over the answer tokens (loss_mask) of [images | prompt + answer], prefix-LM masked."""
        ids, mask = batch["ntp_ids"], batch["ntp_mask"]
        embeds, full_mask = self.embed_prefix(batch, ids, mask, modalities)
        n_img = embeds.shape[1] - ids.shape[1]
        types = torch.cat([torch.zeros_like(full_mask[:, :n_img]), batch["ntp_token_types"]], dim=1)
        hidden = self.prefix_cache(embeds, full_mask, types).last_hidden_state[:, n_img:]
        logits = self.logits(hidden[:, :-1]).float()
        target = ids[:, 1:]
        weight = batch["ntp_loss_mask"][:, 1:].float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        return (ce * weight.reshape(-1)).sum() / weight.sum().clamp(min=1.0)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int, eos_token_id: int,
                 modalities: str | None = None) -> torch.Tensor:
        """Greedy decoding of the answer after [images | prompt]. Returns (B, <= max_new_tokens) token ids."""
        embeds, mask = self.embed_prefix(batch, batch["prompt_ids"], batch["prompt_mask"], modalities)
        out = self.prefix_cache(embeds, mask)
        # the last real (unpadded) token of each row predicts the first answer token
        last_index = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        cache, last = _kv_cache(out), out.last_hidden_state[torch.arange(mask.shape[0]), last_index]
        tokens, done = [], torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        pos = mask.sum(-1, keepdim=True)
        for _ in range(max_new_tokens):
            nxt = self.logits(last).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            tokens.append(nxt)
            done |= nxt == eos_token_id
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            emb = self.vlm.get_input_embeddings()(nxt[:, None]).to(embeds.dtype)
            step = self.vlm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, **_cache_kw(self.vlm, cache),
                            token_type_ids=torch.ones_like(pos), use_cache=True)
            cache, last, pos = _kv_cache(step), step.last_hidden_state[:, -1], pos + 1
        return torch.stack(tokens, dim=1)

    # ------------------------------------------------------------------ flow matching
    def flow_loss(self, batch: dict[str, torch.Tensor], modalities: str | None = None,
                  noise: torch.Tensor | None = None, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """MSE between predicted and target velocity over the robot's action dimensions; noise and timestep are
        sampled pi0-style (noise ~ N(0, I), t = 0.001 + 0.999 * Beta(1.5, 1)) unless given; (B, chunk, action_dim)."""
        embeds, mask = self.embed_prefix(batch, batch["prompt_ids"], batch["prompt_mask"], modalities)
        cache = _kv_cache(self.prefix_cache(embeds, mask))
        actions = batch["actions"].float()
        b, n, a = actions.shape
        c = self.pi0.config
        if timestep is None:
            beta = torch.distributions.Beta(torch.tensor(c.time_sampling_beta_alpha), torch.tensor(c.time_sampling_beta_beta))
            timestep = beta.sample((b,)).to(actions.device) * c.time_sampling_scale + c.time_sampling_offset
        timestep = timestep.float()
        if noise is None:
            noise = torch.randn(b, n, a, device=actions.device)
        noise = self._pad(noise.float())
        t = timestep[:, None, None]
        x_t = t * noise + (1 - t) * self._pad(actions)
        state = batch["state"].float()
        if self.training and self.cfg.p_drop_state > 0:  # state dropout: hidden rows read the data mean (0)
            keep = (torch.rand(b, device=state.device) >= self.cfg.p_drop_state).float()[:, None]
            state = state * keep
        out = self.pi0(state=self._pad(state).to(embeds.dtype), noise=x_t.to(embeds.dtype),
                       timestep=timestep, attention_mask=mask, **_cache_kw(self.pi0, cache))
        target = (noise - self._pad(actions))[..., :a]
        return F.mse_loss(out.logits[..., :a].float(), target)

    @torch.no_grad()
    def sample_actions(self, batch: dict[str, torch.Tensor], noise: torch.Tensor, num_steps: int | None = None,
                       modalities: str | None = None, reuse_prefix_cache: bool = True) -> torch.Tensor:
        """Euler integration of the learned velocity from t=1 (noise) to t=0.

        noise: (B, chunk, action_dim) (zero-padded to io_width); returns fp32 (B, chunk, action_dim). The Euler
        state is integrated in fp32 whatever the model's dtype (bf16 would round it by 0.4 % per step)."""
        steps = num_steps or self.cfg.flow_steps
        embeds, mask = self.embed_prefix(batch, batch["prompt_ids"], batch["prompt_mask"], modalities)
        state = self._pad(batch["state"]).to(embeds.dtype)
        x = self._pad(noise).float()
        cache = _kv_cache(self.prefix_cache(embeds, mask))
        prefix_len = cache.get_seq_length()
        dt = -1.0 / steps
        for k in range(steps):
            t = torch.full((x.shape[0],), 1.0 + k * dt, dtype=torch.float32, device=x.device)
            if not reuse_prefix_cache and k > 0:
                embeds, mask = self.embed_prefix(batch, batch["prompt_ids"], batch["prompt_mask"], modalities)
                cache = _kv_cache(self.prefix_cache(embeds, mask))
            out = self.pi0(state=state, noise=x.to(embeds.dtype), timestep=t, attention_mask=mask,
                           **_cache_kw(self.pi0, cache))
            cache.crop(prefix_len - cache.get_seq_length())  # drop the expert's keys/values: the next step attends to the prefix only
            x = x + dt * out.logits.float()
        return x[..., :self.cfg.action_dim]

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training objective: flow matching on actions and/or NTP on pose sequences, whichever the batch has."""
        losses: dict[str, torch.Tensor] = {}
        total: torch.Tensor | float = 0.0
        if "actions" in batch:
            losses["fm_loss"] = self.flow_loss(batch)
            total = total + self.cfg.flow_weight * losses["fm_loss"]
        if "ntp_ids" in batch:
            losses["ntp_loss"] = self.ntp_loss(batch)
            total = total + self.cfg.ntp_weight * losses["ntp_loss"]
        if not losses:
            raise ValueError("batch has neither 'actions' nor 'ntp_ids': nothing to train on")
        assert isinstance(total, torch.Tensor)  # at least one loss was added
        losses["loss"] = total
        return losses

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.compute_loss(batch)


def _cache_kw(module: nn.Module, cache) -> dict:
    """The KV-cache keyword of a transformers module: `cache` in newer 5.x releases, `past_key_values` before."""
    name = _CACHE_KW.get(type(module))
    if name is None:
        params = inspect.signature(type(module).forward).parameters
        name = _CACHE_KW[type(module)] = "cache" if "cache" in params else "past_key_values"
    return {name: cache}


_CACHE_KW: dict[type, str] = {}


def _kv_cache(out):
    """The KV cache of a transformers model output: `cache` in newer 5.x releases, `past_key_values` before."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache
