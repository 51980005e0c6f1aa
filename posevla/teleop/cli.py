"""`posevla teleop`: set up and check the GELLO leader arms.

  posevla teleop read        print live leader readings (joints in degrees, gripper 0..1, buttons)
  posevla teleop calibrate   leader and follower held in the same known pose -> the joint offsets for the YAML
  posevla teleop sim-leaders simulated leaders (Dynamixel Protocol 2.0 on pseudo-terminals) for a robot-less rehearsal
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from posevla.paths import default_path
from posevla.teleop.gello import LeaderArm, LeaderConfig, LeaderReadError, offsets_for_known_pose

DEFAULT_CONFIG = default_path("config", "gello_xtrainer.yaml")  # share/posevla/config of an install (posevla.paths)


def parse_pose_deg(text: str) -> np.ndarray:
    """'a,b,c,d,e,f' in degrees -> (6,) radians ('' -> the follower's home pose); ValueError names the argument."""
    if not text:
        from posevla.robot.kinematics import ArmKinematics

        return ArmKinematics().home()
    try:
        q = np.deg2rad([float(v) for v in text.split(",")])
    except ValueError as exc:
        raise ValueError(f"--pose {text!r}: expected 6 comma-separated angles in degrees") from exc
    if q.shape != (6,) or not np.all(np.isfinite(q)):
        raise ValueError(f"--pose {text!r}: expected 6 finite angles in degrees, got {q.size}")
    return q


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    sub = p.add_subparsers(dest="teleop_command", metavar="ACTION", required=True)
    for name, help_text in (("read", "print live leader readings"),
                            ("calibrate", "compute joint offsets from a known pose"),
                            ("sim-leaders", "run simulated leader arms on pseudo-terminals")):
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="leader YAML (default: %(default)s)")
        if name != "sim-leaders":
            s.add_argument("--arm", default="left", help="which leader (a key of the YAML's arms)")
            s.add_argument("--port", default="", help="serial port overriding the YAML's")
        if name == "read":
            s.add_argument("--count", type=int, default=0, help="readings to print (0: until Ctrl-C)")
            s.add_argument("--rate", type=float, default=10.0, help="readings per second")
        if name == "calibrate":
            s.add_argument("--pose", default="", help="the known pose, 6 joint angles in degrees "
                                                      "(default: the follower's home pose)")
            s.add_argument("--samples", type=int, default=20, help="readings averaged")
        if name == "sim-leaders":
            s.add_argument("--link-dir", type=Path, default=Path("/tmp/posevla_leaders"),
                           help="symlinks <dir>/<arm> -> pty are made here (pass them as the teleop ports)")
            s.add_argument("--pose", default="", help="leader pose, degrees (default: the follower's home pose)")
            s.add_argument("--amplitude", type=float, default=10.0, help="sine motion of every joint, degrees")
            s.add_argument("--period", type=float, default=8.0, help="period of the motion, seconds")
            s.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")


def _open(args: argparse.Namespace) -> LeaderArm:
    cfg = LeaderConfig.from_yaml(args.config)
    if args.arm not in cfg.arms:
        raise ValueError(f"--arm {args.arm!r}: {args.config} has arms {sorted(cfg.arms)}")
    if args.port:
        cfg = cfg.with_ports({args.arm: args.port})
    arm = LeaderArm(args.arm, cfg.arms[args.arm], cfg.baudrate, cfg.protocol)
    arm.ping()
    return arm


def _read(args: argparse.Namespace) -> int:
    arm = _open(args)
    try:
        n = 0
        while args.count <= 0 or n < args.count:
            r = arm.read()
            print(f"{args.arm}: joints [deg] {np.array2string(np.rad2deg(r.q), precision=1, suppress_small=True)}"
                  f"  gripper {r.gripper:.2f}  buttons {r.buttons:08b}", flush=True)
            n += 1
            time.sleep(1.0 / args.rate)
    finally:
        arm.close()
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    q_known = parse_pose_deg(args.pose)
    arm = _open(args)
    try:
        ticks = np.mean([arm.read_raw()[0][:6] for _ in range(max(1, args.samples))], axis=0)
    finally:
        arm.close()
    offsets = offsets_for_known_pose(arm.cfg, ticks, q_known)
    print(f"# {args.arm} leader held at {np.rad2deg(q_known).round(2).tolist()} deg; paste under arms.{args.arm} in {args.config}:")
    print(f"    joint_offsets: [{', '.join(f'{o:.5f}' for o in offsets)}]")
    return 0


def _sim_leaders(args: argparse.Namespace) -> int:
    from posevla.teleop.dxl_sim import DynamixelChainSim
    from posevla.tools.sim_priority import raise_for_simulated_hardware

    raise_for_simulated_hardware()  # the simulated leaders answer in time like real ones, however busy the PC is
    cfg = LeaderConfig.from_yaml(args.config)
    q0 = parse_pose_deg(args.pose)
    args.link_dir.mkdir(parents=True, exist_ok=True)
    sims = {}
    for name, c in cfg.arms.items():
        ids = list(c.all_ids) + ([c.buttons_id] if c.buttons_id is not None else [])
        sims[name] = DynamixelChainSim(ids)
        link = args.link_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(sims[name].port)
        print(f"{name} leader: {link} -> {sims[name].port}", flush=True)
    print("teleop ports: " + " ".join(f"-p {n}_port:={args.link_dir / n}" for n in sims), flush=True)
    t0 = time.monotonic()
    try:
        while args.duration <= 0 or time.monotonic() - t0 < args.duration:
            t = time.monotonic() - t0
            for k, (name, c) in enumerate(cfg.arms.items()):
                q = q0 + math.radians(args.amplitude) * math.sin(2 * math.pi * t / args.period + k)
                for i, tick in zip(c.joint_ids, c.ticks_from_joints(q)):
                    sims[name].set_position(i, int(tick))
                sims[name].set_position(c.gripper_id, c.ticks_from_gripper(0.5 + 0.5 * math.sin(2 * math.pi * t / args.period)))
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass
    finally:
        for name, s in sims.items():
            s.close()
            (args.link_dir / name).unlink(missing_ok=True)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return {"read": _read, "calibrate": _calibrate, "sim-leaders": _sim_leaders}[args.teleop_command](args)
    except (ValueError, LeaderReadError) as exc:
        print(f"posevla teleop {args.teleop_command}: {exc}", file=sys.stderr)
        return 2
