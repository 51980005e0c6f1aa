"""Offline training of Pose-VLA on recorded episodes (imports the same model, geometry and calibration code
as the ROS nodes)."""
