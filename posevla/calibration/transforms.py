"""Camera-frame chunks -> base_link (and each arm's base), with the hand-eye calibration.

Head camera (eye-to-hand): T_base_cam = T_base_head (static). Wrist camera (eye-in-hand):
T_base_cam(t) = T_base_tcp(t) @ T_tcp_wrist, with the TCP pose interpolated AT THE OBSERVATION STAMP t
from a bounded history of TCP poses (never the latest pose). Shared by the executor node and the trainer.
"""
from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from posevla.calibration.files import HandEyeCalibration
from posevla.geometry import se3
from posevla.types import ActionChunk, ArmChunk


class PoseHistory:
    """Bounded, time-ordered TCP poses (T_base_tcp) with interpolation at a stamp (ns)."""

    def __init__(self, max_len: int = 2000, tolerance_ns: int = 20_000_000) -> None:
        self.stamps: deque[int] = deque(maxlen=max_len)
        self.poses: deque[np.ndarray] = deque(maxlen=max_len)
        self.tolerance_ns = tolerance_ns

    def add(self, stamp_ns: int, T: np.ndarray) -> None:
        if self.stamps and stamp_ns <= self.stamps[-1]:
            return  # out of order or duplicate: ignore (the newest pose wins)
        self.stamps.append(int(stamp_ns))
        self.poses.append(np.asarray(T, dtype=float))

    def at(self, stamp_ns: int) -> np.ndarray:
        """Pose at stamp_ns (linear/slerp between neighbours). Raises ValueError outside the covered span."""
        if not self.stamps:
            raise ValueError("no TCP poses received yet")
        s = list(self.stamps)
        if stamp_ns <= s[0]:
            if s[0] - stamp_ns > self.tolerance_ns:
                raise ValueError(f"stamp {stamp_ns} is {(s[0] - stamp_ns) * 1e-9:.3f} s before the oldest TCP pose")
            return self.poses[0]
        if stamp_ns >= s[-1]:
            if stamp_ns - s[-1] > self.tolerance_ns:
                raise ValueError(f"stamp {stamp_ns} is {(stamp_ns - s[-1]) * 1e-9:.3f} s after the newest TCP pose")
            return self.poses[-1]
        i = bisect.bisect_right(s, stamp_ns)
        t0, t1 = s[i - 1], s[i]
        return se3.slerp_T(self.poses[i - 1], self.poses[i], (stamp_ns - t0) / (t1 - t0))


class CameraToBase:
    """Maps chunks expressed in a calibrated camera frame to base_link."""

    def __init__(self, calibrations: dict[str, HandEyeCalibration], histories: dict[str, PoseHistory]) -> None:
        self.calibrations = calibrations
        self.histories = histories

    def T_base_cam(self, frame_id: str, stamp_ns: int) -> np.ndarray:
        calib = self.calibrations.get(frame_id)
        if calib is None:
            raise ValueError(f"chunk frame {frame_id!r} has no calibration (known: {sorted(self.calibrations)})")
        if calib.kind == "eye_to_hand":
            if calib.parent_frame != "base_link":
                raise ValueError(f"{calib.path}: eye-to-hand parent {calib.parent_frame} is not base_link")
            return calib.T_parent_child
        history = self.histories.get(calib.arm) if calib.arm is not None else None
        if history is None:
            raise ValueError(f"no TCP pose history for the {calib.arm} arm (camera {frame_id})")
        try:
            T_base_tcp = history.at(stamp_ns)
        except ValueError as exc:
            raise ValueError(f"{frame_id}: TCP pose of the {calib.arm} arm at the observation stamp: {exc}") from exc
        return T_base_tcp @ calib.T_parent_child

    def chunk_to_base(self, chunk: ActionChunk) -> ActionChunk:
        T_base_cam = self.T_base_cam(chunk.frame_id, chunk.stamp_ns)
        arms = {arm: ArmChunk(T=T_base_cam @ c.T, gripper=c.gripper.copy()) for arm, c in chunk.arms.items()}
        return ActionChunk("base_link", chunk.stamp_ns, chunk.dt, arms)


def chunk_to_arm_base(chunk_base: ActionChunk, T_base_armbase: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per arm (N,4,4) poses in that arm's own base frame: T_armbase_tcp = inv(T_base_armbase) @ T_base_tcp."""
    if chunk_base.frame_id != "base_link":
        raise ValueError(f"chunk is in {chunk_base.frame_id!r}, expected base_link")
    return {arm: se3.invert_T(T_base_armbase[arm]) @ c.T for arm, c in chunk_base.arms.items()}
