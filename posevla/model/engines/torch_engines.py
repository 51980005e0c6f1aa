"""PyTorch engines: `torch` (the eager reference, PoseVLAModel.sample_actions) and `torch_graphs` (static KV
cache; on CUDA the prefix and the whole denoising loop are each captured once per shape as a CUDA graph).

CUDA graph capture follows PyTorch's documented recipe (torch.cuda.graphs): warm up on a side stream,
capture with `torch.cuda.graph`, then only ever refill the static input tensors in place and `replay()`.
Both graphs of one shape share a memory pool and are always replayed in capture order (prefix, then
denoise); the KV cache, inputs and outputs are allocated outside the graphs, so nothing a later call
reads lives in the pool. Time grid and step sizes are input tensors of the denoise graph; noise is an input.

Staging (see base.py): each shape key has a few slots of pinned host buffers + device staging tensors; `stage`
fills one and queues its copy on the copy stream, `execute` makes the compute stream wait for that copy's
event and moves the staging tensors into the graphs' static inputs with device-to-device copies (~5 MB), so
the next observation's host -> device copy can run while the graphs of the current one replay.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from posevla.model.batching import Batcher
from posevla.model.engines.base import Engine, ShapeKey, Staged, StaticInputs, modality_keep
from posevla.model.engines.static_kv import StaticPi0, StaticSampler

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def sdpa_context(backend: str | None) -> contextlib.AbstractContextManager:
    """Restrict F.scaled_dot_product_attention to one backend (None: PyTorch's own choice)."""
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[backend]])


class EagerEngine(Engine):
    """The reference: transformers' dynamic cache, prefix KV reused across flow steps (PoseVLAPolicy.predict)."""

    name = "torch"

    def stage(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> Staged:
        modality_keep(modalities)
        key = self.shape_key(arrays)
        stream = self.copy_stream
        if stream is None:
            return Staged(key, (Batcher.to_torch(arrays, self.device, self.policy.dtype),
                                noise.to(self.device, self.policy.dtype), modalities))
        with self.cuda_lock, torch.cuda.stream(stream):
            batch = Batcher.to_torch(arrays, self.device, self.policy.dtype)
            x = noise.to(self.device, self.policy.dtype, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        return Staged(key, (batch, x, modalities), ready)

    def execute(self, staged: Staged) -> np.ndarray:
        batch, x, modalities = staged.slot
        if staged.ready is not None:  # fresh tensors made on the copy stream: order and keep them for this stream
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.ready)
            for t in (*batch.values(), x):
                t.record_stream(current)
        try:
            out = self.policy.model.sample_actions(batch, x, modalities=modalities)
            return out[0].float().cpu().numpy()
        finally:
            self.release(staged)

    def release(self, staged: Staged) -> None:
        staged.released = True  # fresh tensors per call: nothing to pool


class GraphEngine(Engine):
    """Static KV cache + fixed shapes per (present views, prompt bucket); CUDA graphs on CUDA, eager elsewhere.

    cuda_graphs: capture (default: when the device is CUDA). compile: torch.compile the prefix and the flow
    step before capturing them (fuses the norms, RoPE and activations: fewer kernels per replay; the first call
    of a shape then takes minutes). compile_backend: torch.compile's backend ("aot_eager" checks the tracing
    without Inductor's code generation). sdpa_backend: flash | efficient | cudnn | math restricts
    scaled_dot_product_attention to that kernel while the graphs are captured (None: PyTorch's choice).
    attention: sdpa | matmul, how the flow step attends over the cache (static_kv.ATTENTION).
    """

    name = "torch_graphs"

    def __init__(self, policy, cuda_graphs: bool | None = None, compile: bool = False,
                 compile_backend: str = "inductor", sdpa_backend: str | None = None,
                 attention: str = "sdpa") -> None:
        super().__init__(policy)
        is_cuda = self.device.type == "cuda"
        self.cuda_graphs = is_cuda if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not is_cuda:
            raise ValueError(f"cuda_graphs=True needs a CUDA device, the policy is on {self.device}")
        if sdpa_backend is not None and sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend={sdpa_backend!r} must be one of {list(SDPA_BACKENDS)} or None")
        self.sdpa_backend = sdpa_backend
        self.compile = bool(compile)
        self.compile_backend = compile_backend
        self.core = StaticPi0(policy.model, attention=attention)  # reads the policy's weights in place (no copy)
        self._samplers: dict[ShapeKey, StaticSampler] = {}
        self._graphs: dict[ShapeKey, tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]] = {}
        self.build_s: dict[ShapeKey, float] = {}

    def _sampler(self, key: ShapeKey) -> StaticSampler:
        sampler = self._samplers.get(key)
        if sampler is None:
            t0 = time.perf_counter()
            shape = self.core.shape(1, key.views, key.prompt)
            sampler = StaticSampler(self.core, shape, self.config.flow_steps, self.device)
            if self.compile:
                sampler.prefix = torch.compile(  # type: ignore[method-assign]  # the compiled prefix replaces it
                    sampler.prefix, dynamic=False, backend=self.compile_backend)
                sampler.step = torch.compile(sampler.step, dynamic=False, backend=self.compile_backend)
                sampler.compiled = True
            self._samplers[key] = sampler
            self.build_s[key] = time.perf_counter() - t0
        return sampler

    def _new_slot(self, sampler: StaticSampler) -> _Slot:
        cuda = self.device.type == "cuda"
        host = StaticInputs(sampler.inputs, pin=cuda)
        if not cuda:
            return _Slot(host, host.host, None)
        dev = {k: torch.empty_like(sampler.inputs[k]) for k in StaticInputs.FIELDS}
        return _Slot(host, dev, torch.cuda.Event())

    def _capture(self, key: ShapeKey, sampler: StaticSampler) -> None:
        t0 = time.perf_counter()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), sdpa_context(self.sdpa_backend):
            for _ in range(3):  # warm-up: cuBLAS handles, attention kernel choice, compilation
                sampler.prefix()
                sampler.denoise()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        pool = torch.cuda.graph_pool_handle()
        g_prefix, g_denoise = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with sdpa_context(self.sdpa_backend):
            with torch.cuda.graph(g_prefix, pool=pool):
                sampler.prefix()
            with torch.cuda.graph(g_denoise, pool=pool):
                sampler.denoise()
        torch.cuda.synchronize(self.device)
        self._graphs[key] = (g_prefix, g_denoise)
        self.build_s[key] = self.build_s.get(key, 0.0) + time.perf_counter() - t0

    def stage(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> Staged:
        keep = modality_keep(modalities)
        key = self.shape_key(arrays)
        with self.cuda_lock:
            sampler = self._sampler(key)
            slot = self._acquire(key, lambda: self._new_slot(sampler))
            if slot.ready is not None:
                slot.ready.synchronize()  # a superseded slot's copy may still be reading its host buffers
        slot.host.fill(arrays, noise, keep, self.policy.tokenizer.pad_token_id)
        stream = self.copy_stream
        if stream is not None:
            with self.cuda_lock, torch.cuda.stream(stream):
                slot.host.copy_to(slot.dev)
                slot.ready.record(stream)
        return Staged(key, slot, slot.ready)

    def execute(self, staged: Staged) -> np.ndarray:
        key, slot = staged.key, staged.slot
        sampler = self._samplers[key]
        try:
            if slot.ready is not None:
                torch.cuda.current_stream(self.device).wait_event(slot.ready)
            for k in StaticInputs.FIELDS:
                sampler.inputs[k].copy_(slot.dev[k], non_blocking=True)
            if self.cuda_graphs:
                if key not in self._graphs:
                    with self.cuda_lock:  # no CUDA call from the staging thread while capturing
                        self._capture(key, sampler)  # runs the inputs already copied; replay recomputes them
                g_prefix, g_denoise = self._graphs[key]
                g_prefix.replay()
                g_denoise.replay()
                out = sampler.actions
            else:
                with sdpa_context(self.sdpa_backend):
                    out = sampler.run()
            return out[0].cpu().numpy()
        finally:
            self.release(staged)

    @torch.inference_mode()
    def split_ms(self, key: ShapeKey | None = None, repeat: int = 10) -> dict[str, float]:
        """Median time of the prefix and of the whole denoising loop for a built shape (default: the first), ms:
        GPU time between CUDA events around the graph replays, or wall time of the eager static calls on a CPU."""
        key = key or next(iter(self._samplers))
        sampler = self._samplers[key]
        prefix, denoise = [], []
        for _ in range(repeat):
            if self.cuda_graphs:
                g_prefix, g_denoise = self._graphs[key]
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                ev[0].record()
                g_prefix.replay()
                ev[1].record()
                g_denoise.replay()
                ev[2].record()
                ev[2].synchronize()
                prefix.append(ev[0].elapsed_time(ev[1]))
                denoise.append(ev[1].elapsed_time(ev[2]))
            else:
                t0 = time.perf_counter()
                with sdpa_context(self.sdpa_backend):
                    sampler.prefix()
                    t1 = time.perf_counter()
                    sampler.denoise()
                prefix.append((t1 - t0) * 1e3)
                denoise.append((time.perf_counter() - t1) * 1e3)
        return {"prefix_ms": float(np.median(prefix)), "denoise_ms": float(np.median(denoise))}

    def close(self) -> None:
        super().close()
        self._graphs.clear()
        self._samplers.clear()


@dataclass(eq=False)
class _Slot:
    """One staging slot of the graph engine: host buffers (pinned on CUDA), their device copies (the host tensors
    themselves off CUDA) and the event recorded after the host -> device copies."""

    host: StaticInputs
    dev: dict[str, torch.Tensor]
    ready: torch.cuda.Event | None
