"""live_view: the running graph in rerun (`posevla view`, or `ros2 run posevla_ros live_view`).

Subscribes (read-only; it never publishes to the robot) the three cameras' /<cam>/color/image_raw,
/<cam>/aligned_depth_to_color/image_raw and /<cam>/color/camera_info (sensor-data QoS, like the policy), the
policy's /policy/chunk (a camera frame: mapped to base_link with the hand-eye calibration and the TCP pose at
the observation stamp, then drawn into every camera image at that image's stamp) and the executor's
/executor/chunk_base and /xtrainer/servo_command (set-point traces), /<arm>_arm/tcp_pose (TCP traces in
base_link), /diagnostics (executor, driver and policy: e-stop latches, holds, refusals, latencies) and /estop (every QoS kind a sender may use). Logs them with
`posevla.viewer.LiveView` (entity layout shared with `posevla dataset view`) to a new viewer (default), a running
one (`connect`), or a .rrd file (`save`, headless). Publishes its own counts on /diagnostics (name live_view).
Start it beside any graph: teleop, recording, trials.
"""
from __future__ import annotations

import os
import signal

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla.calibration.files import load_calibrations
from posevla.paths import calibration_dir
from posevla.types import ARM_NAMES, VIEW_NAMES
from posevla.viewer import LiveView, close_recording, open_recording
from posevla_ros.estop import subscribe_estop
from posevla_ros.msg_conv import (
    msg_to_chunk,
    msg_to_image,
    msg_to_intrinsics,
    msg_to_servo_command,
    ns_to_time,
    pose_to_T,
    time_to_ns,
)
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked
from posevla_ros.qos import LATEST_STATE

DEPTH_METER = {"16UC1": 1000.0, "mono16": 1000.0, "32FC1": 1.0}  # raw units per metre (RealSense: millimetres)


class LiveViewNode(Node):
    PARAMS: ParamSpec = {
        "cameras": (list(VIEW_NAMES), "cameras to show (a subset of head, left_wrist, right_wrist)", None),
        "calibration_dir": ("", "hand-eye calibration folder (default: the installed calibration/)", None),
        "save": ("", "write a rerun recording (.rrd) to this path instead of opening a viewer (headless)", None),
        "connect": ("", "send to a running rerun viewer at this URL (e.g. rerun+http://127.0.0.1:9876/proxy)", None),
        "image_rate_hz": (10.0, "images logged per second per camera (the viewer's load sets this, not the cameras')",
                          (0.1, 60.0)),
        "depth": (True, "log the aligned depth images", None),
        "trace_s": (20.0, "length of the TCP traces (s)", (0.5, 600.0)),
        "duration_s": (0.0, "stop after this many seconds (0: until Ctrl-C)", (0.0, 86400.0)),
    }

    def __init__(self) -> None:
        super().__init__("live_view")
        p = declare_checked(self, self.PARAMS, dynamic=())
        cams = [c for c in p["cameras"] if c]
        unknown = sorted(set(cams) - set(VIEW_NAMES))
        if unknown or not cams:
            raise ValueError(f"parameter cameras={p['cameras']}: expected a non-empty subset of {list(VIEW_NAMES)}")
        if p["save"] and p["connect"]:
            raise ValueError("parameters save and connect: give one of them (or neither, to open a viewer)")
        if p["save"] and not os.path.isdir(os.path.dirname(os.path.abspath(p["save"]))):
            raise ValueError(f"parameter save={p['save']}: its folder does not exist")
        calibrations = load_calibrations(p["calibration_dir"] or calibration_dir())
        self.saved = bool(p["save"])
        self.rec = open_recording("posevla_live", f"live_{os.getpid()}", save=p["save"] or None,
                                  connect=p["connect"] or None, spawn=not (p["save"] or p["connect"]))
        self.view = LiveView(self.rec, calibrations, tuple(cams), image_period_s=1.0 / p["image_rate_hz"],
                             log_depth_images=p["depth"], trace_s=p["trace_s"])
        self.errors = 0
        for cam in cams:
            self.create_subscription(Image, f"/{cam}/color/image_raw", lambda m, c=cam: self._on_rgb(c, m),
                                     qos_profile_sensor_data)
            self.create_subscription(Image, f"/{cam}/aligned_depth_to_color/image_raw",
                                     lambda m, c=cam: self._on_depth(c, m), qos_profile_sensor_data)
            self.create_subscription(CameraInfo, f"/{cam}/color/camera_info", lambda m, c=cam: self._on_info(c, m),
                                     qos_profile_sensor_data)
        for arm in ARM_NAMES:
            self.create_subscription(PoseStamped, f"/{arm}_arm/tcp_pose", lambda m, a=arm: self._on_tcp(a, m), LATEST_STATE)
        self.create_subscription(MultiDOFJointTrajectory, "/policy/chunk", lambda m: self._on_chunk(m, "policy"), 10)
        self.create_subscription(MultiDOFJointTrajectory, "/executor/chunk_base",
                                 lambda m: self._on_chunk(m, "executor"), 10)
        self.create_subscription(MultiDOFJointTrajectory, "/xtrainer/servo_command", self._on_command, 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        subscribe_estop(self, self._on_estop)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        if p["duration_s"] > 0:  # the same clean stop as Ctrl-C (node_main's handler), so the .rrd is complete
            self.create_timer(p["duration_s"], lambda: os.kill(os.getpid(), signal.SIGINT))

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _bad(self, topic: str, why: str) -> None:
        self.errors += 1
        self.get_logger().warning(f"{topic}: {why}", throttle_duration_sec=2.0)

    def _on_info(self, cam: str, msg: CameraInfo) -> None:
        try:
            self.view.camera_info(cam, msg_to_intrinsics(msg, f"/{cam}/color/camera_info"))
        except ValueError as exc:
            self._bad(f"/{cam}/color/camera_info", str(exc))

    def _on_rgb(self, cam: str, msg: Image) -> None:
        stamp = time_to_ns(msg.header.stamp)
        if not self.view.wants_image(cam, stamp):
            return
        topic = f"/{cam}/color/image_raw"
        if msg.encoding not in ("rgb8", "bgr8"):
            self._bad(topic, f"color encoding {msg.encoding!r}, expected rgb8 or bgr8")
            return
        try:
            img = msg_to_image(msg, topic)
        except ValueError as exc:
            self._bad(topic, str(exc))
            return
        self.view.image(cam, img if msg.encoding == "rgb8" else img[..., ::-1], stamp)

    def _on_depth(self, cam: str, msg: Image) -> None:
        topic = f"/{cam}/aligned_depth_to_color/image_raw"
        if msg.encoding not in DEPTH_METER:
            self._bad(topic, f"depth encoding {msg.encoding!r}, expected one of {sorted(DEPTH_METER)}")
            return
        stamp = time_to_ns(msg.header.stamp)
        if not self.view.wants_depth(cam, stamp):
            return  # only beside a logged colour image of the same capture (before or after it)
        try:
            self.view.depth(cam, msg_to_image(msg, topic), DEPTH_METER[msg.encoding], stamp)
        except ValueError as exc:
            self._bad(topic, str(exc))

    def _on_tcp(self, arm: str, msg: PoseStamped) -> None:
        try:
            self.view.tcp(arm, pose_to_T(msg.pose), time_to_ns(msg.header.stamp))
        except ValueError as exc:
            self._bad(f"/{arm}_arm/tcp_pose", str(exc))

    def _on_chunk(self, msg: MultiDOFJointTrajectory, source: str) -> None:
        topic = "/policy/chunk" if source == "policy" else "/executor/chunk_base"
        try:
            self.view.chunk(msg_to_chunk(msg, topic), source)
        except ValueError as exc:
            self._bad(topic, str(exc))

    def _on_command(self, msg: MultiDOFJointTrajectory) -> None:
        try:
            stamp, poses, _ = msg_to_servo_command(msg)
        except ValueError as exc:
            self._bad("/xtrainer/servo_command", str(exc))
            return
        for arm, T in poses.items():
            self.view.command(arm, T, stamp)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        stamp = time_to_ns(msg.header.stamp) or self._now()
        for st in msg.status:
            self.view.diagnostics(st.name, int.from_bytes(st.level, "little") if isinstance(st.level, bytes)
                                  else int(st.level), st.message, {kv.key: kv.value for kv in st.values}, stamp)

    def _on_estop(self, msg: Bool) -> None:
        self.view.estop_topic(bool(msg.data), self._now())

    def _publish_diagnostics(self) -> None:
        st = DiagnosticStatus(name="live_view", hardware_id="rerun", message="logging")
        st.level = DiagnosticStatus.WARN if self.errors else DiagnosticStatus.OK
        st.values = [KeyValue(key=k, value=str(v)) for k, v in {**self.view.stats, "bad_messages": self.errors}.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self._now())
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        if hasattr(self, "rec"):  # a node refused at start-up may have none
            close_recording(self.rec, self.saved)  # flush; a .rrd is complete once the node is gone
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(LiveViewNode, "live_view", args, params=LiveViewNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
