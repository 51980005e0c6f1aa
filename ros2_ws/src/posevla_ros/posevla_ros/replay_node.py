"""replay_node: publish a recorded episode on the camera topics (realsense2_camera names), so the graph runs
without cameras. Color rgb8, aligned depth 16UC1 (raw units, depth_scale from the episode; 1 mm = 1 for
realsense2_camera compatibility) and camera_info per camera; optionally the recorded TCP poses and joints.
"""
from __future__ import annotations

import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped  # noqa: F401
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState

from posevla.dataset.reader import EpisodeReader
from posevla.perception.replay import replay_schedule
from posevla_ros.msg_conv import T_to_pose_stamped, image_to_msg, intrinsics_to_msg, ns_to_time
from posevla_ros.params import declare_checked


class ReplayNode(Node):
    def __init__(self) -> None:
        super().__init__("replay")
        p = declare_checked(self, {
            "episode": ("", "episode file (.h5) to replay", None),
            "rate": (1.0, "playback speed factor", (0.01, 100.0)),
            "loop": (True, "start again at the end", None),
            "stamp_mode": ("now", "now: shift stamps to playback time; original: recorded stamps", ("now", "original")),
            "publish_robot_state": (False, "also publish the recorded TCP poses and joints", None),
        })
        if not p["episode"]:
            raise ValueError("parameter episode is empty: give the .h5 episode to replay")
        self.reader = EpisodeReader(p["episode"])
        self.p = p
        self.pubs = {}
        for cam in self.reader.camera_names:
            self.pubs[cam] = (
                self.create_publisher(Image, f"/{cam}/color/image_raw", qos_profile_sensor_data),
                self.create_publisher(Image, f"/{cam}/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
                self.create_publisher(CameraInfo, f"/{cam}/color/camera_info", qos_profile_sensor_data))
        if p["publish_robot_state"]:
            self.tcp_pubs = {arm: self.create_publisher(PoseStamped, f"/{arm}_arm/tcp_pose", 10) for arm in ("left", "right")}
            self.joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self.published = 0
        self.get_logger().info(f"replaying {p['episode']} ({self.reader.num_frames} frames, cameras "
                               f"{self.reader.camera_names}) at x{p['rate']}")

    def play_once(self) -> None:
        start_wall = time.monotonic()
        for item in replay_schedule(self.reader, self.get_clock().now().nanoseconds, self.p["rate"], self.p["stamp_mode"]):
            delay = item.due_s - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            if not rclpy.ok():
                return
            for cam, cf in item.frame.cameras.items():
                stamp = cf.stamp_ns + item.stamp_shift_ns
                color, depth, info = self.pubs[cam]
                color.publish(image_to_msg(cf.rgb, "rgb8", stamp, cf.frame_id))
                raw = self.reader.raw_depth(cam, item.index)
                scale_mm = self.reader.depth_scale[cam] / 0.001
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


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = ReplayNode()
    except ValueError as exc:
        print(f"replay_node: {exc}", flush=True)
        rclpy.try_shutdown()
        raise SystemExit(2) from exc
    try:
        while rclpy.ok():
            node.play_once()
            if not node.p["loop"]:
                break
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.reader.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
