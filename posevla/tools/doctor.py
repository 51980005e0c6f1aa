"""`posevla doctor`: pre-flight check of the robot PC before teleoperation, recording or trials.

    posevla doctor                                   # setup robot: cameras, controllers, calibration, GPU, clock
    posevla doctor --setup collect                   # + leader arms, - checkpoint and GPU
    posevla doctor --checkpoint /data/ckpt --estop   # + checkpoint, + an e-stop round trip through the running graph

Checks, in order (each prints one line: ok, warn, FAIL or skip):

  cameras      RealSense devices (pyrealsense2): name, serial, firmware (vs the recommended one), USB type;
               the serials set in config/camera_*.yaml (or --serial camera=SERIAL) must be connected
  leaders      (collect) each leader arm's serial port opens and every Dynamixel id answers (dynamixel_sdk)
  grippers     the grippers' serial ports (robot YAML) exist
  controllers  each controller's dashboard port accepts a TCP connection and its feedback port sends a valid
               1440-byte packet (robot mode, controller time) within --timeout
  calibration  the hand-eye files in force: camera, method, age (date field), median residuals (mm, deg)
  checkpoint   config, weights (size, parameter count from the safetensors header), normalisation statistics
  gpu          CUDA device and free memory (torch)
  estop        (--estop, graph running) publish true on /estop, wait until the executor and the driver report
               the stop on /diagnostics, release and reset them; prints the round-trip time
  clock        wall clock plausible, NTP synchronised (timedatectl), controller clock offset (from feedback)

Exit status: 0 when nothing failed (warnings allowed); 1 with "first thing to fix: ..." naming the first failed
check (a configuration file that cannot be read fails its check); 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from posevla.paths import calibration_dir, config_dir

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
SETUPS = {  # which checks each setup runs
    "robot": ("cameras", "grippers", "controllers", "calibration", "checkpoint", "gpu", "estop", "clock"),
    "collect": ("cameras", "leaders", "grippers", "controllers", "calibration", "estop", "clock"),
    "sim": ("controllers", "calibration", "checkpoint", "gpu", "estop", "clock"),
}
CAMERA_CONFIGS = {"head": "camera_head.yaml", "left_wrist": "camera_wrist.yaml", "right_wrist": "camera_wrist.yaml"}
MAX_RESIDUAL_MM, MAX_RESIDUAL_DEG = 3.0, 0.5  # the limits `posevla calibrate handeye` writes files under


@dataclass
class Result:
    check: str
    status: str
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--setup", choices=sorted(SETUPS), default="robot", help="which checks to run (default robot)")
    parser.add_argument("--robot-config", type=Path, default=None,
                        help="robot YAML (default: config/xtrainer_robot.yaml; sim: xtrainer_sim_robot.yaml)")
    parser.add_argument("--leader-config", type=Path, default=None, help="leader YAML (default: config/gello_xtrainer.yaml)")
    parser.add_argument("--leader-port", action="append", default=[], metavar="ARM=PORT",
                        help="override a leader's serial port, e.g. left=/tmp/posevla_leaders/left")
    parser.add_argument("--calibration-dir", type=Path, default=None, help="hand-eye calibration folder (default: installed)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="policy checkpoint directory (skipped if not given)")
    parser.add_argument("--serial", action="append", default=[], metavar="CAMERA=SERIAL",
                        help="expected RealSense serial per camera (default: from config/camera_*.yaml)")
    parser.add_argument("--cameras", default="head,left_wrist,right_wrist", help="cameras in use (comma-separated)")
    parser.add_argument("--estop", action="store_true",
                        help="e-stop round trip through the running executor and driver (stops the arms briefly)")
    parser.add_argument("--skip", action="append", default=[], metavar="CHECK", help="skip a check (repeatable)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per network / device probe (default 2)")
    parser.add_argument("--max-calibration-age-days", type=float, default=90.0,
                        help="warn when a calibration file is older (default 90)")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{flag} {item!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------------------------------------ checks
def check_cameras(args: argparse.Namespace) -> list[Result]:
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        return [Result("cameras", FAIL, f"pyrealsense2 cannot be imported ({exc}); pip install pyrealsense2")]
    cams = [c for c in args.cameras.split(",") if c]
    expected = {c: str((yaml.safe_load((config_dir() / CAMERA_CONFIGS[c]).read_text()) or {})
                       .get("/**", {}).get("ros__parameters", {}).get("serial", "") or "") for c in cams}
    expected.update(_pairs(args.serial, "--serial"))
    info = rs.camera_info
    found = {}
    for dev in rs.context().query_devices():
        def get(field, d=dev):
            return d.get_info(field) if d.supports(field) else "?"
        found[get(info.serial_number)] = (get(info.name), get(info.firmware_version),
                                          get(info.recommended_firmware_version), get(info.usb_type_descriptor))
    out = []
    for serial, (name, fw, rec, usb) in sorted(found.items()):
        status = WARN if rec != "?" and fw != "?" and _version(fw) < _version(rec) else OK
        if usb != "?" and not usb.startswith("3"):
            status, usb = WARN, f"{usb} (USB 2: use a USB 3 port and cable)"
        note = f"; firmware older than the recommended {rec}" if status == WARN and _version(fw) < _version(rec) else ""
        out.append(Result("cameras", status, f"{name} serial {serial} firmware {fw} USB {usb}{note}"))
    if not found:
        return [Result("cameras", FAIL, "no RealSense camera found (USB cable, power, udev rules: "
                                        "librealsense's 99-realsense-libusb.rules)")]
    missing = [f"{c} ({s})" for c, s in expected.items() if s and s not in found]
    if missing:
        out.append(Result("cameras", FAIL, f"configured serial(s) not connected: {', '.join(missing)}; "
                                            f"connected: {', '.join(sorted(found))}"))
    unset = [c for c, s in expected.items() if not s]
    if len(cams) > 1 and unset:
        out.append(Result("cameras", FAIL if len(found) > 1 else WARN,
                          f"no serial set for {', '.join(unset)}: with several cameras each node would take any one; "
                          f"set <camera>_serial:=... (launch) or serial in config/"))
    if len(found) < len(cams):
        out.append(Result("cameras", FAIL, f"{len(found)} camera(s) connected, {len(cams)} in use ({', '.join(cams)})"))
    return out


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return ()


def check_leaders(args: argparse.Namespace) -> list[Result]:
    from posevla.teleop.gello import LeaderArm, LeaderConfig, LeaderReadError

    path = args.leader_config or config_dir() / "gello_xtrainer.yaml"
    cfg = LeaderConfig.from_yaml(path).with_ports(_pairs(args.leader_port, "--leader-port"))
    out = []
    for name, arm_cfg in cfg.arms.items():
        if not Path(arm_cfg.port).exists():
            ports = sorted(glob.glob("/dev/serial/by-id/*")) or sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))
            out.append(Result("leaders", FAIL, f"{name} leader: port {arm_cfg.port} does not exist "
                                                f"(serial ports here: {', '.join(ports) or 'none'})"))
            continue
        try:
            leader = LeaderArm(name, arm_cfg, cfg.baudrate, cfg.protocol)
            try:
                leader.ping()
                reading = leader.read()
            finally:
                leader.close()
        except (LeaderReadError, OSError) as exc:
            out.append(Result("leaders", FAIL, str(exc)))
            continue
        q = ", ".join(f"{v:+.2f}" for v in reading.q)
        out.append(Result("leaders", OK, f"{name} leader on {arm_cfg.port}: {len(arm_cfg.all_ids)} servos answer; "
                                         f"joints [{q}] rad, gripper {reading.gripper:.2f}"))
    return out


def _robot(args: argparse.Namespace):
    from posevla.robot.driver import XTrainerConfig

    default = "xtrainer_sim_robot.yaml" if args.setup == "sim" else "xtrainer_robot.yaml"
    return XTrainerConfig.from_yaml(args.robot_config or config_dir() / default)


def check_grippers(args: argparse.Namespace) -> list[Result]:
    robot = _robot(args)
    if not robot.grippers:
        return [Result("grippers", SKIP, f"no grippers in {robot.source}")]
    return [Result("grippers", OK if Path(g.port).exists() else FAIL,
                   f"{arm} gripper port {g.port} (servo id {g.servo_id})" + ("" if Path(g.port).exists() else " does not exist"))
            for arm, g in robot.grippers.items()]


def _read_packet(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def probe_controller(host: str, dashboard_port: int, feedback_port: int, timeout_s: float) -> tuple[str, float]:
    """(robot mode name, controller clock minus ours in s) from one feedback packet; raises OSError naming the port."""
    from posevla.robot import protocol as P

    try:
        socket.create_connection((host, dashboard_port), timeout=timeout_s).close()
    except OSError as exc:
        raise OSError(f"dashboard {host}:{dashboard_port}: {exc}") from None
    try:
        with socket.create_connection((host, feedback_port), timeout=timeout_s) as s:
            pkt = P.unpack_feedback(_read_packet(s, P.PACKET_SIZE, time.monotonic() + timeout_s))
            now_ms = time.time() * 1e3
    except (OSError, ConnectionError, P.ProtocolError) as exc:
        raise OSError(f"feedback {host}:{feedback_port}: {exc or 'no packet within the timeout'}") from None
    mode = P.MODE_NAMES.get(int(pkt["robot_mode"]), str(int(pkt["robot_mode"])))
    ctrl_ms = int(pkt["timestamp_ms"])
    return mode, (ctrl_ms - now_ms) * 1e-3 if ctrl_ms > 0 else float("nan")


def check_controllers(args: argparse.Namespace, clock_offsets: dict[str, float]) -> list[Result]:
    robot = _robot(args)
    out = []
    for arm, ep in robot.arms.items():
        try:
            mode, offset = probe_controller(ep.host, ep.dashboard_port, ep.feedback_port, args.timeout)
        except OSError as exc:
            out.append(Result("controllers", FAIL, f"{arm} controller unreachable: {exc} (robot YAML {robot.source})"))
            continue
        clock_offsets[arm] = offset
        status = FAIL if mode in ("error", "collision") else WARN if mode not in ("enabled", "running", "disabled") else OK
        hint = {"error": "; clear the alarm (/xtrainer/clear_error or the teach pendant)",
                "collision": "; clear the collision on the teach pendant"}.get(mode, "")
        out.append(Result("controllers", status, f"{arm} controller {ep.host}: reachable, mode {mode}{hint}"))
    return out


def check_calibration(args: argparse.Namespace) -> list[Result]:
    from posevla.calibration.files import load_calibrations

    folder = args.calibration_dir or calibration_dir()
    try:
        calibs = load_calibrations(folder)
    except (ValueError, OSError) as exc:
        return [Result("calibration", FAIL, str(exc))]
    out = []
    today = dt.date.today()
    for frame, c in sorted(calibs.items()):
        try:
            age = (today - dt.date.fromisoformat(str(c.date)[:10])).days
        except ValueError:
            age = None
        res = c.residuals or {}
        mm, deg, n = res.get("translation_mm"), res.get("rotation_deg"), res.get("samples", 0)
        status, notes = OK, []
        if "simulator" in (c.method or "") or str(c.camera_serial).startswith("SIM-"):
            status, notes = WARN, ["the shipped simulator calibration: calibrate before using the robot"]
        if age is None:
            status, notes = WARN, [*notes, f"no valid date ({c.date!r})"]
        elif age > args.max_calibration_age_days:
            status, notes = WARN, [*notes, f"older than {args.max_calibration_age_days:.0f} days"]
        if mm is not None and deg is not None and (mm > MAX_RESIDUAL_MM or deg > MAX_RESIDUAL_DEG):
            status, notes = FAIL, [*notes, f"residuals above {MAX_RESIDUAL_MM} mm / {MAX_RESIDUAL_DEG} deg: recalibrate"]
        figures = f"residuals {mm} mm / {deg} deg over {n} samples" if mm is not None else "no residuals"
        out.append(Result("calibration", status, f"{Path(c.path).name if c.path else frame}: camera {c.camera_serial}, "
                                                 f"{c.method or 'method ?'}, {age if age is not None else '?'} days old, "
                                                 f"{figures}" + (f"; {'; '.join(notes)}" if notes else "")))
    return out


def safetensors_summary(path: Path) -> tuple[int, int]:
    """(tensors, parameters) from a safetensors header, without loading any weight."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    params = 0
    for v in tensors.values():
        count = 1
        for d in v["shape"]:
            count *= int(d)
        params += count
    return len(tensors), params


def check_checkpoint(args: argparse.Namespace) -> list[Result]:
    ckpt = args.checkpoint
    if ckpt is None:
        return [Result("checkpoint", SKIP, "no --checkpoint given")]
    if not ckpt.is_dir():
        return [Result("checkpoint", FAIL, f"{ckpt} is not a directory")]
    missing = [f for f in ("config.yaml", "model.safetensors", "norm_stats.json") if not (ckpt / f).is_file()]
    if missing:
        return [Result("checkpoint", FAIL, f"{ckpt}: missing {', '.join(missing)}")]
    weights = ckpt / "model.safetensors"
    try:
        n_tensors, n_params = safetensors_summary(weights)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        return [Result("checkpoint", FAIL, f"{weights}: unreadable safetensors header ({exc})")]
    size = weights.stat().st_size
    age_days = (time.time() - weights.stat().st_mtime) / 86400
    return [Result("checkpoint", OK, f"{ckpt}: {n_params / 1e6:.1f} M parameters in {n_tensors} tensors, "
                                     f"{size / 2**20:.1f} MiB, saved {age_days:.1f} days ago")]


def check_gpu(args: argparse.Namespace) -> list[Result]:
    try:
        import torch
    except ImportError as exc:
        return [Result("gpu", FAIL, f"torch cannot be imported ({exc})")]
    if not torch.cuda.is_available():
        return [Result("gpu", WARN, f"no CUDA device (torch {torch.__version__}): the policy runs on CPU, far too slow "
                                    "for the full model")]
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        status = OK if free > 8 * 2**30 else WARN
        out.append(Result("gpu", status, f"cuda:{i} {torch.cuda.get_device_name(i)}: {free / 2**30:.1f} of "
                                         f"{total / 2**30:.1f} GiB free" + ("" if status == OK else " (the 3B model in bf16 needs ~8 GiB)")))
    return out


def check_estop(args: argparse.Namespace) -> list[Result]:
    """Round trip through the running executor and driver: stop on /estop, see both report it, release."""
    if not args.estop:
        return [Result("estop", SKIP, "not requested (--estop sends a real e-stop through the running graph)")]
    from posevla.tools.estop import EstopSender

    sender = EstopSender(args.timeout)
    try:
        return _estop_round_trip(sender, args.timeout)
    finally:
        sender.close(0.0)


def _estop_round_trip(sender, timeout_s: float) -> list[Result]:
    from diagnostic_msgs.msg import DiagnosticArray
    from posevla_ros.estop import NODE_SERVICES

    latched: dict[str, bool] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            kv = {k.key: k.value for k in st.values}
            if "estop_latched" in kv:
                latched[st.name] = kv["estop_latched"] == "True"
            elif st.name in NODE_SERVICES or st.name.startswith("xtrainer_driver/"):
                latched[st.name] = st.message.upper().startswith("E-STOP") or "e-stop" in st.message.lower()

    sender.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)

    def reporting(name: str) -> list[str]:
        return [k for k in latched if k == name or k.startswith(name + "/")]

    wait_s = max(3.0, 3 * timeout_s)
    sender._spin(wait_s, until=lambda: all(reporting(n) for n in NODE_SERVICES))
    absent = [n for n in NODE_SERVICES if not reporting(n)]
    if absent:
        return [Result("estop", SKIP if len(absent) == len(NODE_SERVICES) else FAIL,
                       f"no diagnostics from {', '.join(absent)}: start the graph to test the e-stop path")]
    t0 = time.monotonic()
    delivered = sender.publish(True)
    sender._spin(wait_s, until=lambda: all(latched.values()))
    t_stop = time.monotonic() - t0
    stopped = sorted(k for k, v in latched.items() if v)
    not_stopped = sorted(k for k, v in latched.items() if not v)
    rc_release = sender.release()  # publish false + reset both nodes
    sender._spin(wait_s, until=lambda: not any(latched.values()))
    still = sorted(k for k, v in latched.items() if v)
    if not_stopped:
        return [Result("estop", FAIL, f"/estop true (delivered to {delivered} subscriptions) did not stop "
                                      f"{', '.join(not_stopped)} within {wait_s:.0f} s")]
    if rc_release or still:
        return [Result("estop", FAIL, f"stopped {', '.join(stopped)} in {t_stop:.2f} s but the reset failed: "
                                      f"{', '.join(still) or 'a reset service did not answer'} still stopped")]
    return [Result("estop", OK, f"/estop stopped {', '.join(stopped)} in {t_stop:.2f} s (seen on /diagnostics); "
                                "released and reset")]


def check_clock(args: argparse.Namespace, clock_offsets: dict[str, float]) -> list[Result]:
    out = []
    year = dt.datetime.now(dt.timezone.utc).year
    out.append(Result("clock", OK if 2024 <= year < 2100 else FAIL, f"wall clock {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"))
    if shutil.which("timedatectl"):
        try:
            synced = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                                    text=True, timeout=args.timeout).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            synced = ""
        if synced:
            out.append(Result("clock", OK if synced == "yes" else WARN,
                              "NTP synchronised" if synced == "yes" else "NTP not synchronised (timedatectl): "
                              "stamps drift against other machines"))
    for arm, offset in sorted(clock_offsets.items()):
        if offset == offset:  # not NaN
            # the driver re-anchors controller time on receive time, so an offset is harmless; report it
            out.append(Result("clock", OK, f"{arm} controller clock is {offset:+.3f} s from this PC's"))
    return out


# ------------------------------------------------------------------------------------------------ runner
def run_checks(args: argparse.Namespace, emit: Callable[[Result], None]) -> list[Result]:
    offsets: dict[str, float] = {}
    table: dict[str, Callable[[], list[Result]]] = {
        "cameras": lambda: check_cameras(args),
        "leaders": lambda: check_leaders(args),
        "grippers": lambda: check_grippers(args),
        "controllers": lambda: check_controllers(args, offsets),
        "calibration": lambda: check_calibration(args),
        "checkpoint": lambda: check_checkpoint(args),
        "gpu": lambda: check_gpu(args),
        "estop": lambda: check_estop(args),
        "clock": lambda: check_clock(args, offsets),
    }
    results = []
    for name in SETUPS[args.setup]:
        if name in args.skip:
            batch = [Result(name, SKIP, "--skip")]
        else:
            try:
                batch = table[name]()
            except (ValueError, OSError) as exc:  # a configuration file that cannot be read is the thing to fix
                batch = [Result(name, FAIL, str(exc))]
        for r in batch:
            emit(r)
        results += batch
    return results


def run(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.skip) - set(SETUPS["robot"]) - set(SETUPS["collect"]))
    bad_cams = sorted(set(c for c in args.cameras.split(",") if c) - set(CAMERA_CONFIGS))
    if unknown or bad_cams or args.timeout <= 0:
        why = (f"--skip {unknown}: checks are {sorted(set(SETUPS['robot']) | set(SETUPS['collect']))}" if unknown else
               f"--cameras {bad_cams}: cameras are {list(CAMERA_CONFIGS)}" if bad_cams else "--timeout must be > 0")
        print(f"posevla doctor: {why}", file=sys.stderr)
        return 2
    try:
        _pairs(args.serial, "--serial")
        _pairs(args.leader_port, "--leader-port")
    except ValueError as exc:
        print(f"posevla doctor: {exc}", file=sys.stderr)
        return 2
    width = max(len(n) for n in set(SETUPS["robot"]) | set(SETUPS["collect"]))
    print(f"posevla doctor ({args.setup}) on {socket.gethostname()}, pid {os.getpid()}", flush=True)
    results = run_checks(args, lambda r: print(f"[{r.status:>4}] {r.check:<{width}}  {r.detail}", flush=True))
    failed = [r for r in results if r.status == FAIL]
    warned = sum(r.status == WARN for r in results)
    if failed:
        print(f"first thing to fix: {failed[0].check}: {failed[0].detail}", flush=True)
        return 1
    print(f"ready ({warned} warning(s))", flush=True)
    return 0
