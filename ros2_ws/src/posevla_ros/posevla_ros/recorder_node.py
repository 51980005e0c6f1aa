"""recorder_node: record demonstrations (plumbing around posevla.dataset.recorder).

Subscribes the camera topics (rgb8 color, 16UC1 aligned depth, camera_info), /joint_states,
/<arm>_arm/tcp_pose and the action /xtrainer/servo_joint_command; samples them at `fps` into crash-safe
episodes. Services (std_srvs/Trigger): /recorder/start, /recorder/stop_and_save, /recorder/discard,
/recorder/rerecord_last, /recorder/mark_success, /recorder/mark_failure; the same actions from the leader
handles' buttons on /teleop/buttons (sensor_msgs/Joy; bindings are parameters, see
posevla.dataset.episode_buttons). Sound cues on start, save and error. A status line (episode count,
elapsed time, stream rates, disk space) is printed every second when stdout is a terminal, and logged
every 10 s otherwise; /diagnostics carries the same figures.
"""
from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState, Joy
from std_srvs.srv import Trigger

from posevla.dataset import cues
from posevla.dataset.episode_buttons import ButtonActions, ButtonBindings
from posevla.dataset.recorder import Recorder, RecorderConfig, Refusal
from posevla.dataset.video import X264_PRESETS, X264_TUNES
from posevla.paths import calibration_dir
from posevla.robot import state_codec
from posevla_ros.msg_conv import msg_to_image, msg_to_intrinsics, ns_to_time, pose_to_T, time_to_ns
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked, reject_unknown, spec_from_dataclass
from posevla_ros.qos import LATEST_STATE

ARMS = ("left", "right")

# The recorder samples the newest message of each stream at its own rate, so a subscription keeps only the newest:
# a deeper queue on a busy machine hands the tick a backlog (CI: joints stored 0.1 s older than the image beside them).
NEWEST_SENSOR = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
LOCK_NAME = ".recorder.lock"


class FolderLock:
    """One recorder per dataset folder: an exclusive flock on <folder>/.recorder.lock, held while the node lives.

    The kernel drops the lock when the process ends, however it ends, so a crash never leaves a stale lock; the
    file keeps the holder's host and pid for the refusal message."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = -1
            raise ValueError(f"dataset folder {folder} is in use by another recorder ({holder}): stop it, or "
                             "choose another root or task") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def joint_vector(msg: JointState) -> dict[str, tuple[np.ndarray, float]]:
    """arm -> (joints rad, gripper opening; NaN when not measured), through the one X-Trainer state codec."""
    try:
        arms = state_codec.decode(msg.name, msg.position, ARMS)
    except ValueError:
        return {}
    return {arm: (s.q, s.gripper) for arm, s in arms.items()}


class RecorderNode(Node):
    PARAMS: ParamSpec = {
        "root": ("data", "dataset root folder", None),
        "task": ("task", "task name (one folder per task: <root>/<task>)", None),
        "instruction": ("", "language instruction stored with every episode (required)", None),
        # defaults from RecorderConfig (posevla.dataset.recorder), the one place they are written
        **spec_from_dataclass(RecorderConfig, {
            "operator": ("operator name", None),
            "cameras": ("cameras to record", None),
            "fps": ("recording rate (Hz)", (1.0, 120.0)),
            "stream_timeout_s": ("stop the episode when a stream is silent this long (s)", (0.05, 10.0)),
            "target_episodes": ("episodes wanted for this task", (1, 100000)),
            "reset_period_s": ("pause between episodes (s)", (0.0, 600.0)),
            "require_action": ("the command stream /xtrainer/servo_joint_command must be alive", None),
            "storage": ("episode storage: video (H.264 colour, lossless FFV1 depth) or jpeg (ALOHA-style)",
                        ("video", "jpeg")),
            "colour_preset": ("x264 preset of the colour streams (storage video)", X264_PRESETS),
            "colour_crf": ("x264 constant quality of the colour streams: lower is better and larger", (0, 51)),
            "colour_tune": ("x264 tuning of the colour streams (psnr: smaller at the same PSNR, more CPU)", X264_TUNES),
            "colour_gop": ("frames between colour keyframes (random access decodes at most this many)", (1, 300)),
            "depth_every": ("store depth with every k-th frame only (1: all; 3: 10 Hz at 30 fps)", (1, 30)),
        }),
        "calibration_dir": ("", "calibration files copied into each episode (default: the installed calibration/)", None),
        "start_stop_buttons": ([0, 8], "button indices on /teleop/buttons that start / stop-and-save", None),
        "discard_buttons": ([1, 9], "button indices that discard the current episode", None),
        "mark_failure_buttons": ([2, 10], "button indices that mark the last episode failed", None),
        "rerecord_buttons": ([3, 11], "button indices that move the last episode aside and record again", None),
        "sound_cues": (True, "play a tone on start, save and error", None),
    }

    @property
    def rec(self) -> Recorder:
        if self._rec is None:
            raise RuntimeError("recorder node: the recorder is not constructed")
        return self._rec

    def __init__(self) -> None:
        super().__init__("recorder")
        self._rec: Recorder | None = None  # set once the parameters are checked (None: cleanup after a refusal)
        self.lock: FolderLock | None = None
        p = declare_checked(self, self.PARAMS, dynamic=())
        reject_unknown(self)
        self.sound = p["sound_cues"]
        self.buttons = ButtonActions(ButtonBindings(list(p["start_stop_buttons"]), list(p["discard_buttons"]),
                                                    list(p["mark_failure_buttons"]), list(p["rerecord_buttons"])))
        if not p["instruction"]:
            raise ValueError("parameter instruction is empty: every episode needs its language instruction")
        calib_dir = Path(p["calibration_dir"]) if p["calibration_dir"] else calibration_dir()
        calib_files = tuple(sorted(calib_dir.glob("*.yaml")))
        if not calib_files:
            raise ValueError(f"parameter calibration_dir: no calibration files (*.yaml) in {calib_dir}")
        self.lock = FolderLock(Path(p["root"]) / p["task"])
        self._rec = Recorder(RecorderConfig(Path(p["root"]), p["task"], p["instruction"], tuple(p["cameras"]),
                                           p["operator"], p["fps"], p["stream_timeout_s"], p["target_episodes"],
                                           p["reset_period_s"], calib_files,
                                           require_action=p["require_action"], storage=p["storage"],
                                           colour_preset=p["colour_preset"], colour_crf=p["colour_crf"],
                                           colour_tune=p["colour_tune"], colour_gop=p["colour_gop"],
                                           depth_every=p["depth_every"]))
        for path in self.rec.incomplete_on_start:
            self.get_logger().warning(f"incomplete episode from an earlier run kept aside: {path}")
        self._camera_inputs()
        for arm in ARMS:
            self.create_subscription(PoseStamped, f"{arm}_arm/tcp_pose", lambda m, a=arm: self._tcp(a, m), LATEST_STATE)
        self.create_subscription(JointState, "joint_states", self._joints, LATEST_STATE)
        self.create_subscription(JointState, "xtrainer/servo_joint_command", self._action, LATEST_STATE)
        self.create_subscription(Joy, "teleop/buttons", self._buttons, 10)
        rec = self.rec
        controls: dict[str, Callable[[], str]] = {
            "start": rec.start, "stop_and_save": lambda: rec.stop_and_save(True), "discard": rec.discard,
            "rerecord_last": rec.rerecord_last, "mark_success": lambda: rec.mark(True),
            "mark_failure": lambda: rec.mark(False)}
        for name, fn in controls.items():
            self.create_service(Trigger, f"recorder/{name}", functools.partial(self._srv_request, fn))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / p["fps"], self._tick)
        self.create_timer(1.0, self._status)
        self.tty = sys.stdout.isatty()
        self._last_log = 0.0

    def _camera_inputs(self) -> None:
        """Camera frames arrive over DDS (posevla_ros.capture_recorder_node captures them in-process instead)."""
        for cam in self.rec.cfg.cameras:
            self.create_subscription(Image, f"{cam}/color/image_raw", lambda m, c=cam: self._color(c, m), NEWEST_SENSOR)
            self.create_subscription(Image, f"{cam}/aligned_depth_to_color/image_raw", lambda m, c=cam: self._depth(c, m),
                                     NEWEST_SENSOR)
            self.create_subscription(CameraInfo, f"{cam}/color/camera_info", lambda m, c=cam: self._info(c, m),
                                     qos_profile_sensor_data)

    def _do(self, fn) -> tuple[bool, str]:
        msg = fn()
        ok = not isinstance(msg, Refusal)
        if ok:  # two call sites: rclpy refuses one call site logging at two severities
            self.get_logger().info(f"recorder: {msg}")
        else:
            self.get_logger().warning(f"recorder: {msg}")
        if self.sound:
            cues.play("error" if not ok else "start" if self.rec.state == "recording" else "saved")
        return ok, msg

    def _srv(self, fn, res):
        res.success, res.message = self._do(fn)
        return res

    def _srv_request(self, fn, _request, res):
        return self._srv(fn, res)

    def _buttons(self, m: Joy) -> None:
        actions = {"start_stop": self.rec.toggle,
                   "discard": self.rec.discard, "mark_failure": lambda: self.rec.mark(False),
                   "rerecord_last": self.rec.rerecord_last}
        for name in self.buttons.update(list(m.buttons), time.monotonic()):
            self.get_logger().info(f"button: {name}")
            self._do(actions[name])

    def _color(self, cam: str, m: Image) -> None:
        try:
            img = msg_to_image(m, f"/{cam}/color/image_raw")
            img = img if m.encoding == "rgb8" else img[..., ::-1]
        except ValueError as exc:
            self.get_logger().warning(str(exc), throttle_duration_sec=2.0)
            return
        self.rec.latest.color[cam] = (time_to_ns(m.header.stamp), np.array(img))
        self.rec.note_arrival(f"{cam}/color")

    def _depth(self, cam: str, m: Image) -> None:
        topic = f"/{cam}/aligned_depth_to_color/image_raw"
        try:
            d = msg_to_image(m, topic)
            if m.encoding == "16UC1":
                d = np.array(d)  # raw millimetres, kept bit-exact
            elif m.encoding == "32FC1":
                d = np.where(np.isfinite(d) & (d > 0), np.round(d * 1000), 0).astype(np.uint16)
            elif m.encoding != "16UC1":
                raise ValueError(f"{topic}: depth encoding {m.encoding!r}, expected 16UC1 or 32FC1")
        except ValueError as exc:
            self.get_logger().warning(str(exc), throttle_duration_sec=2.0)
            return
        self.rec.latest.depth[cam] = (time_to_ns(m.header.stamp), d)
        self.rec.note_arrival(f"{cam}/depth")

    def _info(self, cam: str, m: CameraInfo) -> None:
        try:
            self.rec.latest.info[cam] = msg_to_intrinsics(m, f"/{cam}/color/camera_info")
        except ValueError as exc:
            self.get_logger().warning(str(exc), throttle_duration_sec=2.0)

    def _tcp(self, arm: str, m: PoseStamped) -> None:
        self.rec.latest.tcp[arm] = (time_to_ns(m.header.stamp), pose_to_T(m.pose))
        self.rec.note_arrival("robot")

    def _joints(self, m: JointState) -> None:
        for arm, (q, g) in joint_vector(m).items():
            self.rec.latest.joints[arm] = (time_to_ns(m.header.stamp), q, g)

    def _action(self, m: JointState) -> None:
        v = joint_vector(m)
        if all(a in v for a in ARMS):
            self.rec.latest.action = (time_to_ns(m.header.stamp),
                                      np.concatenate([np.r_[v[a][0], v[a][1]] for a in ARMS]))
            self.rec.note_arrival("action")

    def _tick(self) -> None:
        msg = self.rec.tick(self.get_clock().now().nanoseconds)
        if msg:
            self.get_logger().error(msg)
            if self.sound:
                cues.play("error")

    def _status(self) -> None:
        line = self.rec.status_line()
        if self.tty:
            width = shutil.get_terminal_size((200, 20)).columns - 1
            print("\r" + line[:width].ljust(width), end="", flush=True)
        elif time.monotonic() - self._last_log > 10:
            self.get_logger().info(line)
            self._last_log = time.monotonic()
        st = DiagnosticStatus(name="recorder", hardware_id=self.rec.cfg.task, message=line)
        st.values = [KeyValue(key=k, value=str(v)) for k, v in {
            "state": self.rec.state, "episodes": self.rec.episodes_done, **{f"count_{k}": v for k, v in self.rec.counts.items()},
            **{f"repeated_{k}": v for k, v in self.rec.repeated.items()},
            "frames_written": self.rec.writer.frames_written if self.rec.writer else 0}.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        if self._rec is not None and self._rec.writer is not None:
            self.get_logger().warning(self._rec.abort("recorder shut down mid-episode"))
        if self.lock is not None:
            self.lock.release()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(RecorderNode, "recorder_node", args, params=RecorderNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
