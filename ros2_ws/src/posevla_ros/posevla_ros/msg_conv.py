"""Conversions between ROS 2 messages and the plain types of `posevla` (the only place that does this).

Stamps: integer nanoseconds <-> builtin_interfaces/Time. Poses: 4x4 T (metres) <-> geometry_msgs.
Chunks and servo commands: trajectory_msgs/MultiDOFJointTrajectory whose "joints" are
`left_tcp`, `right_tcp` (transform = TCP pose in header.frame_id) and `left_gripper`, `right_gripper`
(transform.translation.x = opening 0..1, identity rotation).
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, PoseStamped, Transform
from sensor_msgs.msg import CameraInfo, Image
from trajectory_msgs.msg import MultiDOFJointTrajectory, MultiDOFJointTrajectoryPoint

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ActionChunk, ArmChunk

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3), "bgr8": (np.dtype(np.uint8), 3), "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1), "mono16": (np.dtype(np.uint16), 1), "32FC1": (np.dtype(np.float32), 1),
    "32FC2": (np.dtype(np.float32), 2), "32FC3": (np.dtype(np.float32), 3),
}


# ------------------------------------------------------------------------------------------- time
def ns_to_time(ns: int) -> Time:
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def time_to_ns(t: Time) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def ns_to_duration(ns: int) -> Duration:
    ns = int(ns)
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_ns(d: Duration) -> int:
    return int(d.sec) * 1_000_000_000 + int(d.nanosec)


# ------------------------------------------------------------------------------------------- images
def image_to_msg(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """HxW or HxWxC array -> sensor_msgs/Image (little-endian, tightly packed)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r} (supported: {sorted(ENCODINGS)})")
    dtype, channels = ENCODINGS[encoding]
    a = np.ascontiguousarray(arr, dtype=dtype)
    if (a.ndim == 2 and channels != 1) or (a.ndim == 3 and a.shape[2] != channels) or a.ndim not in (2, 3):
        raise ValueError(f"array of shape {arr.shape} does not fit encoding {encoding}")
    msg = Image()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = a.tobytes()
    return msg


def msg_to_image(msg: Image, topic: str = "image") -> np.ndarray:
    """sensor_msgs/Image -> numpy view (HxW or HxWxC). Raises ValueError naming the topic on a bad message."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"{topic}: unsupported image encoding {msg.encoding!r}")
    dtype, channels = ENCODINGS[msg.encoding]
    row = msg.width * channels * dtype.itemsize
    if msg.step < row or len(msg.data) != msg.step * msg.height:
        raise ValueError(f"{topic}: image data size {len(msg.data)} does not match {msg.height}x{msg.width} "
                         f"{msg.encoding} with step {msg.step}")
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, :row]
    a = buf.view(dtype.newbyteorder(">") if msg.is_bigendian else dtype)
    a = a.reshape(msg.height, msg.width, channels) if channels > 1 else a.reshape(msg.height, msg.width)
    return a.astype(dtype, copy=False)


# ------------------------------------------------------------------------------------------- camera info
def intrinsics_to_msg(intr: CameraIntrinsics, stamp_ns: int, frame_id: str) -> CameraInfo:
    d = intr.to_camera_info()
    msg = CameraInfo()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = d["width"], d["height"]
    msg.distortion_model = d["distortion_model"]
    msg.d = [float(x) for x in d["d"]]
    msg.k = [float(x) for x in d["k"]]
    msg.r = [float(x) for x in d["r"]]
    msg.p = [float(x) for x in d["p"]]
    return msg


def msg_to_intrinsics(msg: CameraInfo, topic: str = "camera_info") -> CameraIntrinsics:
    try:
        return CameraIntrinsics.from_camera_info({"k": list(msg.k), "d": list(msg.d), "width": msg.width,
                                                  "height": msg.height, "distortion_model": msg.distortion_model})
    except ValueError as exc:
        raise ValueError(f"{topic}: {exc}") from exc


# ------------------------------------------------------------------------------------------- poses
def T_to_pose(T: np.ndarray) -> Pose:
    p, q = se3.pos_quat_from_T(T)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def pose_to_T(pose: Pose) -> np.ndarray:
    o, p = pose.orientation, pose.position
    return se3.T_from_pos_quat(np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))


def T_to_transform(T: np.ndarray) -> Transform:
    p, q = se3.pos_quat_from_T(T)
    tf = Transform()
    tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in p)
    tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w = (float(v) for v in q)
    return tf


def transform_to_T(tf: Transform) -> np.ndarray:
    r, t = tf.rotation, tf.translation
    return se3.T_from_pos_quat(np.array([t.x, t.y, t.z]), np.array([r.x, r.y, r.z, r.w]))


def T_to_pose_stamped(T: np.ndarray, stamp_ns: int, frame_id: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.pose = T_to_pose(T)
    return msg


def _gripper_transform(opening: float) -> Transform:
    tf = Transform()
    tf.translation.x = float(opening)
    tf.rotation.w = 1.0
    return tf


# ------------------------------------------------------------------------------------------- chunks
def chunk_to_msg(chunk: ActionChunk) -> MultiDOFJointTrajectory:
    """ActionChunk -> MultiDOFJointTrajectory (header.stamp = observation capture time, point k at k*dt)."""
    msg = MultiDOFJointTrajectory()
    msg.header.stamp = ns_to_time(chunk.stamp_ns)
    msg.header.frame_id = chunk.frame_id
    arms = list(chunk.arms)
    msg.joint_names = [f"{a}_tcp" for a in arms] + [f"{a}_gripper" for a in arms]
    dt_ns = round(chunk.dt * 1e9)
    for k in range(chunk.length):
        pt = MultiDOFJointTrajectoryPoint()
        pt.transforms = [T_to_transform(chunk.arms[a].T[k]) for a in arms] + [
            _gripper_transform(chunk.arms[a].gripper[k]) for a in arms]
        pt.time_from_start = ns_to_duration(k * dt_ns)
        msg.points.append(pt)
    return msg


def _split_joint_names(names: list[str], what: str) -> tuple[dict[str, int], dict[str, int]]:
    tcp, grip = {}, {}
    for i, name in enumerate(names):
        arm, _, kind = name.rpartition("_")
        if kind == "tcp" and arm:
            tcp[arm] = i
        elif kind == "gripper" and arm:
            grip[arm] = i
        else:
            raise ValueError(f"{what}: unknown joint name {name!r} (expected <arm>_tcp or <arm>_gripper)")
    return tcp, grip


def msg_to_chunk(msg: MultiDOFJointTrajectory, topic: str = "chunk") -> ActionChunk:
    """MultiDOFJointTrajectory -> ActionChunk. Raises ValueError naming the topic on a malformed message."""
    tcp, grip = _split_joint_names(list(msg.joint_names), topic)
    if not tcp:
        raise ValueError(f"{topic}: no <arm>_tcp joint in {list(msg.joint_names)}")
    if not msg.points:
        raise ValueError(f"{topic}: chunk has no points")
    n = len(msg.points)
    times = np.array([duration_to_ns(p.time_from_start) for p in msg.points], dtype=np.int64)
    if n > 1 and np.any(np.diff(times) <= 0):
        raise ValueError(f"{topic}: time_from_start is not strictly increasing")
    dt = float(np.median(np.diff(times))) * 1e-9 if n > 1 else 0.0
    arms = {}
    for arm, i in tcp.items():
        T = np.empty((n, 4, 4))
        g = np.full(n, np.nan)
        for k, p in enumerate(msg.points):
            if len(p.transforms) != len(msg.joint_names):
                raise ValueError(f"{topic}: point {k} has {len(p.transforms)} transforms for "
                                 f"{len(msg.joint_names)} joints")
            try:
                T[k] = transform_to_T(p.transforms[i])
            except ValueError as exc:
                raise ValueError(f"{topic}: point {k} joint {arm}_tcp: {exc}") from exc
            if arm in grip:
                g[k] = p.transforms[grip[arm]].translation.x
        arms[arm] = ArmChunk(T=T, gripper=g)
    return ActionChunk(frame_id=msg.header.frame_id, stamp_ns=time_to_ns(msg.header.stamp), dt=dt, arms=arms)


def servo_command_to_msg(stamp_ns: int, T_base_tcp: dict[str, np.ndarray], gripper: dict[str, float],
                         frame_id: str = "base_link") -> MultiDOFJointTrajectory:
    """One servo set-point for the driver: TCP poses in base_link and gripper openings, as a 1-point trajectory."""
    msg = MultiDOFJointTrajectory()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.joint_names = [f"{a}_tcp" for a in T_base_tcp] + [f"{a}_gripper" for a in gripper]
    pt = MultiDOFJointTrajectoryPoint()
    pt.transforms = [T_to_transform(T) for T in T_base_tcp.values()] + [
        _gripper_transform(g) for g in gripper.values()]
    msg.points = [pt]
    return msg


def msg_to_servo_command(msg: MultiDOFJointTrajectory, topic: str = "/xtrainer/servo_command"
                         ) -> tuple[int, dict[str, np.ndarray], dict[str, float]]:
    """-> (stamp_ns, {arm: T_base_tcp}, {arm: gripper}). Raises ValueError naming the topic when malformed."""
    if len(msg.points) != 1:
        raise ValueError(f"{topic}: servo command must have exactly one point, got {len(msg.points)}")
    tcp, grip = _split_joint_names(list(msg.joint_names), topic)
    pt = msg.points[0]
    if len(pt.transforms) != len(msg.joint_names):
        raise ValueError(f"{topic}: {len(pt.transforms)} transforms for {len(msg.joint_names)} joints")
    poses = {}
    for arm, i in tcp.items():
        try:
            poses[arm] = transform_to_T(pt.transforms[i])
        except ValueError as exc:
            raise ValueError(f"{topic}: joint {arm}_tcp: {exc}") from exc
    return time_to_ns(msg.header.stamp), poses, {a: float(pt.transforms[i].translation.x) for a, i in grip.items()}
