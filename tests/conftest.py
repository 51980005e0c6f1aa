"""Shared test fixtures. ROS tests get their own DDS domain so parallel runs never cross-talk."""
from __future__ import annotations

import os
import random

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_ros_domain():
    """Pick a ROS_DOMAIN_ID for this pytest session (subprocesses inherit it) and keep DDS on loopback."""
    os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 200))
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    yield


@pytest.fixture
def rclpy_context():
    """A fresh rclpy context for one test, shut down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        ctx.try_shutdown()
