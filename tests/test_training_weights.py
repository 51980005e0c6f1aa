"""Weights in: PoseVLAPolicy.from_pi0 for transformers-format and LeRobot-format pi0 checkpoints (tiny ones made
and saved here), built on the meta device, the expert's word embedding dropped, 32-wide state/action heads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import PI0Config, PI0ForConditionalGeneration

from posevla.model.config import PoseVLAConfig
from posevla.model.policy import PoseVLAPolicy
from posevla.model.pose_tokens import PoseTokenizer
from posevla.model.text_tokenizer import build_offline_tokenizer

TINY = dict(image_size=28, patch_size=14, chunk_length=8, flow_steps=4, max_prompt_tokens=24,
            vision={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 16},
            expert={"hidden_size": 32, "intermediate_size": 128})
# transformers PI0 names -> LeRobot PI0Policy names (written out here from LeRobot's layout, not from our loader)
LEROBOT_NAMES = (("model.vlm.", "model.paligemma_with_expert.paligemma.model."),
                 ("model.dit.", "model.paligemma_with_expert.gemma_expert.model."),
                 ("embed_action_time.", "model."), ("action_out_proj.", "model.action_out_proj."))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny pi0 (32-wide state/action, PaliGemma vocabulary of the stand-in tokenizer) saved by transformers."""
    tok = build_offline_tokenizer(PoseTokenizer(4).with_default_edges())  # stands in for PaliGemma's tokenizer
    t, v = TINY["text"], TINY["vision"]
    config = PI0Config(
        vlm_config={"model_type": "paligemma", "text_config": {"model_type": "gemma", "vocab_size": len(tok), **t},
                    "vision_config": {"model_type": "siglip_vision_model", "image_size": 28, "patch_size": 14,
                                      "vision_use_head": False, **v},
                    "projection_dim": t["hidden_size"], "image_token_id": tok.convert_tokens_to_ids("<image>")},
        dit_config={"model_type": "gemma", "hidden_size": 32, "intermediate_size": 128,
                    **{k: t[k] for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")}},
        chunk_size=8, max_state_dim=32, max_action_dim=32)
    torch.manual_seed(0)
    model = PI0ForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("pi0") / "transformers"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lerobot_copy(stock: tuple[Path, dict], folder: Path, head_only: bool = True) -> Path:
    """The same weights in LeRobot's layout; like LeRobot's hub files, the VLM's tied embedding as lm_head only."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, tensor in stock[1].items():
        if "sinusoid" in name:
            continue
        new = next(n + name[len(o):] for o, n in LEROBOT_NAMES if name.startswith(o))
        new = new.replace(".vision_tower.", ".vision_tower.vision_model.")  # SigLIP as LeRobot's transformers 4 had it
        if head_only and new.endswith("paligemma.model.language_model.embed_tokens.weight"):
            new = "model.paligemma_with_expert.paligemma.lm_head.weight"
        if new.endswith("gemma_expert.model.embed_tokens.weight"):
            new = "model.paligemma_with_expert.gemma_expert.lm_head.weight"
        out[new] = tensor.contiguous()
    save_file(out, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"type": "pi0", "chunk_size": 8, "max_state_dim": 32,
                                                    "max_action_dim": 32}))
    build_offline_tokenizer(PoseTokenizer(4).with_default_edges()).save_pretrained(folder)
    return folder


def _check_loaded(pol: PoseVLAPolicy, weights: dict[str, torch.Tensor]) -> None:
    ours = pol.model.state_dict()
    assert "pi0.model.dit.embed_tokens.weight" not in ours  # dropped: the expert reads embeddings only
    assert pol.model.io_width == 32 and ours["pi0.embed_action_time.state_proj.weight"].shape == (32, 32)
    checked = 0
    for name, tensor in weights.items():
        if "sinusoid" in name or name == "model.dit.embed_tokens.weight":
            continue
        mine = ours["pi0." + name]
        if name.endswith("vlm.language_model.embed_tokens.weight"):
            torch.testing.assert_close(mine[: tensor.shape[0]], tensor, rtol=0, atol=0)
            assert mine.shape[0] == len(pol.tokenizer) > tensor.shape[0]  # pose-token rows appended
        else:
            torch.testing.assert_close(mine, tensor, rtol=0, atol=0)
        checked += 1
    assert checked > 40
    assert not any(p.device.type == "meta" for p in pol.model.parameters())
    assert not any(b.device.type == "meta" for b in pol.model.buffers())
    assert torch.count_nonzero(pol.model.geometry.ray.out.weight) == 0  # new part: zero output
    obs = pol.synthetic_observation("pick up the red cup")
    chunk = pol.predict(obs, noise_seed=0)
    assert chunk.arms["left"].T.shape == (8, 4, 4) and np.all(np.isfinite(chunk.arms["left"].T))


def test_from_pi0_transformers_format(stock) -> None:
    pol = PoseVLAPolicy.from_pi0(stock[0], config=PoseVLAConfig(**TINY), device="cpu")
    assert pol.config.text["hidden_size"] == 32 and pol.config.chunk_length == 8
    _check_loaded(pol, stock[1])


def test_from_pi0_lerobot_format(stock, tmp_path: Path) -> None:
    folder = _lerobot_copy(stock, tmp_path / "lerobot")
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    pol = PoseVLAPolicy.from_pi0(folder, config=cfg_path, device="cpu")
    _check_loaded(pol, stock[1])
    # the loaded model saves and reloads as a Pose-VLA checkpoint, bit-identically
    pol.save_pretrained(tmp_path / "ckpt")
    again = PoseVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    obs = pol.synthetic_observation("stack the cups")
    np.testing.assert_array_equal(pol.predict(obs, noise_seed=1).arms["right"].T,
                                  again.predict(obs, noise_seed=1).arms["right"].T)


def test_from_pi0_names_what_does_not_fit(stock, tmp_path: Path) -> None:
    folder = _lerobot_copy(stock, tmp_path / "lerobot")
    wrong = dict(TINY, expert={"hidden_size": 48, "intermediate_size": 128})
    with pytest.raises(ValueError, match=r"tensor pi0\..* has shape \(32,\), the model config expects \(48,\)"):
        PoseVLAPolicy.from_pi0(folder, config=PoseVLAConfig(**wrong), device="cpu")
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["model.paligemma_with_expert.extra_head.weight"] = torch.zeros(2)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="unknown tensors.*extra_head"):
        PoseVLAPolicy.from_pi0(folder, config=PoseVLAConfig(**TINY), device="cpu")
    with pytest.raises(ValueError, match="is not a directory"):
        PoseVLAPolicy.from_pi0(tmp_path / "nothing")


def test_old_checkpoints_with_the_expert_embedding_still_load(tmp_path: Path) -> None:
    pol = PoseVLAPolicy.from_config(PoseVLAConfig(**TINY), seed=0, device="cpu")
    state = {k: v.contiguous() for k, v in pol.model.state_dict().items()}
    state["pi0.model.dit.embed_tokens.weight"] = torch.zeros(len(pol.tokenizer), 32)  # as saved before the drop
    pol.save_pretrained(tmp_path / "ckpt", state_dict=state)
    loaded = PoseVLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    obs = pol.synthetic_observation("x")
    np.testing.assert_array_equal(pol.predict(obs, noise_seed=0).arms["left"].T,
                                  loaded.predict(obs, noise_seed=0).arms["left"].T)
