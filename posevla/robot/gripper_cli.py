"""`posevla gripper`: set up and check the X-Trainer's Feetech follower grippers.

  posevla gripper read       print the servo position (steps) and the opening (0 closed .. 1 open)
  posevla gripper move       command an opening 0..1 and wait until the servo is there (or stops at an object)
  posevla gripper calibrate  torque off, close / open the jaws by hand -> closed_pos / open_pos for the YAML
  posevla gripper sim        simulated gripper buses (Feetech protocol on pseudo-terminals) for a robot-less rehearsal

Bad input or a gripper that does not answer -> one line naming it, exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from posevla.paths import default_path
from posevla.robot.feetech import FeetechError, FeetechGripper, GripperConfig, load_grippers
from posevla.yaml_file import write_yaml

DEFAULT_CONFIG = default_path("config", "grippers_xtrainer.yaml")  # share/posevla/config of an install


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__
    sub = p.add_subparsers(dest="gripper_command", metavar="ACTION", required=True)
    for name, help_text in (("read", "print live gripper readings"), ("move", "command an opening and wait"),
                            ("calibrate", "measure closed_pos / open_pos by hand"),
                            ("sim", "run simulated gripper buses on pseudo-terminals")):
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="gripper YAML (default: %(default)s)")
        if name != "sim":
            s.add_argument("--arm", default="left", help="which gripper (a key of the YAML's arms)")
            s.add_argument("--port", default="", help="serial port overriding the YAML's")
        if name == "read":
            s.add_argument("--count", type=int, default=0, help="readings to print (0: until Ctrl-C)")
            s.add_argument("--rate", type=float, default=10.0, help="readings per second (> 0)")
        if name == "move":
            s.add_argument("opening", type=float, help="0 closed .. 1 open (clamped)")
            s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the servo to settle")
        if name == "calibrate":
            s.add_argument("--samples", type=int, default=20, help="readings averaged at each end (>= 1)")
        if name == "sim":
            s.add_argument("--link-dir", type=Path, default=Path("/tmp/posevla_grippers"),
                           help="symlinks <dir>/<arm> -> pty are made here")
            s.add_argument("--write-config", type=Path, help="write a gripper YAML whose ports are the simulated ones")
            s.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")


def _config(args: argparse.Namespace) -> GripperConfig:
    cfgs = load_grippers(args.config)
    if args.arm not in cfgs:
        raise ValueError(f"--arm {args.arm!r}: {args.config} has arms {sorted(cfgs)}")
    cfg = cfgs[args.arm]
    if args.port:
        cfg = GripperConfig.from_mapping({**cfg.__dict__, "port": args.port}, f"--port {args.port}")
    return cfg


def _read(args: argparse.Namespace) -> int:
    if not args.rate > 0:
        raise ValueError(f"--rate {args.rate}: must be > 0")
    grip = FeetechGripper.from_config(_config(args))
    grip.open(torque=False)
    try:
        n = 0
        while args.count <= 0 or n < args.count:
            pos, _ = grip.read_position()
            print(f"{args.arm}: position {pos} steps  opening {grip.cfg.opening(pos):.3f}", flush=True)
            n += 1
            time.sleep(1.0 / args.rate)
    finally:
        grip.close()
    return 0


def _move(args: argparse.Namespace) -> int:
    if not np.isfinite(args.opening):
        raise ValueError(f"opening {args.opening}: must be a number 0..1")
    grip = FeetechGripper.from_config(_config(args))
    grip.open()
    try:
        grip.command_opening(args.opening)
        deadline, still = time.monotonic() + args.timeout, 0
        last, _ = grip.read_position()
        while time.monotonic() < deadline and still < 5:
            pos, _ = grip.read_position()
            still = still + 1 if pos == last else 0
            last = pos
            time.sleep(0.02)
        print(f"{args.arm}: commanded {min(1.0, max(0.0, args.opening)):.3f}, measured {grip.cfg.opening(last):.3f} "
              f"(position {last} steps){'' if still >= 5 else ', still moving at the timeout'}")
    finally:
        grip.close()
    return 0


def calibrate_range(grip: FeetechGripper, wait: Callable[[str], object], samples: int) -> tuple[int, int]:
    """Torque off; the operator closes, then opens the jaws by hand. Returns (closed_pos, open_pos) in steps."""
    grip.torque(False)
    out = []
    for what in ("CLOSE the jaws fully by hand", "OPEN the jaws fully by hand"):
        wait(f"{what}, then press Enter ")
        out.append(int(round(np.median([grip.read_position()[0] for _ in range(max(1, samples))]))))
    return out[0], out[1]


def _calibrate(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise ValueError(f"--samples {args.samples}: must be >= 1")
    cfg = _config(args)
    grip = FeetechGripper.from_config(cfg)
    grip.open(torque=False)
    try:
        closed, opened = calibrate_range(grip, input, args.samples)
    finally:
        grip.close()
    GripperConfig.from_mapping({**cfg.__dict__, "closed_pos": closed, "open_pos": opened}, "measured range")
    print(f"# {args.arm} gripper (id {cfg.servo_id}); paste under arms.{args.arm} in {args.config}:")
    print(f"    closed_pos: {closed}\n    open_pos: {opened}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from posevla.robot.feetech_sim import FeetechBusSim

    cfgs = load_grippers(args.config)
    args.link_dir.mkdir(parents=True, exist_ok=True)
    sims = {}
    for arm, c in cfgs.items():
        sims[arm] = FeetechBusSim({c.servo_id: c.open_pos})
        link = args.link_dir / arm
        link.unlink(missing_ok=True)
        link.symlink_to(sims[arm].port)
        print(f"{arm} gripper: {link} -> {sims[arm].port} (id {c.servo_id})", flush=True)
    if args.write_config:
        # a simulator is a Python thread, not a servo: allow it 0.2 s to answer on a loaded machine
        doc = {"arms": {arm: {**c.__dict__, "port": str(args.link_dir / arm),
                              "reply_timeout_s": max(c.reply_timeout_s, 0.2)} for arm, c in cfgs.items()}}
        write_yaml(args.write_config, doc)
        print(f"wrote {args.write_config}", flush=True)
    t0 = time.monotonic()
    try:
        while args.duration <= 0 or time.monotonic() - t0 < args.duration:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        for arm, s in sims.items():
            s.close()
            (args.link_dir / arm).unlink(missing_ok=True)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return {"read": _read, "move": _move, "calibrate": _calibrate, "sim": _sim}[args.gripper_command](args)
    except (ValueError, FeetechError) as exc:
        print(f"posevla gripper {args.gripper_command}: {exc}", file=sys.stderr)
        return 2
