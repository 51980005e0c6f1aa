"""Episode storage, old (JPEG + deflate depth) vs new (H.264 + FFV1 depth): MB per 30 s episode of three
640x480 RGB-D cameras at 30 Hz, encode headroom, colour PSNR, depth bit-exactness, and the training
loader's random-access samples/s for both.

Frames come from `posevla.dataset.synthetic_streams` (ray-cast tabletop with a world-fixed texture, colour
sensor noise, RealSense-like correlated depth noise and holes); only `--unique` scene renders per camera are
made (played back and forth, fresh noise on every frame), because rendering is slow here. Sizes are measured
on `--seconds` of recording and scaled to 30 s (size is linear in frames).

    python benchmarks/bench_dataset.py [--seconds 30] [--gops 15] [--samples 60]
Writes runs/bench/dataset.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from posevla.calibration.files import episode_calibration_meta
from posevla.dataset.reader import EpisodeReader
from posevla.dataset.synthetic_streams import StreamConfig, SyntheticRGBD
from posevla.dataset.video import ColourCodec, psnr
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.types import ArmState, RobotState

CAMS = ("head", "left_wrist", "right_wrist")
COMPACT = "veryfast:15:8:psnr:5"  # docs/datasets.md "Smaller episodes": 5.4x with bit-exact stored depth
REPO = Path(__file__).resolve().parents[1]


def record(root: Path, storage: str, codec: ColourCodec, seconds: float, fps: float, unique: int, keep_every: int,
           size: tuple[int, int], depth_codec: str = "ffv1", depth_every: int = 1) -> dict:
    cfg = StreamConfig(size[0], size[1], fps)
    gens = {c: SyntheticRGBD(c, cfg, seed=i) for i, c in enumerate(CAMS)}
    n = int(round(seconds * fps))
    streams = {c: g.frames(n, unique=unique) for c, g in gens.items()}
    calib = episode_calibration_meta(sorted((REPO / "calibration").glob("*.yaml")))  # so the training dataset can use the episode
    w = EpisodeWriter(root, f"bench_{storage}_{codec.preset}_{codec.crf}_{codec.gop}_{codec.tune}_{depth_codec}_{depth_every}",
                      {"instruction": "bench", "fps": fps, "calibration": calib}, {c: g.intrinsics for c, g in gens.items()},
                      min_free_bytes=256 * 1024 * 1024, storage=storage, colour_codec=codec, depth_codec=depth_codec,
                      depth_every=depth_every)
    kept: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    depth_kept: dict[int, dict[str, np.ndarray]] = {}  # kept frame -> the depth stored for it (its source frame's)
    source_depth: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for k in range(n):
        frames = {c: next(s) for c, s in streams.items()}
        if k % depth_every == 0:
            source_depth = {c: f[1] for c, f in frames.items()}
        if k % keep_every == 0:
            kept[k], depth_kept[k] = frames, source_depth
        stamp = 1_700_000_000_000_000_000 + int(k * 1e9 / fps)
        state = RobotState({a: ArmState(se3.T_from_xyz_rpy([0.4, 0.3 * (1 if a == "left" else -1), 0.2 + 0.001 * k],
                                                           [3.1, 0, 0]), np.zeros(6), 0.5, stamp) for a in ("left", "right")},
                           stamp)
        rec = FrameRecord(stamp, {c: f[0] for c, f in frames.items()}, {c: f[1] for c, f in frames.items()},
                          {c: stamp for c in CAMS}, state, np.zeros(14))
        while w.backlog >= 48:  # measure the encoder, not the queue: wait for room
            time.sleep(0.002)
        if not w.add_frame(rec):
            raise RuntimeError(f"writer refused frame {k}: {w.error}")
    path = w.finish(True)
    wall = time.perf_counter() - t0
    with EpisodeReader(path) as ep:
        parts = ep.stored_bytes()
        psnrs, exact = [], True
        for k, frames in kept.items():  # sequential read of the kept frames
            for c in CAMS:
                psnrs.append(psnr(ep.rgb(c, k), frames[c][0]))
                exact &= bool(np.array_equal(ep.raw_depth(c, k), depth_kept[k][c]))
    total = path.stat().st_size
    scale = 30.0 / seconds
    cpu_set = w.encode_cpu_s / max(w.frames_written, 1)
    video = storage == "video"
    return {"storage": storage, "preset": codec.preset if video else None, "gop": codec.gop if video else None,
            "crf": codec.crf if video else None, "tune": codec.tune if video else None,
            "depth_codec": w.depth_codec, "depth_every": depth_every, "depth_hz": fps / depth_every, "path": str(path), "encode_cpu_ms_per_frame_set": 1e3 * cpu_set,
            "cores_needed": cpu_set * fps,
            "frames": n, "mb_per_30s": total * scale / 1e6, "colour_mb_per_30s": parts["colour"] * scale / 1e6,
            "depth_mb_per_30s": parts["depth"] * scale / 1e6,
            "per_camera_mb_per_30s": {k: v * scale / 1e6 for k, v in parts.items() if "/" in k},
            "encode_ms_per_frame_set": 1e3 * w.encode_s / max(w.frames_written, 1),
            "headroom": w.encode_s / max(w.frames_written, 1) * fps, "wall_s": wall,
            "psnr_db_mean": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs)), "depth_bit_exact": exact}


def _ls_residual_entropy(d: np.ndarray) -> float:
    """Bits per pixel of a codec-independent estimate: zeroth-order entropy of the residual of the least-squares
    linear predictor from 12 causal neighbours (fitted on this frame, valid pixels only)."""
    d = d.astype(np.float64)
    h, w = d.shape
    offs = [(0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-1, -2), (-2, -1), (-2, 1), (-1, 2), (-2, -2), (-2, 2)]
    c = d[2:, 2:-2]
    x = np.stack([d[2 + a:h + a, 2 + b:w - 2 + b] for a, b in offs], -1)
    m = (c > 0) & np.all(x > 0, -1)
    a = np.c_[x[m], np.ones(int(m.sum()))]
    r = np.round(c[m] - a @ np.linalg.lstsq(a, c[m], rcond=None)[0]).astype(np.int64)
    _, cnt = np.unique(r, return_counts=True)
    p = cnt / cnt.sum()
    return float(-(p * np.log2(p)).sum())


def depth_study(size: tuple[int, int], fps: float, frames: int) -> dict:
    """Where the depth bytes go and what lossless coding can reach: per camera, bits per pixel and encoder CPU of
    FFV1 (the format's), JPEG-LS, PNG-16 and zstd on delta-coded depth, beside the LS-predictor entropy estimate,
    and FFV1 after a +-1 unit (near-lossless) quantisation for comparison (not bit-exact; not used by the format)."""
    import zlib
    from fractions import Fraction

    import av
    import cv2

    from posevla.dataset.video import DepthEncoder
    try:
        from backports import zstd
    except ImportError:  # zstd (a rosbags dependency) is optional here
        zstd = None

    def lavc(codec: str, w: int, h: int):
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w, h, "gray16le", Fraction(1, 1000)
        ctx.open()

        def enc(d: np.ndarray) -> int:
            return sum(p.size for p in ctx.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(d), format="gray16le")))
        return enc

    def delta_zstd(d: np.ndarray) -> int:
        res = np.diff(d.astype(np.int32), axis=1, prepend=0).astype(np.int16).view(np.uint8).reshape(-1, 2).T
        data = np.ascontiguousarray(res).tobytes()
        return len(zstd.compress(data, 3) if zstd is not None else zlib.compress(data, 1))

    def near1(d: np.ndarray) -> np.ndarray:  # bins of 3 units, 0 (invalid) kept apart
        return np.where(d == 0, 0, (d.astype(np.int64) - 1) // 3 + 1).astype(np.uint16)

    cfg = StreamConfig(size[0], size[1], fps)
    out: dict = {}
    for i, cam in enumerate(CAMS):
        depth = [f[1] for f in SyntheticRGBD(cam, cfg, seed=i).frames(frames, unique=max(1, frames // 2))]
        ffv1 = DepthEncoder(*size)
        coders = {"ffv1": lambda d, e=ffv1: len(e.encode(d)), "jpeg-ls": lavc("jpegls", *size),
                  "png-16": lambda d: len(cv2.imencode(".png", d, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1]),
                  "zstd(delta)" if zstd is not None else "zlib(delta)": delta_zstd}
        near = DepthEncoder(*size)
        coders["ffv1 near-lossless +-1"] = lambda d, e=near: len(e.encode(near1(d)))
        row = {"invalid_fraction": float(np.mean([np.mean(d == 0) for d in depth])),
               "ls_entropy_bpp": float(np.mean([_ls_residual_entropy(d) for d in depth[:3]]))}
        for name, enc in coders.items():
            enc(depth[0])  # warm up
            c0 = time.process_time()
            sizes = [enc(d) for d in depth]
            row[name] = {"bpp": 8 * float(np.mean(sizes)) / (size[0] * size[1]),
                         "mb_per_30s": float(np.mean(sizes)) * fps * 30 / 1e6,
                         "cpu_ms": 1e3 * (time.process_time() - c0) / len(depth)}
        out[cam] = row
    return out


def loader_rate(path: str, samples: int, seed: int = 0) -> dict:
    """Random-access samples/s of EpisodeReader.frame (3 cameras: colour + depth), one process, cold reader."""
    with EpisodeReader(path) as ep:
        idx = np.random.default_rng(seed).integers(0, ep.num_frames, samples)
        ep.frame(int(idx[0]))  # open decoders
        t0, c0 = time.perf_counter(), time.process_time()
        for i in idx:
            ep.frame(int(i))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        decoded = sum(d.frames_decoded for d in ep._colour.values())
    out = {"samples_per_s": samples / dt, "ms_per_sample": 1e3 * dt / samples, "cpu_ms_per_sample": 1e3 * cpu / samples,
           "colour_frames_decoded_per_sample": decoded / (samples + 1) / len(CAMS) if decoded else 1.0}
    try:  # the trainer's dataset (observation builder, targets) on the same episode, tiny model config
        import yaml

        from posevla.model.config import PoseVLAConfig
        from posevla.training.episode_dataset import EpisodeChunkDataset

        cfg = PoseVLAConfig.from_dict(yaml.safe_load((REPO / "models" / "tiny.yaml").read_text()))
        data = EpisodeChunkDataset([path], cfg)
        idx = np.random.default_rng(seed + 1).integers(0, len(data), samples)
        data[int(idx[0])]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in idx:
            data[int(i)]
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        data.close()
        out.update(train_samples_per_s=samples / dt, train_cpu_ms_per_sample=1e3 * cpu / samples,
                   train_views=list(cfg.views))
    except Exception as exc:  # noqa: BLE001 - the trainer is optional here; say why it was skipped
        out["train_error"] = f"{type(exc).__name__}: {exc}"
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds recorded per format (sizes scaled to 30 s)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--unique", type=int, default=8, help="scene renders per camera (slow: ~1 s each here)")
    d = ColourCodec()
    ap.add_argument("--video", nargs="+", default=[f"{d.preset}:{d.crf}:{d.gop}:{d.tune}", COMPACT],
                    metavar="PRESET:CRF:GOP[:TUNE[:DEPTH_EVERY]]",
                    help="x264 settings of the video rows, optionally with depth stored every k-th frame (default: "
                         "the format's default and the compact settings of docs/datasets.md)")
    ap.add_argument("--deflate-depth", action="store_true", help="also record the first video row with deflate depth")
    ap.add_argument("--samples", type=int, default=60, help="random samples for the loader rate")
    ap.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    ap.add_argument("--study-frames", type=int, default=6,
                    help="frames per camera for the depth-codec study (0: skip it)")
    args = ap.parse_args(argv if argv is not None else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codecs = []
        for spec in args.video:
            try:
                preset, crf, gop, *rest = spec.split(":")
                if len(rest) > 2:
                    raise ValueError("too many fields")
                every = int(rest[1]) if len(rest) > 1 else 1
                if not 1 <= every <= 30:
                    raise ValueError(f"DEPTH_EVERY {every} outside 1..30")
                codecs.append((ColourCodec(preset=preset, crf=int(crf), gop=int(gop), tune=rest[0] if rest else "none"),
                               every))
            except ValueError as exc:
                raise SystemExit(f"bench_dataset: --video {spec!r}: {exc} (expected PRESET:CRF:GOP[:TUNE[:DEPTH_EVERY]], "
                                 "e.g. veryfast:17:4:psnr or faster:16:4:psnr:3)") from None
        configs = [("jpeg", ColourCodec(), "deflate", 1)] + [("video", c, "ffv1", k) for c, k in codecs]
        if args.deflate_depth:
            configs.append(("video", codecs[0][0], "deflate", 1))
        for storage, codec, depth_codec, every in configs:
            r = record(Path(tmp), storage, codec, args.seconds, args.fps, args.unique, 10, tuple(args.size), depth_codec,
                       every)
            r["loader"] = loader_rate(r.pop("path"), args.samples)
            rows.append(r)
            print(f"  recorded {storage} {depth_codec}: {r['frames']} frames in {r['wall_s']:.0f} s", flush=True)
    old = rows[0]
    period_ms = 1e3 / args.fps
    print(f"\n{args.size[0]}x{args.size[1]} RGB-D x {len(CAMS)} cameras at {args.fps:.0f} Hz; sizes per 30 s episode "
          f"(measured on {args.seconds:.0f} s)")
    print(f"{'format':36s} {'MB/30s':>7s} {'colour':>7s} {'depth':>7s} {'smaller':>7s} {'PSNR dB (min)':>14s} "
          f"{'depth exact':>11s} {'enc CPU ms/set':>14s} {'cores@' + str(int(args.fps)) + 'Hz':>9s} {'wall/period':>11s} "
          f"{'loader samples/s':>16s} {'CPU ms/sample':>13s} {'train samples/s':>15s} {'CPU ms':>7s}")
    for r in rows:
        name = ("jpeg q90 + deflate (today)" if r["storage"] == "jpeg" else
                f"h264 {r['preset'][:5]} crf{r['crf']} gop{r['gop']} {r['tune']}+{r['depth_codec']}"
                + (f"@{r['depth_hz']:.0f}Hz" if r["depth_every"] > 1 else ""))
        print(f"{name:36s} {r['mb_per_30s']:7.1f} {r['colour_mb_per_30s']:7.1f} {r['depth_mb_per_30s']:7.1f} "
              f"{old['mb_per_30s'] / r['mb_per_30s']:6.2f}x {r['psnr_db_mean']:6.2f} ({r['psnr_db_min']:5.2f}) "
              f"{str(r['depth_bit_exact']):>11s} {r['encode_cpu_ms_per_frame_set']:14.1f} {r['cores_needed']:9.2f} "
              f"{r['headroom']:11.2f} {r['loader']['samples_per_s']:16.1f} {r['loader']['cpu_ms_per_sample']:13.1f} "
              f"{r['loader'].get('train_samples_per_s', float('nan')):15.1f} "
              f"{r['loader'].get('train_cpu_ms_per_sample', float('nan')):7.1f}")
    print(f"enc CPU = encoder thread time per frame set (3 cameras), load-independent; cores@{args.fps:.0f}Hz = CPU "
          f"per set x rate (this machine has 2, shared); wall/period = writer wall time per set / {period_ms:.1f} ms "
          "(< 1 keeps up, inflated when the box is busy). loader = EpisodeReader.frame at random indices (3 cameras "
          "colour + depth, one process); train = EpisodeChunkDataset[i] (models/tiny.yaml views, observation "
          "builder and targets), one process. depth exact = every stored depth frame bit-exact; \"@N Hz\" rows store "
          "depth with every k-th frame (depth_every) and hold it between (the trainer samples only frames with stored "
          "depth).")
    print("\nwhere the bytes go (MB per 30 s, per camera key):")
    for r in rows:
        name = "jpeg" if r["storage"] == "jpeg" else (f"h264 {r['preset']} crf{r['crf']} gop{r['gop']} {r['tune']}"
                                                      + (f" depth@{r['depth_hz']:.0f}Hz" if r["depth_every"] > 1 else ""))
        print(f"  {name:32s} " + "  ".join(f"{k} {v:.1f}" for k, v in sorted(r["per_camera_mb_per_30s"].items())))
    study = depth_study(tuple(args.size), args.fps, args.study_frames) if args.study_frames > 0 else {}
    if study:
        names = [k for k in next(iter(study.values())) if isinstance(next(iter(study.values()))[k], dict)]
        print(f"\nlossless depth codecs ({args.study_frames} frames per camera; bits per pixel, encoder CPU ms per frame; "
              "MB per 30 s summed over cameras):")
        print(f"  {'codec':24s} " + " ".join(f"{c:>22s}" for c in study) + f" {'MB/30s':>8s}")
        for n in names:
            total = sum(study[c][n]["mb_per_30s"] for c in study)
            print(f"  {n:24s} " + " ".join(f"{study[c][n]['bpp']:8.2f} bpp {study[c][n]['cpu_ms']:6.1f} ms" for c in study)
                  + f" {total:8.1f}")
        print(f"  {'LS-predictor entropy':24s} " + " ".join(f"{study[c]['ls_entropy_bpp']:8.2f} bpp {'':9s}" for c in study)
              + f" {sum(study[c]['ls_entropy_bpp'] for c in study) / 8 * args.size[0] * args.size[1] * args.fps * 30 / 1e6:8.1f}")
        lossless = sum(study[c]["ffv1"]["mb_per_30s"] for c in study)
        print(f"  5x smaller than jpeg ({old['mb_per_30s']:.0f} MB) means <= {old['mb_per_30s'] / 5:.0f} MB per 30 s in all; "
              f"bit-exact depth alone takes {lossless:.0f} MB (FFV1), so the best possible ratio with lossless depth "
              f"and no colour at all is {old['mb_per_30s'] / lossless:.2f}x at the full depth rate")
    goal = [r for r in rows[1:] if old["mb_per_30s"] / r["mb_per_30s"] >= 5 and r["psnr_db_min"] > 40
            and r["depth_bit_exact"]]
    for r in goal:
        print(f"  meets the 5x goal (PSNR min > 40 dB, stored depth bit-exact): h264 {r['preset']} crf{r['crf']} "
              f"gop{r['gop']} {r['tune']}, depth every {r['depth_every']} frames ({r['depth_hz']:.0f} Hz): "
              f"{r['mb_per_30s']:.0f} MB, {old['mb_per_30s'] / r['mb_per_30s']:.2f}x")
    if not goal:
        print("  no row meets the 5x goal (PSNR min > 40 dB, stored depth bit-exact); try e.g. --video "
              "veryfast:15:8:psnr:5")
    for r in rows:
        if "train_error" in r["loader"]:
            print(f"training dataset skipped for {r['storage']}: {r['loader']['train_error']}")
    out = REPO / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps({"args": vars(args), "results": rows, "depth_study": study}, indent=2))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
