"""`posevla benchmark closed-loop`: proof in the loop on the MuJoCo twin.

  posevla benchmark closed-loop                              # 100 perturbed demos, tiny model, 30 held-out trials x 3
  posevla benchmark closed-loop --demos 3 --steps 5 --trials 2 --no-ablations --out runs/cl_smoke   # plumbing
  posevla benchmark closed-loop --checkpoint models/twin/pick_cube_overview --task pick_cube_overview  # the shipped
                                                             # twin policy through the graph: trials and ablations only

Stages, each through the project's own tools and the unchanged ROS graphs:
  1. collect   scripted demonstrations of the task (train seeds; --task pick_cube: the left arm lifts the cube,
               hand_over: the left arm sets it down between the arms, the right arm lifts it) recorded by the recorder
               (graph collect_mujoco: twin + driver + recorder; the scripted leader streams joint commands), or
               with --collector direct the same scripted paths played on simulated time without ROS
               (`python -m posevla.sim.direct_demos`, --collect-procs processes: ~2-4 s a demo per core)
  2. train     `posevla train --train all` on the recorded episodes that lifted the cube (models/closed_loop.yaml:
               tiny widths, head + left wrist views, random init, CPU)
  3. evaluate  closed-loop trials on held-out seeds (graph sim_mujoco: twin + driver + executor + policy node with
               the onnxruntime engine and deterministic chunks, flow_noise_scale 0);
               success = the cube's centre above the task's lift height at the trial's end
  4. ablations the same trials with the policy on RGB only (depth and raymaps masked: policy modalities=rgb) and
               with the executor's head calibration perturbed by 2 cm / 2 deg while the twin renders the true pose
Prints success rates with 95 % Wilson intervals and writes <out>/results.json and <out>/rollouts.png (head camera
at the start, middle and end of the first trials). Expected on a quiet 2-core machine with the defaults (~60 min):
collect ~21 min (100 perturbed demos x ~13 s), train ~10 min (6000 steps of batch 8; the sample cache (--cache-gb)
kept stop 29's 14 000 steps of batch 16 at ~94 samples/s), evaluate
~3 x 30 x 17 s; see docs/closed_loop.md.
"""
from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from posevla.sim.probe import add_probe_parser
from posevla.sim.rollout_cli import add_rollout_parser
from posevla.sim.summary import add_summary_parser
from posevla.sim.tasks import TASKS
from posevla.tools.trial import wilson_interval  # one Wilson interval for trials and the benchmark

REPO = Path(__file__).resolve().parents[2]


def perturbed_calibration(src: Path, dst: Path, shift_m: float = 0.02, rot_deg: float = 2.0) -> Path:
    """A copy of the calibration folder with the head camera moved by `shift_m` and turned by `rot_deg` (about an
    axis orthogonal to the shift); the wrist files are copied unchanged."""
    from scipy.spatial.transform import Rotation

    from posevla.calibration.files import HandEyeCalibration

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.yaml")):
        c = HandEyeCalibration.load(f)
        if c.kind == "eye_to_hand":
            T = c.T_parent_child.copy()
            d = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)  # a shift along base x+y
            T[:3, 3] += shift_m * d
            T[:3, :3] = Rotation.from_rotvec(np.radians(rot_deg) * np.array([0.0, 0.0, 1.0])).as_matrix() @ T[:3, :3]
            c.T_parent_child = T
            c.method = f"{c.method} -- perturbed by {shift_m * 100:.0f} cm / {rot_deg:.0f} deg (closed-loop ablation)"
        c.save(dst / f.name)
    return dst


def robot_yaml_on_free_ports(src: Path, folder: Path) -> Path:
    """The robot YAML with fresh loopback ports and gripper ports under `folder` (runs never fight over sockets)."""
    import yaml

    cfg = yaml.safe_load(src.read_text())
    socks = [socket.socket() for _ in range(3 * len(cfg["arms"]))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    for i, arm in enumerate(cfg["arms"]):
        cfg["arms"][arm].update(dashboard_port=ports[3 * i], motion_port=ports[3 * i + 1], feedback_port=ports[3 * i + 2])
        if isinstance(cfg.get("grippers"), dict) and arm in cfg["grippers"]:
            cfg["grippers"][arm]["port"] = str(folder / f"{arm}_gripper")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "robot.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def checkpoint_training(ckpt: Path) -> dict:
    """What `posevla train` saved next to a checkpoint (run_config.yaml): steps, lr, initial weights, train mode;
    `demos` None (the training data lies outside this run); steps None when the file is missing."""
    path = Path(ckpt) / "run_config.yaml"
    if not path.is_file():
        return {"demos": None, "steps": None}
    import yaml

    rc = yaml.safe_load(path.read_text()) or {}
    return {"demos": None, "steps": rc.get("steps"), "lr": rc.get("lr"), "train_mode": rc.get("train"),
            "config": rc.get("init") or rc.get("config"), "ema_decay": rc.get("ema_decay", 0.0)}


def _lifted(episode: Path) -> bool:
    """The recorder's success mark of an episode (the benchmark marks a demonstration that did not lift failed)."""
    import h5py

    with h5py.File(episode, "r") as h:
        return json.loads(h.attrs["meta"]).get("success") is not False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = sub.add_parser("closed-loop", help="demos -> training -> closed-loop trials on the MuJoCo twin",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rollout_parser(sub)
    add_probe_parser(sub)
    add_summary_parser(sub)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "closed_loop", help="run folder")
    p.add_argument("--task", choices=tuple(TASKS), default="pick_cube",
                   help="pick_cube: the left arm lifts the cube; hand_over (bimanual): the left arm sets the cube down "
                        "between the arms, the right arm lifts it (posevla.sim.tasks; episodes in <out>/data/<task>)")
    p.add_argument("--demos", type=int, default=100, help="scripted demonstrations (train seeds 0..n-1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the demonstrations use train seeds first..first+n-1 (e.g. 100 with --demos 100 for a second "
                        "collection round whose placements differ from the first's)")
    p.add_argument("--demo-offset-m", type=float, default=None,
                   help="perturbed demonstrations: 3 in 4 approaches first miss the point above the cube by up to "
                        "this distance (m) and 15 deg, then correct (recovery data; 0: every demo straight; "
                        "pick_cube only; default 0.06)")
    p.add_argument("--steps", type=int, default=6000, help="training steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--config", type=Path, default=None,
                   help="model config (default: models/closed_loop.yaml, with --task hand_over "
                        "models/closed_loop_bimanual.yaml: all three views; models/closed_loop_aug.yaml + --ema-decay "
                        "0.999 is the fine-tuning recipe of the best checkpoint; from scratch on 100 demos it lifted "
                        "0/40, see docs/closed_loop.md)")
    p.add_argument("--init", type=Path, default=None,
                   help="continue training from this Pose-VLA checkpoint (a second round: more data or steps; its "
                        "own model config is used, --config is ignored) instead of a random model")
    p.add_argument("--co-train-data", type=Path, nargs="+", default=[], metavar="DIR",
                   help="episode folders trained on together with the recorded demos (co-training), e.g. the --init "
                        "checkpoint's own training episodes: a short run on 100 demos alone moves the shipped twin "
                        "policy off what it learned (docs/closed_loop.md)")
    p.add_argument("--norm-stats", choices=("fit", "init"), default=None,
                   help="`posevla train --norm-stats`: fit the normalisation on the demos, or keep the --init "
                        "checkpoint's (default: init with --init, else fit)")
    p.add_argument("--trials", type=int, default=30, help="closed-loop trials per condition (held-out seeds)")
    p.add_argument("--ablation-trials", type=int, default=None,
                   help="trials per ablation (RGB only, mis-calibrated; default: --trials)")
    p.add_argument("--skip-full", action="store_true", help="only the ablations (the full model's trials done before)")
    p.add_argument("--trial-s", type=float, default=None,
                   help="seconds per trial (default: 15 for pick_cube, 25 for hand_over, whose demos last 16-19 s)")
    p.add_argument("--no-ablations", action="store_true", help="only the full model (no RGB-only / mis-calibrated)")
    p.add_argument("--width", type=int, default=160, help="camera image width (pixels)")
    p.add_argument("--height", type=int, default=120, help="camera image height (pixels)")
    p.add_argument("--rate", type=float, default=10.0, help="camera and recording rate (Hz)")
    p.add_argument("--robot-config", type=Path, default=REPO / "config" / "xtrainer_sim_robot.yaml",
                   help="robot YAML of the twin (its ports are replaced by free ones)")
    p.add_argument("--calibration-dir", type=Path, default=REPO / "calibration", help="camera poses the twin renders")
    p.add_argument("--collector", choices=("graph", "direct"), default="graph",
                   help="graph (default): the recorder in the collect_mujoco graph records in real time (the real "
                        "data path, ~13 s a demo); direct: `python -m posevla.sim.direct_demos` plays the same "
                        "scripted paths into the twin on simulated time (~2-4 s a demo per core, --collect-procs "
                        "processes; no transport, so frames, state and command share one instant)")
    p.add_argument("--collect-procs", type=int, default=1,
                   help="processes of the direct collector (one core each; default %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="evaluate this Pose-VLA checkpoint folder through the graph (no collection, no training), e.g. "
                        "models/twin/pick_cube_overview with --task pick_cube_overview")
    p.add_argument("--skip-collect", action="store_true", help="reuse <out>/data (demos already recorded)")
    p.add_argument("--skip-train", action="store_true", help="reuse <out>/train/checkpoint")
    p.add_argument("--collect-only", action="store_true", help="stop after recording the demonstrations")
    p.add_argument("--train-mode", choices=("all", "no-vision", "lora", "expert"), default="all",
                   help="what `posevla train --train` trains (a randomly initialised model needs all: with lora or "
                        "expert its vision tower stays random)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of `posevla train`")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="`posevla train --ema-decay`: evaluate an exponential moving average of the weights (0: off)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up steps of `posevla train` (then cosine to 10 %%)")
    p.add_argument("--val-episodes", type=int, default=0,
                   help="demonstrations `posevla train` holds out for its open-loop action errors (mm, deg, gripper)")
    p.add_argument("--workers", type=int, default=0,
                   help="data loader processes of `posevla train` (>0 only with --cache-gb 0)")
    p.add_argument("--cache-gb", type=float, default=8.0,
                   help="`posevla train --cache-gb`: built samples kept in RAM up to this many GB (~0.34 MB each: 100 "
                        "demos ~2.9 GB), so epochs after the first decode nothing; 0: off (then use --workers 2)")
    p.add_argument("--policy-engine", choices=("torch", "torch_graphs", "onnxruntime"), default="onnxruntime",
                   help="the policy node's inference engine in the trials (default onnxruntime: ~4x faster than "
                        "torch on CPU, so the chunks act on fresher observations; config/policy.yaml's is torch)")
    p.add_argument("--flow-noise-scale", type=float, default=0.0,
                   help="the policy node's flow_noise_scale in the trials, 0..1 (default 0: deterministic chunks, "
                        "+7 to +9 of 80 lifts on three checkpoints; 1: sampled as trained)")
    p.add_argument("--executor-blend", choices=("ensemble", "rtc", "replace"), default=None,
                   help="the executor's chunk blending in the trials (default: config/executor.yaml)")
    p.add_argument("--ros-domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID of the run's graphs (default: one drawn from the process id in 1..100, so two "
                        "runs or another graph on this machine never share topics such as /sim/reset)")


def _check(args: argparse.Namespace) -> str | None:
    for name in ("demos", "steps", "batch_size", "trials", "width", "height"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})"
    if not (0.5 <= args.rate <= 60):
        return f"--rate must lie in [0.5, 60] Hz (got {args.rate})"
    if args.ablation_trials is not None and args.ablation_trials < 1:
        return f"--ablation-trials must be >= 1 (got {args.ablation_trials})"
    if args.flow_noise_scale is not None and not 0.0 <= args.flow_noise_scale <= 1.0:
        return f"--flow-noise-scale must lie in [0, 1] (got {args.flow_noise_scale})"
    if args.skip_full and args.no_ablations:
        return "--skip-full with --no-ablations leaves nothing to evaluate"
    if not (0 < args.lr <= 1.0):
        return f"--lr must lie in (0, 1] (got {args.lr})"
    if not (args.ema_decay == 0.0 or 0.0 < args.ema_decay < 1.0):
        return f"--ema-decay must be 0 (off) or in (0, 1) (got {args.ema_decay})"
    if args.val_episodes < 0:
        return f"--val-episodes must be >= 0 (got {args.val_episodes})"
    if args.warmup < 0 or args.workers < 0:
        return f"--warmup and --workers must be >= 0 (got {args.warmup}, {args.workers})"
    if args.cache_gb < 0 or (args.cache_gb > 0 and args.workers > 0):
        return (f"--cache-gb must be >= 0 and needs --workers 0 (the cache lives in the training process; got "
                f"--cache-gb {args.cache_gb}, --workers {args.workers})")
    if not 1 <= args.collect_procs <= 256 or (args.collect_procs > 1 and args.collector != "direct"):
        return f"--collect-procs must lie in 1..256 and needs --collector direct above 1 (got {args.collect_procs})"
    if args.ros_domain_id is not None and not (0 <= args.ros_domain_id <= 101):
        return f"--ros-domain-id must lie in [0, 101] (got {args.ros_domain_id})"
    from posevla.sim.task import HELDOUT_SEED_BASE, TRAIN_SEED_BASE

    if not 0 <= args.first_seed <= HELDOUT_SEED_BASE - TRAIN_SEED_BASE - args.demos:
        return (f"--first-seed must lie in [0, {HELDOUT_SEED_BASE - TRAIN_SEED_BASE - args.demos}] (training seeds "
                f"end below the held-out ones, {HELDOUT_SEED_BASE})")
    if args.demo_offset_m is not None and args.task == "hand_over":
        return f"--demo-offset-m applies to the pick tasks only (got --task {args.task})"
    if args.demo_offset_m is None:
        args.demo_offset_m = 0.0 if args.task == "hand_over" else 0.06
    if not 0 <= args.demo_offset_m <= 0.1:
        return f"--demo-offset-m must lie in [0, 0.1] m (got {args.demo_offset_m})"
    if args.trial_s is not None and args.trial_s <= 0:
        return f"--trial-s must be > 0 (got {args.trial_s})"
    if args.norm_stats == "init" and args.init is None:
        return "--norm-stats init keeps the statistics of an --init checkpoint: give --init"
    if args.norm_stats is None:
        args.norm_stats = "init" if args.init is not None else "fit"
    from posevla.model.checkpoint import CONFIG as CHECKPOINT_CONFIG

    if args.checkpoint is not None:
        if not (args.checkpoint / CHECKPOINT_CONFIG).is_file():
            return f"--checkpoint {args.checkpoint} is not a Pose-VLA checkpoint folder (no {CHECKPOINT_CONFIG})"
        clash = [f for f, on in (("--init", args.init is not None), ("--skip-collect", args.skip_collect),
                                 ("--skip-train", args.skip_train), ("--collect-only", args.collect_only)) if on]
        if clash:
            return f"--checkpoint evaluates a finished checkpoint: drop {', '.join(clash)}"
    for folder in args.co_train_data:
        if not folder.is_dir() or not any(folder.glob("episode_*.h5")):
            return f"--co-train-data {folder} is not a folder of episodes (no episode_*.h5)"
    if args.co_train_data and args.checkpoint is not None:
        return "--checkpoint evaluates a finished checkpoint: drop --co-train-data"
    if args.init is not None and not (args.init / CHECKPOINT_CONFIG).is_file():
        return f"--init {args.init} is not a Pose-VLA checkpoint folder (no {CHECKPOINT_CONFIG})"
    if args.config is None:
        args.config = REPO / "models" / ("closed_loop_bimanual.yaml" if args.task == "hand_over" else "closed_loop.yaml")
    for name in ("robot_config", "config"):
        if not getattr(args, name).is_file():
            return f"--{name.replace('_', '-')} {getattr(args, name)} does not exist"
    if not args.calibration_dir.is_dir():
        return f"--calibration-dir {args.calibration_dir} is not a folder"
    return None


class _Progress:
    """One line per finished item with counts, elapsed time and an ETA for the stage."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done, self.ok, self.t0 = stage, total, 0, 0, time.monotonic()
        print(f"[{stage}] 0/{total}", flush=True)

    def item(self, ok: bool, detail: str = "") -> None:
        self.done += 1
        self.ok += int(ok)
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        print(f"[{self.stage}] {self.done}/{self.total}  success {self.ok}/{self.done}  elapsed {el:5.0f} s  "
              f"eta {eta:5.0f} s  {detail}", flush=True)


def _rollout_strip(trials: dict[str, list], path: Path, rows: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(cond, t) for cond, ts in trials.items() for t in ts[:rows] if t.frames]
    if not items:
        return
    fig, axes = plt.subplots(len(items), 3, figsize=(6, 1.7 * len(items)), squeeze=False)
    for r, (cond, t) in enumerate(items):
        for c in range(3):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(t.frames):
                ax.imshow(t.frames[c])
            if c == 0:
                ax.set_title(f"{cond} seed {t.seed}: {'success' if t.success else 'fail'}", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _collect_direct(args: argparse.Namespace, data: Path, first_seed: int, prog: _Progress) -> dict:
    """The demonstrations by `posevla.sim.direct_demos` in --collect-procs processes; one progress line per
    episode (their log lines: "[direct-demos] i/n seed S (cube at x, y): success | ...")."""
    import re

    from posevla.sim.direct_demos import record_demos_parallel

    def on_line(line: str) -> None:
        m = re.match(r"\[direct-demos\] \d+/\d+ seed (\d+) \(cube at ([-\d.]+, [-\d.]+)\): (success|FAILED)", line)
        if m:
            prog.item(m.group(3) == "success", f"seed {m.group(1)} (cube at {m.group(2)} m)")

    extra = ["--demo-offset-m", str(args.demo_offset_m), "--fps", str(args.rate), "--width", str(args.width),
             "--height", str(args.height), "--robot-config", str(args.robot_config),
             "--calibration-dir", str(args.calibration_dir)]
    try:
        info = record_demos_parallel(data, args.demos, first_seed, args.collect_procs, extra, args.task, on_line)
    except RuntimeError as exc:
        from posevla_ros.closed_loop import StageError

        raise StageError(str(exc)) from exc
    return {"demo_success": info["success"], "demo_takes": args.demos}


def _collect_and_train(args: argparse.Namespace, out: Path, task, opts, results: dict, t_start: float) -> Path | None:
    """Stages 1 and 2: the demonstrations (unless --skip-collect) and `posevla train` on them (unless --skip-train);
    returns the checkpoint folder, None after --collect-only. Figures go into `results`."""
    from posevla_ros.closed_loop import StageError, collect_demos

    from posevla.sim.task import train_seeds

    data = out / "data"
    if not args.skip_collect:
        prog = _Progress("collect", args.demos)
        seeds = train_seeds(args.demos, args.first_seed)
        if args.collector == "direct":
            results.update(_collect_direct(args, data, seeds[0], prog))
        else:
            demos = collect_demos(data, args.task, task.instruction, seeds, opts,
                                  lambda r: prog.item(r.success, f"seed {r.seed} ({r.seconds:.0f} s, {r.takes} take(s))"),
                                  demo_offset_m=args.demo_offset_m)
            results["demo_success"] = sum(d.success for d in demos)
            results["demo_takes"] = sum(d.takes for d in demos)
        results["collector"] = args.collector
        results["demo_offset_m"] = args.demo_offset_m
        results["first_seed"] = args.first_seed
        results["collect_s"] = time.monotonic() - t_start
        if args.collect_only:
            (out / "results.json").write_text(json.dumps(results, indent=2))
            print(f"[collect] done: {results['demo_success']}/{args.demos} lifted, {results['demo_takes']} takes, "
                  f"{results['collect_s']:.0f} s; {data}", flush=True)
            return None
    from posevla_ros.closed_loop import nonfinite_frames

    episodes = sorted((data / args.task).glob("episode_*.h5"))
    # trained on: lifted demonstrations without missing measurements (the trainer refuses NaN robot states)
    finite = [e for e in episodes if nonfinite_frames(e) == 0]
    clean = [e for e in finite if _lifted(e)] or finite  # none lifted (a plumbing run): train on what there is
    results["episodes"], results["episodes_trained"] = len(episodes), len(clean)
    if not clean:
        raise StageError(f"no episode without missing measurements in {data / args.task} ({len(episodes)} in all)")
    ckpt = out / "train" / "checkpoint"
    if not args.skip_train:
        co_train = [e for folder in args.co_train_data for e in sorted(folder.glob("episode_*.h5"))]
        results["co_train_data"] = [str(f.resolve()) for f in args.co_train_data]
        results["co_train_episodes"] = len(co_train)
        print(f"[train] {len(clean)} of {len(episodes)} episodes (the others failed or hold NaN measurements)"
              + (f" + {len(co_train)} co-training episodes" if co_train else "")
              + f", {args.steps} steps (log: {out / 'train.log'})", flush=True)
        t0 = time.monotonic()
        model = ["--init", str(args.init)] if args.init is not None else ["--config", str(args.config)]
        cmd = [sys.executable, "-m", "posevla.cli", "train", "--data", *map(str, clean + co_train), *model,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--out", str(out / "train"), "--val-episodes", str(args.val_episodes), "--train", args.train_mode,
               "--lr", str(args.lr), "--warmup", str(min(args.warmup, args.steps)), "--workers", str(args.workers),
               "--cache-gb", str(args.cache_gb), "--ema-decay", str(args.ema_decay), "--norm-stats", args.norm_stats]
        with open(out / "train.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = (out / "train.log").read_text().strip().splitlines()[-3:]
            raise StageError(f"posevla train exited {rc}: {' | '.join(tail)}")
        results["train_s"] = time.monotonic() - t0
        print(f"[train] done in {results['train_s']:.0f} s", flush=True)
    return ckpt


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "rollout":
        from posevla.sim.rollout_cli import run_rollout

        return run_rollout(args)
    if args.benchmark == "probe":
        from posevla.sim.probe import run_probe

        return run_probe(args)
    if args.benchmark == "summary":
        from posevla.sim.summary import run_summary

        return run_summary(args)
    why = _check(args)
    if why:
        print(f"posevla benchmark closed-loop: {why}", file=sys.stderr)
        return 2
    import os

    # the run's own DDS domain on loopback (set before any ROS context or node process exists)
    os.environ["ROS_DOMAIN_ID"] = str(args.ros_domain_id if args.ros_domain_id is not None else 1 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from posevla_ros.closed_loop import GraphOptions, StageError, evaluate

    from posevla.sim.task import heldout_seeds
    from posevla.sim.tasks import make_task
    from posevla.sim.twin import TwinSpec

    out = args.out.resolve()
    task = make_task(args.task)
    if args.trial_s is None:
        args.trial_s = 25.0 if args.task == "hand_over" else 15.0
    try:  # the robot YAML and calibration files, checked before anything starts
        TwinSpec.from_files(args.robot_config, args.calibration_dir)
    except ValueError as exc:
        print(f"posevla benchmark closed-loop: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    robot = robot_yaml_on_free_ports(args.robot_config, out / "robot")
    opts = GraphOptions(robot, args.calibration_dir.resolve(), args.width, args.height, args.rate,
                        node_log=out / "nodes.log")
    results: dict = {"task": args.task, "demos": args.demos, "steps": args.steps, "config": str(args.init or args.config), "lr": args.lr,
                     "ema_decay": args.ema_decay, "norm_stats": args.norm_stats,
                     "train_mode": args.train_mode, "executor_blend": args.executor_blend,
                     "policy_engine": args.policy_engine or "torch", "flow_noise_scale": args.flow_noise_scale,
                     "trials": args.trials, "trial_s": args.trial_s,
                     "image": [args.width, args.height], "rate_hz": args.rate, "conditions": {}}
    if args.skip_collect and (out / "results.json").is_file():  # a later stage of an earlier run: keep its figures
        prev = json.loads((out / "results.json").read_text())
        results["conditions"] = prev.get("conditions", {})
        results.update({k: prev[k] for k in ("demo_success", "demo_takes", "collect_s") if k in prev})
        if args.skip_train and "train_s" in prev:  # that run trained the checkpoint: its training figures
            results.update({k: prev[k] for k in ("train_s", "steps", "config", "lr", "train_mode", "ema_decay")
                            if k in prev})
    if args.skip_train and "train_s" not in results:  # a checkpoint trained elsewhere: its own run configuration
        results.update(checkpoint_training(out / "train" / "checkpoint"))
    if args.checkpoint is not None:
        results.update({**checkpoint_training(args.checkpoint), "checkpoint": str(args.checkpoint)})
    t_start = time.monotonic()
    try:
        if args.checkpoint is not None:  # evaluate a given checkpoint: nothing to collect or train
            ckpt = args.checkpoint.resolve()
        else:
            got = _collect_and_train(args, out, task, opts, results, t_start)
            if got is None:
                return 0
            ckpt = got
        if not ckpt.is_dir() or not any(ckpt.iterdir()):
            raise StageError(f"training left no checkpoint in {ckpt}")
        conditions: dict[str, dict] = {} if args.skip_full else {"full": {}}
        if not args.no_ablations:
            conditions["rgb_only"] = {"modalities": "rgb"}
            conditions["miscalibrated"] = {"stack_calibration_dir": perturbed_calibration(
                args.calibration_dir, out / "calibration_perturbed")}
        trials: dict[str, list] = {}
        for cond, kw in conditions.items():
            n_trials = args.trials if cond == "full" or args.ablation_trials is None else args.ablation_trials
            prog = _Progress(f"evaluate {cond}", n_trials)
            t0 = time.monotonic()

            def report(r, prog=prog) -> None:
                age = r.policy_latency.get("obs_age_p50_s")
                prog.item(r.success, f"seed {r.seed}: {r.chunks} chunks, left TCP moved {r.tcp_travel_m:.2f} m"
                          + (f", capture->chunk p50 {age * 1e3:.0f} ms" if age is not None else ""))

            trials[cond] = evaluate(ckpt, task.instruction, heldout_seeds(n_trials), opts, args.trial_s,
                                    on_progress=report, executor_blend=args.executor_blend,
                                    policy_engine=args.policy_engine, flow_noise_scale=args.flow_noise_scale,
                                    task=args.task, **kw)
            k, n = sum(t.success for t in trials[cond]), len(trials[cond])
            lo, hi = wilson_interval(k, n)
            results["conditions"][cond] = {"successes": k, "trials": n, "rate": k / n, "wilson95": [lo, hi],
                                           "seeds": [t.seed for t in trials[cond]],
                                           "success_per_seed": [t.success for t in trials[cond]],
                                           "chunks_per_trial": [t.chunks for t in trials[cond]],
                                           "tcp_travel_m": [round(t.tcp_travel_m, 4) for t in trials[cond]],
                                           # the policy node's p50 seconds (capture -> chunk published, model call,
                                           # preprocessing) over its recent chunks, read at each trial's end
                                           "policy_latency_s": [t.policy_latency for t in trials[cond]],
                                           "seconds": time.monotonic() - t0}
            (out / "results.json").write_text(json.dumps(results, indent=2))  # what is done so far
        _rollout_strip(trials, out / ("rollouts.png" if "full" in trials else "rollouts_ablations.png"))
    except StageError as exc:
        print(f"posevla benchmark closed-loop: stage failed: {exc} (node output: {out / 'nodes.log'})", file=sys.stderr)
        results["error"] = str(exc)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        return 1
    results["total_s"] = time.monotonic() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    trained = (f"{results['demos']} demos, {results['steps']} steps" if results.get("demos") is not None
               else f"checkpoint {results.get('checkpoint', 'trained elsewhere')} ({results['steps']} steps)")
    print(f"\nclosed loop on the MuJoCo twin: {trained}, held-out seeds {heldout_seeds(1)[0]}.., {args.trials} trials each")
    print(f"{'condition':<16}{'success':>10}{'rate':>8}   95% Wilson interval")
    for cond, r in results["conditions"].items():
        print(f"{cond:<16}{r['successes']:>5}/{r['trials']:<4}{r['rate']:>8.2f}   [{r['wilson95'][0]:.2f}, {r['wilson95'][1]:.2f}]")
    print(f"results: {out / 'results.json'}; rollouts: {out / 'rollouts.png'}; total {results['total_s']:.0f} s")
    return 0
