"""Robot state under a busy executor (posevla_ros.qos.LATEST_STATE): a subscriber whose executor cycle is slower
than the 100 Hz state stream must hold the newest TCP pose, not work through a queue of old ones. Measured over
real DDS from a publisher process; the old queue depth (50) is measured beside it so the test can fail."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from posevla_ros.qos import LATEST_STATE  # noqa: E402
from posevla_ros.state_lag import measure  # noqa: E402

pytestmark = pytest.mark.slow


def test_busy_subscriber_holds_the_newest_state(rclpy_context) -> None:
    old = measure(rclpy_context, 50, seconds=4.0, busy_s=0.02)
    new = measure(rclpy_context, LATEST_STATE, seconds=4.0, busy_s=0.02)
    assert old.lag_ms.size >= 20 and new.lag_ms.size >= 20, (old.summary(), new.summary())
    # depth 50: the executor takes one pose per ~20 ms cycle while 100 arrive per second, so it works ~50 poses
    # (0.5 s) behind; depth 1: the pose it takes is the newest, at most about a cycle older than the image
    assert np.median(old.lag_ms) > 250, old.summary()
    assert np.median(new.lag_ms) < 60 and np.mean(new.lag_ms > 100) < 0.1, new.summary()
