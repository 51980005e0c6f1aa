"""The static transforms of the robot (arm mountings) and of the hand-eye calibration, for /tf_static.

Frames (DESIGN.md): base_link -> <arm>_arm_base (mounting, robot YAML); base_link -> head camera optical
frame (T_base_head); <arm>_tcp -> <arm> wrist camera optical frame (T_tcp_wrist). The stack itself uses the
calibration files directly; /tf_static is for RViz and other ROS tools, broadcast with tf2_ros where it is
installed (robot PCs), which the PyPI ROS wheels do not provide.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.node import Node

from posevla.calibration.files import HandEyeCalibration
from posevla_ros.msg_conv import T_to_transform, ns_to_time


def transform_stamped(T_parent_child: np.ndarray, parent: str, child: str, stamp_ns: int) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.transform = T_to_transform(T_parent_child)
    return msg


def static_transforms(calibrations: dict[str, HandEyeCalibration], T_base_armbase: dict[str, np.ndarray],
                      stamp_ns: int) -> list[TransformStamped]:
    """One TransformStamped per arm mounting and per calibrated camera."""
    out = [transform_stamped(T, "base_link", f"{arm}_arm_base", stamp_ns) for arm, T in sorted(T_base_armbase.items())]
    out += [transform_stamped(c.T_parent_child, c.parent_frame, c.child_frame, stamp_ns)
            for _, c in sorted(calibrations.items())]
    return out


def broadcast_static(node: Node, transforms: list[TransformStamped]) -> bool:
    """Latch the transforms on /tf_static with tf2_ros; False (and one log line) where tf2_ros is missing."""
    try:
        from tf2_ros.static_transform_broadcaster import StaticTransformBroadcaster
    except ImportError:
        node.get_logger().info("tf2_ros is not installed: the calibration is not broadcast on /tf_static "
                               "(the stack reads the calibration files directly)")
        return False
    broadcaster = StaticTransformBroadcaster(node)
    setattr(node, "_static_tf_broadcaster", broadcaster)  # keep it alive with the node  # noqa: B010
    broadcaster.sendTransform(transforms)
    frames = ", ".join(f"{t.header.frame_id}->{t.child_frame_id}" for t in transforms)
    node.get_logger().info(f"/tf_static: {frames}")
    return True
