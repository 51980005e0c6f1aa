"""Mixed precision: fp32 master weights under bf16 autocast learn at small learning rates, and a model cast to bf16
for serving keeps RoPE / flow-time frequencies in fp32 and predicts what the fp32 model predicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from posevla.geometry import se3
from posevla.model.batching import TrainingSample
from posevla.model.config import PoseVLAConfig
from posevla.model.io_transforms import pose_to_vector
from posevla.model.network import PoseVLAModel
from posevla.model.policy import PoseVLAPolicy

TINY = dict(image_size=28, patch_size=14, chunk_length=8, flow_steps=4, max_prompt_tokens=24,
            vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 16},
            expert={"hidden_size": 32, "intermediate_size": 128})


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast on a loaded machine
    yield
    torch.set_num_threads(n)


def _samples(policy: PoseVLAPolicy, n: int = 2) -> list[TrainingSample]:
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        obs = policy.synthetic_observation("pick up the red cup")
        for v in obs.views.values():
            v.rgb = rng.integers(0, 255, v.rgb.shape, dtype=np.uint8)
        obs.views["head"].T_base_cam = se3.T_from_xyz_rpy([-0.25, 0, 0.7], [-2.2, 0, -1.57])
        k = policy.config.chunk_length
        T = se3.T_from_xyz_rpy(np.c_[np.linspace(0, 0.1, k), np.full(k, 0.05 * i), np.full(k, 0.8)],
                               np.tile([0.1 * i, 0.2, 0.3], (k, 1)))
        out.append(TrainingSample(obs, np.concatenate([pose_to_vector(T, np.full(k, 0.2)),
                                                       pose_to_vector(T, np.full(k, 0.9))], -1)))
    return out


def _one_step(model: PoseVLAModel, batch: dict, autocast: bool, lr: float = 1e-5) -> tuple[float, int]:
    """One AdamW step; returns (fraction of gradient-receiving weights that changed, how many received one)."""
    model.train()
    torch.manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = model(batch)["loss"]
    loss.backward()
    grads = [p.grad is not None and p.grad.ne(0) for p in params]
    torch.optim.AdamW(params, lr=lr, weight_decay=1e-4).step()
    changed = got = 0
    for p, b, g in zip(params, before, grads):
        if g is False:
            continue
        got += int(g.sum())
        changed += int((p.detach() != b)[g].sum())
    return changed / got, got


def test_fp32_master_weights_under_bf16_autocast_all_move_at_lr_1e5() -> None:
    pol = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=0, device="cpu", dtype=torch.float32)
    batch = pol.make_batch(_samples(pol))
    assert all(p.dtype == torch.float32 for p in pol.model.parameters())
    frac, got = _one_step(pol.model, batch, autocast=True)
    # Weights outside the word-embedding table (whose unused tokens' rows get none) that receive a gradient: 65 %
    # here. None reach the VLM's last-layer query/output/MLP and final norm (the flow loss reads only its keys and
    # values) nor the geometry patch convolutions (their zero-initialised output layer passes no gradient back).
    dense = sum(p.numel() for n, p in pol.model.named_parameters() if "embed_tokens" not in n)
    assert got > 0.5 * dense, (got, dense)
    assert frac > 0.999, frac  # essentially every one of them moves
    print(f"fp32 master + bf16 autocast: {100 * frac:.3f} % of {got} weights with a gradient changed")
    assert all(p.dtype == torch.float32 for p in pol.model.parameters())
    # the defect this replaces: AdamW directly on bf16 weights leaves most of them where they were
    bf16 = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=0, device="cpu", dtype=torch.bfloat16)
    frac_bf16, _ = _one_step(bf16.model, bf16.make_batch(_samples(bf16)), autocast=False)
    assert frac_bf16 < 0.5, frac_bf16
    print(f"bf16 weights: {100 * frac_bf16:.1f} % changed")


def test_casting_to_bf16_keeps_rope_and_time_frequencies_fp32() -> None:
    model = PoseVLAModel(PoseVLAConfig(**TINY), 600, 3, 0)
    names = set(model.fp32_buffers)
    assert {"pi0.embed_action_time.sinusoid_embeds.sinusoid_freq",
            "pi0.model.vlm.language_model.rotary_emb.inv_freq", "pi0.model.dit.rotary_emb.inv_freq",
            "pi0.model.vlm.language_model.embed_tokens.embed_scale"} <= names
    t = torch.tensor([0.9, 0.37])
    emb = model.pi0.embed_action_time.sinusoid_embeds
    ref = emb(t)
    fresh_rope = model.pi0.model.dit.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    buffers = dict(model.named_buffers())
    for name in names:
        assert buffers[name].dtype == torch.float32, name
    assert torch.equal(model.pi0.model.dit.rotary_emb.inv_freq, fresh_rope)
    assert torch.equal(emb(t), ref)  # bit-identical time embedding (it moved by up to 1.8 with bf16 buffers)
    # what the buffer cast used to do: frequencies rounded to bf16 move sin/cos at t=0.9 by far more than bf16 eps
    rounded = emb.sinusoid_freq.to(torch.bfloat16).float()
    emb_rounded = torch.cat([(rounded * 0.9).sin(), (rounded * 0.9).cos()])
    assert (emb_rounded - ref[0]).abs().max() > 0.5
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_fp32_trained_checkpoint_served_in_bf16_predicts_within_tolerance(tmp_path) -> None:
    pol = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=4, device="cpu", dtype=torch.float32)
    batch = pol.make_batch(_samples(pol))
    model = pol.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(20):  # an fp32-trained model (weights away from their initialisation)
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    pol.save_pretrained(tmp_path / "ckpt")
    fp32 = PoseVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu", dtype=torch.float32)
    bf16 = PoseVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu", dtype=torch.bfloat16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.model.pi0.embed_action_time.sinusoid_embeds.sinusoid_freq.dtype == torch.float32
    pos_err, rot_err = [], []
    for i, s in enumerate(_samples(pol, 3)):
        a, b = fp32.predict(s.observation, noise_seed=i), bf16.predict(s.observation, noise_seed=i)
        for arm in a.arms:
            pos_err.append(np.abs(a.arms[arm].T[:, :3, 3] - b.arms[arm].T[:, :3, 3]).max())
            rot_err.append(np.degrees(se3.rotation_angle(
                np.swapaxes(a.arms[arm].T[:, :3, :3], -1, -2) @ b.arms[arm].T[:, :3, :3])).max())
    # Stated tolerance of the bf16 path: 2 cm and 3 deg on this tiny model, whose outputs span ~1 m (identity
    # normalisation; a fitted one scales errors by the action std, ~0.1 m). Measured: 6.8 mm, 0.30 deg.
    print(f"bf16 vs fp32 serving: {1e3 * max(pos_err):.2f} mm, {max(rot_err):.3f} deg")
    assert max(pos_err) < 0.02, pos_err
    assert max(rot_err) < 3.0, rot_err


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        pol = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=5, device="cpu", dtype=torch.float32)
        if checkpointing:
            pol.model.enable_gradient_checkpointing()
        pol.model.train()
        torch.manual_seed(1)
        pol.model(pol.make_batch(_samples(pol)))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in pol.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_resolve_device_gives_cuda_an_index() -> None:
    """`posevla train --device cuda` failed on an H200 ("Expected a torch.device with a specified index"):
    torch.cuda.set_device needs an index, so a bare `cuda` becomes this process's GPU."""
    from posevla.training.train import resolve_device

    assert str(resolve_device("cuda", 0, True)) == "cuda:0"
    assert str(resolve_device("cuda", 3, True)) == "cuda:3"  # torchrun's LOCAL_RANK
    assert str(resolve_device("cuda:1", 3, True)) == "cuda:1"  # an explicit index is kept
    assert str(resolve_device(None, 2, True)) == "cuda:2" and str(resolve_device(None, 2, False)) == "cpu"
    assert str(resolve_device("cpu", 0, True)) == "cpu"
