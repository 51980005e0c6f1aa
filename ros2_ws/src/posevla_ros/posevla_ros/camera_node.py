"""camera_node: one RealSense camera (pyrealsense2 directly), topics as realsense2_camera publishes them.

/<camera>/color/image_raw (rgb8), /<camera>/aligned_depth_to_color/image_raw (16UC1, millimetres),
/<camera>/color/camera_info (K and distortion from the device), stamped with the frame's capture time
(see posevla.perception.realsense for the clock domains). On a lost or unplugged camera it reports on
/diagnostics, keeps retrying, and never publishes an old frame as new.
"""
from __future__ import annotations

import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from posevla.perception.realsense import RealSenseCamera, RealSenseConfig
from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg, ns_to_time
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked, reject_unknown, spec_from_dataclass


class CameraNode(Node):
    # defaults from RealSenseConfig (posevla.perception.realsense), the one place they are written
    PARAMS: ParamSpec = {
        "camera_name": ("head", "head | left_wrist | right_wrist (topic prefix and frame id)",
                        ("head", "left_wrist", "right_wrist")),
        **spec_from_dataclass(RealSenseConfig, {
            "serial": ("RealSense serial number, a string (empty: any one camera; see `posevla doctor`)", None),
            "width": ("color/depth width (pixels)", (64, 1920)),
            "height": ("color/depth height (pixels)", (48, 1080)),
            "fps": ("frame rate (Hz)", (5, 90)),
            "playback_file": ("play a recording (.db3/.bag) instead of a live camera", None),
            "inter_cam_sync_mode": ("hardware sync: 0 default, 1 master, 2 slave", (0, 2)),
        }),
    }

    def __init__(self) -> None:
        super().__init__("camera")
        self._running = False
        self._thread: threading.Thread | None = None
        self.camera: RealSenseCamera | None = None
        p = declare_checked(self, self.PARAMS, dynamic=())
        reject_unknown(self)  # before the capture thread starts
        self.cfg = RealSenseConfig(p["camera_name"], p["serial"], p["width"], p["height"], p["fps"],
                                   p["playback_file"], True, p["inter_cam_sync_mode"])
        name = p["camera_name"]
        # relative names: /<camera>/... at the root, /<ns>/<camera>/... under a namespace
        self.color_pub = self.create_publisher(Image, f"{name}/color/image_raw", qos_profile_sensor_data)
        self.depth_pub = self.create_publisher(Image, f"{name}/aligned_depth_to_color/image_raw", qos_profile_sensor_data)
        self.info_pub = self.create_publisher(CameraInfo, f"{name}/color/camera_info", qos_profile_sensor_data)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.camera = RealSenseCamera(self.cfg)
        self.status, self.published, self.reconnects = "starting", 0, 0
        self._rate_window: list[float] = []
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self.create_timer(1.0, self._diag)

    def _loop(self) -> None:
        camera = self.camera
        if camera is None:
            return
        while self._running and rclpy.ok():
            if camera.pipeline is None:
                try:
                    camera.connect()
                    self.status = f"streaming (serial {camera.serial})"
                    self.get_logger().info(f"{self.cfg.name}: {self.status}")
                except ConnectionError as exc:
                    self.status = str(exc)
                    self.get_logger().error(self.status, throttle_duration_sec=5.0)
                    time.sleep(1.0)
                    continue
            try:
                frame = camera.read()
            except ConnectionError as exc:
                self.status = f"lost: {exc}; reconnecting"
                self.get_logger().error(self.status)
                camera.disconnect()
                self.reconnects += 1
                continue
            if frame is None:
                if self.cfg.playback_file:
                    self.status = "playback finished"
                continue
            self.color_pub.publish(image_to_msg(frame.rgb, "rgb8", frame.stamp_ns, frame.frame_id))
            self.depth_pub.publish(image_to_msg(camera.raw_depth_mm(frame), "16UC1", frame.stamp_ns, frame.frame_id))
            self.info_pub.publish(intrinsics_to_msg(frame.intrinsics, frame.stamp_ns, frame.frame_id))
            self.published += 1
            self._rate_window = [t for t in self._rate_window if t > time.monotonic() - 2.0] + [time.monotonic()]

    def _diag(self) -> None:
        camera = self.camera
        if camera is None:
            return
        st = DiagnosticStatus(name=f"camera/{self.cfg.name}", hardware_id=camera.serial or self.cfg.serial)
        ok = self.status.startswith("streaming") or self.status == "playback finished"
        st.level = DiagnosticStatus.OK if ok else DiagnosticStatus.ERROR
        st.message = self.status
        st.values = [KeyValue(key=k, value=str(v)) for k, v in {
            "published": self.published, "rate_hz": round(len(self._rate_window) / 2.0, 1),
            "stale_frames_skipped": camera.stale, "reconnects": self.reconnects,
            "timestamp_domain": camera.domain}.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(5.0)
        if self.camera is not None:
            self.camera.disconnect()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(CameraNode, "camera_node", args, params=CameraNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
