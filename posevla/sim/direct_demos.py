"""Scripted demonstrations recorded directly on the twin, without ROS: data at the speed of physics and rendering.

The same demonstrations as the graph's (`posevla benchmark closed-loop` collection): each training seed's placement,
the task's scripted joint paths (`posevla.sim.tasks.scripted_demo`, the pick's perturbed approaches with
--demo-offset-m, the hand-over's two arms on one clock), played into the twin's position actuators as the driver's
ServoJ set-points, on simulated time. Every twin camera (RGB, depth rounded to millimetres as the sim node publishes
it) and the robot state are recorded every 1/--fps s with the commanded joints and grippers as the action, in the
project's episode format (`EpisodeWriter`: atomic episodes, calibration files in the metadata). A pick episode
costs ~4 s on one core here (the graph records in real time: ~13 s with resets), so many processes on a many-core
machine make hundreds of episodes in minutes (--procs: that many processes, each its own share of the seeds and of the
episode numbers in one folder; `scripts/gpu/twin_scale.sh`).

What differs from the graph's recordings: no transport, so camera frames, robot state and command share one
instant (the graph's frames are 0-100 ms older than its state), and the driver's set-point shaping never acts
(the scripted paths stay inside its limits). Train on both, evaluate through the graph.

    python -m posevla.sim.direct_demos --out runs/direct --episodes 100 --first-seed 20000
    python -m posevla.sim.direct_demos --out runs/direct --episodes 700 --task pick_cube_overview --procs 14

Training placements only (seeds below 1 000 000; the held-out evaluation seeds start there).
Units: metres, radians, seconds; stamps in integer ns of simulated time.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from posevla.paths import calibration_dir, default_path

ARMS = ("left", "right")


def record_demos(out: Path, episodes: int, first_seed: int, task_name: str = "pick_cube", demo_offset_m: float = 0.0,
                 width: int = 160, height: int = 120, fps: float = 10.0, tail_s: float = 0.5,
                 robot_yaml: Path | None = None, calib_dir: Path | None = None, log=print,
                 x_range_m: tuple[float, float] | None = None, y_range_m: tuple[float, float] | None = None,
                 first_index: int | None = None) -> dict:
    """Record one scripted demonstration per seed first_seed.. into out/<task>/; returns counts and the folder.
    tail_s: recording goes on this long after the paths end (the graph's collection waits 0.5 s too).
    x_range_m, y_range_m: cube placements in base_link (m) instead of the task's (e.g. more demonstrations near an
    edge of the evaluation range, or a wider range that puts its edges inside the training distribution).
    first_index: episode numbers first_index.. (processes sharing one folder); default: after the folder's last."""
    import dataclasses

    from posevla.calibration.files import calibration_dir_meta
    from posevla.dataset.writer import EpisodeWriter
    from posevla.sim.render import TwinRenderer
    from posevla.sim.tasks import make_task, scripted_demo
    from posevla.sim.twin import TwinSpec
    from posevla.sim.world import TwinWorld

    robot_yaml = robot_yaml or default_path("config", "xtrainer_sim_robot.yaml")
    calib_dir = calib_dir or calibration_dir()
    spec = TwinSpec.from_files(robot_yaml, calib_dir)
    task = make_task(task_name)
    if x_range_m is not None:
        task = dataclasses.replace(task, x_range=(float(x_range_m[0]), float(x_range_m[1])))
    if y_range_m is not None:
        task = dataclasses.replace(task, y_range=(float(y_range_m[0]), float(y_range_m[1])))
    world = TwinWorld(spec, task)
    renderer = TwinRenderer(world, width, height)
    cams = list(renderer.camera_ids)
    intr = {c: renderer.intrinsics(c) for c in cams}
    calib_meta = calibration_dir_meta(calib_dir)
    dt_s = world.model.opt.timestep
    tick_steps = max(1, int(round(0.01 / dt_s)))  # set-points every 10 ms, as a ServoJ stream
    frame_ns = int(round(1e9 / fps))
    lifted, t_start = 0, time.monotonic()
    try:
        for i, seed in enumerate(range(first_seed, first_seed + episodes)):
            state = world.reset(seed)
            world.step(int(round(0.5 / dt_s)))  # settle, as the direct rollout does
            paths = scripted_demo(task, state, spec, demo_offset_m)
            meta = {"instruction": task.instruction, "operator": f"scripted (direct), demo offset {demo_offset_m} m",
                    "sim_seed": seed, "cube_xy_m": [float(v) for v in state.cube_xy],
                    "fps": fps, "cameras": {c: f"TWIN-{c.upper()}" for c in cams}, "software_version": "posevla 0.1.0",
                    "start_time_ns": time.time_ns(), "calibration": calib_meta}
            writer = EpisodeWriter(out, task_name, meta, intr, min_free_bytes=64 * 1024 * 1024,
                                   index=None if first_index is None else first_index + i)
            try:
                ok = _play_and_record(world, renderer, cams, paths, writer, tail_s, tick_steps, frame_ns)
                writer.finish(success=ok)
            except BaseException as e:  # an interrupt too: stop the writer's threads, keep the take in .incomplete/
                writer.abort(f"interrupted: {type(e).__name__}")
                raise
            lifted += ok
            xy = state.cube_xy
            log(f"[direct-demos] {i + 1}/{episodes} seed {seed} (cube at {xy[0]:.3f}, {xy[1]:.3f}): "
                f"{'success' if ok else 'FAILED'} | {lifted}/{i + 1}  {time.monotonic() - t_start:.0f} s")
    finally:
        renderer.close()
    return {"episodes": episodes, "success": lifted, "data": out / task_name}


def _play_and_record(world, renderer, cams: list[str], paths: dict, writer, tail_s: float, tick_steps: int,
                     frame_ns: int) -> bool:
    """Play `paths` (arm -> JointPath) into the twin's set-points from simulated time 0, record every frame_ns;
    returns the task's success at the end."""
    from posevla.dataset.writer import FrameRecord
    from posevla.types import ArmState, RobotState

    end_ns = int(round((max(p.duration_s for p in paths.values()) + tail_s) * 1e9))
    tick_ns = tick_steps * world.model.opt.timestep * 1e9
    tick, next_ns = 0, 0
    while (rel_ns := int(round(tick * tick_ns))) <= end_ns:  # integer ns: no drift from summing float steps
        t = rel_ns * 1e-9
        for a, path in paths.items():
            q, g = path.at(t)
            with world.arms[a].lock:
                world.arms[a].q_target, world.arms[a].gripper_target = np.asarray(q, float), float(g)
        t_ns = rel_ns + 1_000_000_000
        if rel_ns >= next_ns:
            rgb, depth = {}, {}
            for c in cams:
                rgb[c], d = renderer.render(c)
                depth[c] = np.round(d * 1000.0).clip(0, 65535).astype(np.uint16).astype(np.float32) / 1000.0
            robot = RobotState({a: ArmState(world.T_base_tcp(a), arm.q.copy(), float(arm.gripper), t_ns)
                                for a, arm in world.arms.items()}, t_ns)
            command = np.concatenate([np.r_[world.arms[a].q_target, world.arms[a].gripper_target] for a in ARMS])
            rec = FrameRecord(t_ns, rgb, depth, {c: t_ns for c in cams}, robot, command)
            while not writer.add_frame(rec):
                time.sleep(0.005)
            next_ns += frame_ns
        world.step(tick_steps)
        tick += 1
    return bool(world.success())


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def record_demos_parallel(out: Path, episodes: int, first_seed: int, procs: int, extra_args: list[str],
                          task_name: str = "pick_cube", on_line: Callable[[str], None] = print) -> dict:
    """Run `procs` processes of this module, each on its own contiguous share of the seeds first_seed.. and of the
    episode numbers (continuing the folder's), all into out/<task>/; every line they print goes to on_line.
    extra_args: the remaining command-line options, passed to each. Returns counts and the folder; raises
    RuntimeError naming a process that failed, KeyboardInterrupt (after stopping them all) on an interrupt."""
    import os
    import subprocess
    import threading

    from posevla.dataset.format import next_index

    procs = max(1, min(procs, episodes))
    base = next_index(out / task_name) if (out / task_name).is_dir() else 0
    shares = [episodes // procs + (k < episodes % procs) for k in range(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    children, start = [], 0
    for n in shares:
        cmd = [sys.executable, "-m", "posevla.sim.direct_demos", "--out", str(out), "--episodes", str(n),
               "--first-seed", str(first_seed + start), "--first-index", str(base + start), "--task", task_name,
               *extra_args]
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
        start += n
    lock = threading.Lock()
    tails: list[list[str]] = [[] for _ in children]

    def pump(k: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            tails[k] = [*tails[k][-2:], line.rstrip()]
            with lock:
                on_line(line.rstrip())

    readers = [threading.Thread(target=pump, args=(k, c), daemon=True) for k, c in enumerate(children)]
    for t in readers:
        t.start()
    try:
        codes = [c.wait() for c in children]
    except BaseException:
        for c in children:
            c.send_signal(signal.SIGINT)  # each keeps its finished episodes and ends (exit 130)
        for c in children:
            try:
                c.wait(timeout=60)
            except subprocess.TimeoutExpired:
                c.kill()
        raise
    for t in readers:
        t.join(timeout=5)
    for k, code in enumerate(codes):
        if code != 0:
            raise RuntimeError(f"direct demos process {k} exited {code}: {' | '.join(tails[k])}")
    from posevla.dataset.reader import EpisodeReader

    files = [out / task_name / f"episode_{i:06d}.h5" for i in range(base, base + episodes)]
    lifted = 0
    for f in files:
        with EpisodeReader(f) as ep:
            lifted += bool(ep.meta.get("success"))
    return {"episodes": episodes, "success": lifted, "data": out / task_name}


def main(argv: list[str] | None = None) -> int:
    from posevla.sim.tasks import TASKS

    p = argparse.ArgumentParser(prog="python -m posevla.sim.direct_demos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="data root: episodes go to OUT/<task>/")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=0, help="training placement seeds first.. (< 1000000)")
    p.add_argument("--task", choices=tuple(TASKS), default="pick_cube")
    p.add_argument("--demo-offset-m", type=float, default=None,
                   help="pick: most approaches first miss the point above the cube by up to this much, then correct "
                        "(default 0.06 for pick_cube, as the benchmark's collection; hand_over: 0)")
    p.add_argument("--x-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="cube placements, base_link x (m) (default: the task's; e.g. 0.38 0.46 for more "
                        "demonstrations at the near edge)")
    p.add_argument("--y-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="cube placements, base_link y (m) (default: the task's)")
    p.add_argument("--procs", type=int, default=1,
                   help="processes (each one core; default %(default)s): the seeds and episode numbers are shared out")
    p.add_argument("--first-index", type=int, default=None,
                   help="episode numbers from this one (default: after the folder's last; --procs sets it per process)")
    p.add_argument("--fps", type=float, default=10.0, help="recorded frames per second (default %(default)s)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--robot-config", type=Path, default=default_path("config", "xtrainer_sim_robot.yaml"))
    p.add_argument("--calibration-dir", type=Path, default=calibration_dir())
    args = p.parse_args(argv)
    if args.demo_offset_m is None:
        args.demo_offset_m = 0.0 if args.task == "hand_over" else 0.06
    checks = [(args.episodes < 1, "--episodes must be >= 1"),
              (not 0 <= args.first_seed < 1_000_000 - args.episodes,
               "--first-seed: training placements only (seeds below 1000000)"),
              (args.task == "hand_over" and args.demo_offset_m != 0,
               f"--demo-offset-m applies to the pick tasks only (got --task {args.task})"),
              (not 0 <= args.demo_offset_m <= 0.1, f"--demo-offset-m must lie in [0, 0.1] m (got {args.demo_offset_m})"),
              (args.x_range is not None and not 0.2 <= args.x_range[0] < args.x_range[1] <= 0.7,
               f"--x-range {args.x_range}: need 0.2 <= LO < HI <= 0.7 m"),
              (args.y_range is not None and not -0.1 <= args.y_range[0] < args.y_range[1] <= 0.6,
               f"--y-range {args.y_range}: need -0.1 <= LO < HI <= 0.6 m"),
              (not 1 <= args.procs <= 256, f"--procs must lie in 1..256 (got {args.procs})"),
              (args.first_index is not None and (args.first_index < 0 or args.procs > 1),
               "--first-index must be >= 0 and is set per process by --procs"),
              (not 0 < args.fps <= 60, f"--fps must lie in (0, 60] (got {args.fps})"),
              (not (16 <= args.width <= 1280 and 16 <= args.height <= 960), "--width/--height: 16..1280 x 16..960"),
              (not args.robot_config.is_file(), f"--robot-config {args.robot_config} does not exist"),
              (not args.calibration_dir.is_dir(), f"--calibration-dir {args.calibration_dir} is not a folder")]
    for bad, why in checks:
        if bad:
            print(f"posevla.sim.direct_demos: {why}", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, a batch system: stop like Ctrl-C
    try:
        if args.procs > 1:
            extra = ["--demo-offset-m", str(args.demo_offset_m), "--fps", str(args.fps), "--width", str(args.width),
                     "--height", str(args.height), "--robot-config", str(args.robot_config),
                     "--calibration-dir", str(args.calibration_dir)]
            extra += ["--x-range", *map(str, args.x_range)] if args.x_range else []
            extra += ["--y-range", *map(str, args.y_range)] if args.y_range else []
            info = record_demos_parallel(args.out, args.episodes, args.first_seed, args.procs, extra, args.task)
        else:
            info = record_demos(args.out, args.episodes, args.first_seed, args.task, args.demo_offset_m, args.width,
                                args.height, args.fps, robot_yaml=args.robot_config, calib_dir=args.calibration_dir,
                                x_range_m=args.x_range, y_range_m=args.y_range, first_index=args.first_index)
    except RuntimeError as exc:
        print(f"posevla.sim.direct_demos: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[direct-demos] interrupted: the finished episodes are kept, the take in progress is in .incomplete/",
              file=sys.stderr)
        return 130
    print(f"[direct-demos] {info['success']}/{info['episodes']} succeeded; episodes in {info['data']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
