"""Pose-VLA's flow sampler written against a static, preallocated KV cache: the graph-friendly inference path.

The eager reference is `PoseVLAModel.sample_actions` (transformers' dynamic cache: `torch.cat` on every
update, `crop` after every flow step). Here every tensor has a shape fixed by `StaticShape` (batch, number
of present views, prompt bucket), so the same code runs eagerly on the CPU, is captured as CUDA graphs
(`torch_graphs` engine) and is exported to ONNX (`onnxruntime` engine). It reads the weights of the
transformers modules inside `PoseVLAModel` (no copy, no hook in network.py) and re-states only their
forward passes:

  prefix:  views -> SigLIP (+ geometry priors) -> projector -> [image | prompt] -> Gemma layers; each layer's
           keys/values (after RoPE) are written into the cache slots [0, prefix_len). The last layer's
           attention and MLP are skipped: nothing reads the prefix's final hidden states when sampling.
  expert:  [state | noisy actions + time] -> expert Gemma layers; each layer writes its keys/values into the
           cache slots [prefix_len, prefix_len + 1 + chunk) and attends over the whole cache with a fixed
           mask (prefix bidirectional over valid keys; the state token sees prefix + itself; action tokens
           see everything), exactly pi0's block mask.
  sample:  Euler from t=1 to t=0 with the time grid and step sizes as tensors (graph inputs), x kept in fp32.

Numerics: RoPE inverse frequencies and the sinusoidal time frequencies are computed here in fp32 from the
transformers config (the same functions transformers uses), so a bf16 model never rounds them.

Absent views are dropped rather than masked: the eager path gives their tokens mask 0, so they neither
attend nor are attended to nor advance positions; removing them gives the same result with fewer tokens.
A prompt is right-padded to its bucket with mask 0, which leaves positions and attention of the real
tokens unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.gemma.modeling_gemma import GemmaRotaryEmbedding
from transformers.models.pi0.modeling_pi0 import PI0TimestepEmbeddings

from posevla.model.network import PoseVLAModel

HFModule = Any  # a transformers submodule: its attributes are submodules (nn.Module.__getattr__ types them loosely)

# how the expert's flow step attends over the cache (fused path): "sdpa" = F.scaled_dot_product_attention (one fused
# kernel; few thread blocks for ~400 folded query rows), "matmul" = scores as one batched GEMM with fp32 output
# (bias added in the GEMM), fp32 softmax, one GEMM with the values: more kernels, each spread over the whole GPU
ATTENTION = ("sdpa", "matmul")
KV_ALIGN = 16  # cache length is rounded up to this many slots (aligned rows for fused attention kernels)
PROMPT_BUCKET = 16  # prompt lengths are padded to a multiple of this many tokens


def round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def prompt_bucket(prompt_tokens: int, max_prompt_tokens: int) -> int:
    """Smallest multiple of PROMPT_BUCKET holding `prompt_tokens` (capped at the config's maximum, rounded up)."""
    if prompt_tokens < 1:
        raise ValueError(f"prompt has {prompt_tokens} tokens; at least <bos> is needed")
    cap = round_up(max_prompt_tokens, PROMPT_BUCKET)
    if prompt_tokens > cap:
        raise ValueError(f"prompt has {prompt_tokens} tokens, more than max_prompt_tokens={max_prompt_tokens}")
    return min(round_up(prompt_tokens, PROMPT_BUCKET), cap)


@dataclass(frozen=True)
class StaticShape:
    """Every size of one static instance. views = views present (1..len(config.views)); prompt = bucket."""

    batch: int
    views: int
    prompt: int
    tokens_per_view: int
    chunk: int

    @property
    def image_tokens(self) -> int:
        return self.views * self.tokens_per_view

    @property
    def prefix_len(self) -> int:
        return self.image_tokens + self.prompt

    @property
    def suffix_len(self) -> int:
        return 1 + self.chunk  # state token + action tokens

    @property
    def kv_len(self) -> int:
        return round_up(self.prefix_len + self.suffix_len, KV_ALIGN)


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last dimension to `width` (no-op when already that wide)."""
    extra = width - x.shape[-1]
    return F.pad(x, (0, extra)) if extra > 0 else x


def _addmm_rows(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight^T as one GEMM (the add in the epilogue); residual/x (..., in/out) row-major."""
    lead = residual.shape[:-1]
    out = torch.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), weight.t())
    return out.view(*lead, out.shape[-1])


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D); cos/sin (B, L, D) already in x's dtype (as transformers' Gemma)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class StaticPi0(nn.Module):
    """Prefix / expert step / sampler of a PoseVLAModel over a static KV cache. Holds no weights of its own."""

    rope_freq_prefix: torch.Tensor  # buffers (register_buffer in __init__)
    rope_freq_expert: torch.Tensor
    time_freq: torch.Tensor

    def __init__(self, model: PoseVLAModel, fused: bool = True, attention: str = "sdpa") -> None:
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention={attention!r} must be one of {list(ATTENTION)}")
        if attention != "sdpa" and not fused:
            raise ValueError(f"attention={attention!r} needs fused=True")
        self.model = model
        self.fused = fused
        self.attention = attention
        self._fp32_out_gemm = True  # baddbmm(..., out_dtype=float32) on bf16/fp16 CUDA inputs
        # transformers' submodules, typed as Any: nn.Module.__getattr__ gives `Tensor | Module` to a type checker
        pi0: Any = model.pi0
        vlm: Any = model.vlm
        self.vlm_layers: Any = vlm.language_model.layers
        self.expert: Any = pi0.model.dit
        self.time_embed: Any = pi0.embed_action_time
        self.action_out: Any = pi0.action_out_proj
        text_cfg: Any = vlm.language_model.config
        self.n_layers: int = text_cfg.num_hidden_layers
        self.n_heads: int = text_cfg.num_attention_heads
        self.n_kv: int = text_cfg.num_key_value_heads
        self.head_dim: int = text_cfg.head_dim
        self.chunk = model.cfg.chunk_length
        # the expert's state/action projections may be wider than the robot's vectors (zero-padded in, cut out)
        self.action_dim = model.cfg.action_dim
        self.io_state = self.time_embed.state_proj.in_features
        self.io_action = self.action_out.out_features
        # fp32 frequencies from the same functions transformers uses (one source of truth), never cast to bf16;
        # created on the model's device, so the wrapper never needs a .to() that would touch the model itself
        device = self.action_out.weight.device
        self.register_buffer("rope_freq_prefix", self._rope_freq(text_cfg).to(device), persistent=False)
        self.register_buffer("rope_freq_expert", self._rope_freq(self.expert.config).to(device), persistent=False)
        self.register_buffer("time_freq", PI0TimestepEmbeddings.compute_freqs(pi0.config).float().to(device),
                             persistent=False)
        # fused=True (the torch engines): fewer, larger kernels for a launch-bound loop. RMSNorm as one
        # F.rms_norm with Gemma's (1 + w) scale precomputed in fp32; the expert's q/k/v as one GEMM over
        # concatenated weights (expert only: ~90 MB at full size) with RoPE applied to q and k together.
        # fused=False (ONNX export): transformers' own modules, op for op. Inference only: the precomputed
        # tensors are snapshots of the weights when the engine is built.
        self._vlm_norms: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._exp_norms: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._exp_qkv: list[torch.Tensor] = []
        self._exp_gate_up: list[torch.Tensor] = []
        self._exp_final_norm: torch.Tensor | None = None
        self._residual_gemm = False
        if fused:
            with torch.no_grad():
                def scale(norm: HFModule) -> torch.Tensor:
                    return (1.0 + norm.weight.detach().float()).contiguous()

                self._vlm_norms = [(scale(la.input_layernorm), scale(la.post_attention_layernorm))
                                   for la in self.vlm_layers]
                self._exp_norms = [(scale(la.input_layernorm), scale(la.post_attention_layernorm))
                                   for la in self.expert.layers]
                self._exp_final_norm = scale(self.expert.norm)
                attns = [la.self_attn for la in self.expert.layers]
                if all(a.q_proj.bias is None and a.k_proj.bias is None and a.v_proj.bias is None for a in attns):
                    self._exp_qkv = [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0).detach()
                                     for a in attns]
                # the expert's gate and up projections as one GEMM (~300 MB extra at full size; the VLM's would
                # be 2.4 GB and its GEMMs are large enough already)
                mlps = [la.mlp for la in self.expert.layers]
                if all(m.gate_proj.bias is None and m.up_proj.bias is None for m in mlps):
                    self._exp_gate_up = [torch.cat([m.gate_proj.weight, m.up_proj.weight], 0).detach() for m in mlps]
                # o_proj / down_proj without bias: the residual add goes into the GEMM (addmm, beta=1)
                layers = list(self.vlm_layers) + list(self.expert.layers)
                self._residual_gemm = all(la.self_attn.o_proj.bias is None and la.mlp.down_proj.bias is None
                                          for la in layers)

    @staticmethod
    def _rope_freq(cfg) -> torch.Tensor:
        if cfg.rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(f"rope_type={cfg.rope_parameters['rope_type']!r}: the static engine implements 'default'")
        inv_freq, scaling = GemmaRotaryEmbedding.compute_default_rope_parameters(cfg)
        if scaling != 1.0:
            raise ValueError(f"RoPE attention scaling {scaling} != 1 is not implemented")
        return inv_freq.float()

    def _apply(self, fn, recurse=True):
        # keep the frequency buffers fp32 through .to(dtype)/.half()/.bfloat16(): only move their device
        frozen = {n: getattr(self, n) for n in ("rope_freq_prefix", "rope_freq_expert", "time_freq")}
        super()._apply(fn, recurse)
        for n, t in frozen.items():
            moved = fn(t)
            setattr(self, n, t.to(moved.device))
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.action_out.weight.dtype

    def shape(self, batch: int, views: int, prompt: int) -> StaticShape:
        return StaticShape(batch, views, prompt, self.model.cfg.tokens_per_view, self.chunk)

    def new_cache(self, shape: StaticShape, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Preallocated keys and values, (layers, B, kv_heads, kv_len, head_dim) each, zero-filled."""
        size = (self.n_layers, shape.batch, self.n_kv, shape.kv_len, self.head_dim)
        return (torch.zeros(size, dtype=self.dtype, device=device), torch.zeros(size, dtype=self.dtype, device=device))

    # ------------------------------------------------------------------ building blocks
    def _rope(self, positions: torch.Tensor, freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions[..., None].float() * freq  # fp32
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
        """q (B, H, Lq, D), k/v (B, H_kv, Lk, D), additive bias broadcastable to (B, H, Lq, Lk) -> (B, Lq, H*D)."""
        b, h_kv, lk, d = k.shape
        rep = self.n_heads // h_kv
        if rep > 1:
            k = k[:, :, None].expand(b, h_kv, rep, lk, d).reshape(b, h_kv * rep, lk, d)
            v = v[:, :, None].expand(b, h_kv, rep, lk, d).reshape(b, h_kv * rep, lk, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    def _qkv(self, layer: HFModule, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = layer.self_attn
        b, n, _ = h.shape
        q = attn.q_proj(h).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, n, -1, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    @staticmethod
    def _rms(norm: HFModule, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Gemma's RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w) in fp32, cast back (one op when scale is given)."""
        if scale is None:
            return norm(x)
        return F.rms_norm(x.float(), (x.shape[-1],), scale, norm.eps).to(x.dtype)

    def _qkv_fused(self, w_qkv: torch.Tensor, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, heads, L, D) from one GEMM; RoPE on q and k in one pass (same elementwise math)."""
        b, n, _ = h.shape
        nh, nkv = self.n_heads, self.n_kv
        qkv = F.linear(h, w_qkv).view(b, n, nh + 2 * nkv, self.head_dim)
        qk = qkv[:, :, :nh + nkv]
        qk = qk * cos[:, :, None] + rotate_half(qk) * sin[:, :, None]
        return (qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), qkv[:, :, nh + nkv:].transpose(1, 2))

    def _finish_layer(self, layer: HFModule, residual: torch.Tensor, attn_out: torch.Tensor,
                      post_scale: torch.Tensor | None = None, gate_up: torch.Tensor | None = None) -> torch.Tensor:
        """residual + o_proj(attn) + MLP(norm(.)). Fused path: both residual adds inside the GEMMs (addmm) and,
        with `gate_up` (concatenated weights), the gate and up projections as one GEMM."""
        if not self._residual_gemm:
            h = residual + layer.self_attn.o_proj(attn_out)
            return h + layer.mlp(self._rms(layer.post_attention_layernorm, h, post_scale))
        h = _addmm_rows(residual, attn_out, layer.self_attn.o_proj.weight)
        xn = self._rms(layer.post_attention_layernorm, h, post_scale)
        mlp = layer.mlp
        if gate_up is not None:
            gate, up = F.linear(xn, gate_up).chunk(2, dim=-1)
        else:
            gate, up = mlp.gate_proj(xn), mlp.up_proj(xn)
        return _addmm_rows(h, mlp.act_fn(gate) * up, mlp.down_proj.weight)

    @staticmethod
    def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) for `_rope_roll`: rotate_half(x) * sin == roll(x, D/2) * cat(-sin[:D/2], sin[D/2:])."""
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    @staticmethod
    def _rope_roll(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        """RoPE of x (B, L, heads, D) with (B, L, D) tables: 3 kernels (mul, roll, addcmul) instead of 6."""
        cos, sin_signed = cos[:, :, None], sin_signed[:, :, None]
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)

    def fold_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """Additive bias (B, 1, Lq, Lk) -> (B, 1, Lq * rep, Lk) for `_attend_folded` (row i * rep + r = query i)."""
        rep = self.n_heads // self.n_kv
        if bias.shape[-2] == 1 or rep == 1:
            return bias
        b, one, lq, lk = bias.shape  # expand + reshape: repeat_interleave may synchronise (not while capturing)
        return bias[:, :, :, None, :].expand(b, one, lq, rep, lk).reshape(b, one, lq * rep, lk)

    def bias_dtype(self) -> torch.dtype:
        """dtype of the expert's additive bias: the model's for SDPA, fp32 for the matmul attention (added to fp32
        scores)."""
        return torch.float32 if self.attention == "matmul" else self.dtype

    def _attend_matmul(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                       scale: float) -> torch.Tensor:
        """`_attend_folded` as GEMMs: fp32 scores = bias + scale * q k^T (bf16/fp16 inputs: cuBLAS with an fp32 output,
        as SDPA's kernels keep them), fp32 softmax, probabilities in the values' dtype (as the fused kernels round
        them) times v. bias: fp32, folded (B, 1, Lq * rep, Lk)."""
        b, lq, nh, d = q.shape
        h_kv, lk = k.shape[1], k.shape[2]
        rep = nh // h_kv
        qf = q.reshape(b, lq, h_kv, rep, d).permute(0, 2, 1, 3, 4).reshape(b * h_kv, lq * rep, d)
        kt = k.reshape(b * h_kv, lk, d).transpose(1, 2)
        bias = bias.expand(b, h_kv, lq * rep, lk).reshape(b * h_kv, lq * rep, lk)
        if q.dtype == torch.float32:
            scores = torch.baddbmm(bias, qf, kt, alpha=scale)
        elif q.is_cuda and self._fp32_out_gemm:
            try:
                scores = torch.baddbmm(bias, qf, kt, alpha=scale, out_dtype=torch.float32)
            except (RuntimeError, TypeError):  # a torch without it: upcast from now on (checked before any launch)
                self._fp32_out_gemm = False
                scores = torch.baddbmm(bias, qf.float(), kt.float(), alpha=scale)
        else:  # the low-precision GEMM with an fp32 output is CUDA only
            scores = torch.baddbmm(bias, qf.float(), kt.float(), alpha=scale)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.bmm(probs, v.reshape(b * h_kv, lk, d))
        return out.reshape(b, h_kv, lq, rep, d).permute(0, 2, 1, 3, 4).reshape(b, lq, nh * d)

    def _attend_folded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                       scale: float) -> torch.Tensor:
        """Grouped-query attention without repeating the keys/values: the query heads sharing one kv head are folded
        into the query rows. q (B, Lq, H, D) (token-major, as the projection writes it), k/v (B, H_kv, Lk, D),
        bias (B, 1, 1, Lk) or folded (B, 1, Lq * rep, Lk) -> (B, Lq, H * D). With one kv head (Gemma 2B, the
        expert) the folds are views, and the output needs no transpose."""
        b, lq, nh, d = q.shape
        h_kv = k.shape[1]
        rep = nh // h_kv
        qf = q.reshape(b, lq, h_kv, rep, d).permute(0, 2, 1, 3, 4).reshape(b, h_kv, lq * rep, d)
        out = F.scaled_dot_product_attention(qf, k, v, attn_mask=bias, scale=scale)
        return out.reshape(b, h_kv, lq, rep, d).permute(0, 2, 1, 3, 4).reshape(b, lq, nh * d)

    # ------------------------------------------------------------------ prefix
    def prefix_embeddings(self, pixels: torch.Tensor, raymaps: torch.Tensor, depth: torch.Tensor,
                          keep: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """(B, V, ...) present views only, keep (2,) = [ray, depth] factors in {0, 1}, prompt (B, P) -> (B, Lp, D)."""
        m = self.model
        b, nv = pixels.shape[:2]
        dtype = self.dtype
        vis = m.vlm.vision_tower(pixels.flatten(0, 1).to(dtype)).last_hidden_state
        keep = keep.to(dtype)
        vis = vis + m.geometry(raymaps.flatten(0, 1).to(dtype) * keep[0], depth.flatten(0, 1).to(dtype) * keep[1])
        img = m.vlm.multi_modal_projector(vis)
        img = img.reshape(b, nv * img.shape[1], img.shape[2])
        txt = m.vlm.get_input_embeddings()(prompt_ids).to(dtype)
        return torch.cat([img, txt], dim=1)

    def prefix_kv(self, embeds: torch.Tensor, key_valid: torch.Tensor,
                  write: Callable[[int, torch.Tensor, torch.Tensor], None]) -> None:
        """Run the VLM layers over the prefix; `write(layer, k, v)` stores each layer's keys/values (B, H_kv, Lp, D)."""
        dtype = embeds.dtype
        positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self._rope(positions, self.rope_freq_prefix, dtype)
        bias = torch.where(key_valid[:, None, None, :], 0.0, torch.finfo(dtype).min).to(dtype)
        h = embeds
        last = self.n_layers - 1
        if self.fused:
            cos, sin_s = self.rope_tables(cos, sin)
        for i, layer in enumerate(self.vlm_layers):
            s_in, s_post = self._vlm_norms[i] if self._vlm_norms else (None, None)
            x = self._rms(layer.input_layernorm, h, s_in)
            if self.fused:
                attn = layer.self_attn
                b, n, _ = x.shape
                q = self._rope_roll(attn.q_proj(x).view(b, n, self.n_heads, self.head_dim), cos, sin_s)
                k = self._rope_roll(attn.k_proj(x).view(b, n, self.n_kv, self.head_dim), cos, sin_s).transpose(1, 2)
                v = attn.v_proj(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
                write(i, k, v)
                if i == last:
                    break
                h = self._finish_layer(layer, h, self._attend_folded(q, k, v, bias, attn.scaling), s_post)
                continue
            q, k, v = self._qkv(layer, x, cos, sin)
            write(i, k, v)
            if i == last:
                break  # the prefix's last hidden states are never read
            h = self._finish_layer(layer, h, self._attend(q, k, v, bias, layer.self_attn.scaling), s_post)

    # ------------------------------------------------------------------ expert
    def suffix_layout(self, key_valid: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, 1+chunk) and additive bias (B, 1, 1+chunk, kv_len) of the expert's tokens."""
        b, lp = key_valid.shape
        dev, dtype = key_valid.device, self.dtype
        n_valid = key_valid.long().sum(-1, keepdim=True)
        positions = n_valid + torch.arange(1 + self.chunk, device=dev)[None]
        prefix_ok = key_valid[:, None, :].expand(b, 1 + self.chunk, lp)
        rows = torch.arange(1 + self.chunk, device=dev)
        cols = torch.arange(1 + self.chunk, device=dev)
        # the state token (row 0) sees itself only; action tokens (rows >= 1) see the state and all actions
        suffix_ok = ((rows[:, None] >= 1) | (cols[None, :] == 0))[None].expand(b, -1, -1)
        pad_ok = torch.zeros(b, 1 + self.chunk, kv_len - lp - 1 - self.chunk, dtype=torch.bool, device=dev)
        ok = torch.cat([prefix_ok, suffix_ok, pad_ok], dim=-1)
        bias = torch.where(ok[:, None], 0.0, torch.finfo(dtype).min).to(dtype)
        return positions, bias

    def suffix_embeddings(self, state: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """pi0's [state | action + time] embeddings with fp32 time frequencies. state (B, S), x (B, chunk, A), t (B,)."""
        te = self.time_embed
        dtype = self.dtype
        state_emb = te.state_proj(_pad_to(state, self.io_state).to(dtype))
        act_emb = te.action_in_proj(x.to(dtype))
        ang = self.time_freq[None, :] * t.float()[:, None]
        t_emb = torch.cat([ang.sin(), ang.cos()], dim=1)[:, None, :].expand_as(act_emb).to(dtype)
        at = te.action_time_mlp_out(F.silu(te.action_time_mlp_in(torch.cat([act_emb, t_emb], dim=2))))
        return torch.cat([state_emb[:, None, :], at], dim=1)

    def expert_velocity(self, state: torch.Tensor, x: torch.Tensor, t: torch.Tensor, positions: torch.Tensor,
                        bias: torch.Tensor,
                        kv: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                        rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One flow step's velocity (B, chunk, io_width), fp32. `kv(layer, k_suffix, v_suffix)` returns the layer's
        full keys/values (prefix + suffix + padding, length kv_len) - the static cache writes the suffix in place.
        rope: the suffix's (cos, sin), when precomputed once per chunk (they do not change between steps)."""
        h = self.suffix_embeddings(state, x, t)
        cos, sin = rope if rope is not None else self.expert_rope(positions)
        for i, layer in enumerate(self.expert.layers):
            s_in, s_post = self._exp_norms[i] if self._exp_norms else (None, None)
            xn = self._rms(layer.input_layernorm, h, s_in)
            if self._exp_qkv:
                q, k, v = self._qkv_fused(self._exp_qkv[i], xn, cos, sin)
            else:
                q, k, v = self._qkv(layer, xn, cos, sin)
            k_all, v_all = kv(i, k, v)
            h = self._finish_layer(layer, h, self._attend(q, k_all, v_all, bias, layer.self_attn.scaling), s_post)
        h = self._rms(self.expert.norm, h, self._exp_final_norm)
        return self.action_out(h[:, -self.chunk:]).float()

    def chunk_constants(self, state: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the fused flow step would otherwise recompute every step: the state token's embedding (B, 1, W) and,
        per step k, the time half of action_time_mlp_in applied to the fp32 sinusoid of t_k plus its bias
        (steps, B, 1, W): mlp_in([a | t]) = a W_a^T + (t W_t^T + b)."""
        te = self.time_embed
        dtype = self.dtype
        state_emb = te.state_proj(_pad_to(state, self.io_state).to(dtype))[:, None, :]
        ang = times.float()[:, None] * self.time_freq[None, :]  # (steps, W/2) fp32
        t_emb = torch.cat([ang.sin(), ang.cos()], dim=1).to(dtype)
        mlp_in = te.action_time_mlp_in
        width = te.action_in_proj.out_features
        t_part = F.linear(t_emb, mlp_in.weight[:, width:], mlp_in.bias)  # (steps, W)
        b = state.shape[0]
        return state_emb, t_part[:, None, None, :].expand(-1, b, 1, -1)

    def fused_velocity(self, state_emb: torch.Tensor, x: torch.Tensor, t_part: torch.Tensor, bias: torch.Tensor,
                       rope: tuple[torch.Tensor, torch.Tensor],
                       kv: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """expert_velocity of the fused path: state_emb/t_part from chunk_constants (t_part: this step's (B, 1, W)),
        bias folded (fold_bias), rope = (cos, signed sin) of the suffix (rope_tables). Same arithmetic, ~20
        instead of ~30 kernels per expert layer and ~6 instead of ~14 for the suffix embedding."""
        te = self.time_embed
        act = te.action_in_proj(x.to(self.dtype))
        w_a = te.action_time_mlp_in.weight[:, :act.shape[-1]]
        if act.shape[0] == 1:  # the engines' batch: one GEMM with the time term as its broadcast bias (as a Linear)
            mid = torch.addmm(t_part.reshape(1, -1), act[0], w_a.t())[None]
        else:
            mid = torch.baddbmm(t_part, act, w_a.t().expand(act.shape[0], -1, -1))
        at = te.action_time_mlp_out(F.silu(mid))
        h = torch.cat([state_emb, at], dim=1)
        cos, sin_s = rope
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        b, n, _ = h.shape
        for i, layer in enumerate(self.expert.layers):
            s_in, s_post = self._exp_norms[i]
            xn = self._rms(layer.input_layernorm, h, s_in)
            attn = layer.self_attn
            if self._exp_qkv:
                qkv = F.linear(xn, self._exp_qkv[i]).view(b, n, nh + 2 * nkv, d)
                qk = self._rope_roll(qkv[:, :, :nh + nkv], cos, sin_s)
                q, k, v = qk[:, :, :nh], qk[:, :, nh:].transpose(1, 2), qkv[:, :, nh + nkv:].transpose(1, 2)
            else:
                q = self._rope_roll(attn.q_proj(xn).view(b, n, nh, d), cos, sin_s)
                k = self._rope_roll(attn.k_proj(xn).view(b, n, nkv, d), cos, sin_s).transpose(1, 2)
                v = attn.v_proj(xn).view(b, n, nkv, d).transpose(1, 2)
            k_all, v_all = kv(i, k, v)
            attend = self._attend_matmul if self.attention == "matmul" else self._attend_folded
            h = self._finish_layer(layer, h, attend(q, k_all, v_all, bias, attn.scaling), s_post,
                                   self._exp_gate_up[i] if self._exp_gate_up else None)
        h = self._rms(self.expert.norm, h[:, -self.chunk:], self._exp_final_norm)
        return self.action_out(h).float()

    def expert_rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rope(positions, self.rope_freq_expert, self.dtype)

    def euler(self, state: torch.Tensor, noise: torch.Tensor, times: torch.Tensor, dts: torch.Tensor,
              positions: torch.Tensor, bias: torch.Tensor,
              kv: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x <- x + dt_k * v(x, t_k) for k = 0..steps-1 (times/dts (steps,) fp32), x zero-padded to the expert's
        action width. Returns fp32 actions (B, chunk, action_dim)."""
        x = _pad_to(noise.float(), self.io_action)
        b = x.shape[0]
        for k in range(times.shape[0]):
            v = self.expert_velocity(state, x, times[k].expand(b), positions, bias, kv)
            x = x + dts[k] * v
        return x[..., :self.action_dim]


def euler_grid(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pi0's time grid t_k = 1 - k/steps and constant step -1/steps, fp32, as the eager sampler computes them."""
    dt = -1.0 / steps
    times = torch.tensor([1.0 + k * dt for k in range(steps)], dtype=torch.float32)
    return times, torch.full((steps,), dt, dtype=torch.float32)


class StaticSampler:
    """Static buffers + the two phases for one StaticShape on one device: `prefix()` and `denoise()` are what the
    torch_graphs engine captures as CUDA graphs (one each); `run()` calls both eagerly.

    Inputs are written into `self.inputs[...]` (in place), outputs read from `self.actions`. Nothing in
    `prefix()` / `denoise()` allocates a tensor whose address must survive between calls except these buffers.
    """

    def __init__(self, core: StaticPi0, shape: StaticShape, steps: int, device: torch.device) -> None:
        self.core, self.shape, self.steps, self.device = core, shape, steps, device
        cfg = core.model.cfg
        s, b, nv = cfg.image_size, shape.batch, shape.views
        f32: dict[str, Any] = dict(dtype=torch.float32, device=device)
        times, dts = euler_grid(steps)
        self.inputs: dict[str, torch.Tensor] = {
            "pixel_values": torch.zeros(b, nv, 3, s, s, **f32),
            "raymaps": torch.zeros(b, nv, 3, s, s, **f32),
            "depth_priors": torch.zeros(b, nv, 2, s, s, **f32),
            "keep": torch.ones(2, **f32),
            "prompt_ids": torch.zeros(b, shape.prompt, dtype=torch.long, device=device),
            "prompt_mask": torch.zeros(b, shape.prompt, dtype=torch.bool, device=device),
            "state": torch.zeros(b, cfg.state_dim, **f32),
            "noise": torch.zeros(b, shape.chunk, cfg.action_dim, **f32),
            "times": times.to(device),
            "dts": dts.to(device),
        }
        self.k_cache, self.v_cache = core.new_cache(shape, device)
        self.positions = torch.zeros(b, shape.suffix_len, dtype=torch.long, device=device)
        # the fused path folds the query heads into the rows: its bias has one row per (token, head of a kv group)
        rows = shape.suffix_len * (core.n_heads // core.n_kv if core.fused else 1)
        self.bias = torch.zeros(b, 1, rows, shape.kv_len, dtype=core.bias_dtype(), device=device)
        self.actions = torch.zeros(b, shape.chunk, cfg.action_dim, **f32)
        # denoising state: x (padded to the expert's width), this step's t and dt, the suffix's RoPE
        self.x = torch.zeros(b, shape.chunk, core.io_action, **f32)
        self.t = torch.zeros(b, **f32)
        self.dt = torch.zeros((), **f32)
        self.cos = torch.zeros(b, shape.suffix_len, core.head_dim, dtype=core.dtype, device=device)
        self.sin = torch.zeros_like(self.cos)  # the fused path stores the signed sin (StaticPi0.rope_tables)
        if core.fused:  # per chunk: the state token's embedding and every step's time term (chunk_constants)
            width = core.time_embed.action_in_proj.out_features
            self.state_emb = torch.zeros(b, 1, width, dtype=core.dtype, device=device)
            self.t_parts = torch.zeros(steps, b, 1, width, dtype=core.dtype, device=device)
            self.t_part = torch.zeros(b, 1, width, dtype=core.dtype, device=device)
        # replaced by a torch.compile'd version when asked (GraphEngine(compile=True), which sets `compiled`: then
        # every step runs the same code on copies of t_k and dt_k; uncompiled, the fused step reads views of them)
        self.step: Callable[..., None] = self._step_fused if core.fused else self._step
        self.compiled = False

    def _write_prefix(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        lp = self.shape.prefix_len
        self.k_cache[i, :, :, :lp].copy_(k)
        self.v_cache[i, :, :, :lp].copy_(v)

    def _suffix_kv(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lp, ls = self.shape.prefix_len, self.shape.suffix_len
        self.k_cache[i, :, :, lp:lp + ls].copy_(k)
        self.v_cache[i, :, :, lp:lp + ls].copy_(v)
        return self.k_cache[i], self.v_cache[i]

    def prefix(self) -> None:
        inp = self.inputs
        embeds = self.core.prefix_embeddings(inp["pixel_values"], inp["raymaps"], inp["depth_priors"], inp["keep"],
                                             inp["prompt_ids"])
        b, ni = self.shape.batch, self.shape.image_tokens
        key_valid = torch.cat([torch.ones(b, ni, dtype=torch.bool, device=self.device), inp["prompt_mask"]], dim=1)
        self.core.prefix_kv(embeds, key_valid, self._write_prefix)
        positions, bias = self.core.suffix_layout(key_valid, self.shape.kv_len)
        self.positions.copy_(positions)
        cos, sin = self.core.expert_rope(positions)
        if self.core.fused:
            bias = self.core.fold_bias(bias)
            cos, sin = self.core.rope_tables(cos, sin)
            state_emb, t_parts = self.core.chunk_constants(inp["state"], inp["times"])
            self.state_emb.copy_(state_emb)
            self.t_parts.copy_(t_parts)
        self.bias.copy_(bias)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def _step(self) -> None:
        """x <- x + dt * v(x, t), everything read from and written to the static buffers."""
        v = self.core.expert_velocity(self.inputs["state"], self.x, self.t, self.positions, self.bias, self._suffix_kv,
                                      rope=(self.cos, self.sin))
        self.x.add_(self.dt * v)

    def _step_fused(self, t_part: torch.Tensor | None = None, dt: torch.Tensor | None = None) -> None:
        """The same update through StaticPi0.fused_velocity (per-chunk constants computed in prefix()); the Euler
        update is one addcmul. t_part/dt: this step's (default: the buffers the compiled loop copies them into)."""
        v = self.core.fused_velocity(self.state_emb, self.x, self.t_part if t_part is None else t_part, self.bias,
                                     (self.cos, self.sin), self._suffix_kv)
        self.x.addcmul_(self.dt if dt is None else dt, v)

    def denoise(self) -> None:
        """The Euler loop of StaticPi0.euler over the static buffers (same arithmetic, one step function). Compiled
        or unfused, two tiny copies per step select t_k (or its precomputed time term) and dt_k, so every step runs
        the same code (one compiled graph); the uncompiled fused step takes views of them instead."""
        inp = self.inputs
        self.x.copy_(_pad_to(inp["noise"], self.core.io_action))
        for k in range(self.steps):
            if self.core.fused and not self.compiled:
                self.step(self.t_parts[k], inp["dts"][k])  # views: no copy kernels
                continue
            if self.core.fused:
                self.t_part.copy_(self.t_parts[k])
            else:
                self.t.copy_(inp["times"][k].expand(self.shape.batch))
            self.dt.copy_(inp["dts"][k])
            self.step()
        self.actions.copy_(self.x[..., :self.core.action_dim])

    def run(self) -> torch.Tensor:
        self.prefix()
        self.denoise()
        return self.actions
