"""PyTorch engines: `torch` (the eager reference, PoseVLAModel.sample_actions) and `torch_graphs` (static KV
cache; on CUDA the prefix and the whole denoising loop are each captured once per shape as a CUDA graph).

CUDA graph capture follows PyTorch's documented recipe (torch.cuda.graphs): warm up on a side stream,
capture with `torch.cuda.graph`, then only ever refill the static input tensors in place and `replay()`.
Both graphs of one shape share a memory pool and are always replayed in capture order (prefix, then
denoise); the KV cache, inputs and outputs are allocated outside the graphs, so nothing a later call
reads lives in the pool. Time grid and step sizes are input tensors of the denoise graph; noise is an input.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from posevla.model.batching import Batcher
from posevla.model.engines.base import Engine, ShapeKey, StaticInputs, modality_keep
from posevla.model.engines.static_kv import StaticPi0, StaticSampler


class EagerEngine(Engine):
    """The reference: transformers' dynamic cache, prefix KV reused across flow steps (PoseVLAPolicy.predict)."""

    name = "torch"

    def prepare(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> ShapeKey:
        modality_keep(modalities)
        key = self.shape_key(arrays)
        self._batch = Batcher.to_torch(arrays, self.device, self.policy.dtype)
        self._noise = noise.to(self.device, self.policy.dtype)
        self._modalities = modalities
        return key

    def run(self, key: ShapeKey) -> np.ndarray:
        out = self.policy.model.sample_actions(self._batch, self._noise, modalities=self._modalities)
        return out[0].float().cpu().numpy()


class GraphEngine(Engine):
    """Static KV cache + fixed shapes per (present views, prompt bucket); CUDA graphs on CUDA, eager elsewhere.

    cuda_graphs: capture (default: when the device is CUDA). compile: torch.compile the prefix and the flow
    step before capturing them (fuses the norms, RoPE and activations: fewer kernels per replay; the first call
    of a shape then takes minutes). compile_backend: torch.compile's backend ("aot_eager" checks the tracing
    without Inductor's code generation).
    """

    name = "torch_graphs"

    def __init__(self, policy, cuda_graphs: bool | None = None, compile: bool = False,
                 compile_backend: str = "inductor") -> None:
        super().__init__(policy)
        is_cuda = self.device.type == "cuda"
        self.cuda_graphs = is_cuda if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not is_cuda:
            raise ValueError(f"cuda_graphs=True needs a CUDA device, the policy is on {self.device}")
        self.compile = bool(compile)
        self.compile_backend = compile_backend
        self.core = StaticPi0(policy.model)  # reads the policy's weights in place (no copy, no .to())
        self._samplers: dict[ShapeKey, StaticSampler] = {}
        self._hosts: dict[ShapeKey, StaticInputs] = {}
        self._graphs: dict[ShapeKey, tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]] = {}
        self.build_s: dict[ShapeKey, float] = {}

    def _sampler(self, key: ShapeKey) -> StaticSampler:
        sampler = self._samplers.get(key)
        if sampler is None:
            t0 = time.perf_counter()
            shape = self.core.shape(1, key.views, key.prompt)
            sampler = StaticSampler(self.core, shape, self.config.flow_steps, self.device)
            if self.compile:
                sampler.prefix = torch.compile(sampler.prefix, dynamic=False, backend=self.compile_backend)
                sampler.step = torch.compile(sampler.step, dynamic=False, backend=self.compile_backend)
            self._samplers[key] = sampler
            self._hosts[key] = StaticInputs(sampler.inputs, pin=self.device.type == "cuda")
            self.build_s[key] = time.perf_counter() - t0
        return sampler

    def _capture(self, key: ShapeKey, sampler: StaticSampler) -> None:
        t0 = time.perf_counter()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuBLAS handles, attention kernel choice, compilation
                sampler.prefix()
                sampler.denoise()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        pool = torch.cuda.graph_pool_handle()
        g_prefix, g_denoise = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(g_prefix, pool=pool):
            sampler.prefix()
        with torch.cuda.graph(g_denoise, pool=pool):
            sampler.denoise()
        torch.cuda.synchronize(self.device)
        self._graphs[key] = (g_prefix, g_denoise)
        self.build_s[key] = self.build_s.get(key, 0.0) + time.perf_counter() - t0

    def prepare(self, arrays: dict[str, np.ndarray], noise: torch.Tensor, modalities: str = "full") -> ShapeKey:
        keep = modality_keep(modalities)
        key = self.shape_key(arrays)
        sampler = self._sampler(key)
        host = self._hosts[key]
        host.fill(arrays, noise, keep, self.policy.tokenizer.pad_token_id)
        host.copy_to(sampler.inputs)
        return key

    def run(self, key: ShapeKey) -> np.ndarray:
        sampler = self._samplers[key]
        if self.cuda_graphs:
            if key not in self._graphs:
                self._capture(key, sampler)  # runs the inputs already copied; replay below recomputes them
            g_prefix, g_denoise = self._graphs[key]
            g_prefix.replay()
            g_denoise.replay()
            out = sampler.actions
        else:
            out = sampler.run()
        return out[0].cpu().numpy()

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
        self._hosts.clear()
