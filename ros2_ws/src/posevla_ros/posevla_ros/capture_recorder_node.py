"""capture_recorder_node: capture the cameras and record demonstrations in one process; ROS gets previews.

The recorder_node with its camera subscriptions replaced by the camera objects themselves
(posevla.dataset.capture_record): every camera frame goes straight from its capture thread into the
episode writer, with no DDS and no Python subscription callback in between (on a 2-core PC those lose
frames: see docs/datasets.md). Robot state, actions, services, buttons, sound cues, status and the episode
format are the recorder_node's. The cameras are RealSense devices (`camera_source:=realsense`, serials in
`camera_serials`, in `cameras` order) or shared-memory cameras of another process (`camera_source:=shm`,
posevla.dataset.shm_camera: measurements and tests). Every `1/preview_hz` s each camera's newest frame is
published on the usual realsense2_camera topics (/<camera>/color/image_raw rgb8,
/<camera>/aligned_depth_to_color/image_raw 16UC1 mm, /<camera>/color/camera_info), so viewers and the
observation node still see the cameras; run it instead of camera_node + recorder_node, not beside them.
/diagnostics `capture_recorder` carries per-camera captured / recorded / superseded / dropped counts and the
capture-to-writer latency.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from posevla.dataset import cues
from posevla.dataset.capture_record import CaptureCamera, CaptureRecorder
from posevla.dataset.shm_camera import SharedMemoryCamera, segment_name
from posevla.perception.realsense import RealSenseConfig
from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg, ns_to_time
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, spec_from_dataclass
from posevla_ros.recorder_node import RecorderNode


class CaptureRecorderNode(RecorderNode):
    PARAMS: ParamSpec = {
        **RecorderNode.PARAMS,
        "camera_source": ("realsense", "realsense: RealSense devices; shm: shared-memory cameras of another process "
                          "(posevla.dataset.shm_camera)", ("realsense", "shm")),
        "camera_serials": ([""], "RealSense serial per camera, in `cameras` order ([''] : any one camera, only with one "
                           "camera)", None),
        # defaults from RealSenseConfig (posevla.perception.realsense), the one place they are written
        **spec_from_dataclass(RealSenseConfig, {
            "width": ("color/depth width (pixels)", (64, 1920)),
            "height": ("color/depth height (pixels)", (48, 1080)),
        }),
        "camera_fps": (RealSenseConfig.fps, "camera frame rate (Hz); set `fps` (the recording rate) to the same value", (5, 90)),
        "shm_prefix": ("posevla_cam", "camera_source shm: segment prefix (segments <prefix>_<camera>)", None),
        "preview_hz": (5.0, "frames per second per camera published on the camera topics (0: none)", (0.0, 30.0)),
        "max_pending": (8, "frames a camera may run ahead of the others before its oldest is superseded (the writer "
                        "then buffers up to 2 x max_pending sets, at least 64)", (1, 120)),
    }

    def __init__(self) -> None:
        self.cr: CaptureRecorder | None = None
        super().__init__()
        g = {n: self.get_parameter(n).value for n in ("camera_source", "camera_serials", "width", "height",
                                                        "camera_fps", "shm_prefix", "preview_hz", "max_pending")}
        cams = self.rec.cfg.cameras
        serials = [str(s) for s in g["camera_serials"]]
        if abs(g["camera_fps"] - self.rec.cfg.fps) > 1e-6:
            raise ValueError(f"parameter fps={self.rec.cfg.fps} differs from camera_fps={g['camera_fps']}: "
                             "capture+record records every camera frame, so both rates must be the same")
        objects: dict[str, CaptureCamera]
        if g["camera_source"] == "realsense":
            from posevla.perception.realsense import RealSenseCamera

            if serials == [""]:
                if len(cams) > 1:
                    raise ValueError(f"parameter camera_serials: one serial per camera {list(cams)} is needed with more "
                                     "than one camera")
                serials = [""]
            if len(serials) != len(cams):
                raise ValueError(f"parameter camera_serials has {len(serials)} entries for {len(cams)} cameras {list(cams)}")
            objects = {c: RealSenseCamera(RealSenseConfig(c, s, g["width"], g["height"], g["camera_fps"]))
                       for c, s in zip(cams, serials)}
        else:
            objects = {c: SharedMemoryCamera(c, segment_name(g["shm_prefix"], c)) for c in cams}
        # room in the writer for the burst of sets a stalled camera completes when it catches up
        self.rec.cfg.writer_queue_frames = max(self.rec.cfg.writer_queue_frames, 2 * g["max_pending"])
        self.cr = CaptureRecorder(self.rec, objects, preview_hz=g["preview_hz"], preview=self._preview,
                                  max_pending=g["max_pending"])
        self._reported = 0
        self.cr.start()

    # ------------------------------------------------------------------ recorder_node hooks
    def _camera_inputs(self) -> None:
        """Preview publishers instead of camera subscriptions."""
        self._pubs = {c: (self.create_publisher(Image, f"{c}/color/image_raw", qos_profile_sensor_data),
                          self.create_publisher(Image, f"{c}/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
                          self.create_publisher(CameraInfo, f"{c}/color/camera_info", qos_profile_sensor_data))
                      for c in self.rec.cfg.cameras}

    def _preview(self, cam: str, frame, raw_depth) -> None:
        color, depth, info = self._pubs[cam]
        color.publish(image_to_msg(frame.rgb, "rgb8", frame.stamp_ns, frame.frame_id))
        depth.publish(image_to_msg(raw_depth, "16UC1", frame.stamp_ns, frame.frame_id))
        info.publish(intrinsics_to_msg(frame.intrinsics, frame.stamp_ns, frame.frame_id))

    def _do(self, fn) -> tuple[bool, str]:
        return super()._do(lambda: self.cr.control(fn)) if self.cr is not None else super()._do(fn)

    def _locked(self, fn, m) -> None:
        if self.cr is None:
            return fn(m)
        with self.cr.lock:
            fn(m)

    def _tcp(self, arm: str, m) -> None:
        self._locked(lambda msg: RecorderNode._tcp(self, arm, msg), m)

    def _joints(self, m) -> None:
        self._locked(lambda msg: RecorderNode._joints(self, msg), m)

    def _action(self, m) -> None:
        self._locked(lambda msg: RecorderNode._action(self, msg), m)

    def _tick(self) -> None:
        """The camera sets drive the recorder; this timer only reports what stopped an episode."""
        if self.cr is None:
            return
        while self._reported < len(self.cr.messages):
            self.get_logger().error(self.cr.messages[self._reported])
            self._reported += 1
            if self.sound:
                cues.play("error")

    def _status(self) -> None:
        super()._status()
        if self.cr is None:
            return
        s = self.cr.summary()
        values = {"sets_recorded": s["sets_recorded"], "sets_completed": s["sets_completed"]}
        for c, v in s["cameras"].items():
            values.update({f"{c}/{k}": (round(x, 2) if isinstance(x, float) else x) for k, x in v.items()})
            values[f"{c}/status"] = self.cr.status[c]
        st = DiagnosticStatus(name="capture_recorder", hardware_id=self.rec.cfg.task,
                              message=f"sets recorded {s['sets_recorded']}")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        if self.cr is not None:
            t0 = time.monotonic()
            self.cr.stop()  # capture threads joined, cameras closed; the episode (if any) is aborted below
            self.get_logger().info(f"cameras stopped in {time.monotonic() - t0:.1f} s")
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(CaptureRecorderNode, "capture_recorder_node", args, params=CaptureRecorderNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
