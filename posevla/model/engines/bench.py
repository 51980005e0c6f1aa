"""The model latency table: every engine, the eager baseline and transformers' own PI0 sampler as an in-run
anchor, at the same sizes, on one device, in one process. Used by `posevla bench model` (benchmarks/
bench_model.py) and by scripts/gpu/infer_check.py.

Per row: p50/p90 of one chunk (ms, host observation arrays in -> normalised actions on the host), the first
call (s: includes CUDA-graph capture, compilation or ONNX export), peak memory (GiB; CUDA only: torch's peak
allocation during that row, plus for onnxruntime the device memory its arena took), and the largest
difference from the eager reference's actions for the same noise.

`pipeline_rows` adds the end-to-end view through posevla.model.serving.PipelinedRunner: observation submitted ->
chunk handed out, sequential and pipelined, with the chunk period and the per-stage p50s.
"""
from __future__ import annotations

import copy
import gc
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posevla.model.batching import Batcher
from posevla.model.engines import make_engine

INSTRUCTION = "pick up the red cube"
# table rows that are an engine with options (the others: torch_recompute, transformers_pi0)
VARIANTS: dict[str, tuple[str, dict]] = {
    "torch": ("torch", {}),
    "torch_graphs": ("torch_graphs", {}),
    "torch_graphs_cudnn": ("torch_graphs", {"sdpa_backend": "cudnn"}),  # CUDA: cuDNN attention kernels
    "torch_graphs_efficient": ("torch_graphs", {"sdpa_backend": "efficient"}),  # CUDA: memory-efficient kernels
    "torch_graphs_matmul": ("torch_graphs", {"attention": "matmul"}),  # flow step's attention as GEMMs
    "torch_graphs_compiled": ("torch_graphs", {"compile": True}),
    "onnxruntime": ("onnxruntime", {}),
}
# e2e: the two pipeline_rows (sequential and pipelined, torch_graphs engine)
ROWS = ("torch", "torch_recompute", "transformers_pi0", *list(VARIANTS)[1:], "e2e")
# seconds a row needs before it is started under a budget (default 10)
SLOW_RESERVE_S = {"torch_graphs_compiled": 80.0, "onnxruntime": 120.0, "torch_recompute": 15.0, "e2e": 15.0}


@dataclass
class Row:
    name: str
    views: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    first_s: float | None = None
    peak_gib: float | None = None
    max_abs_diff: float | None = None  # vs the eager engine's actions (normalised units)
    note: str = ""
    samples_ms: list[float] = field(default_factory=list)

    def line(self) -> str:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        return (f"| {self.name:<42} | {self.views} | {f(self.p50_ms, '8.1f')} | {f(self.p90_ms, '8.1f')} | "
                f"{f(self.first_s, '7.2f')} | {f(self.peak_gib, '6.2f')} | {f(self.max_abs_diff, '8.1e')} | {self.note}")


HEADER = ("| path                                       | views | p50 ms | p90 ms | first s | peak GiB | max|diff| | note\n"
          "|---|---|---|---|---|---|---|---|")


def build_policy(config: str | Path, device: str, seed: int = 0):
    """Random-weight policy of the config; on CUDA the weights are initialised on the GPU (seconds, not minutes)."""
    from posevla.model.policy import PoseVLAPolicy

    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.device(dev):
            return PoseVLAPolicy.from_config(config, seed=seed, device=device)
    return PoseVLAPolicy.from_config(config, seed=seed, device=device)


def observation(policy, views: int, instruction: str = INSTRUCTION):
    obs = policy.synthetic_observation(instruction)
    names = list(policy.config.views)[:views]
    obs.views = {k: v for k, v in obs.views.items() if k in names}
    return obs


class _Mem:
    """Peak device memory of one row: torch's peak allocation, plus memory taken outside torch (onnxruntime)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.used0 = self._used()
            self.reserved0 = torch.cuda.memory_reserved(device)

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        outside = max(0, (self._used() - self.used0) - (torch.cuda.memory_reserved(self.device) - self.reserved0))
        return (torch.cuda.max_memory_allocated(self.device) + outside) / 2**30


def _time_calls(call: Callable[[], np.ndarray], iters: int, warm: int, device: torch.device
                ) -> tuple[float, np.ndarray, list[float]]:
    """First call (s), its output, then `warm` untimed calls and `iters` timed ones (ms)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    out = call()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warm):
        call()
    samples = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return first, out, samples


def _fill(row: Row, first: float, samples: list[float]) -> Row:
    row.first_s = first
    row.samples_ms = [float(s) for s in samples]
    if samples:
        row.p50_ms, row.p90_ms = float(np.percentile(samples, 50)), float(np.percentile(samples, 90))
    return row


def _anchor_inputs(policy, views: int, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers PI0ForConditionalGeneration.sample_actions inputs of the same sizes: image placeholder tokens
    for every view + the same prompt, the same pixels and state (no geometry: it has none)."""
    cfg, dev, dtype = policy.config, policy.device, policy.dtype
    pi0 = policy.model.pi0
    arrays = policy.batcher.observation_arrays([observation(policy, views)])
    present = np.flatnonzero(arrays["view_mask"][0])
    img_id = pi0.config.vlm_config.image_token_id
    prompt = torch.from_numpy(arrays["prompt_ids"])
    ids = torch.cat([torch.full((1, views * cfg.tokens_per_view), img_id, dtype=torch.long), prompt], dim=1)
    width = pi0.config.max_action_dim
    state = torch.nn.functional.pad(torch.from_numpy(arrays["state"]), (0, pi0.config.max_state_dim - cfg.state_dim))
    return {"state": state.to(dev, dtype), "input_ids": ids.to(dev),
            "pixel_values": torch.from_numpy(arrays["pixel_values"][:, present]).to(dev, dtype),
            "noise": torch.nn.functional.pad(noise, (0, width - cfg.action_dim)).to(dev, dtype),
            "attention_mask": torch.ones_like(ids).to(dev),
            "pixel_attention_mask": torch.ones(1, views, dtype=torch.bool, device=dev),
            "num_steps": cfg.flow_steps}


def run_table(policy, views: tuple[int, ...] = (3,), iters: int = 20, warm: int = 2,
              engines: tuple[str, ...] = ("torch", "torch_recompute", "transformers_pi0", "torch_graphs",
                                          "onnxruntime", "torch_graphs_compiled"),
              budget_s: float | None = None, onnx_options: dict | None = None,
              log: Callable[[str], None] = print, on_row: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Measure every requested path for every view count; rows are printed as they finish.

    engines (ROWS), measured in the order given: torch (eager, prefix KV reused: the reference; put it first),
    torch_recompute (eager, prefix recomputed every step), transformers_pi0 (the anchor), torch_graphs,
    torch_graphs_cudnn / torch_graphs_efficient (attention restricted to one SDPA kernel), torch_graphs_compiled
    (prefix and flow step torch.compile'd, then captured), onnxruntime (on a CUDA policy only with onnxruntime's
    CUDA provider; the row says why when it is missing). budget_s: a row is skipped, not started, when less than
    its reserve (SLOW_RESERVE_S, else 10 s) of the budget is left. on_row(rows so far): after every row (e.g. to
    save partial results in case the process is stopped)."""
    unknown = [e for e in engines if e not in ROWS]
    if unknown:
        raise ValueError(f"engines {unknown}: choose from {list(ROWS)}")
    t_start = time.perf_counter()
    device = policy.device
    rows: list[Row] = []
    slow_reserve_s = SLOW_RESERVE_S
    for nv in views:
        obs = observation(policy, nv)
        arrays = policy.batcher.observation_arrays([obs])
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn((1, policy.config.chunk_length, policy.config.action_dim), generator=gen)
        noise = noise.to(policy.dtype).float()  # representable in the model dtype: every path starts equal
        reference: np.ndarray | None = None
        for name in engines:
            row = Row(name, nv)
            spent = time.perf_counter() - t_start
            if budget_s is not None and budget_s - spent < slow_reserve_s.get(name, 10.0):
                row.note = f"skipped: {spent:.0f} s of the {budget_s:.0f} s budget spent"
                rows.append(row)
                log(row.line())
                if on_row is not None:
                    on_row(rows)
                continue
            if name == "e2e":
                try:
                    new = pipeline_rows(policy, "torch_graphs", nv, chunks=max(10, iters))
                except Exception as exc:  # noqa: BLE001 - reported as the row's note
                    text = str(exc).strip().splitlines()
                    new = [Row("e2e", nv, note=f"failed: {type(exc).__name__}: {text[0][:160] if text else ''}")]
                for r in new:
                    rows.append(r)
                    log(r.line())
                if on_row is not None:
                    on_row(rows)
                continue
            mem = _Mem(device)
            engine: Any = None  # attributes differ per engine (provider, cuda_graphs, split_ms)
            try:
                with torch.inference_mode():
                    if name == "torch_recompute":
                        batch = Batcher.to_torch(arrays, device, policy.dtype)
                        x = noise.to(device, policy.dtype)

                        def call(b=batch, x=x):
                            return policy.model.sample_actions(b, x, reuse_prefix_cache=False)[0].float().cpu().numpy()
                    elif name == "transformers_pi0":
                        inputs = _anchor_inputs(policy, nv, noise)
                        row.note = "no geometry priors; not comparable numerically"

                        def call(inp=inputs):  # type: ignore[misc]  # one `call` per branch
                            return policy.model.pi0.sample_actions(**inp)[0].float().cpu().numpy()
                    else:
                        kind, options = VARIANTS[name]
                        if kind == "onnxruntime":
                            options = dict(onnx_options or {})
                            why = _onnx_skip_reason(policy, options)
                            if why:
                                raise _Skip(why)
                        engine = make_engine(policy, kind, **options)
                        if kind == "onnxruntime":
                            row.note = f"provider {engine.provider}, {engine.dtype_name}"
                            if engine.provider_note:
                                row.note += f" ({engine.provider_note})"
                        if name.startswith("torch_graphs"):
                            row.note = "CUDA graphs" if engine.cuda_graphs else "static cache, no graphs (CPU)"
                            if options:
                                row.note += f", {options}"

                        def call(e=engine, a=arrays, n=noise):  # type: ignore[misc]  # one `call` per branch
                            return e.sample(a, n)
                    first, out, samples = _time_calls(call, iters, warm, device)
                    if name.startswith("torch_graphs"):
                        split = engine.split_ms()
                        row.note += (f"; prefix {split['prefix_ms']:.1f} ms + {policy.config.flow_steps} steps "
                                     f"{split['denoise_ms']:.1f} ms")
                _fill(row, first, samples)
                row.peak_gib = mem.peak_gib()
                if name == "torch":
                    reference = out
                elif reference is not None and name != "transformers_pi0":
                    row.max_abs_diff = float(np.abs(out[..., :reference.shape[-1]] - reference).max())
            except _Skip as skip:
                row.note = f"skipped: {skip}"
            except Exception as exc:  # noqa: BLE001 - one row's failure (missing provider, compiler, capture) is reported, the table goes on
                text = str(exc).strip().splitlines()
                row.note = f"failed: {type(exc).__name__}: {text[0][:160] if text else ''}"
            finally:
                if engine is not None:
                    engine.close()
                del engine
            rows.append(row)
            log(row.line())
            if on_row is not None:
                on_row(rows)
    return rows


class _Skip(Exception):
    """A row that cannot run here (reported as skipped, not failed)."""


def _onnx_skip_reason(policy, options: dict) -> str:
    """Why the onnxruntime row is skipped on a CUDA policy: its provider would fall back to the CPU (a 3B export
    and CPU run would take many minutes)."""
    if policy.device.type != "cuda":
        return ""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    from posevla.model.engines.onnx_engine import choose_provider

    provider, why = choose_provider(options.get("provider"), "cuda", ort.get_available_providers())
    return why if provider == "cpu" else ""


def pipeline_rows(policy, engine_name: str = "torch_graphs", views: int = 3, chunks: int = 30,
                  options: dict | None = None, timeout_s: float = 120.0, camera_hz: float = 30.0) -> list[Row]:
    """End to end through PipelinedRunner, sequential then pipelined, fed like the robot's cameras: a new
    observation every 1/camera_hz s (stamped when submitted; the newest wins). Per chunk the latency from the
    observation's stamp to the chunk handed out (ms); the note has the chunk period (1 / throughput) and the
    stages' p50s. The engine is warmed up (captured) first; the first 3 chunks of each mode are dropped."""
    from posevla.model.serving import PipelinedRunner

    engine = make_engine(policy, engine_name, **(options or {}))
    base = observation(policy, views)
    rows = []
    try:
        first = engine.warmup(base)
        for pipelined in (False, True):
            name = f"e2e_{'pipelined' if pipelined else 'sequential'}"
            out_ns: list[int] = []
            latency_ms: list[float] = []
            done = threading.Event()

            def on_chunk(chunk, timing, out_ns=out_ns, latency_ms=latency_ms, done=done) -> None:
                now = time.perf_counter_ns()
                out_ns.append(now)
                latency_ms.append((now - chunk.stamp_ns) * 1e-6)
                if len(out_ns) >= chunks + 3:
                    done.set()

            runner = PipelinedRunner(engine, on_chunk, now_ns=time.perf_counter_ns, pipelined=pipelined)
            deadline = time.perf_counter() + timeout_s
            next_frame = time.perf_counter()
            try:
                while not done.is_set() and time.perf_counter() < deadline:
                    obs = copy.copy(base)
                    obs.stamp_ns = time.perf_counter_ns()
                    runner.submit(obs)
                    next_frame += 1.0 / camera_hz
                    done.wait(max(0.0, next_frame - time.perf_counter()))
            finally:
                runner.close()
            if runner.failed:
                raise RuntimeError(f"{name}: {runner.failed} failed calls: {runner.last_error}")
            st = runner.stats()
            # a chunk in flight when `done` was set may still arrive before close(): count exactly `chunks`
            latency_ms, out_ns = latency_ms[:chunks + 3], out_ns[:chunks + 3]
            row = _fill(Row(name, views), first, latency_ms[3:])
            if pipelined:
                row.first_s = None  # the warm-up is counted once, on the sequential row
            period = float(np.median(np.diff(out_ns[3:]))) * 1e-6 if len(out_ns) > 4 else float("nan")
            row.note = (f"{engine_name}, camera {camera_hz:g} Hz; chunk period p50 {period:.1f} ms; stage p50 ms: " +
                        ", ".join(f"{k} {1e3 * st[f'{k}_p50_s']:.1f}"
                                  for k in ("queue", "preprocess", "handoff", "model", "postprocess", "publish")))
            rows.append(row)
    finally:
        engine.close()
    return rows


# aten operators that only make views (no kernel on the GPU); everything else counts as one kernel launch
VIEW_OPS = frozenset({"view", "_unsafe_view", "transpose", "permute", "expand", "slice", "select", "unsqueeze",
                      "squeeze", "as_strided", "t", "alias", "detach", "split", "split_with_sizes", "chunk",
                      "unbind", "_reshape_alias", "reshape", "lift_fresh", "empty"})


def count_ops(policy, views: int = 3, prompt: int = 32, **engine_options) -> dict[str, int]:
    """aten operators (views excluded: about one CUDA kernel each without torch.compile) in the torch_graphs
    engine's prefix and in one flow step, counted on whatever device the policy is on. engine_options: StaticPi0's
    (attention)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from posevla.model.engines.static_kv import StaticPi0, StaticSampler

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] not in VIEW_OPS:
                self.n += 1
            return func(*args, **(kwargs or {}))

    core = StaticPi0(policy.model, **engine_options)
    sampler = StaticSampler(core, core.shape(1, views, prompt), policy.config.flow_steps, policy.device)
    with torch.inference_mode():
        sampler.prefix()
        with Count() as prefix:
            sampler.prefix()
        with Count() as denoise:
            sampler.denoise()
    return {"prefix": prefix.n, "denoise": denoise.n, "step": round(denoise.n / policy.config.flow_steps)}


def histogram(rows: list[Row], bins: int = 30) -> dict[str, dict[str, list[float]]]:
    out = {}
    for r in rows:
        if r.samples_ms:
            counts, edges = np.histogram(r.samples_ms, bins=bins)
            out[f"{r.name} ({r.views} view(s))"] = {"counts": counts.tolist(), "edges_ms": edges.tolist()}
    return out


def save(rows: list[Row], meta: dict, json_path: Path | None, plot_dir: Path | None, plot_name: str) -> list[Path]:
    """JSON (rows with samples, histograms, meta) and, when matplotlib is installed, a histogram PNG."""
    written = []
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows],
                                         "histograms": histogram(rows)}, indent=1))
        written.append(json_path)
    if plot_dir is not None:
        try:
            from posevla.tools.latency_plot import save_latency_plot

            series = {f"{r.name} {r.views}v": np.array(r.samples_ms) for r in rows if r.samples_ms}
            if series:
                written.append(save_latency_plot(series, plot_name, meta.get("title", "Pose-VLA model latency"),
                                                 out_dir=plot_dir))
        except ImportError as exc:  # matplotlib is optional on GPU boxes: the JSON has the histograms
            print(f"no histogram picture ({exc}); histogram counts are in the JSON")
    return written


def describe(policy) -> str:
    cfg = policy.config
    n = sum(p.numel() for p in policy.model.parameters())
    dev = policy.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return (f"{n / 1e6:.1f} M parameters, {policy.dtype}, image {cfg.image_size} px, {cfg.tokens_per_view} tokens/view, "
            f"chunk {cfg.chunk_length}, {cfg.flow_steps} flow steps, device {dev} = {name}, torch {torch.__version__}")


def fp32_parity(policy, views: int = 3, engines: tuple[str, ...] = ("torch_graphs",)) -> dict[str, float]:
    """Cast the policy to fp32 IN PLACE (TF32 off) and return max |engine - eager| of the normalised actions for one
    noise: the graph path's numerics at full size on the device, without bf16 rounding hiding or causing a gap.
    Call it last: the policy stays fp32 afterwards."""
    if policy.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    policy.model.float()
    policy.dtype = torch.float32
    arrays = policy.batcher.observation_arrays([observation(policy, views)])
    noise = torch.randn((1, policy.config.chunk_length, policy.config.action_dim),
                        generator=torch.Generator().manual_seed(0))
    ref = make_engine(policy, "torch").sample(arrays, noise)
    out = {}
    for name in engines:
        engine = make_engine(policy, name)
        try:
            out[name] = float(np.abs(engine.sample(arrays, noise) - ref).max())
        finally:
            engine.close()
    return out
