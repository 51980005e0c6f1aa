"""Inference engines against the eager reference (PoseVLAModel.sample_actions) on the tiny config, on the CPU.

Tolerance: the static-cache path and the ONNX graphs compute the same fp32 arithmetic in a different order
(SDPA over a preallocated cache vs transformers' dynamic cache; absent views dropped instead of masked),
so the normalised actions (|a| ~ 1-4) agree to ATOL = 1e-4 (measured ~5e-7).
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posevla.model.engines import ENGINES, make_engine
from posevla.model.engines.static_kv import KV_ALIGN, StaticPi0, StaticSampler, prompt_bucket
from posevla.model.policy import PoseVLAPolicy

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny.yaml"
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this module (robust on a loaded machine); the suite's setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(one_thread) -> PoseVLAPolicy:
    pol = PoseVLAPolicy.from_config(TINY, seed=3, device="cpu")
    # geometry's output projections and Gemma's RMSNorm weights start at zero; give them values so the
    # modalities change the answer and the norms' (1 + w) scale is exercised
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for lin in (pol.model.geometry.ray.out, pol.model.geometry.depth.out):
            lin.weight.copy_(0.05 * torch.randn(lin.weight.shape, generator=gen))
        for name, prm in pol.model.named_parameters():
            if "norm" in name and "layernorm" in name or name.endswith("dit.norm.weight"):
                prm.add_(0.1 * torch.randn(prm.shape, generator=gen))
    return pol


def _arrays(policy, views=None, instruction="pick up the red cube"):
    obs = policy.synthetic_observation(instruction)
    if views is not None:
        obs.views = {k: v for k, v in obs.views.items() if k in views}
    return obs, policy.batcher.observation_arrays([obs])


@pytest.fixture(scope="module")
def eager(policy):
    return make_engine(policy, "torch")


@pytest.fixture(scope="module")
def graphs(policy):
    return make_engine(policy, "torch_graphs")


@pytest.mark.parametrize("views,modalities", [(None, "full"), (None, "rgb"), (("head", "right_wrist"), "rgb+depth"),
                                              (("head",), "rgb+ray")])
def test_static_cache_matches_eager(policy, eager, graphs, views, modalities):
    _, arrays = _arrays(policy, views)
    noise = eager.noise(11)
    ref = eager.sample(arrays, noise, modalities)
    got = graphs.sample(arrays, noise, modalities)
    assert got.shape == (policy.config.chunk_length, policy.config.action_dim)
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    # the comparison is not vacuous: another modality or noise gives another answer
    other = eager.sample(arrays, noise, "rgb" if modalities != "rgb" else "full")
    assert np.abs(other - ref).max() > 100 * ATOL
    assert np.abs(graphs.sample(arrays, eager.noise(12), modalities) - ref).max() > 100 * ATOL


@pytest.mark.parametrize("views,modalities", [(None, "full"), (("head",), "rgb+ray")])
def test_matmul_attention_matches_eager(policy, eager, views, modalities):
    """attention="matmul" (scores as a batched GEMM with the fp32 bias, fp32 softmax, GEMM with the values)."""
    engine = make_engine(policy, "torch_graphs", attention="matmul")
    assert engine.core.bias_dtype() == torch.float32
    _, arrays = _arrays(policy, views)
    noise = eager.noise(13)
    np.testing.assert_allclose(engine.sample(arrays, noise, modalities), eager.sample(arrays, noise, modalities),
                               rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="attention"):
        make_engine(policy, "torch_graphs", attention="flash3")
    with pytest.raises(ValueError, match="sdpa_backend"):
        make_engine(policy, "torch_graphs", sdpa_backend="tpu")


def test_compiled_step_traces_as_one_graph_and_matches_eager(policy, eager):
    """torch.compile of the prefix and the flow step (aot_eager backend here: the tracing and the in-place buffer
    updates, without Inductor's C++ build): one graph each, no graph break, no recompilation per step."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    engine = make_engine(policy, "torch_graphs", compile=True, compile_backend="aot_eager")
    _, arrays = _arrays(policy)
    for seed, modalities in ((8, "full"), (9, "rgb")):
        noise = eager.noise(seed)
        np.testing.assert_allclose(engine.sample(arrays, noise, modalities), eager.sample(arrays, noise, modalities),
                                   rtol=0, atol=ATOL)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert not torch._dynamo.utils.counters["graph_break"]


def test_kernels_per_flow_step():
    """The loop is launch-bound: operators (about one CUDA kernel each, uncompiled) per expert layer and per step.
    The previous sampler had 23 per layer + 25 per step (439 per step at 18 layers); now 18 + 12 (336)."""
    from posevla.model.config import PoseVLAConfig
    from posevla.model.engines.bench import count_ops

    steps = {}
    for layers in (2, 3):
        cfg = PoseVLAConfig.from_yaml(TINY)
        cfg.text = {**cfg.text, "num_hidden_layers": layers}
        steps[layers] = count_ops(PoseVLAPolicy.from_config(cfg, seed=0, device="cpu"))["step"]
    layer = steps[3] - steps[2]
    fixed = steps[2] - 2 * layer
    assert 10 <= layer <= 18 and 4 <= fixed <= 12, (layer, fixed)


def test_prompt_buckets_and_padding(policy, eager, graphs):
    short = policy.batcher.observation_arrays([policy.synthetic_observation("go")])
    long = policy.batcher.observation_arrays([policy.synthetic_observation("pick up the red cube and place it "
                                                                           "in the blue bowl on the left")])
    n_short, n_long = short["prompt_ids"].shape[1], long["prompt_ids"].shape[1]
    assert prompt_bucket(n_short, 48) == 16 and n_short < 16  # padded inside the bucket
    assert prompt_bucket(n_long, 48) > 16
    noise = eager.noise(5)
    for arrays in (short, long):
        np.testing.assert_allclose(graphs.sample(arrays, noise), eager.sample(arrays, noise), rtol=0, atol=ATOL)
    assert prompt_bucket(1, 48) == 16 and prompt_bucket(17, 48) == 32 and prompt_bucket(48, 48) == 48
    assert prompt_bucket(60, 64) == 64
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        prompt_bucket(49, 48)
    with pytest.raises(ValueError, match="at least"):
        prompt_bucket(0, 48)


def test_static_buffers_never_move(policy):
    """The cache and every input/output keep their storage across calls (what CUDA graph replay relies on)."""
    core = StaticPi0(policy.model)
    shape = core.shape(1, 3, 32)
    assert shape.kv_len % KV_ALIGN == 0 and shape.kv_len >= shape.prefix_len + 1 + policy.config.chunk_length
    sampler = StaticSampler(core, shape, policy.config.flow_steps, torch.device("cpu"))
    ptrs = {k: v.data_ptr() for k, v in sampler.inputs.items()}
    ptrs.update(k=sampler.k_cache.data_ptr(), v=sampler.v_cache.data_ptr(), out=sampler.actions.data_ptr())
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(0)
        for name in ("pixel_values", "raymaps", "depth_priors", "noise", "state"):
            sampler.inputs[name].copy_(torch.randn(sampler.inputs[name].shape, generator=gen))
        sampler.inputs["prompt_mask"][:, :20] = True
        first = sampler.run().clone()
        sampler.inputs["noise"].mul_(-1)
        second = sampler.run().clone()
    after = {k: v.data_ptr() for k, v in sampler.inputs.items()}
    after.update(k=sampler.k_cache.data_ptr(), v=sampler.v_cache.data_ptr(), out=sampler.actions.data_ptr())
    assert after == ptrs
    assert not torch.allclose(first, second)
    # padding slots past prefix + suffix are never written
    end = shape.prefix_len + shape.suffix_len
    assert torch.count_nonzero(sampler.k_cache[:, :, :, end:]) == 0


def test_frequencies_stay_fp32_under_bf16(policy):
    model = copy.deepcopy(policy.model)
    core = StaticPi0(model).to(torch.bfloat16)
    assert core.action_out.weight.dtype == torch.bfloat16
    for name in ("rope_freq_prefix", "rope_freq_expert", "time_freq"):
        assert getattr(core, name).dtype == torch.float32
    ref = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))  # tiny head_dim 16, theta 1e4
    torch.testing.assert_close(core.rope_freq_prefix, ref, rtol=0, atol=0)
    # a bf16-rounded frequency would be off by up to 2**-9 relative
    assert (core.time_freq.to(torch.bfloat16).float() != core.time_freq).any()


def test_onnxruntime_matches_eager(policy, eager, tmp_path):
    pytest.importorskip("onnxruntime")
    engine = make_engine(policy, "onnxruntime", onnx_dir=tmp_path, intra_op_threads=1)
    _, arrays = _arrays(policy)
    for modalities in ("full", "rgb+ray", "rgb"):  # one exported shape; the modality is a graph input
        noise = eager.noise(21)
        np.testing.assert_allclose(engine.sample(arrays, noise, modalities), eager.sample(arrays, noise, modalities),
                                   rtol=0, atol=ATOL)
        assert not policy.model.training  # export shares the policy's modules and must leave them in eval mode
    assert sorted(p.name for p in (tmp_path / "v3_p32_float32").iterdir()) == ["prefix.onnx", "sampler.onnx"]
    engine.close()


def test_onnxruntime_provider_choice_and_fallback(policy, caplog):
    """auto takes CUDA only for a CUDA policy with onnxruntime-gpu; a missing provider falls back TensorRT -> CUDA
    -> CPU with the reason logged; unknown names are refused."""
    pytest.importorskip("onnxruntime")
    from posevla.model.engines.onnx_engine import choose_provider

    cpu_only, gpu = ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = ["TensorrtExecutionProvider", *gpu]
    assert choose_provider(None, "cpu", gpu) == ("cpu", "")
    assert choose_provider("auto", "cuda", gpu) == ("cuda", "")
    assert choose_provider("tensorrt", "cuda", trt) == ("tensorrt", "")
    provider, why = choose_provider("auto", "cuda", cpu_only)
    assert provider == "cpu" and "CUDAExecutionProvider" in why and "onnxruntime-gpu" in why
    provider, why = choose_provider("tensorrt", "cuda", gpu)
    assert provider == "cuda" and "TensorrtExecutionProvider" in why and "falling back to cuda" in why
    provider, why = choose_provider("tensorrt", "cuda", cpu_only)
    assert provider == "cpu" and "TensorrtExecutionProvider" in why and "CUDAExecutionProvider" in why
    with pytest.raises(ValueError, match="provider='quantum'"):
        choose_provider("quantum", "cpu", gpu)
    # this machine's onnxruntime is the CPU build: asking for TensorRT runs on the CPU, says why, exports fp32
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with caplog.at_level("WARNING", logger="posevla.engines.onnxruntime"):
            engine = make_engine(policy, "onnxruntime", provider="tensorrt")
        assert engine.provider == "cpu" and engine.dtype_name == "float32"
        assert "falling back to cpu" in engine.provider_note and "falling back to cpu" in caplog.text
        engine.close()
    # provider options: the policy's GPU, TensorRT fp16 with its engine cache next to the ONNX files
    engine = make_engine(policy, "onnxruntime", provider="cpu", dtype="float16")
    options = dict(engine.provider_list("tensorrt")[0][1])
    assert options["trt_fp16_enable"] is True and options["trt_engine_cache_path"].endswith("trt_cache")
    assert engine.provider_list("cuda")[0] == ("CUDAExecutionProvider", {"device_id": 0})
    assert engine.provider_list("cpu") == ["CPUExecutionProvider"]
    engine.close()


def test_engine_predict_matches_policy(policy, graphs):
    obs, _ = _arrays(policy)
    ref = policy.predict(obs, noise_seed=4)
    got = graphs.predict(obs, noise_seed=4)
    for arm in policy.config.arms:
        np.testing.assert_allclose(got.arms[arm].T, ref.arms[arm].T, atol=1e-4)
        np.testing.assert_allclose(got.arms[arm].gripper, ref.arms[arm].gripper, atol=1e-4)
    assert got.frame_id == ref.frame_id and got.stamp_ns == ref.stamp_ns
    split = graphs.split_ms(repeat=2)
    assert split["prefix_ms"] > 0 and split["denoise_ms"] > 0
    assert set(graphs.last_timing) == {"preprocess_s", "model_s", "postprocess_s"}
    assert all(v >= 0 for v in graphs.last_timing.values())


def test_flow_noise_scale_zero_gives_deterministic_chunks(policy, graphs):
    """flow_noise_scale 0 starts the flow from zero noise: the policy and every engine return the same chunk for
    any noise seed (and the same as each other); at 1 different seeds give different chunks."""
    obs, _ = _arrays(policy)
    a, b = policy.predict(obs, noise_seed=1), policy.predict(obs, noise_seed=2)
    assert np.abs(a.arms["left"].T - b.arms["left"].T).max() > 1e-4  # sampled: the seed matters
    try:
        policy.flow_noise_scale = 0.0
        assert float(graphs.noise(5).abs().max()) == 0.0 and float(policy._noise(1, 5).abs().max()) == 0.0
        a, b = policy.predict(obs, noise_seed=1), policy.predict(obs, noise_seed=2)
        g = graphs.predict(obs, noise_seed=3)
        for arm in policy.config.arms:
            np.testing.assert_array_equal(a.arms[arm].T, b.arms[arm].T)
            np.testing.assert_allclose(g.arms[arm].T, a.arms[arm].T, atol=1e-4)
        policy.flow_noise_scale = 0.5
        torch.manual_seed(0)
        assert float(policy._noise(1, 5).std()) == pytest.approx(0.5, rel=0.1)
    finally:
        policy.flow_noise_scale = 1.0


def test_engine_errors(policy):
    with pytest.raises(ValueError, match="must be one of"):
        make_engine(policy, "tensorflow")
    with pytest.raises(ValueError, match="invalid options"):
        make_engine(policy, "torch_graphs", warp_speed=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_engine(policy, "torch_graphs", cuda_graphs=True)
    with pytest.raises(ValueError, match="modalities"):
        make_engine(policy, "torch_graphs").predict(policy.synthetic_observation(), modalities="lidar")
    if "onnxruntime" in ENGINES:
        pytest.importorskip("onnxruntime")
        with pytest.raises(ValueError, match="provider"):
            make_engine(policy, "onnxruntime", provider="quantum")


def _infer_check():
    spec = importlib.util.spec_from_file_location("infer_check", REPO / "scripts" / "gpu" / "infer_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_check_script_runs_on_cpu(tmp_path, monkeypatch, capsys):
    """scripts/gpu/infer_check.py end to end on the tiny config (in-process: torch is already imported): the
    table (eager first whatever the order asked), the pipelined end-to-end rows, parity and the JSON in $OUT."""
    monkeypatch.setenv("OUT", str(tmp_path))
    script = _infer_check()
    code = script.main(["--device", "cpu", "--config", str(TINY), "--iters", "2",
                        "--engines", "torch_recompute,transformers_pi0,torch_graphs,e2e,torch"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity vs eager" in out and "torch_graphs" in out
    data = json.loads((tmp_path / "infer_check.json").read_text())
    assert "partial" not in data["meta"] and data["meta"]["parity_ok"] is True
    names = [r["name"] for r in data["rows"]]
    assert names == ["torch", "torch_recompute", "transformers_pi0", "torch_graphs", "e2e_sequential",
                     "e2e_pipelined"]
    rows = {r["name"]: r for r in data["rows"]}
    for name in ("torch", "torch_recompute", "transformers_pi0", "torch_graphs"):
        r = rows[name]
        assert r["views"] == 3 and len(r["samples_ms"]) == 2 and r["p50_ms"] > 0 and r["first_s"] > 0
    assert rows["torch_graphs"]["max_abs_diff"] < ATOL and rows["torch_recompute"]["max_abs_diff"] < ATOL
    for name in ("e2e_sequential", "e2e_pipelined"):  # observation -> chunk through the runner: 10 chunks each
        r = rows[name]
        assert len(r["samples_ms"]) == 10 and 0 < r["p50_ms"] <= r["p90_ms"], r
        assert "chunk period p50" in r["note"] and "preprocess" in r["note"] and "handoff" in r["note"]
        # the latency covers at least the model call of the same engine
        assert r["p50_ms"] > 0.5 * rows["torch_graphs"]["p50_ms"]
    assert sum(data["histograms"]["torch_graphs (3 view(s))"]["counts"]) == 2
    # a budget smaller than the model build: every row skipped (not started), the JSON still written
    assert script.main(["--device", "cpu", "--config", str(TINY), "--budget-s", "0.5",
                        "--engines", "torch,torch_graphs"]) == 0
    data = json.loads((tmp_path / "infer_check.json").read_text())
    assert [r["note"].split(":")[0] for r in data["rows"]] == ["skipped", "skipped"]
    capsys.readouterr()
    # bad input: one line naming the flag, exit code 2, no traceback
    assert script.main(["--device", "cpu", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert script.main(["--device", "cpu", "--config", str(TINY), "--engines", "tensorflow"]) == 2
    assert script.main(["--device", "cpu", "--config", str(TINY), "--budget-s", "0"]) == 2
    err = capsys.readouterr().err
    assert "--config" in err and "--engines" in err and "--budget-s" in err and "Traceback" not in err
    # --help works without running anything
    with pytest.raises(SystemExit) as done:
        script.main(["--help"])
    assert done.value.code == 0 and "--budget-s" in capsys.readouterr().out


def _start_policy_node(rclpy, ckpt: Path, engine: str):
    from posevla_ros.policy_node import PolicyNode

    rclpy.init(args=["--ros-args", "-p", f"checkpoint:={ckpt}", "-p", f"engine:={engine}", "-p", "device:=cpu",
                     "-p", "instruction:=pick up the red cube"])
    try:
        return PolicyNode()
    except Exception:
        rclpy.shutdown()
        raise


def test_policy_node_engine_and_stage_timings(policy, tmp_path):
    """The node runs the pipelined runner around its engine; /diagnostics has p50/p90/max of every stage."""
    rclpy = pytest.importorskip("rclpy")
    import time

    from posevla_ros.policy_node import STAGES

    from posevla.model.serving import STAGES as RUNNER_STAGES

    assert STAGES == RUNNER_STAGES  # the node's torch-free copy of the list
    ckpt = policy.save_pretrained(tmp_path / "ckpt")
    node = _start_policy_node(rclpy, ckpt, "torch_graphs")
    try:
        assert node.engine.name == "torch_graphs"
        obs = node.policy.synthetic_observation("pick up the red cube")
        chunk = node._predict(obs)
        ref = node.policy.predict(obs, noise_seed=1)
        assert chunk.frame_id == ref.frame_id and chunk.arms.keys() == ref.arms.keys()
        published = []
        node.chunk_pub.publish = published.append
        for stamp in (1, 2):
            obs.stamp_ns = stamp
            node._on_observation(obs)
            deadline = time.perf_counter() + 120.0
            while node.runner.completed < stamp and time.perf_counter() < deadline:
                time.sleep(0.01)
        assert node.runner.completed == 2 and len(published) == 2 and node.runner.failed == 0
        sent = []
        node.diag_pub.publish = sent.append
        node._publish_diagnostics()
        values = {kv.key: kv.value for kv in sent[0].status[0].values}
        assert values["engine"] == "torch_graphs" and values["completed"] == "2"
        for stage in STAGES:
            p50, p90, top = (float(values[f"{stage}_{q}_s"]) for q in ("p50", "p90", "max"))
            assert 0.0 <= p50 <= p90 <= top, stage
        assert float(values["model_p50_s"]) > 0.0 and float(values["preprocess_p50_s"]) > 0.0
        assert float(values["publish_max_s"]) < 60.0
    finally:
        node.destroy_node()
        rclpy.shutdown()
    with pytest.raises(ValueError, match="engine"):
        _start_policy_node(rclpy, ckpt, "tensorrt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA-graph capture and replay)")
def test_cuda_graphs_match_eager_on_gpu():
    """Capture once, then replay with other inputs: every replay matches eager (fp32, TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pol = PoseVLAPolicy.from_config(TINY, seed=3, device="cuda")
    pol.model.float()
    pol.dtype = torch.float32
    eager_e, graphs_e = make_engine(pol, "torch"), make_engine(pol, "torch_graphs")
    assert graphs_e.cuda_graphs
    for seed, instruction, modalities in ((1, "pick up the red cube", "full"), (2, "stack the cups", "rgb"),
                                          (3, "pick up the red cube", "rgb+depth")):
        _, arrays = _arrays(pol, None, instruction)
        noise = eager_e.noise(seed)
        np.testing.assert_allclose(graphs_e.sample(arrays, noise, modalities), eager_e.sample(arrays, noise, modalities),
                                   rtol=0, atol=1e-3)
    assert len(graphs_e._graphs) >= 1
    # the matmul attention (fp32-output GEMM on CUDA) and the pipelined runner (copy stream + events) on the GPU
    matmul_e = make_engine(pol, "torch_graphs", attention="matmul")
    _, arrays = _arrays(pol)
    noise = eager_e.noise(4)
    np.testing.assert_allclose(matmul_e.sample(arrays, noise), eager_e.sample(arrays, noise), rtol=0, atol=1e-3)
    import threading

    from posevla.model.serving import PipelinedRunner

    chunks: dict[int, object] = {}
    done = threading.Event()

    def on_chunk(chunk, timing) -> None:
        chunks[chunk.stamp_ns] = chunk
        if chunk.stamp_ns == 3:
            done.set()

    runner = PipelinedRunner(graphs_e, on_chunk, noise_seed=lambda o: o.stamp_ns)
    for stamp in (1, 2, 3):
        obs = pol.synthetic_observation("pick up the red cube")
        obs.stamp_ns = stamp
        runner.submit(obs)
    assert done.wait(120)
    runner.close()
    for stamp, chunk in chunks.items():
        obs = pol.synthetic_observation("pick up the red cube")
        obs.stamp_ns = stamp
        ref = graphs_e.predict(obs, noise_seed=stamp)
        np.testing.assert_allclose(chunk.arms["left"].T, ref.arms["left"].T, rtol=0, atol=1e-6)
