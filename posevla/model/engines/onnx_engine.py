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

Execution provider (`provider`): auto (default) takes CUDA when the policy is on a CUDA device and this
onnxruntime build has the CUDA provider (onnxruntime-gpu), else the CPU; tensorrt / cuda are asked for
explicitly. A provider this build lacks, or one onnxruntime fails to load when the session is created (it
then silently runs on the CPU), falls back down TensorRT -> CUDA -> CPU with a logged warning naming the
reason; `engine.provider_note` keeps it. TensorRT engines are built on first use (minutes at full size) and
cached next to the ONNX files (`trt_cache/`), in fp16 when the export is fp16.

Staging: the inputs of one observation become OrtValues on the provider's device in `stage` (so with CUDA
the host -> device copy happens on the preprocessing thread, overlapping the previous call), and `execute`
binds them (I/O binding) without copying again.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posevla.model.engines.base import Engine, ShapeKey, Staged, StaticInputs, modality_keep
from posevla.model.engines.static_kv import StaticPi0, StaticShape, euler_grid

LOG = logging.getLogger("posevla.engines.onnxruntime")
# provider name -> onnxruntime execution providers, in preference order
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
PROVIDER_CHOICES = ("auto", *PROVIDERS)
FALLBACK = {"tensorrt": "cuda", "cuda": "cpu"}


def choose_provider(requested: str | None, device_type: str, available: list[str]) -> tuple[str, str]:
    """(provider, reason for not taking the requested one, "" when taken). requested: auto | cpu | cuda | tensorrt
    (None = auto: cuda for a CUDA policy when this onnxruntime has it, else cpu). ValueError on other names."""
    requested = requested or "auto"
    if requested not in PROVIDER_CHOICES:
        raise ValueError(f"onnxruntime provider={requested!r} must be one of {list(PROVIDER_CHOICES)}")
    if requested == "auto":
        if device_type != "cuda":
            return "cpu", ""
        if "CUDAExecutionProvider" in available:
            return "cuda", ""
        return "cpu", (f"provider auto: the policy is on CUDA but this onnxruntime has no CUDAExecutionProvider "
                       f"(available: {available}; install onnxruntime-gpu): running on the CPU")
    provider, reasons = requested, []
    while PROVIDERS[provider][0] not in available:
        reasons.append(f"{PROVIDERS[provider][0]} is not in this onnxruntime (available: {available})")
        provider = FALLBACK[provider]
    reason = "" if provider == requested else (f"provider {requested}: " + "; ".join(reasons) +
                                               f": falling back to {provider} (install onnxruntime-gpu)")
    return provider, reason
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
    """provider: auto | cpu | cuda | tensorrt (see the module docstring for the fallback). dtype: weights in the
    exported graphs (default float32 on cpu, float16 otherwise: onnxruntime's CUDA kernels cover fp16 far better
    than bf16). onnx_dir: where the .onnx files go (default: a temporary directory removed with the engine)."""

    name = "onnxruntime"

    def __init__(self, policy, provider: str | None = None, dtype: str | None = None,
                 onnx_dir: str | Path | None = None, intra_op_threads: int = 0) -> None:
        super().__init__(policy)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ValueError("engine onnxruntime needs the onnxruntime package (onnxruntime-gpu on a CUDA robot PC)") from exc
        self.ort = ort
        self.provider, self.provider_note = choose_provider(provider, self.device.type, ort.get_available_providers())
        if self.provider_note:
            LOG.warning(self.provider_note)
        self.ort_device = "cpu" if self.provider == "cpu" else "cuda"
        self.device_id = (self.device.index or 0) if self.device.type == "cuda" else 0
        dtype = dtype or ("float32" if self.provider == "cpu" else "float16")
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
        self.build_s: dict[ShapeKey, float] = {}
        times, dts = euler_grid(self.config.flow_steps)
        self._times, self._dts = times.numpy(), dts.numpy()
        self._grid: dict[str, object] = {}  # times/dts as OrtValues on the provider's device (made once)

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

    def provider_list(self, provider: str) -> list:
        """onnxruntime's providers argument for one of PROVIDERS, with options: the policy's GPU; TensorRT in fp16
        when the export is fp16, its engines cached in onnx_dir/trt_cache."""
        out: list = []
        for name in PROVIDERS[provider]:
            if name == "CUDAExecutionProvider":
                out.append((name, {"device_id": self.device_id}))
            elif name == "TensorrtExecutionProvider":
                out.append((name, {"device_id": self.device_id, "trt_fp16_enable": self.dtype_name == "float16",
                                   "trt_engine_cache_enable": True,
                                   "trt_engine_cache_path": str(self.onnx_dir / "trt_cache")}))
            else:
                out.append(name)
        return out

    def _session(self, path: Path):
        opts = self.ort.SessionOptions()
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            opts.intra_op_num_threads = self.intra_op_threads
        opts.log_severity_level = 3
        session = self.ort.InferenceSession(str(path), sess_options=opts, providers=self.provider_list(self.provider))
        wanted, got = PROVIDERS[self.provider][0], session.get_providers()
        if wanted not in got:  # onnxruntime could not load it (e.g. CUDA / cuDNN libraries) and fell back itself
            note = f"provider {self.provider}: onnxruntime could not load {wanted} for {path.name} (session runs {got})"
            LOG.warning(note)
            self.provider_note = "; ".join(n for n in (self.provider_note, note) if n)
        return session

    def _ort_value(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.ort_device, self.device_id)

    def _build(self, key: ShapeKey) -> tuple:
        t0 = time.perf_counter()
        p_prefix, p_sampler = self.export(key)
        sessions = (self._session(p_prefix), self._session(p_sampler))
        if not self._grid:
            self._grid = {"times": self._ort_value(self._times), "dts": self._ort_value(self._dts)}
        self._sessions[key] = sessions
        self.build_s[key] = time.perf_counter() - t0
        return sessions

    def _like(self, key: ShapeKey) -> dict[str, torch.Tensor]:
        cfg, s = self.config, self.config.image_size
        return {"pixel_values": torch.zeros(1, key.views, 3, s, s), "raymaps": torch.zeros(1, key.views, 3, s, s),
                "depth_priors": torch.zeros(1, key.views, 2, s, s), "keep": torch.zeros(2),
                "prompt_ids": torch.zeros(1, key.prompt, dtype=torch.long),
                "prompt_mask": torch.zeros(1, key.prompt, dtype=torch.bool),
                "state": torch.zeros(1, cfg.state_dim), "noise": torch.zeros(1, cfg.chunk_length, cfg.action_dim)}

    # ------------------------------------------------------------------ run
    def stage(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> Staged:
        keep = modality_keep(modalities)
        key = self.shape_key(arrays)
        if key not in self._sessions:
            with self.cuda_lock:
                if key not in self._sessions:
                    self._build(key)
        host = self._acquire(key, lambda: StaticInputs(self._like(key), pin=False))
        host.fill(arrays, noise, keep, self.policy.tokenizer.pad_token_id)
        h = {k: v.numpy() for k, v in host.host.items()}
        h["prompt_mask"] = h["prompt_mask"].astype(np.int64)
        # on the CPU provider these share the slot's memory; on CUDA this is the host -> device copy
        values = {name: self._ort_value(h[name]) for name in (*PREFIX_INPUTS, "state", "noise")}
        return Staged(key, host, data=values)

    def execute(self, staged: Staged) -> np.ndarray:
        prefix, sampler = self._sessions[staged.key]
        values = staged.data
        try:
            b1 = prefix.io_binding()
            for name in PREFIX_INPUTS:
                b1.bind_ortvalue_input(name, values[name])
            for name in ("k_prefix", "v_prefix"):
                b1.bind_output(name, self.ort_device, self.device_id)
            prefix.run_with_iobinding(b1)
            k, v = b1.get_outputs()
            b2 = sampler.io_binding()
            b2.bind_ortvalue_input("k_prefix", k)
            b2.bind_ortvalue_input("v_prefix", v)
            for name in ("prompt_mask", "state", "noise"):
                b2.bind_ortvalue_input(name, values[name])
            for name in ("times", "dts"):
                b2.bind_ortvalue_input(name, self._grid[name])
            b2.bind_output("actions", "cpu")
            sampler.run_with_iobinding(b2)
            return b2.copy_outputs_to_cpu()[0][0]
        finally:
            self.release(staged)

    def close(self) -> None:
        super().close()
        self._sessions.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
