"""ObservationSource: the reusable rclpy plumbing from camera + robot topics to Observations.

Subscribes, per camera: /<cam>/color/image_raw, /<cam>/aligned_depth_to_color/image_raw (16UC1 mm or 32FC1 m),
/<cam>/color/camera_info; and /<arm>_arm/tcp_pose, /joint_states. Color and depth of all cameras go through
one approximate-time synchroniser (posevla.perception.sync, message_filters semantics); each complete set
is turned into an Observation by posevla.perception.ObservationBuilder (which checks staleness) and handed
to `callback`. Bad messages are counted and logged with their topic; they never produce an observation.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState

from posevla.calibration.files import load_calibrations
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.geometry.depth import depth_to_metres
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.perception.observation_builder import BuilderConfig, ObservationBuilder, StaleObservation
from posevla.perception.sync import make_synchronizer
from posevla.types import ARM_NAMES, ArmState, CameraFrame, Observation, RobotState, optical_frame
from posevla_ros.graph import config_dir
from posevla_ros.msg_conv import msg_to_image, msg_to_intrinsics, pose_to_T, time_to_ns
from posevla_ros.params import declare_checked
from posevla_ros.qos import LATEST_STATE


class ObservationSource:
    def __init__(self, node: Node, views: list[str], image_size: int,
                 callback: Callable[[Observation], None], need_state: bool = True,
                 crops: dict[str, list[float]] | None = None) -> None:
        p = declare_checked(node, {
            "cameras": ([""], "cameras to use (default: all the model's views); e.g. [head, left_wrist]", None),
            "slop_s": (0.03, "max stamp difference between the views of one observation (s)", (0.001, 1.0)),
            "max_age_s": (0.5, "refuse observations older than this (s)", (0.01, 10.0)),
            "queue_size": (10, "synchroniser queue per stream", (1, 100)),
            "calibration_dir": ("", "hand-eye calibration directory (default: the repository's calibration/)", None),
            "resize_mode": ("resize_with_pad", "resize_with_pad | center_crop", ("resize_with_pad", "center_crop")),
            "min_depth_m": (0.05, "depth below this is invalid (m)", (0.0, 10.0)),
            "max_depth_m": (4.0, "depth above this is invalid (m)", (0.1, 65.0)),
        })
        cams = [c for c in p["cameras"] if c] or list(views)
        unknown = set(cams) - set(views)
        if unknown:
            raise ValueError(f"parameter cameras={cams}: {sorted(unknown)} not among the model's views {views}")
        self.node, self.cameras, self.callback, self.need_state = node, cams, callback, need_state
        calib_dir = p["calibration_dir"] or str(Path(config_dir()).parent / "calibration")
        # TCP poses arrive at ~100 Hz; allow 100 ms of hold at the ends of the history (loaded CPUs)
        self.histories = {arm: PoseHistory(tolerance_ns=100_000_000) for arm in ARM_NAMES}
        self.builder = ObservationBuilder(
            BuilderConfig(image_size=image_size, resize_mode=p["resize_mode"], min_depth_m=p["min_depth_m"],
                          max_depth_m=p["max_depth_m"], max_age_s=p["max_age_s"], slop_s=p["slop_s"],
                          crops=dict(crops or {})),
            CameraToBase(load_calibrations(calib_dir), self.histories) if need_state else None)
        self.sync = make_synchronizer([(c, k) for c in cams for k in ("color", "depth")], p["slop_s"],
                                      p["queue_size"], self._on_set)
        self.info: dict[str, tuple[int, CameraIntrinsics]] = {}
        self.joints: dict[str, tuple[np.ndarray, float]] = {}
        self.errors: Counter[str] = Counter()
        self.last_stamp: dict[str, int] = {}
        for cam in cams:
            node.create_subscription(Image, f"/{cam}/color/image_raw",
                                     lambda m, c=cam: self._on_image(c, "color", m), qos_profile_sensor_data)
            node.create_subscription(Image, f"/{cam}/aligned_depth_to_color/image_raw",
                                     lambda m, c=cam: self._on_image(c, "depth", m), qos_profile_sensor_data)
            node.create_subscription(CameraInfo, f"/{cam}/color/camera_info",
                                     lambda m, c=cam: self._on_info(c, m), qos_profile_sensor_data)
        for arm in ARM_NAMES:
            node.create_subscription(PoseStamped, f"/{arm}_arm/tcp_pose",
                                     lambda m, a=arm: self.histories[a].add(time_to_ns(m.header.stamp), pose_to_T(m.pose)),
                                     LATEST_STATE)  # newest first: a busy executor must not work through a backlog
        node.create_subscription(JointState, "/joint_states", self._on_joints, LATEST_STATE)

    def _error(self, topic: str, why: str) -> None:
        self.errors[topic] += 1
        self.node.get_logger().warning(f"{topic}: {why}", throttle_duration_sec=2.0)

    def _on_info(self, cam: str, msg: CameraInfo) -> None:
        topic = f"/{cam}/color/camera_info"
        try:
            self.info[cam] = (time_to_ns(msg.header.stamp), msg_to_intrinsics(msg, topic))
        except ValueError as exc:
            self._error(topic, str(exc))

    def _on_joints(self, msg: JointState) -> None:
        idx = {n: i for i, n in enumerate(msg.name)}
        for arm in ARM_NAMES:
            names = [f"{arm}_joint{i}" for i in range(1, 7)]
            if all(n in idx for n in names):
                g = msg.position[idx[f"{arm}_gripper"]] if f"{arm}_gripper" in idx else 0.0
                self.joints[arm] = (np.array([msg.position[idx[n]] for n in names]), float(g))

    def _on_image(self, cam: str, kind: str, msg: Image) -> None:
        topic = f"/{cam}/color/image_raw" if kind == "color" else f"/{cam}/aligned_depth_to_color/image_raw"
        stamp = time_to_ns(msg.header.stamp)
        key = f"{cam}/{kind}"
        if key in self.last_stamp and stamp <= self.last_stamp[key]:
            self._error(topic, f"stamp {stamp} is not newer than the previous one ({self.last_stamp[key]})")
            return
        self.last_stamp[key] = stamp
        try:
            if kind == "color":
                if msg.encoding not in ("rgb8", "bgr8"):
                    raise ValueError(f"color encoding {msg.encoding!r}, expected rgb8 or bgr8")
                img = msg_to_image(msg, topic)
                data = img if msg.encoding == "rgb8" else img[..., ::-1]
            else:
                if msg.encoding in ("16UC1", "mono16"):
                    data = depth_to_metres(msg_to_image(msg, topic), 0.001)
                elif msg.encoding == "32FC1":
                    data = msg_to_image(msg, topic)
                else:
                    raise ValueError(f"depth encoding {msg.encoding!r}, expected 16UC1 (mm) or 32FC1 (m)")
        except ValueError as exc:
            self._error(topic, str(exc))
            return
        self.sync.add((cam, kind), stamp, (data, msg.header.frame_id, stamp))

    def _robot_state(self, stamp_ns: int) -> RobotState:
        """Both arms' TCP poses at the observation stamp; StaleObservation when an arm has none."""
        arms = {}
        for arm, hist in self.histories.items():
            try:
                T = hist.at(stamp_ns)
            except ValueError as exc:
                raise StaleObservation(f"{arm} arm state: {exc}") from exc
            q, g = self.joints.get(arm, (np.zeros(6), 0.5))
            arms[arm] = ArmState(T, q, g, stamp_ns)
        return RobotState(arms, stamp_ns)

    def _on_set(self, msgs: dict) -> None:
        frames = {}
        for cam in self.cameras:
            if cam not in self.info:
                self._error(f"/{cam}/color/camera_info", "no camera_info received yet")
                return
            (rgb, frame_id, stamp), (depth, _, _) = msgs[(cam, "color")], msgs[(cam, "depth")]
            frames[cam] = CameraFrame(cam, rgb, depth, self.info[cam][1], stamp, frame_id or optical_frame(cam))
        ref = frames.get("head") or next(iter(frames.values()))
        now = self.node.get_clock().now().nanoseconds
        try:
            state = self._robot_state(ref.stamp_ns) if self.need_state else None
            obs = self.builder.build(frames, state, "", now)
        except StaleObservation as exc:
            self.node.get_logger().warning(f"observation refused: {exc}", throttle_duration_sec=2.0)
            return
        self.callback(obs)

    def stats(self) -> dict[str, int]:
        return {"built": self.builder.built, **{f"sync_{k}": v for k, v in self.sync.stats().items()},
                **{f"refused_{k}": v for k, v in self.builder.refusals.items()},
                **{f"bad_{k}": v for k, v in self.errors.items()}}
