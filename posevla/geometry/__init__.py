"""Geometry core shared by the ROS nodes, the model and the trainer (numpy/scipy only, no ROS).

Pixel convention (OpenCV/ROS): the centre of pixel (column i, row j) is at continuous image
coordinate (u, v) = (i, j); `u = fx * x / z + cx`. Camera frames are optical (x right, y down, z forward).
"""
from posevla.geometry.intrinsics import CameraIntrinsics

__all__ = ["CameraIntrinsics"]
