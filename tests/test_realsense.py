"""The real pyrealsense2 capture path (pipeline, align, intrinsics, stamps) on a recording made with
librealsense's software_device: no camera attached, no mock."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2")

from posevla.perception.realsense import RealSenseCamera, RealSenseConfig, TimestampMapper  # noqa: E402

W, H = 64, 48


def _intr(fx: float, cx: float, cy: float):
    i = rs.intrinsics()
    i.width, i.height, i.ppx, i.ppy, i.fx, i.fy = W, H, cx, cy, fx, fx
    i.model, i.coeffs = rs.distortion.none, [0.0] * 5
    return i


def record_software_device(path: Path, n: int = 20, t0_ms: float = 1_700_000_000_000.0) -> None:
    dev = rs.software_device()
    dev.register_info(rs.camera_info.serial_number, "SW-405-1")
    depth_s, color_s = dev.add_sensor("Depth"), dev.add_sensor("Color")
    dvs, cvs = rs.video_stream(), rs.video_stream()
    for vs, typ, uid, bpp, fmt, intr in ((dvs, rs.stream.depth, 0, 2, rs.format.z16, _intr(50.0, 31.5, 23.5)),
                                         (cvs, rs.stream.color, 1, 3, rs.format.rgb8, _intr(55.0, 32.0, 24.0))):
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt, vs.intrinsics = typ, 0, uid, W, H, 30, bpp, fmt, intr
    dp, cp = depth_s.add_video_stream(dvs), color_s.add_video_stream(cvs)
    depth_s.add_read_only_option(rs.option.depth_units, 0.001)
    e = rs.extrinsics()
    e.rotation, e.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0.0, 0.0, 0.0]
    dp.register_extrinsics_to(cp, e)
    rec = rs.recorder(str(path), dev)
    q = rs.frame_queue(200)
    sensors = rec.query_sensors()
    sensors[0].open(dp), sensors[1].open(cp)
    sensors[0].start(q), sensors[1].start(q)
    keep = []
    for k in range(n):
        d = np.full((H, W), 1000 + k, np.uint16)
        d[:4] = 0
        c = np.zeros((H, W, 3), np.uint8)
        c[..., 0] = k
        keep += [d, c]
        ts = t0_ms + k * 1000.0 / 30
        for sensor, prof, pix, bpp in ((depth_s, dp, d, 2), (color_s, cp, c, 3)):
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride, f.timestamp = pix, bpp, W * bpp, ts
            f.domain, f.frame_number, f.profile = rs.timestamp_domain.global_time, k, prof.as_video_stream_profile()
            if bpp == 2:
                f.depth_units = 0.001
            sensor.on_video_frame(f)
        time.sleep(0.01)
    for s in sensors:
        s.stop()
        s.close()
    del rec


def test_capture_path_brings_intrinsics_alignment_and_stamps_through(tmp_path: Path) -> None:
    path = tmp_path / "wrist.db3"
    record_software_device(path)
    cam = RealSenseCamera(RealSenseConfig(name="left_wrist", playback_file=str(path), playback_real_time=False))
    cam.connect()
    frames = []
    for _ in range(40):
        f = cam.read(500)
        if f is None and frames and cam.read(200) is None:
            break
        if f is not None:
            frames.append(f)
    cam.disconnect()
    assert len(frames) >= 15
    assert cam.serial == "SW-405-1" and cam.depth_scale == pytest.approx(0.001)
    f = frames[3]
    k = int(f.rgb[0, 0, 0])
    assert f.frame_id == "left_wrist_camera_color_optical_frame"
    assert (f.intrinsics.fx, f.intrinsics.cx, f.intrinsics.width) == (55.0, 32.0, W)  # the color stream's K
    assert f.depth.shape == (H, W) and f.rgb.shape == (H, W, 3)
    # depth aligned to color and scaled to metres; the invalid rows stay 0
    valid = f.depth[f.depth > 0]
    assert np.allclose(valid, (1000 + k) * 0.001, atol=1e-6) and valid.size > 0.6 * W * H
    assert f.stamp_ns == round((1_700_000_000_000.0 + k * 1000.0 / 30) * 1e6)  # global_time domain: kept
    stamps = [x.stamp_ns for x in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))


def test_hardware_clock_is_mapped_with_the_least_delay_offset() -> None:
    m = TimestampMapper()
    host = 5_000_000_000_000
    a = m.to_ros_ns(100.0, "hardware_clock", host + 3_000_000)  # 3 ms transport delay
    b = m.to_ros_ns(133.0, "hardware_clock", host + 33_000_000 + 1_000_000)  # 1 ms delay: better offset
    assert a == host + 3_000_000  # first frame: its own offset
    assert m.offset_ns == host + 34_000_000 - 133_000_000  # the smaller offset (less transport delay) wins
    assert b == host + 34_000_000 and b - a == 31_000_000
    assert m.to_ros_ns(5.0, "global_time", 0) == 5_000_000
    with pytest.raises(ValueError, match="domain"):
        m.to_ros_ns(1.0, "martian_time", 0)


@pytest.mark.slow
def test_missing_camera_gives_clear_error(tmp_path: Path) -> None:
    cam = RealSenseCamera(RealSenseConfig(name="head", serial="000000000000"))
    with pytest.raises(ConnectionError, match="camera head.*000000000000"):
        cam.connect()
