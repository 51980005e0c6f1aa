"""posevla convert-authors: a tiny checkpoint in the layout of the Pose-VLA authors' code (hetolin/PoseVLA) is made
and saved here, converted, and loaded by PoseVLAPolicy.from_pretrained.

The source's key names come from the authors' module tree (read in their public code): LeRobot's policy holds
`model` = PI0FlowMatching with `paligemma_with_expert.paligemma` (a transformers 4.x PaliGemmaForConditionalGeneration:
`vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`, `language_model.lm_head`),
`paligemma_with_expert.gemma_expert` (GemmaForCausalLM without word embedding), the pi0 projections, and the prior
embeddings `PatchEmbedDust3R_Mlp_{rays,depth}.proj` = Sequential(PixelUnshuffle, Permute, Mlp(fc1, fc2), Permute).
Their tokenizer adds `<transXY{k}>`, `<transZ{k}>`, `<rot{k}>`, `<size{k}>` (zero-padded to the digits of the last
bin), `<imageN>`/`</imageN>` and `<no_object>` after PaliGemma's vocabulary."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.nn import functional as F
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from posevla.cli import main
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.raymap import raymap
from posevla.model.convert_authors import convert
from posevla.model.policy import PoseVLAPolicy

N, R = 8, 12  # the authors' bins per translation/size group, and rotation bins (uniform, a different count)
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
OURS = dict(image_size=28, patch_size=14, chunk_length=8, flow_steps=4, max_prompt_tokens=24, num_pose_bins=16,
            vision=VISION, text=TEXT, expert={"hidden_size": 32, "intermediate_size": 128})
PG = "model.paligemma_with_expert.paligemma."
PRIOR = "model.paligemma_with_expert.PatchEmbedDust3R_Mlp_"
PAD_ROWS = 3  # their table is longer than their tokenizer (as PaliGemma's hub table is): our first rows land there


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _authors_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>", *[f"<loc{i:04d}>" for i in range(4)],
             "pick", "up", "the", "red", "cup"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.add_tokens([f"<transXY{k}>" for k in range(N)] + [f"<transZ{k}>" for k in range(N)]
                   + [f"<rot{k:02d}>" for k in range(R)] + [f"<size{k}>" for k in range(N)])
    tok.add_tokens([f"<{s}image{i}>" for i in range(3) for s in ("", "/")])
    tok.add_tokens(["<no_object>"])
    return tok


def _transformers4(name: str) -> str:
    """transformers 5 PaliGemmaForConditionalGeneration names -> the 4.x names the authors' checkpoints carry."""
    for new, old in (("model.vision_tower.", "vision_tower.vision_model."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")):
        if name.startswith(new):
            return old + name[len(new):]
    raise AssertionError(name)


def _authors_state(rows: int, image_id: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    pg = PaliGemmaForConditionalGeneration(PaliGemmaConfig(
        text_config={"model_type": "gemma", "vocab_size": rows, **TEXT},
        vision_config={"model_type": "siglip_vision_model", "image_size": 28, "patch_size": 14,
                       "vision_use_head": False, **VISION},
        projection_dim=32, image_token_id=image_id))
    expert = GemmaForCausalLM(GemmaConfig(vocab_size=rows, hidden_size=32, intermediate_size=128,
                                          **{k: TEXT[k] for k in ("num_hidden_layers", "num_attention_heads",
                                                                  "num_key_value_heads", "head_dim")}))
    expert.model.embed_tokens = None  # the authors remove it (the expert reads embeddings)
    state = {}
    for k, v in pg.state_dict().items():
        if k == "model.language_model.embed_tokens.weight":
            continue  # tied to the LM head: safetensors' save_model keeps one name of the pair, lm_head
        state[PG + _transformers4(k)] = v.clone()
    for k, v in expert.state_dict().items():
        state["model.paligemma_with_expert.gemma_expert." + k] = v.clone()
    width, e = 32, 32
    for name, (n_out, n_in) in {"state_proj": (e, width), "action_in_proj": (e, width),
                                "action_out_proj": (width, e), "action_time_mlp_in": (e, 2 * e),
                                "action_time_mlp_out": (e, e)}.items():
        lin = torch.nn.Linear(n_in, n_out)
        state[f"model.{name}.weight"], state[f"model.{name}.bias"] = lin.weight.detach(), lin.bias.detach()
    for module, c in (("rays", 3), ("depth", 2)):
        fc1, fc2 = torch.nn.Linear(c * 14 * 14, 4 * 32), torch.nn.Linear(4 * 32, 32)
        for fc, lin in (("fc1", fc1), ("fc2", fc2)):
            state[f"{PRIOR}{module}.proj.2.{fc}.weight"] = lin.weight.detach()
            state[f"{PRIOR}{module}.proj.2.{fc}.bias"] = lin.bias.detach()
    return {k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def authors(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], Path, Path]:
    """(checkpoint dir, its tensors, bins JSON, our model config YAML)."""
    root = tmp_path_factory.mktemp("authors")
    src = root / "model"
    src.mkdir()
    tok = _authors_tokenizer()
    state = _authors_state(len(tok) + PAD_ROWS, tok.convert_tokens_to_ids("<image>"))
    save_file(state, str(src / "model.safetensors"))
    tok.save_pretrained(src)
    (src / "config.json").write_text(json.dumps({
        "type": "posevla", "pi05": False, "add_prior": True, "add_extra_token": True, "add_image_token": False,
        "chunk_size": 8, "n_action_steps": 8, "max_state_dim": 32, "max_action_dim": 32, "proj_width": 32}))
    bins = root / "bins.json"
    bins.write_text(json.dumps({"percentiles_txy": (np.linspace(-1, 1, N + 1) ** 3).tolist(),
                                "percentiles_tz": np.geomspace(0.1, 3.0, N + 1).tolist(),
                                "percentiles_sxyz": np.linspace(0.01, 0.5, N + 1).tolist()}))
    cfg = root / "ours.yaml"
    cfg.write_text(yaml.safe_dump(OURS))
    return src, state, bins, cfg


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["convert-authors", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_converted_checkpoint_loads_with_every_tensor_in_place(authors, tmp_path: Path, capsys) -> None:
    src, state, bins, cfg = authors
    rc, out, err = _cli(capsys, src, tmp_path / "ours", "--config", cfg, "--bins", bins, "--priors", "zero")
    assert rc == 0, err
    n_src = len(state)
    # every tensor but the expert's LM head (unused) and the 8 prior-MLP tensors (--priors zero) is mapped
    assert f"tensors: {n_src} read, {n_src - 9} mapped onto this model, 9 dropped" in out
    pol = PoseVLAPolicy.from_pretrained(tmp_path / "ours", device="cpu")  # strict: no missing/unexpected tensors
    ours = pol.model.state_dict()
    their_tok = _authors_tokenizer()
    emb_t, emb_o = state[PG + "language_model.lm_head.weight"], ours["pi0.model.vlm.language_model.embed_tokens.weight"]
    rows = len(their_tok) + PAD_ROWS
    assert emb_o.shape == (rows + 4 * N - PAD_ROWS, 32) and f"embedding table: {rows} rows -> {rows + 4 * N - 3}" in out
    torch.testing.assert_close(emb_o[: len(their_tok)], emb_t[: len(their_tok)], rtol=0, atol=0)  # their ids kept
    ids_o, ids_t = pol.tokenizer.convert_tokens_to_ids, their_tok.convert_tokens_to_ids
    assert ids_o("<rot_0>") == len(their_tok)  # our first pose token sits on one of their padding rows
    for k in (0, 5, N - 1):  # same bin, same learned row
        torch.testing.assert_close(emb_o[ids_o(f"<trans_xy_{k}>")], emb_t[ids_t(f"<transXY{k}>")], rtol=0, atol=0)
        torch.testing.assert_close(emb_o[ids_o(f"<trans_z_{k}>")], emb_t[ids_t(f"<transZ{k}>")], rtol=0, atol=0)
        torch.testing.assert_close(emb_o[ids_o(f"<size_{k}>")], emb_t[ids_t(f"<size{k}>")], rtol=0, atol=0)
    # rotation: our bin 3 of 8 has its centre at -pi + 3.5 * 2pi/8 = -0.393 rad; the authors' bin k starts at
    # -pi + k * 2pi/11: bin 4 covers [-0.857, -0.286) rad. Our bin 7 (2.749 rad) lies in their bin 10 [2.57, 3.14).
    assert math.floor(3.5 / N * (R - 1)) == 4 and math.floor(7.5 / N * (R - 1)) == 10
    torch.testing.assert_close(emb_o[ids_o("<rot_3>")], emb_t[ids_t("<rot04>")], rtol=0, atol=0)
    torch.testing.assert_close(emb_o[ids_o("<rot_7>")], emb_t[ids_t("<rot10>")], rtol=0, atol=0)
    np.testing.assert_array_equal(pol.pose_tokenizer.edges["trans_z"], np.geomspace(0.1, 3.0, N + 1))
    assert pol.config.num_pose_bins == N
    # a few tensors by place
    pairs = {"pi0.model.vlm.vision_tower.embeddings.patch_embedding.weight":
             PG + "vision_tower.vision_model.embeddings.patch_embedding.weight",
             "pi0.model.vlm.language_model.layers.1.mlp.down_proj.weight": PG + "language_model.model.layers.1.mlp.down_proj.weight",
             "pi0.model.dit.layers.1.self_attn.k_proj.weight":
             "model.paligemma_with_expert.gemma_expert.model.layers.1.self_attn.k_proj.weight",
             "pi0.embed_action_time.action_in_proj.weight": "model.action_in_proj.weight",
             "pi0.action_out_proj.bias": "model.action_out_proj.bias"}
    for mine, theirs in pairs.items():
        torch.testing.assert_close(ours[mine], state[theirs], rtol=0, atol=0)
    assert pol.model.io_width == 32
    assert torch.count_nonzero(ours["geometry.depth.out.weight"]) == 0  # --priors zero: zero output
    chunk = pol.predict(pol.synthetic_observation("pick up the red cup"), noise_seed=0)
    assert np.all(np.isfinite(chunk.arms["left"].T))


def _patches(x: torch.Tensor, p: int = 14) -> torch.Tensor:
    """(C, H, W) -> (n, C*p*p) in pixel-unshuffle order (channel-major, then row, then column), row-major patches."""
    return F.pixel_unshuffle(x[None], p)[0].flatten(1).T


def test_prior_fit_carries_the_authors_prior_embedding(authors, tmp_path: Path) -> None:
    src, state, bins, cfg = authors
    report = convert(src, tmp_path / "ours", config=cfg, bins=bins, priors="fit", fit_steps=150)
    pol = PoseVLAPolicy.from_pretrained(tmp_path / "ours", device="cpu")
    assert report.mapped == len(state) - 9  # 8 prior tensors fitted (not mapped), 1 LM head dropped
    # a real raymap of the model view (28 px, focal 25 px) and a depth prior of a tilted plane with holes
    ray = torch.from_numpy(np.ascontiguousarray(raymap(CameraIntrinsics(25.0, 25.0, 13.5, 13.5, 28, 28))))
    ray = ray.permute(2, 0, 1).contiguous()
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mask = (torch.rand(28, 28, generator=torch.Generator().manual_seed(3)) < 0.7).float()
    depth = torch.stack([(0.8 + 0.01 * xx + 0.005 * yy) * mask, mask])
    for part, x in (("rays", ray), ("depth", depth)):
        p = {k: state[f"{PRIOR}{part}.proj.2.{k}"] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
        theirs = F.linear(F.gelu(F.linear(_patches(x), p["fc1.weight"], p["fc1.bias"])), p["fc2.weight"], p["fc2.bias"])
        module = pol.model.geometry.ray if part == "rays" else pol.model.geometry.depth
        with torch.no_grad():
            mine = module(x[None])[0]
        rel = float((mine - theirs).norm() / theirs.norm())
        # a zero output (--priors zero) scores 1.0. Measured with 150 steps: rays 0.09, depth 0.59 (ours has no
        # biases: on invalid depth pixels it cannot add the constant that the authors' MLP adds)
        limit = 0.2 if part == "rays" else 0.75
        assert rel < limit, (part, rel)
        assert report.prior_fit_error["ray" if part == "rays" else "depth"] < limit


def _edit(src: Path, dst: Path, change) -> Path:  # noqa: ANN001 - a function of the tensors
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_malformed_sources_exit_2_naming_the_key(authors, tmp_path: Path, capsys) -> None:
    src, state, bins, cfg = authors
    common = ("--config", cfg, "--bins", bins, "--priors", "zero")
    extra = _edit(src, tmp_path / "extra", lambda t: t.update({"model.paligemma_with_expert.extra_head.weight":
                                                                 torch.zeros(2)}))
    rc, _, err = _cli(capsys, extra, tmp_path / "o1", *common)
    assert rc == 2 and err.count("\n") == 1 and "unknown tensor model.paligemma_with_expert.extra_head.weight" in err
    missing = _edit(src, tmp_path / "missing", lambda t: t.pop("model.state_proj.weight"))
    rc, _, err = _cli(capsys, missing, tmp_path / "o2", *common)
    assert rc == 2 and err.count("\n") == 1 and "missing tensor model.state_proj.weight" in err
    half = _edit(src, tmp_path / "half", lambda t: t.pop(f"{PRIOR}depth.proj.2.fc2.bias"))
    rc, _, err = _cli(capsys, half, tmp_path / "o3", *common)
    assert rc == 2 and f"missing tensor {PRIOR}depth.proj.2.fc2.bias" in err
    pi05 = _edit(src, tmp_path / "pi05", lambda t: t.update({"model.time_mlp_in.weight": torch.zeros(32, 32)}))
    rc, _, err = _cli(capsys, pi05, tmp_path / "o4", *common)
    assert rc == 2 and "model.time_mlp_in.weight belongs to a pi0.5 expert" in err
    wide = _edit(src, tmp_path / "wide", lambda t: t.update({"model.action_out_proj.bias": torch.zeros(40)}))
    rc, _, err = _cli(capsys, wide, tmp_path / "o5", *common)
    assert rc == 2 and "tensor model.action_out_proj.bias has shape (40,)" in err
    # no bins although the tokenizer has pose tokens; an unknown key in the bins file
    rc, _, err = _cli(capsys, src, tmp_path / "o6", "--config", cfg)
    assert rc == 2 and "pass --bins" in err
    bad_bins = tmp_path / "bad_bins.json"
    bad_bins.write_text(json.dumps({**json.loads(bins.read_text()), "percentiles_q": [0, 1, 2]}))
    rc, _, err = _cli(capsys, src, tmp_path / "o7", "--config", cfg, "--bins", bad_bins)
    assert rc == 2 and "unknown key percentiles_q" in err
    cfg_json = tmp_path / "p05"
    shutil.copytree(src, cfg_json)
    (cfg_json / "config.json").write_text(json.dumps({"type": "posevla", "pi05": True}))
    rc, _, err = _cli(capsys, cfg_json, tmp_path / "o8", *common)
    assert rc == 2 and "field pi05=true" in err
    # without --config: pi0's sizes (models/posevla_3b.yaml), 18 layers where the tiny file has 2
    rc, _, err = _cli(capsys, src, tmp_path / "o9", "--bins", bins, "--priors", "zero")
    assert rc == 2 and "missing tensor model.paligemma_with_expert.gemma_expert.model.layers.10." in err
    assert "sizes: --config" in err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 10))  # nothing written on refusal


def test_sharded_source_converts_like_a_single_file(authors, tmp_path: Path, capsys) -> None:
    src, state, bins, cfg = authors
    shard_dir = tmp_path / "sharded"
    shutil.copytree(src, shard_dir)
    (shard_dir / "model.safetensors").unlink()
    names = sorted(state)
    head = PG + "language_model.lm_head.weight"
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in parts.items():
        # this copy stores the tied table under the embedding's own name
        out = {(PG + "language_model.model.embed_tokens.weight" if k == head else k): state[k] for k in keys}
        save_file(out, str(shard_dir / file))
        weight_map.update({k: file for k in out})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    rc, out, err = _cli(capsys, shard_dir, tmp_path / "ours", "--config", cfg, "--bins", bins, "--priors", "zero")
    assert rc == 0, err
    pol = PoseVLAPolicy.from_pretrained(tmp_path / "ours", device="cpu")
    torch.testing.assert_close(pol.model.state_dict()["pi0.model.vlm.language_model.embed_tokens.weight"][:5],
                               state[head][:5], rtol=0, atol=0)
    (shard_dir / "model-00002-of-00002.safetensors").unlink()
    rc, _, err = _cli(capsys, shard_dir, tmp_path / "o2", "--config", cfg, "--bins", bins)
    assert rc == 2 and "shard model-00002-of-00002.safetensors" in err


def test_fresh_pose_tokens_and_no_priors(authors, tmp_path: Path, capsys) -> None:
    src, state, _, cfg = authors
    no_prior = _edit(src, tmp_path / "no_prior", lambda t: [t.pop(k) for k in list(t) if k.startswith(PRIOR)])
    rc, out, err = _cli(capsys, no_prior, tmp_path / "ours", "--config", cfg, "--fresh-pose-tokens")
    assert rc == 0, err
    assert "prior embeddings: none in the checkpoint" in out and "1 dropped" in out  # add_prior off: no MLPs
    assert "pose-token rows moved: none" in out and "rot 16, trans_xy 16, trans_z 16, size 16" in out
    pol = PoseVLAPolicy.from_pretrained(tmp_path / "ours", device="cpu")
    assert pol.config.num_pose_bins == 16  # ours (from --config), not the authors' 8
    assert torch.count_nonzero(pol.model.geometry.ray.out.weight) == 0  # no priors in the source: zero output
    emb_t = state[PG + "language_model.lm_head.weight"]
    emb_o = pol.model.state_dict()["pi0.model.vlm.language_model.embed_tokens.weight"]
    ids = pol.tokenizer.convert_tokens_to_ids([f"<trans_xy_{k}>" for k in range(16)])
    # new rows: the mean of the authors' table plus noise of 1 % of its spread
    dev = (emb_o[ids] - emb_t.mean(0)).abs().max()
    assert 0 < dev < 0.05 * emb_t.std()


def test_full_size_layout_maps_onto_the_3b_config_without_gaps() -> None:
    """The authors' full-size module tree (pi0 sizes, their defaults) on the meta device: every tensor but the expert's
    LM head and the prior MLPs lands on a tensor of models/posevla_3b.yaml with the same shape (the word embedding
    only gains our pose-token rows)."""
    from posevla.model.config import PoseVLAConfig
    from posevla.model.convert_authors import map_authors_names
    from posevla.model.network import PoseVLAModel
    from posevla.paths import models_dir

    cfg = PoseVLAConfig.from_yaml(models_dir() / "posevla_3b.yaml")
    rows = 257152 + 3 * 1024 + 360 + 7  # PaliGemma + transXY/transZ/size (paper: 1024 each) + rot + image/no_object
    with torch.device("meta"):
        pg = PaliGemmaForConditionalGeneration(PaliGemmaConfig(
            text_config={"model_type": "gemma", "vocab_size": rows, **cfg.text},
            vision_config={"model_type": "siglip_vision_model", "image_size": 224, "patch_size": 14,
                           "vision_use_head": False, **cfg.vision},
            projection_dim=2048, image_token_id=257152))
        expert = GemmaForCausalLM(GemmaConfig(vocab_size=257152, hidden_size=1024, intermediate_size=4096,
                                              num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
                                              head_dim=256))  # their gemma_expert_config defaults
        state = {PG + _transformers4(k): v for k, v in pg.state_dict().items()
                 if k != "model.language_model.embed_tokens.weight"}
        state.update({"model.paligemma_with_expert.gemma_expert." + k: v for k, v in expert.state_dict().items()
                      if k != "model.embed_tokens.weight"})
        for name, (n_out, n_in) in {"state_proj": (1024, 32), "action_in_proj": (1024, 32),
                                    "action_out_proj": (32, 1024), "action_time_mlp_in": (1024, 2048),
                                    "action_time_mlp_out": (1024, 1024)}.items():
            state[f"model.{name}.weight"], state[f"model.{name}.bias"] = torch.empty(n_out, n_in), torch.empty(n_out)
        for module, c in (("rays", 3), ("depth", 2)):
            for fc, (n_out, n_in) in (("fc1", (4 * 1152, c * 196)), ("fc2", (1152, 4 * 1152))):
                state[f"{PRIOR}{module}.proj.2.{fc}.weight"] = torch.empty(n_out, n_in)
                state[f"{PRIOR}{module}.proj.2.{fc}.bias"] = torch.empty(n_out)
        ours, _, priors, dropped = map_authors_names(state)
        model = PoseVLAModel(cfg, rows + 4 * cfg.num_pose_bins, 257152, 0, 32)
    own = model.state_dict()
    assert len(state) == 785 and len(ours) == 776 and sorted(priors) == ["depth", "ray"]
    assert dropped == ["model.paligemma_with_expert.gemma_expert.lm_head.weight"]
    assert sorted(set(own) - set(ours)) == sorted(k for k in own if k.startswith("geometry."))
    assert not set(ours) - set(own)
    mismatched = [k for k, v in ours.items() if v.shape != own[k].shape]
    assert mismatched == ["pi0.model.vlm.language_model.embed_tokens.weight"]
    assert own[mismatched[0]].shape[0] - ours[mismatched[0]].shape[0] == 4 * 1024  # our pose rows, appended
