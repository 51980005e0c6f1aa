"""`posevla demo`: the most end-to-end run this machine can do.

Stage 1 (always): render the demo tabletop from the head and wrist cameras, preprocess each view for the
model (resize-with-pad to 224x224 with exact intrinsics, raymap, depth prior) and save a picture of it.
Stage 2 (when the ROS graph is available): run the whole graph — replayed cameras -> policy node ->
executor -> X-Trainer driver -> TCP simulator — once the graph is ready (the policy node may take a while
to start on a busy machine: --ready-timeout), for --duration seconds, and report what happened. A failure is
one line naming the reason and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from posevla.geometry import se3
from posevla.geometry.depth import depth_prior
from posevla.geometry.image_ops import plan_resize_with_pad
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.raymap import raymap
from posevla.paths import calibration_dir, models_dir, runs_dir
from posevla.tools.synthetic_scene import TabletopScene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=runs_dir() / "demo", help="output folder (default runs/demo)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds to run the ROS graph once it is ready (default 20)")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for the graph to be ready: feedback and a first accepted chunk (default 300)")
    parser.add_argument("--size", type=int, default=224, help="model input size in pixels (default 224)")
    parser.add_argument("--no-graph", action="store_true", help="only stage 1 (no ROS graph)")


def demo_head_camera() -> tuple[np.ndarray, CameraIntrinsics]:
    """Head camera of the demo setup: 0.7 m up, 0.25 m behind the base origin, pitched 50 deg down."""
    pitch = np.deg2rad(50.0)
    z = np.array([np.cos(pitch), 0.0, -np.sin(pitch)])
    x = np.array([0.0, -1.0, 0.0])
    T_base_head = se3.make_T(np.stack([x, np.cross(z, x), z], axis=1), [-0.25, 0.0, 0.7])
    return T_base_head, CameraIntrinsics(386.0, 386.0, 319.5, 239.5, 640, 480)


def stage_views(out: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scene = TabletopScene.default()
    T_base_head, intr = demo_head_camera()
    t0 = time.perf_counter()
    rgb, depth = scene.render(T_base_head, intr)
    t1 = time.perf_counter()
    vt = plan_resize_with_pad(intr.width, intr.height, size, size)
    model_intr = vt.apply_intrinsics(intr)
    model_rgb, model_depth = vt.apply_rgb(rgb), vt.apply_depth(depth)
    rays, prior = raymap(model_intr), depth_prior(model_depth)
    t2 = time.perf_counter()
    print(f"[demo] rendered head view {intr.width}x{intr.height} in {1e3 * (t1 - t0):.1f} ms; "
          f"model view {size}x{size} (rgb, raymap, depth prior) built in {1e3 * (t2 - t1):.1f} ms")
    print(f"[demo] model intrinsics fx={model_intr.fx:.2f} fy={model_intr.fy:.2f} cx={model_intr.cx:.2f} "
          f"cy={model_intr.cy:.2f}; valid depth {prior[..., 1].mean():.1%}; "
          f"ray at centre {np.round(rays[size // 2, size // 2], 4).tolist()}")
    fig, ax = plt.subplots(1, 4, figsize=(16, 4))
    ax[0].imshow(rgb), ax[0].set_title("head camera (raw 640x480)")
    ax[1].imshow(model_rgb), ax[1].set_title(f"model view {size}x{size}")
    im = ax[2].imshow(prior[..., 0], cmap="viridis"), ax[2].set_title("depth prior D (m)")
    fig.colorbar(im[0], ax=ax[2])
    ax[3].imshow(np.dstack([(rays[..., 0] + 1) / 2, (rays[..., 1] + 1) / 2, prior[..., 1] * 0.5]).clip(0, 1))
    ax[3].set_title("raymap (x, y) + mask")
    for a in ax:
        a.axis("off")
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / "observation.png", dpi=80)
    print(f"[demo] saved {out / 'observation.png'}")


def stage_assets(out: Path) -> tuple[Path, Path]:
    """A recorded (synthetic) episode to replay as the cameras, and a tiny random-weight checkpoint."""
    from posevla.dataset.format import list_episodes
    from posevla.model.policy import PoseVLAPolicy
    from posevla.tools.synthetic_episode import write_demo_episode

    episodes = list_episodes(out / "data" / "pick_red_cube")
    if episodes:
        episode = episodes[0]
        print(f"[demo] reusing episode {episode}")
    else:
        t0 = time.perf_counter()
        episode = write_demo_episode(out / "data")
        print(f"[demo] recorded a scripted episode {episode} in {time.perf_counter() - t0:.1f} s")
    ckpt = out / "checkpoint"
    if not (ckpt / "model.safetensors").exists():
        policy = PoseVLAPolicy.from_config(models_dir() / "tiny.yaml", seed=0, device="cpu")
        policy.set_norm_stats(_norm_from_episode(episode, policy))
        policy.save_pretrained(ckpt)
        print(f"[demo] saved a tiny random-weight Pose-VLA checkpoint to {ckpt} "
              "(actions are noise around the episode's statistics: this demo shows the pipeline, not a skill)")
    return episode, ckpt


def _norm_from_episode(episode: Path, policy):
    """Normalisation statistics of the episode's TCP poses in the head camera frame."""
    from posevla.calibration.files import HandEyeCalibration
    from posevla.dataset.reader import EpisodeReader
    from posevla.model.io_transforms import pose_to_vector
    from posevla.model.normalization import NormStats

    T_head_base = se3.invert_T(HandEyeCalibration.load(calibration_dir() / "head_camera.yaml").T_parent_child)
    vectors = []
    with EpisodeReader(episode) as ep:
        for i in range(ep.num_frames):
            st = ep.frame(i).state
            vectors.append(np.concatenate([pose_to_vector(T_head_base @ st.arms[a].T_base_tcp, st.arms[a].gripper)
                                           for a in policy.config.arms]))
    rows = np.asarray(vectors)
    return NormStats.fit(rows, rows)


def stage_graph(out: Path, duration: float, episode: Path, ckpt: Path, ready_timeout_s: float) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "posevla_ros.demo_graph", "--checkpoint", str(ckpt),
                             "--episode", str(episode), "--duration", str(duration), "--out", str(out),
                             "--ready-timeout", str(ready_timeout_s)])
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it stop its graph and report
        return proc.wait()


def run(args: argparse.Namespace) -> int:
    try:
        stage_views(args.out, args.size)
        if args.no_graph:
            return 0
        episode, ckpt = stage_assets(args.out)
        return stage_graph(args.out, args.duration, episode, ckpt, args.ready_timeout)
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
        return 130
