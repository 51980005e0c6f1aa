"""Rerun logging of the stack, once: the entity layout and the helpers shared by `posevla dataset view` (a recorded
episode) and `posevla view` (the live graph: `posevla_ros.live_view`), plus `LiveView`, the ROS-free core of
the live view (plain arrays in, rerun entities out; the node only converts messages).

Entity layout (metres, base_link z up; stamps on the `capture_time` timeline are the sensors' capture times):

    world/base_link                          the robot base (axes)
    world/base_link/<arm>_tcp                measured TCP pose T_base_tcp (Transform3D + axes)
    world/base_link/<arm>_tcp_trace          the TCP's recent path (LineStrips3D)
    world/base_link/<arm>_command_trace      the servo set-points' recent path (/xtrainer/servo_command, grey)
    world/base_link/head                     the head camera (eye-to-hand: T_base_head) with its Pinhole
    world/base_link/<arm>_tcp/<arm>_wrist    a wrist camera (eye-in-hand: T_tcp_wrist under its moving TCP)
    cameras/<cam>                            a camera without calibration (image space only)
    <camera entity>/rgb, <camera entity>/depth   the images (depth in metres via DepthImage.meter)
    <camera entity>/chunk/<arm>              the predicted chunk's TCP positions projected into that image (pixels)
    world/base_link/chunk/<arm>              the predicted chunk in base_link (policy, mapped with the calibration)
    world/base_link/executor_chunk/<arm>     the chunk the executor accepted (/executor/chunk_base)
    robot/<arm>/tcp_x|y|z, command_x|y|z     measured TCP and commanded set-point positions (m)
    safety/estop                             /estop as 0/1; safety/log: e-stop, hold and refusal messages
    safety/<node>/<key>                      numeric diagnostics of the executor, driver and policy (holds, refused,
                                             estop_latched, latencies, ...)
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from posevla.calibration.files import HandEyeCalibration
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ARM_NAMES, VIEW_NAMES, ActionChunk, optical_frame

BASE = "world/base_link"
# diagnostics statuses shown under safety/ (prefix match: xtrainer_driver/left, xtrainer_driver/right, ...)
SAFETY_SOURCES = ("executor", "xtrainer_driver", "policy")
MIN_DEPTH_M = 0.02  # chunk points closer to (or behind) a camera's image plane are not drawn in it
ARM_COLOURS = {"left": (80, 160, 255), "right": (255, 140, 60)}


# ------------------------------------------------------------------------------------------- shared helpers
def open_recording(app_id: str, recording_id: str, save: Path | None = None, connect: str | None = None,
                   spawn: bool = False) -> Any:
    """A rerun RecordingStream that writes a .rrd file (save, headless), sends to a running viewer (connect, a
    rerun+http://host:9876/proxy URL) or starts a viewer (spawn)."""
    import rerun as rr

    rec = rr.RecordingStream(app_id, recording_id=recording_id)
    if save is not None:
        rec.save(str(save))
    elif connect:
        rec.connect_grpc(connect)
    elif spawn:
        rec.spawn()
    return rec


def close_recording(rec: Any, saved: bool) -> None:
    """Flush everything logged; a file sink is closed so the .rrd is complete."""
    rec.flush()
    if saved:
        rec.disconnect()


def set_capture_time(rec: Any, stamp_ns: int) -> None:
    rec.set_time("capture_time", timestamp=np.datetime64(int(stamp_ns), "ns"))


def log_world(rec: Any) -> None:
    import rerun as rr

    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    rec.log(BASE, rr.Transform3D(), rr.TransformAxes3D(0.2), static=True)


def camera_entity(cam: str, parent_frame: str | None) -> str:
    """Where a camera lives: under base_link (eye-to-hand), under its arm's TCP (eye-in-hand) or image-only."""
    if parent_frame == "base_link":
        return f"{BASE}/{cam}"
    if parent_frame and parent_frame.endswith("_tcp"):
        return f"{BASE}/{parent_frame}/{cam}"
    return f"cameras/{cam}"


def log_camera_mount(rec: Any, cam: str, parent_frame: str | None, T_parent_cam: np.ndarray | None) -> str:
    """Log the camera's static calibration transform (when known); returns its entity path."""
    import rerun as rr

    entity = camera_entity(cam, parent_frame if T_parent_cam is not None else None)
    if not entity.startswith("cameras/"):
        T = np.asarray(T_parent_cam, float)
        rec.log(entity, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]),
                rr.TransformAxes3D(0.1 if parent_frame == "base_link" else 0.05), static=True)
    return entity


def log_pinhole(rec: Any, entity: str, intr: CameraIntrinsics, static: bool = True) -> None:
    import rerun as rr

    rec.log(entity, rr.Pinhole(image_from_camera=intr.K, resolution=[intr.width, intr.height],
                               camera_xyz=rr.ViewCoordinates.RDF), static=static)


def log_tcp(rec: Any, arm: str, T_base_tcp: np.ndarray) -> None:
    """The measured TCP pose (moves the wrist cameras mounted under it) and its position scalars (m)."""
    import rerun as rr

    T = np.asarray(T_base_tcp, float)
    rec.log(f"{BASE}/{arm}_tcp", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]), rr.TransformAxes3D(0.05))
    for a, axis in enumerate("xyz"):
        rec.log(f"robot/{arm}/tcp_{axis}", rr.Scalars(float(T[a, 3])))


def log_rgb(rec: Any, entity: str, rgb: np.ndarray, jpeg_quality: int = 90) -> None:
    import rerun as rr

    rec.log(f"{entity}/rgb", rr.Image(np.ascontiguousarray(rgb)).compress(jpeg_quality=jpeg_quality))


def log_depth(rec: Any, entity: str, depth: np.ndarray, meter: float) -> None:
    """Depth image; `meter` = raw units per metre (1000 for uint16 millimetres, 1 for float metres)."""
    import rerun as rr

    rec.log(f"{entity}/depth", rr.DepthImage(depth, meter=meter))


def project_chunk(positions_base: np.ndarray, T_base_cam: np.ndarray, intr: CameraIntrinsics) -> list[np.ndarray]:
    """(N,3) points in base_link -> the visible runs of the path, each a (k,2) array of pixels (u, v), in order.

    A point is visible when it lies in front of the camera (z > MIN_DEPTH_M) and projects within one image size
    around the image (a point near the image plane projects towards infinity; one behind it would be mirrored).
    The path is split where points are not visible, so no segment joins two points that are not neighbours."""
    from posevla.geometry.projection import project

    p_cam = se3.transform_points(se3.invert_T(T_base_cam), np.asarray(positions_base, float).reshape(-1, 3))
    front = p_cam[:, 2] > MIN_DEPTH_M
    uv = np.full((len(p_cam), 2), np.nan)
    if front.any():
        uv[front] = project(p_cam[front], intr)
    w, h = intr.width, intr.height
    visible = front & (uv[:, 0] >= -w) & (uv[:, 0] <= 2 * w) & (uv[:, 1] >= -h) & (uv[:, 1] <= 2 * h)
    runs, start = [], None
    for i, ok in enumerate([*visible, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            runs.append(uv[start:i])
            start = None
    return runs


# ------------------------------------------------------------------------------------------- the live view
class LiveView:
    """What the live view logs, from plain values (the ROS node converts the messages and calls these).

    `calibrations`: child frame -> HandEyeCalibration (posevla.calibration.files.load_calibrations). Images are
    logged at most every `image_period_s` per camera (the viewer's load, not the cameras', sets the rate);
    every logged image gets the latest predicted chunk projected into it with the camera's pose *at the image's
    stamp* (wrist cameras move with their TCP). TCP traces keep the last `trace_s` seconds."""

    def __init__(self, rec: Any, calibrations: dict[str, HandEyeCalibration], cameras: tuple[str, ...] = VIEW_NAMES,
                 image_period_s: float = 0.1, log_depth_images: bool = True, trace_s: float = 20.0,
                 tcp_period_s: float = 0.033) -> None:
        import rerun as rr

        self.rr, self.rec = rr, rec
        self.calibrations = calibrations
        self.cameras = tuple(cameras)
        # TCP poses at ~100 Hz; hold 100 ms at the ends of the history (loaded CPUs), as the policy's source does
        self.histories = {arm: PoseHistory(tolerance_ns=100_000_000) for arm in ARM_NAMES}
        self.to_base = CameraToBase(calibrations, self.histories)
        self.image_period_ns = int(image_period_s * 1e9)
        self.tcp_period_ns = int(tcp_period_s * 1e9)
        self.log_depth_images = log_depth_images
        self.trace_ns = int(trace_s * 1e9)
        self.traces: dict[str, deque[tuple[int, np.ndarray]]] = {}  # trace entity -> (stamp, position) of trace_s
        self.last_tcp_log: dict[str, int] = {}
        self.last_image: dict[str, int] = {}  # cam -> stamp of the last logged image
        self.pending_depth: dict[str, tuple[int, np.ndarray, float]] = {}  # depth that came before its colour image
        self.intrinsics: dict[str, CameraIntrinsics] = {}
        self.chunk_base: ActionChunk | None = None
        self.estop: bool | None = None
        self.messages: dict[str, str] = {}  # diagnostics status name -> last message (logged when it changes)
        self.warned: set[str] = set()  # cameras whose changing camera_info was reported
        self.stats = {"images": 0, "depth": 0, "chunks": 0, "chunk_refused": 0, "projected": 0, "tcp": 0,
                      "commands": 0, "diagnostics": 0, "estop": 0}
        self.entity: dict[str, str] = {}
        log_world(rec)
        for cam in self.cameras:
            calib = calibrations.get(optical_frame(cam))
            self.entity[cam] = log_camera_mount(rec, cam, calib.parent_frame if calib else None,
                                                calib.T_parent_child if calib else None)

    # ---- cameras
    def camera_info(self, cam: str, intr: CameraIntrinsics) -> None:
        old = self.intrinsics.get(cam)
        if old is not None and np.array_equal(old.K, intr.K) and (old.width, old.height) == (intr.width, intr.height):
            return
        self.intrinsics[cam] = intr
        log_pinhole(self.rec, self.entity[cam], intr)
        if old is not None and cam not in self.warned:  # a camera's K does not change: two publishers, or a restart
            self.warned.add(cam)
            self.rec.log("safety/log", self.rr.TextLog(
                f"{cam}: camera_info changed from {old.width}x{old.height} fx {old.fx:.1f} to {intr.width}x{intr.height} "
                f"fx {intr.fx:.1f} (two camera drivers on one ROS domain, or a restarted camera?)", level="WARN"))

    def wants_image(self, cam: str, stamp_ns: int) -> bool:
        """Whether an image of `cam` stamped `stamp_ns` would be logged (throttle; callers skip converting it)."""
        last = self.last_image.get(cam)
        return cam in self.entity and (last is None or stamp_ns - last >= self.image_period_ns or stamp_ns < last)

    def image(self, cam: str, rgb: np.ndarray, stamp_ns: int) -> bool:
        if not self.wants_image(cam, stamp_ns):
            return False
        self.last_image[cam] = stamp_ns
        set_capture_time(self.rec, stamp_ns)
        log_rgb(self.rec, self.entity[cam], rgb)
        self.stats["images"] += 1
        pending = self.pending_depth.pop(cam, None)
        if pending is not None and pending[0] == stamp_ns:
            self._log_depth(cam, *pending)
        self._project_into(cam, stamp_ns)
        return True

    def wants_depth(self, cam: str, stamp_ns: int) -> bool:
        """Whether a depth image of that stamp would be logged (now, or when its colour image comes)."""
        return self.log_depth_images and (self.last_image.get(cam) == stamp_ns or self.wants_image(cam, stamp_ns))

    def depth(self, cam: str, depth: np.ndarray, meter: float, stamp_ns: int) -> None:
        """Aligned depth is logged with the colour image of the same stamp, whichever of the two arrives first."""
        if not self.wants_depth(cam, stamp_ns):
            return
        if self.last_image.get(cam) == stamp_ns:
            self._log_depth(cam, stamp_ns, depth, meter)
        else:
            self.pending_depth[cam] = (stamp_ns, depth, meter)

    def _log_depth(self, cam: str, stamp_ns: int, depth: np.ndarray, meter: float) -> None:
        set_capture_time(self.rec, stamp_ns)
        log_depth(self.rec, self.entity[cam], depth, meter)
        self.stats["depth"] += 1

    # ---- robot
    def tcp(self, arm: str, T_base_tcp: np.ndarray, stamp_ns: int) -> None:
        """A measured TCP pose (base_link): kept for the wrist cameras' poses, logged at most every tcp_period_s."""
        if arm not in self.histories or not np.all(np.isfinite(T_base_tcp)):
            return
        self.histories[arm].add(stamp_ns, T_base_tcp)
        if self._trace(f"{BASE}/{arm}_tcp_trace", ARM_COLOURS.get(arm, (200, 200, 200)), T_base_tcp, stamp_ns):
            log_tcp(self.rec, arm, T_base_tcp)
            self.stats["tcp"] += 1

    def command(self, arm: str, T_base_tcp: np.ndarray, stamp_ns: int) -> None:
        """A servo set-point sent to the driver (base_link): its trace beside the measured one, and x/y/z plots
        (robot/<arm>/command_x|y|z) on the same axes as the measured TCP's, so lag and holds show."""
        if arm not in ARM_NAMES or not np.all(np.isfinite(T_base_tcp)):
            return
        if self._trace(f"{BASE}/{arm}_command_trace", (200, 200, 200), T_base_tcp, stamp_ns):
            for a, axis in enumerate("xyz"):
                self.rec.log(f"robot/{arm}/command_{axis}", self.rr.Scalars(float(T_base_tcp[a, 3])))
            self.stats["commands"] += 1

    def _trace(self, entity: str, colour: tuple[int, int, int], T: np.ndarray, stamp_ns: int) -> bool:
        """Append T's position to the trace logged at `entity` (last trace_s); when due (tcp_period_s), log the
        trace, set the time and return True (the caller logs the rest)."""
        trace = self.traces.setdefault(entity, deque())
        trace.append((stamp_ns, np.asarray(T, float)[:3, 3].copy()))
        while trace and stamp_ns - trace[0][0] > self.trace_ns:
            trace.popleft()
        last = self.last_tcp_log.get(entity)
        if last is not None and 0 <= stamp_ns - last < self.tcp_period_ns:
            return False
        self.last_tcp_log[entity] = stamp_ns
        set_capture_time(self.rec, stamp_ns)
        if len(trace) > 1:
            self.rec.log(entity, self.rr.LineStrips3D([np.stack([p for _, p in trace])], colors=[colour]))
        return True

    # ---- chunks
    def chunk(self, chunk: ActionChunk, source: str = "policy") -> bool:
        """A predicted chunk (any calibrated camera frame, or base_link). source 'policy' is drawn into the images;
        'executor' (already in base_link) only in 3D. False (and a warning in safety/log) when it cannot be mapped."""
        set_capture_time(self.rec, chunk.stamp_ns)
        try:
            base = chunk if chunk.frame_id == "base_link" else self.to_base.chunk_to_base(chunk)
        except ValueError as exc:
            self.stats["chunk_refused"] += 1
            self.rec.log("safety/log", self.rr.TextLog(f"{source} chunk not drawn: {exc}", level="WARN"))
            return False
        entity = "chunk" if source == "policy" else "executor_chunk"
        for arm, c in base.arms.items():
            ok = np.all(np.isfinite(c.T[:, :3, 3]), axis=1)
            if ok.sum() >= 1:
                self.rec.log(f"{BASE}/{entity}/{arm}", self.rr.LineStrips3D([c.T[ok, :3, 3]],
                                                                           colors=[ARM_COLOURS.get(arm, (200, 200, 200))]))
        if source == "policy":
            self.chunk_base = base
            self.stats["chunks"] += 1
            for cam, stamp in self.last_image.items():
                self._project_into(cam, stamp)
        return True

    def _project_into(self, cam: str, stamp_ns: int) -> None:
        if self.chunk_base is None or cam not in self.intrinsics:
            return
        try:
            T_base_cam = self.to_base.T_base_cam(optical_frame(cam), stamp_ns)
        except ValueError:
            return  # an uncalibrated camera, or no TCP pose at that stamp yet: nothing to draw into it
        set_capture_time(self.rec, stamp_ns)
        for arm, c in self.chunk_base.arms.items():
            pts = c.T[:, :3, 3]
            pts = pts[np.all(np.isfinite(pts), axis=1)]
            runs = project_chunk(pts, T_base_cam, self.intrinsics[cam]) if len(pts) else []
            colour = ARM_COLOURS.get(arm, (200, 200, 200))
            path = f"{self.entity[cam]}/chunk/{arm}"
            if runs:  # the path (visible runs) and a dot on the first visible point
                self.rec.log(path, self.rr.LineStrips2D(runs, colors=[colour]),
                             self.rr.Points2D(runs[0][:1], radii=4.0, colors=[colour]))
            else:
                self.rec.log(path, self.rr.Clear(recursive=False))
            self.stats["projected"] += sum(len(r) for r in runs)

    # ---- safety
    def estop_topic(self, value: bool, stamp_ns: int) -> None:
        set_capture_time(self.rec, stamp_ns)
        self.rec.log("safety/estop", self.rr.Scalars(1.0 if value else 0.0))
        if value != self.estop:
            self.rec.log("safety/log", self.rr.TextLog("E-STOP: /estop is true" if value else "/estop released",
                                                       level="ERROR" if value else "INFO"))
        self.estop = value
        self.stats["estop"] += 1

    def diagnostics(self, name: str, level: int, message: str, values: dict[str, str], stamp_ns: int) -> None:
        """One DiagnosticStatus (level 0 OK, 1 WARN, 2 ERROR, 3 STALE) of the executor, driver or policy."""
        if not name.startswith(SAFETY_SOURCES):
            return
        set_capture_time(self.rec, stamp_ns)
        base = "safety/" + "/".join(self.rr.escape_entity_path_part(part) for part in name.split("/"))
        self.rec.log(f"{base}/level", self.rr.Scalars(float(level)))
        for key, text in values.items():
            number = _number(text)
            if number is not None:  # keys may hold spaces and punctuation: one escaped path part each
                self.rec.log(f"{base}/{self.rr.escape_entity_path_part(key)}", self.rr.Scalars(number))
        if message != self.messages.get(name):
            self.messages[name] = message
            self.rec.log("safety/log", self.rr.TextLog(f"{name}: {message}",
                                                       level=("INFO", "WARN", "ERROR", "WARN")[min(max(level, 0), 3)]))
        refusal = values.get("last_refusal")
        if refusal and refusal != self.messages.get(f"{name}/last_refusal"):
            self.messages[f"{name}/last_refusal"] = refusal
            self.rec.log("safety/log", self.rr.TextLog(f"{name}: chunk refused: {refusal}", level="WARN"))
        self.stats["diagnostics"] += 1


def _number(text: str) -> float | None:
    if text in ("True", "true"):
        return 1.0
    if text in ("False", "false"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


# ------------------------------------------------------------------------------------------- `posevla view`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("live view of the running graph in rerun: the three cameras (RGB + aligned depth), the "
                          "policy's predicted chunk drawn into the head and wrist images and in 3D, TCP traces in "
                          "base_link, e-stop, holds and refusals. Works beside teleop, recording and trials.")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--save", type=Path, help="write a rerun recording (.rrd) instead of opening a viewer (headless)")
    out.add_argument("--connect", metavar="URL", help="send to a running rerun viewer (e.g. rerun+http://host:9876/proxy)")
    parser.add_argument("--cameras", default="", help="cameras to show, e.g. 'head,left_wrist' (default: all three)")
    parser.add_argument("--calibration-dir", default="", help="hand-eye calibration folder (default: the installed one)")
    parser.add_argument("--image-rate", type=float, default=10.0, help="images logged per second per camera (default 10)")
    parser.add_argument("--no-depth", action="store_true", help="do not log the depth images")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")


def node_arguments(args: argparse.Namespace) -> list[str]:
    """The `posevla view` options as the live_view node's --ros-args (one parameter table: the node's)."""
    from posevla_ros.bringup import parse_cameras
    from posevla_ros.run_graph import param_arg

    params: dict[str, object] = {"image_rate_hz": float(args.image_rate), "depth": not args.no_depth,
                                 "duration_s": float(args.duration)}
    if args.save:
        params["save"] = str(args.save)
    if args.connect:
        params["connect"] = args.connect
    if args.cameras:
        params["cameras"] = parse_cameras(args.cameras)
    if args.calibration_dir:
        params["calibration_dir"] = args.calibration_dir
    out = ["--ros-args", "-r", "__node:=live_view"]
    for k, v in params.items():
        out += ["-p", param_arg(k, v)]
    return out


def run(args: argparse.Namespace) -> int:
    try:
        import rerun  # noqa: F401
    except ImportError:
        print("posevla view: needs rerun-sdk (pip install rerun-sdk)", file=sys.stderr)
        return 2
    try:
        from posevla_ros.live_view import main as live_view_main
    except ImportError as exc:
        print(f"posevla view: needs the ROS 2 packages (rclpy, posevla_ros): {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        live_view_main(node_arguments(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.save:
        print(f"wrote {args.save} after {time.monotonic() - started:.1f} s (open it with: rerun {args.save})")
    return 0
