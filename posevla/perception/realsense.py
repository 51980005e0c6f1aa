"""RealSense capture with pyrealsense2: one camera (D455 head or D405 wrist), color + depth aligned to color.

The same code reads a live device (selected by serial number) or a recording played back through the
pipeline (rosbag2 `.db3` / `.bag`, e.g. written from librealsense's software_device in the tests).

Stamps: librealsense reports each frame's timestamp (ms) and its clock domain.
- `global_time` (the default on D4xx): the device clock mapped to the host clock by librealsense -> used as is.
- `system_time`: host arrival time -> used as is (includes the USB transfer latency).
- `hardware_clock`: the device's own clock -> mapped to host time with the smallest host-minus-device offset
  seen so far (the offset with the least transport delay), so stamps stay monotonic and close to capture.
A frame whose frame number did not advance is never returned again (no stale frame republished as new).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import CameraFrame, optical_frame


@dataclass
class RealSenseConfig:
    name: str = "head"
    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    playback_file: str = ""
    playback_real_time: bool = True
    inter_cam_sync_mode: int = 0  # D4xx: 0 default, 1 master, 2 slave (hardware sync cable)
    timeout_ms: int = 1000


class TimestampMapper:
    """Frame timestamp (ms, in its clock domain) -> ROS time (ns)."""

    def __init__(self) -> None:
        self.offset_ns: int | None = None

    def to_ros_ns(self, timestamp_ms: float, domain: str, host_now_ns: int) -> int:
        ts_ns = int(round(timestamp_ms * 1e6))
        if domain in ("global_time", "system_time"):
            return ts_ns
        if domain == "hardware_clock":
            offset = host_now_ns - ts_ns
            if self.offset_ns is None or offset < self.offset_ns:
                self.offset_ns = offset
            return ts_ns + self.offset_ns
        raise ValueError(f"unknown RealSense timestamp domain {domain!r}")


class RealSenseCamera:
    """LeRobot-style camera: connect / read / disconnect."""

    def __init__(self, cfg: RealSenseConfig) -> None:
        import pyrealsense2 as rs

        self.rs, self.cfg = rs, cfg
        self.pipeline = None
        self.align = rs.align(rs.stream.color)
        self.depth_scale = 0.001
        self.serial = ""
        self.stamps = TimestampMapper()
        self.last_frame_number = -1
        self.frames = 0
        self.stale = 0
        self.domain = ""

    def connect(self) -> None:
        rs, cfg = self.rs, self.cfg
        pipeline, config = rs.pipeline(), rs.config()
        if cfg.playback_file:
            config.enable_device_from_file(cfg.playback_file, repeat_playback=False)
        else:
            if cfg.serial:
                config.enable_device(cfg.serial)
            config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
            config.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, cfg.fps)
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            what = cfg.playback_file or f"serial {cfg.serial or '(any)'} {cfg.width}x{cfg.height}@{cfg.fps}"
            raise ConnectionError(f"camera {cfg.name}: cannot start RealSense ({what}): {exc}") from exc
        device = profile.get_device()
        if cfg.playback_file:
            device.as_playback().set_real_time(cfg.playback_real_time)
        if device.supports(rs.camera_info.serial_number):
            self.serial = device.get_info(rs.camera_info.serial_number)
        if cfg.serial and self.serial and self.serial != cfg.serial:
            pipeline.stop()
            raise ConnectionError(f"camera {cfg.name}: expected serial {cfg.serial}, found {self.serial}")
        for sensor in device.query_sensors():
            if sensor.supports(rs.option.depth_units):
                self.depth_scale = float(sensor.get_option(rs.option.depth_units))
            if cfg.inter_cam_sync_mode and sensor.supports(rs.option.inter_cam_sync_mode):
                sensor.set_option(rs.option.inter_cam_sync_mode, cfg.inter_cam_sync_mode)
        self.pipeline = pipeline
        self.last_frame_number = -1

    def read(self, timeout_ms: int | None = None) -> CameraFrame | None:
        """The next new aligned frame; None on timeout or when the frame is not new. ConnectionError when lost."""
        if self.pipeline is None:
            raise ConnectionError(f"camera {self.cfg.name}: not connected")
        try:
            ok, frames = self.pipeline.try_wait_for_frames(timeout_ms or self.cfg.timeout_ms)
        except RuntimeError as exc:
            raise ConnectionError(f"camera {self.cfg.name}: {exc}") from exc
        if not ok:
            return None
        host_now = time.time_ns()
        frames = self.align.process(frames)
        color, depth = frames.get_color_frame(), frames.get_depth_frame()
        if not color or not depth:
            return None
        number = color.get_frame_number()
        if number <= self.last_frame_number:
            self.stale += 1
            return None
        self.last_frame_number = number
        intr = CameraIntrinsics.from_realsense(color.profile.as_video_stream_profile().get_intrinsics())
        self.domain = str(color.get_frame_timestamp_domain()).split(".")[-1]
        stamp = self.stamps.to_ros_ns(color.get_timestamp(), self.domain, host_now)
        rgb = np.asanyarray(color.get_data()).copy()
        raw = np.asanyarray(depth.get_data())
        self.frames += 1
        return CameraFrame(self.cfg.name, rgb, raw.astype(np.float32) * np.float32(self.depth_scale), intr, stamp,
                           optical_frame(self.cfg.name))

    def raw_depth_mm(self, frame: CameraFrame) -> np.ndarray:
        """Depth as realsense2_camera publishes it: uint16 millimetres (0 = invalid)."""
        d = frame.depth
        if d is None:
            raise ValueError(f"camera {self.cfg.name}: frame without depth")
        return np.where(np.isfinite(d) & (d > 0), np.round(d * 1000.0), 0).clip(0, 65535).astype(np.uint16)

    def disconnect(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass
        self.pipeline = None
