"""`onnxruntime` engine: the static-shape prefix and the whole Euler sampler exported with torch.onnx.export and
run by onnxruntime (CPU, CUDA or TensorRT execution provider).

Two ONNX graphs per shape (present views, prompt bucket), exported on first use into `onnx_dir`:
  prefix.onnx   pixel_values, raymaps, depth_priors (1, V, C, S, S) f32, keep (2,) f32, prompt_ids (1, P) i64,
                prompt_mask (1, P) i64 -> k_prefix, v_prefix (layers, 1, kv_heads, prefix_len, head_dim)
  sampler.onnx  k_prefix, v_prefix, prompt_mask, state (1, S) f32, noise (1, chunk, A) f32, times, dts (steps,) f32
                -> actions (1, chunk, A) f32 (the flow steps unrolled; weights shared)
The keys/values stay on the execution provider's device between the two runs (I/O binding). Both graphs are
built from the same StaticPi0 code as the torch_graphs engine, so the two engines cannot drift apart.

Export uses the TorchScript-based exporter (dynamo=False): it needs the `onnx` package but not `onnxscript`,
and writes large models (the 3B config) with external data files. Running needs only onnxruntime.
"""
from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posevla.model.engines.base import Engine, ShapeKey, StaticInputs, modality_keep
from posevla.model.engines.static_kv import StaticPi0, StaticShape, euler_grid

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
OPSET = 17
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PrefixGraph(nn.Module):
    def __init__(self, core: StaticPi0, shape: StaticShape) -> None:
        super().__init__()
        self.core, self.shape = core, shape

    def forward(self, pixel_values, raymaps, depth_priors, keep, prompt_ids, prompt_mask):
        embeds = self.core.prefix_embeddings(pixel_values, raymaps, depth_priors, keep, prompt_ids)
        key_valid = torch.cat([torch.ones(self.shape.batch, self.shape.image_tokens, dtype=torch.bool,
                                          device=prompt_mask.device), prompt_mask != 0], dim=1)
        ks, vs = [], []

        def keep_kv(_i: int, k: torch.Tensor, v: torch.Tensor) -> None:
            ks.append(k)
            vs.append(v)

        self.core.prefix_kv(embeds, key_valid, keep_kv)
        return torch.stack(ks), torch.stack(vs)


class SamplerGraph(nn.Module):
    def __init__(self, core: StaticPi0, shape: StaticShape) -> None:
        super().__init__()
        self.core, self.shape = core, shape

    def forward(self, k_prefix, v_prefix, prompt_mask, state, noise, times, dts):
        key_valid = torch.cat([torch.ones(self.shape.batch, self.shape.image_tokens, dtype=torch.bool,
                                          device=prompt_mask.device), prompt_mask != 0], dim=1)
        kv_len = self.shape.prefix_len + self.shape.suffix_len  # no alignment padding needed here
        positions, bias = self.core.suffix_layout(key_valid, kv_len)

        def kv(i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.cat([k_prefix[i], k], dim=2), torch.cat([v_prefix[i], v], dim=2)

        return self.core.euler(state, noise, times, dts, positions, bias, kv)


PREFIX_INPUTS = ("pixel_values", "raymaps", "depth_priors", "keep", "prompt_ids", "prompt_mask")
SAMPLER_INPUTS = ("k_prefix", "v_prefix", "prompt_mask", "state", "noise", "times", "dts")


class OnnxEngine(Engine):
    """provider: cpu | cuda | tensorrt. dtype: weights in the exported graphs (default float32 on cpu, float16
    otherwise: onnxruntime's CUDA kernels cover fp16 far better than bf16). onnx_dir: where the .onnx files go
    (default: a temporary directory removed with the engine)."""

    name = "onnxruntime"

    def __init__(self, policy, provider: str | None = None, dtype: str | None = None,
                 onnx_dir: str | Path | None = None, intra_op_threads: int = 0) -> None:
        super().__init__(policy)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ValueError("engine onnxruntime needs the onnxruntime package (onnxruntime-gpu on a CUDA robot PC)") from exc
        self.ort = ort
        provider = provider or ("cuda" if self.device.type == "cuda" else "cpu")
        if provider not in PROVIDERS:
            raise ValueError(f"onnxruntime provider={provider!r} must be one of {list(PROVIDERS)}")
        missing = [p for p in PROVIDERS[provider][:-1] if p not in ort.get_available_providers()]
        if missing:
            raise ValueError(f"onnxruntime provider={provider!r}: this onnxruntime lacks {missing} "
                             f"(available: {ort.get_available_providers()}); install onnxruntime-gpu")
        self.provider = provider
        self.ort_device = "cpu" if provider == "cpu" else "cuda"
        dtype = dtype or ("float32" if provider == "cpu" else "float16")
        if dtype not in DTYPES:
            raise ValueError(f"onnxruntime dtype={dtype!r} must be one of {list(DTYPES)}")
        self.dtype_name = dtype
        self._tmp = None
        if onnx_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="posevla_onnx_")
            onnx_dir = self._tmp.name
        self.onnx_dir = Path(onnx_dir)
        self.intra_op_threads = int(intra_op_threads)
        self._sessions: dict[ShapeKey, tuple] = {}
        self._hosts: dict[ShapeKey, StaticInputs] = {}
        self.build_s: dict[ShapeKey, float] = {}
        times, dts = euler_grid(self.config.flow_steps)
        self._times, self._dts = times.numpy(), dts.numpy()

    # ------------------------------------------------------------------ export
    def _export_core(self) -> StaticPi0:
        """The model in the export dtype on the policy's device (traced there: a 3B prefix in fp16 on a CPU is
        minutes); a copy unless the policy already has that dtype, so the policy's own model is untouched."""
        dtype = DTYPES[self.dtype_name]
        model = self.policy.model
        if self.policy.dtype != dtype:
            model = copy.deepcopy(model).to(dtype=dtype)
        return StaticPi0(model.eval(), fused=False)  # transformers' modules op for op: plain ONNX operators

    def export(self, key: ShapeKey) -> tuple[Path, Path]:
        """Write prefix.onnx and sampler.onnx for this shape (skipped when both exist). Returns their paths."""
        folder = self.onnx_dir / f"v{key.views}_p{key.prompt}_{self.dtype_name}"
        paths = folder / "prefix.onnx", folder / "sampler.onnx"
        if all(p.exists() for p in paths):
            return paths
        if importlib.util.find_spec("onnx") is None:
            raise ValueError("engine onnxruntime: exporting with torch.onnx.export needs the onnx package "
                             f"(pip install onnx), or prebuilt graphs in {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        s = cfg.image_size
        f32 = dict(dtype=torch.float32, device=self.device)
        prefix_args = (torch.zeros(1, key.views, 3, s, s, **f32), torch.zeros(1, key.views, 3, s, s, **f32),
                       torch.zeros(1, key.views, 2, s, s, **f32), torch.ones(2, **f32),
                       torch.zeros(1, key.prompt, dtype=torch.long, device=self.device),
                       torch.ones(1, key.prompt, dtype=torch.long, device=self.device))
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            core = self._export_core()
            shape = core.shape(1, key.views, key.prompt)
            # eval() on the wrappers: the exporter restores the wrapper's mode afterwards, recursively, and the
            # wrappers share the policy's modules (a module left in training mode would drop modalities at random)
            prefix = PrefixGraph(core, shape).eval()
            k, v = prefix(*prefix_args)
            torch.onnx.export(prefix, prefix_args, str(paths[0]), input_names=list(PREFIX_INPUTS),
                              output_names=["k_prefix", "v_prefix"], opset_version=OPSET, dynamo=False)
            times, dts = euler_grid(cfg.flow_steps)
            sampler_args = (k, v, prefix_args[5], torch.zeros(1, cfg.state_dim, **f32),
                            torch.zeros(1, cfg.chunk_length, cfg.action_dim, **f32), times.to(self.device),
                            dts.to(self.device))
            torch.onnx.export(SamplerGraph(core, shape).eval(), sampler_args, str(paths[1]), input_names=list(SAMPLER_INPUTS),
                              output_names=["actions"], opset_version=OPSET, dynamo=False)
            del core, prefix, k, v
        if self.policy.model.training:
            raise RuntimeError("ONNX export left the policy's model in training mode")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return paths

    def _session(self, path: Path):
        opts = self.ort.SessionOptions()
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            opts.intra_op_num_threads = self.intra_op_threads
        opts.log_severity_level = 3
        return self.ort.InferenceSession(str(path), sess_options=opts, providers=PROVIDERS[self.provider])

    def _build(self, key: ShapeKey) -> tuple:
        t0 = time.perf_counter()
        p_prefix, p_sampler = self.export(key)
        sessions = (self._session(p_prefix), self._session(p_sampler))
        cfg, s = self.config, self.config.image_size
        like = {"pixel_values": torch.zeros(1, key.views, 3, s, s), "raymaps": torch.zeros(1, key.views, 3, s, s),
                "depth_priors": torch.zeros(1, key.views, 2, s, s), "keep": torch.zeros(2),
                "prompt_ids": torch.zeros(1, key.prompt, dtype=torch.long),
                "prompt_mask": torch.zeros(1, key.prompt, dtype=torch.bool),
                "state": torch.zeros(1, cfg.state_dim), "noise": torch.zeros(1, cfg.chunk_length, cfg.action_dim)}
        self._hosts[key] = StaticInputs(like, pin=False)
        self._sessions[key] = sessions
        self.build_s[key] = time.perf_counter() - t0
        return sessions

    # ------------------------------------------------------------------ run
    def prepare(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> ShapeKey:
        keep = modality_keep(modalities)
        key = self.shape_key(arrays)
        if key not in self._sessions:
            self._build(key)
        self._hosts[key].fill(arrays, noise, keep, self.policy.tokenizer.pad_token_id)
        return key

    def run(self, key: ShapeKey) -> np.ndarray:
        prefix, sampler = self._sessions[key]
        h = {k: v.numpy() for k, v in self._hosts[key].host.items()}
        h["prompt_mask"] = h["prompt_mask"].astype(np.int64)
        b1 = prefix.io_binding()
        for name in PREFIX_INPUTS:
            b1.bind_cpu_input(name, np.ascontiguousarray(h[name]))
        for name in ("k_prefix", "v_prefix"):
            b1.bind_output(name, self.ort_device)
        prefix.run_with_iobinding(b1)
        k, v = b1.get_outputs()
        b2 = sampler.io_binding()
        b2.bind_ortvalue_input("k_prefix", k)
        b2.bind_ortvalue_input("v_prefix", v)
        for name, value in (("prompt_mask", h["prompt_mask"]), ("state", h["state"]), ("noise", h["noise"]),
                            ("times", self._times), ("dts", self._dts)):
            b2.bind_cpu_input(name, np.ascontiguousarray(value))
        b2.bind_output("actions", "cpu")
        sampler.run_with_iobinding(b2)
        return b2.copy_outputs_to_cpu()[0][0]

    def close(self) -> None:
        super().close()
        self._sessions.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
