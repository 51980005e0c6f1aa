"""Pose pre-training figures: exact 3D IoU cost, reader throughput, bin quantisation error, and a tiny model's
AP15 on held-out generated scenes before and after pre-training; on CUDA also the full model's training step.

    posevla bench pretrain                      # CPU: tiny model, POSEVLA_BENCH_PRETRAIN_STEPS steps (default 3000)
    OUT=/tmp/out python benchmarks/bench_pretrain.py    # also writes $OUT/bench_pretrain.json

Environment: POSEVLA_BENCH_PRETRAIN_PLACEMENT (lattice: boxes on a 3 x 3 lattice, the default; free: the red box
anywhere, zoomed head camera, 4000 training scenes, 12000 steps then 6000 more from that checkpoint -- held-out
boxes stand where no training box did, and the image-blind constant answer is printed beside the model),
POSEVLA_BENCH_PRETRAIN_STEPS (steps of the tiny run's first schedule), POSEVLA_BENCH_PRETRAIN_STEPS2 (steps of a
second schedule from its checkpoint at lr 5e-4; default 6000 with free placement, else 0), POSEVLA_BENCH_QUICK=1 (a
seconds-long smoke run, used by the tests), POSEVLA_BENCH_FULL_CONFIG (model config of the CUDA step timing,
default models/posevla_3b.yaml). The data path needs OpenCV and h5py; where they are missing (a bare GPU box)
those parts are reported as skipped and the CUDA timing uses in-memory samples.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from posevla.geometry import se3  # noqa: E402
from posevla.pretrain.boxes import Box3D, box_iou_3d  # noqa: E402


def bench_iou(n: int) -> dict:
    rng = np.random.default_rng(0)
    pairs = [(Box3D(se3.T_from_xyz_rpy(rng.uniform(-0.05, 0.05, 3) + [0, 0, 1], rng.uniform(-3, 3, 3)),
                    rng.uniform(0.05, 0.2, 3)),
              Box3D(se3.T_from_xyz_rpy(rng.uniform(-0.05, 0.05, 3) + [0, 0, 1], rng.uniform(-3, 3, 3)),
                    rng.uniform(0.05, 0.2, 3))) for _ in range(n)]
    t0 = time.perf_counter()
    ious = [box_iou_3d(a, b) for a, b in pairs]
    dt = time.perf_counter() - t0
    return {"iou_us_per_pair": dt / n * 1e6, "iou_pairs": n, "iou_mean": float(np.mean(ious))}


def bench_data(root: Path, n: int) -> dict:
    from posevla.pretrain import synthetic
    from posevla.pretrain.bop import BOPReader
    from posevla.pretrain.omni3d import Omni3DReader
    from posevla.pretrain.records import ViewMaker

    t0 = time.perf_counter()
    info = synthetic.write_dataset(root, n, "train", seed=5)
    out = {"generate_ms_per_image": (time.perf_counter() - t0) / n * 1e3}
    views = ViewMaker(112)
    for name, reader in (("omni3d", Omni3DReader(info["omni3d_json"], info["omni3d_root"], info["omni3d_depth_root"])),
                         ("bop", BOPReader(info["bop_root"], "train", info["bop_root"] / "object_names.json"))):
        t0 = time.perf_counter()
        imgs = list(reader)
        t1 = time.perf_counter()
        for img in imgs:
            views(img)
        t2 = time.perf_counter()
        out[f"{name}_index_ms_per_image"] = (t1 - t0) / len(imgs) * 1e3
        out[f"{name}_view_ms_per_image"] = (t2 - t1) / len(imgs) * 1e3
    return out


def write_grounding(root: Path, train_images: int, test_images: int, fixed_camera: bool, grid: int,
                    free: bool = False) -> None:
    """One box per scene: on a grid x grid lattice (yaw 0), or with `free` the red box anywhere in the +-0.16 m
    area (yaw 0) seen by the head-like camera zoomed onto that area (focal 1.5 image widths)."""
    from posevla.pretrain import synthetic

    for split, n, seed in (("train", train_images, 1), ("test", test_images, 2)):
        if free:
            synthetic.write_dataset(root / split, n, split, seed=seed, max_objects=1, fixed_camera=True,
                                    intr=synthetic.default_intrinsics(focal_scale=1.5), max_yaw_deg=0.0,
                                    categories=1)
        else:
            synthetic.write_dataset(root / split, n, split, seed=seed, max_objects=1, fixed_camera=fixed_camera,
                                    grid=grid)
        (root / f"{split}.yaml").write_text(yaml.safe_dump({"sources": [{
            "name": f"synthetic_{split}", "format": "omni3d", "negatives": 0,
            "json": f"{split}/omni3d/Omni3D_synthetic_{split}.json", "image_root": f"{split}/omni3d",
            "depth_root": f"{split}/omni3d/depth"}]}))


def image_blind_ap(root: Path, max_train_boxes: int = 400) -> float:
    """AP15 on the held-out scenes of the best constant answer (the training box that overlaps most others, from
    up to `max_train_boxes` training boxes): what a model that ignores the image can reach."""
    from posevla.pretrain.evaluation import best_constant_answer, constant_answer_ap
    from posevla.pretrain.omni3d import Omni3DReader
    from posevla.pretrain.targets import PretrainSample

    def images(split: str) -> list:
        d = root / split / "omni3d"
        return list(Omni3DReader(d / f"Omni3D_synthetic_{split}.json", d, d / "depth"))

    boxes: dict = {}
    for img in images("train")[:max_train_boxes]:
        for o in img.objects:
            boxes.setdefault(o.category, []).append(o.box)
    samples = [PretrainSample(None, "synthetic_test", o.category, [x.box for x in img.objects if x.category == o.category],
                              img.image_id) for img in images("test") for o in img.objects[:1]]
    return float(constant_answer_ap(best_constant_answer(boxes), samples)["ap"])


def bench_grounding(root: Path, steps: int, quick: bool, device: str, free: bool = False, steps2: int = 0) -> dict:
    """Tiny model: AP15 on held-out generated scenes without pre-training and after `steps` steps; `free`: boxes
    placed anywhere (held-out boxes stand where no training box did), else on a 3 x 3 lattice; `steps2` > 0: a
    second cosine schedule of that many steps from the first one's checkpoint (lr 5e-4)."""
    from posevla.model.pose_tokens import PoseTokenizer
    from posevla.pretrain import train as pretrain_cli
    from posevla.pretrain.mixture import fit_values, read_mixture
    from posevla.pretrain.tokenizer_cli import quantisation_report

    train_images, test_images = (16, 4) if quick else ((4000 if free else 1000), 60)
    write_grounding(root, train_images, test_images, fixed_camera=True, grid=3, free=free)
    cfg = yaml.safe_load((REPO / "models" / "tiny.yaml").read_text())
    cfg.update(views=["head"], image_size=56, num_pose_bins=32)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    t, s, _ = fit_values(read_mixture(root / "train.yaml"))
    tok = PoseTokenizer(32).fit(t, s)
    tok.save(root / "bins.json")
    rep = quantisation_report(tok, t, s)
    p = argparse.ArgumentParser()
    pretrain_cli.add_arguments(p)
    common = ["--stage", "grounding", "--config", str(root / "cfg.yaml"), "--bins", str(root / "bins.json"),
              "--eval-data", str(root / "test.yaml"), "--eval-questions", str(test_images), "--device", device,
              "--max-new-tokens", "32" if quick else "96"]
    before = pretrain_cli.pretrain(p.parse_args([*common, "--eval-only"]))["eval"][-1]
    t0 = time.perf_counter()
    after = pretrain_cli.pretrain(p.parse_args([
        *common, "--data", str(root / "train.yaml"), "--out", str(root / "run"), "--steps", str(steps),
        "--batch-size", "8", "--lr", "1e-3", "--min-lr", "5e-5", "--warmup", str(min(100 if free else 30, steps)),
        "--weight-decay", "0", "--modality-dropout", "0"]))
    train_s = time.perf_counter() - t0
    res = after["eval"][-1]
    out = {}
    if steps2 > 0:  # a second schedule from the first one's checkpoint (warm restart at half the peak lr)
        first = res
        t1 = time.perf_counter()
        after = pretrain_cli.pretrain(p.parse_args([
            "--stage", "grounding", "--init", str(root / "run" / "checkpoint"), *common[6:],
            "--data", str(root / "train.yaml"), "--out", str(root / "run2"), "--steps", str(steps2),
            "--batch-size", "8", "--lr", "5e-4", "--min-lr", "2.5e-5", "--warmup", str(min(100, steps2)),
            "--weight-decay", "0", "--modality-dropout", "0"]))
        res = after["eval"][-1]
        out = {"ap15_after_first_schedule": first["ap"], "grounding_steps_second_schedule": steps2,
               "grounding_second_schedule_s": time.perf_counter() - t1}
    return {**out, "grounding_placement": "free" if free else "lattice 3x3", "ap15_image_blind": image_blind_ap(root),
            "grounding_steps": steps, "grounding_train_s": train_s, "grounding_step_ms": train_s / steps * 1e3,
            "ap15_untrained": before["ap"], "ap15_pretrained": res["ap"], "ap15_questions": res["questions"],
            "decode_after": res["decode"], "loss_first10": float(np.mean([r["loss"] for r in after["log"][:10]])),
            "loss_last10": float(np.mean([r["loss"] for r in after["log"][-10:]])),
            "bins32_worst_case_mm": {g: rep[g]["worst_case_mm"] for g in ("trans_xy", "trans_z", "size") if g in rep}}


def bench_cuda_step(config: Path, batch: int = 8, steps: int = 5) -> dict:
    """Full model training step (bf16 autocast, float32 weights) on in-memory samples; no OpenCV needed."""
    from posevla.geometry.intrinsics import CameraIntrinsics
    from posevla.geometry.raymap import raymap
    from posevla.model.batching import TrainingSample
    from posevla.model.policy import PoseVLAPolicy
    from posevla.model.pose_sequence import PoseTuple, encode_tuples
    from posevla.types import ArmState, ModelView, Observation, RobotState

    policy = PoseVLAPolicy.from_config(config, device="cuda")
    policy.model.to(torch.float32)
    policy.dtype = torch.float32
    cfg, s = policy.config, policy.config.image_size
    rng = np.random.default_rng(0)
    intr = CameraIntrinsics(s * 0.9, s * 0.9, (s - 1) / 2, (s - 1) / 2, s, s)
    samples = []
    for _ in range(batch):
        view = ModelView(cfg.reference_view, rng.integers(0, 255, (s, s, 3), dtype=np.uint8), raymap(intr),
                         np.stack([rng.uniform(0.3, 1.5, (s, s)), np.ones((s, s))], -1).astype(np.float32), intr,
                         "cam", 0, np.eye(4))
        T = se3.T_from_xyz_rpy(rng.uniform(-0.2, 0.2, 3) + [0, 0, 0.6], rng.uniform(-1, 1, 3))
        answer = encode_tuples([PoseTuple("red box", (0.5, 0.5), T, np.array([0.1, 0.06, 0.05]))] * 2,
                               policy.pose_tokenizer)
        arms = {a: ArmState(np.eye(4), np.zeros(6), 0.0, 0) for a in cfg.arms}
        samples.append(TrainingSample(Observation({cfg.reference_view: view}, RobotState(arms, 0), "detect 3d red box", 0),
                                      pose_text=answer))
    batch_t = policy.make_batch(samples)
    model = policy.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch_t)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    model.eval()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(batch_t, 48, policy.tokenizer.eos_token_id, "full")
    torch.cuda.synchronize()
    gen = time.perf_counter() - t0
    return {"cuda_config": str(config), "cuda_batch": batch, "cuda_step_ms": float(np.median(times[1:]) * 1e3),
            "cuda_samples_per_s": batch / float(np.median(times[1:])),
            "cuda_peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "cuda_generate_48_tokens_ms": gen * 1e3, "cuda_device": torch.cuda.get_device_name()}


def main() -> dict:
    quick = os.environ.get("POSEVLA_BENCH_QUICK") == "1"
    free = os.environ.get("POSEVLA_BENCH_PRETRAIN_PLACEMENT", "lattice") == "free"
    if os.environ.get("POSEVLA_BENCH_PRETRAIN_PLACEMENT", "lattice") not in ("lattice", "free"):
        raise SystemExit("POSEVLA_BENCH_PRETRAIN_PLACEMENT must be lattice or free")
    steps = 5 if quick else int(os.environ.get("POSEVLA_BENCH_PRETRAIN_STEPS", "12000" if free else "3000"))
    steps2 = (3 if free else 0) if quick else int(os.environ.get("POSEVLA_BENCH_PRETRAIN_STEPS2", "6000" if free else "0"))
    if not torch.cuda.is_available():
        torch.set_num_threads(1 if quick else min(2, os.cpu_count() or 1))
    out: dict = {}
    out.update(bench_iou(20 if quick else 500))
    try:
        import cv2  # noqa: F401
        import h5py  # noqa: F401
        have_data_path = True
    except ModuleNotFoundError as exc:
        have_data_path = False
        out["data_path_skipped"] = f"{exc.name} missing"
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        if have_data_path:
            out.update(bench_data(Path(tmp) / "readers", 4 if quick else 100))
            out.update(bench_grounding(Path(tmp) / "grounding", steps, quick, "cuda" if cuda else "cpu", free, steps2))
    if cuda:
        config = Path(os.environ.get("POSEVLA_BENCH_FULL_CONFIG", REPO / "models" / "posevla_3b.yaml"))
        out.update(bench_cuda_step(config))
    print("\npose pre-training")
    for k, v in out.items():
        print(f"  {k:32s} {v:.3f}" if isinstance(v, float) else f"  {k:32s} {v}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "bench_pretrain.json").write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
