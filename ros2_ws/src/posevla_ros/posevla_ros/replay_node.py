"""replay_node: publish a recording on the camera topics (realsense2_camera names), so the graph runs without
cameras.

- An episode of the data-collection format (.h5): color rgb8, aligned depth 16UC1 (raw units, depth_scale from
  the episode; 1 mm = 1 for realsense2_camera compatibility) and camera_info per camera; optionally the
  recorded TCP poses and joints.
- A rosbag2 recording (MCAP or SQLite3; a folder with metadata.yaml, or the .mcap/.db3 file in it): every
  message of a supported type (Image, CameraInfo, JointState, PoseStamped) on its recorded topic, exactly as
  recorded, at the recorded spacing; parameter `topics` restricts the set (remap names with --ros-args -r).

stamp_mode original keeps the recorded header stamps; now shifts them all by one constant so the recording
appears to happen now (relative timing, including inter-camera offsets, is kept).
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, JointState

from posevla.dataset.reader import EpisodeReader
from posevla.perception.bag_replay import BagSource, is_rosbag2
from posevla.perception.replay import replay_schedule
from posevla_ros.msg_conv import T_to_pose_stamped, image_to_msg, intrinsics_to_msg, ns_to_time, time_to_ns
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked, reject_unknown

# rosbag2 message types the replay republishes, and their QoS (cameras: sensor data, like realsense2_camera)
BAG_TYPES: dict[str, tuple[type, Any]] = {"sensor_msgs/msg/Image": (Image, qos_profile_sensor_data),
             "sensor_msgs/msg/CameraInfo": (CameraInfo, qos_profile_sensor_data),
             "sensor_msgs/msg/JointState": (JointState, 10),
             "geometry_msgs/msg/PoseStamped": (PoseStamped, 10)}


class ReplayNode(Node):
    PARAMS: ParamSpec = {
        "episode": ("", "episode (.h5) or rosbag2 recording (folder, .mcap, .db3) to replay (required)", None),
        "rate": (1.0, "playback speed factor", (0.01, 100.0)),
        "loop": (True, "start again at the end", None),
        "stamp_mode": ("now", "now: shift stamps to playback time; original: recorded stamps", ("now", "original")),
        "publish_robot_state": (False, "also publish the recorded TCP poses and joints (.h5)", None),
        "topics": ([""], "rosbag2: topics to republish (empty: every supported one)", None),
    }

    def __init__(self) -> None:
        super().__init__("replay")
        self.reader: EpisodeReader | None = None
        self.bag: BagSource | None = None
        self.stop = threading.Event()  # set by node_main on SIGINT/SIGTERM: the play loop returns promptly
        p = declare_checked(self, self.PARAMS, dynamic=())
        reject_unknown(self)
        if not p["episode"]:
            raise ValueError("parameter episode is empty: give the .h5 episode or rosbag2 recording to replay")
        self.p = p
        self.published = 0
        if is_rosbag2(p["episode"]):
            self._open_bag([t for t in p["topics"] if t])
            return
        self.bag = None
        reader = self.reader = EpisodeReader(p["episode"])
        self.pubs = {}
        for cam in reader.camera_names:
            self.pubs[cam] = (
                self.create_publisher(Image, f"{cam}/color/image_raw", qos_profile_sensor_data),
                self.create_publisher(Image, f"{cam}/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
                self.create_publisher(CameraInfo, f"{cam}/color/camera_info", qos_profile_sensor_data))
        if p["publish_robot_state"]:
            self.tcp_pubs = {arm: self.create_publisher(PoseStamped, f"{arm}_arm/tcp_pose", 10) for arm in ("left", "right")}
            self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.get_logger().info(f"replaying {p['episode']} ({reader.num_frames} frames, cameras "
                               f"{reader.camera_names}) at x{p['rate']}")

    def _open_bag(self, topics: list[str]) -> None:
        self.reader = None
        probe = BagSource(self.p["episode"], topics or None)
        try:
            types = dict(probe.types)
        finally:
            probe.close()
        unsupported = sorted(t for t, ty in types.items() if ty not in BAG_TYPES and (not topics or t in topics))
        if topics and unsupported:
            raise ValueError(f"parameter topics: {unsupported} have types the replay cannot publish "
                             f"(supported: {sorted(BAG_TYPES)})")
        keep = [t for t, ty in types.items() if ty in BAG_TYPES and (not topics or t in topics)]
        if not keep:
            raise ValueError(f"{self.p['episode']}: no topic of a supported type ({sorted(BAG_TYPES)})")
        if unsupported:
            self.get_logger().warning(f"not replayed (unsupported types): {unsupported}")
        bag = self.bag = BagSource(self.p["episode"], keep)
        self.bag_pubs: dict[str, tuple[type, Any]] = {}
        for t in keep:
            cls, qos = BAG_TYPES[bag.types[t]]
            self.bag_pubs[t] = (cls, self.create_publisher(cls, t, qos))
        self.get_logger().info(f"replaying rosbag2 {self.p['episode']} ({bag.message_count} messages on "
                               f"{keep}) at x{self.p['rate']}")

    def play_once(self) -> None:
        if self.bag is not None:
            self._play_bag_once()
            return
        start_wall = time.monotonic()
        reader = self.reader
        assert reader is not None  # an .h5 episode (a bag returned above)
        for item in replay_schedule(reader, self.get_clock().now().nanoseconds, self.p["rate"], self.p["stamp_mode"]):
            delay = item.due_s - (time.monotonic() - start_wall)
            if self.stop.wait(max(delay, 0.0)):
                return
            for cam, cf in item.frame.cameras.items():
                stamp = cf.stamp_ns + item.stamp_shift_ns
                color, depth, info = self.pubs[cam]
                color.publish(image_to_msg(cf.rgb, "rgb8", stamp, cf.frame_id))
                raw = reader.raw_depth(cam, item.index)
                scale_mm = reader.depth_scale[cam] / 0.001
                raw = raw if abs(scale_mm - 1) < 1e-9 else np.round(raw * scale_mm).clip(0, 65535).astype(np.uint16)
                depth.publish(image_to_msg(raw, "16UC1", stamp, cf.frame_id))
                info.publish(intrinsics_to_msg(cf.intrinsics, stamp, cf.frame_id))
            if self.p["publish_robot_state"]:
                st = item.frame.state
                stamp = st.stamp_ns + item.stamp_shift_ns
                for arm, a in st.arms.items():
                    self.tcp_pubs[arm].publish(T_to_pose_stamped(a.T_base_tcp, stamp, "base_link"))
                js = JointState(name=[f"{arm}_joint{i}" for arm in st.arms for i in range(1, 7)],
                                position=[float(x) for a in st.arms.values() for x in a.joints])
                js.header.stamp = ns_to_time(stamp)
                self.joint_pub.publish(js)
            self.published += 1

    def _play_bag_once(self) -> None:
        start_wall, shift = time.monotonic(), None
        bag = self.bag
        assert bag is not None  # _open_bag made it
        for due_s, m in bag.schedule(self.p["rate"]):
            delay = due_s - (time.monotonic() - start_wall)
            if self.stop.wait(max(delay, 0.0)):
                return
            cls, pub = self.bag_pubs[m.topic]
            msg: Any = deserialize_message(m.data, cls)
            if self.p["stamp_mode"] == "now":
                if shift is None:
                    shift = self.get_clock().now().nanoseconds - m.log_time_ns
                msg.header.stamp = ns_to_time(time_to_ns(msg.header.stamp) + shift)
            pub.publish(msg)
            self.published += 1


    def destroy_node(self) -> None:
        for source in (self.bag, self.reader):
            if source is not None:
                source.close()
        super().destroy_node()


def _play(node: ReplayNode, stop: threading.Event) -> None:
    """The main-thread loop: publish until the end (loop:=false) or until node_main sets `stop`."""
    node.stop = stop
    while not stop.is_set():
        node.play_once()
        if not node.p["loop"]:
            break


def main(args: list[str] | None = None) -> None:
    spin_node(ReplayNode, "replay_node", args, params=ReplayNode.PARAMS, doc=__doc__, loop=_play)


if __name__ == "__main__":
    main()
