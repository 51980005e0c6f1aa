"""executor_node: /policy/chunk (camera frame) -> base_link via hand-eye calibration -> limited command
stream on /xtrainer/servo_command at the control rate. Plumbing around posevla.calibration.transforms and
posevla.control.executor.

Subscribes /policy/chunk, /<arm>_arm/tcp_pose, /joint_states (measured gripper openings), /estop. Publishes
/xtrainer/servo_command, /executor/chunk_base, /diagnostics. Services /executor/estop/trigger and
/executor/estop/reset (refused while /estop is still true).
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla.calibration.files import load_calibrations
from posevla.calibration.transforms import CameraToBase, PoseHistory
from posevla.control.executor import BLEND_MODES, ChunkExecutor, ExecutorConfig, Hold
from posevla.robot import state_codec
from posevla.robot.driver import XTrainerConfig
from posevla_ros.estop import EstopLatch
from posevla_ros.graph import config_dir
from posevla_ros.msg_conv import (
    chunk_to_msg,
    msg_to_chunk,
    ns_to_time,
    pose_to_T,
    servo_command_to_msg,
    time_to_ns,
)
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked, reject_unknown
from posevla_ros.qos import LATEST_STATE
from posevla_ros.static_tf import broadcast_static, static_transforms


class ExecutorNode(Node):
    PARAMS: ParamSpec = {
        "robot_config": ("xtrainer_robot.yaml", "robot YAML with the safety limits; relative to config/", None),
        "calibration_dir": ("", "directory of hand-eye calibration files (default: the repository's calibration/)", None),
        "rate_hz": (50.0, "control rate (Hz)", (1.0, 500.0)),
        "watchdog_s": (0.5, "hold when no fresh chunk arrived for this long (s)", (0.02, 10.0)),
        "max_chunk_age_s": (1.0, "refuse chunks whose observation is older (s)", (0.01, 10.0)),
        "blend": ("ensemble", "ensemble | rtc | replace", BLEND_MODES),
        "ensemble_k": (0.01, "ACT temporal ensembling weight exp(-k i)", (0.0, 10.0)),
        "rtc_freeze_s": (0.1, "rtc: keep the committed chunk this long (s)", (0.0, 5.0)),
        "rtc_blend_s": (0.2, "rtc: cross-fade duration (s)", (0.0, 5.0)),
        "plan_margin": (0.85, "plan at this fraction of the safety limits (the driver checks the full ones)",
                        (0.1, 1.0)),
    }

    def __init__(self) -> None:
        super().__init__("executor")
        p = declare_checked(self, self.PARAMS, dynamic=())
        reject_unknown(self)
        robot_path = config_dir() / p["robot_config"] if "/" not in p["robot_config"] else p["robot_config"]
        self.robot = XTrainerConfig.from_yaml(robot_path)
        calib_dir = p["calibration_dir"] or str(config_dir().parent / "calibration")
        self.histories = {arm: PoseHistory() for arm in self.robot.arms}
        calibrations = load_calibrations(calib_dir)
        self.transform = CameraToBase(calibrations, self.histories)
        broadcast_static(self, static_transforms(calibrations, {a: c.T_base_armbase for a, c in self.robot.arms.items()},
                                                 self.get_clock().now().nanoseconds))
        self.chunks = ChunkExecutor(ExecutorConfig(
            rate_hz=p["rate_hz"], watchdog_s=p["watchdog_s"], max_chunk_age_s=p["max_chunk_age_s"], blend=p["blend"],
            ensemble_k=p["ensemble_k"], rtc_freeze_s=p["rtc_freeze_s"], rtc_blend_s=p["rtc_blend_s"],
            plan_margin=p["plan_margin"]), self.robot.safety)
        self.latest: dict[str, tuple[int, np.ndarray]] = {}
        self.gripper: dict[str, float] = {}  # measured openings from /joint_states (NaN: not measured)
        self.cmd_pub = self.create_publisher(MultiDOFJointTrajectory, "/xtrainer/servo_command", 10)
        self.base_pub = self.create_publisher(MultiDOFJointTrajectory, "/executor/chunk_base", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(MultiDOFJointTrajectory, "/policy/chunk", self._on_chunk, 10)
        for arm in self.robot.arms:
            self.create_subscription(PoseStamped, f"/{arm}_arm/tcp_pose", lambda m, a=arm: self._on_tcp(a, m), LATEST_STATE)
        self.create_subscription(JointState, "/joint_states", self._on_joint_states, LATEST_STATE)
        # /estop (latched, default-QoS and best-effort senders alike) and the trigger/reset services
        self.estop = EstopLatch(self, "executor", self.chunks.estop, self.chunks.reset_estop)
        self.create_timer(1.0 / p["rate_hz"], self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.stats = {"chunks": 0, "refused": 0, "commands": 0, "holds": 0}
        self.transform_ms: list[float] = []
        self.tick_ms: list[float] = []
        self.last_refusal = ""

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_tcp(self, arm: str, msg: PoseStamped) -> None:
        stamp = time_to_ns(msg.header.stamp)
        T = pose_to_T(msg.pose)
        self.histories[arm].add(stamp, T)
        self.latest[arm] = (stamp, T)

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            arms = state_codec.decode(msg.name, msg.position, list(self.robot.arms))
        except ValueError as exc:
            self.get_logger().error(f"/joint_states: {exc}", throttle_duration_sec=1.0)
            return
        for arm, s in arms.items():
            self.gripper[arm] = s.gripper

    def _on_chunk(self, msg: MultiDOFJointTrajectory) -> None:
        t0 = time.perf_counter()
        try:
            chunk = self.transform.chunk_to_base(msg_to_chunk(msg, "/policy/chunk"))
        except ValueError as exc:
            self._refuse(str(exc))
            return
        self.transform_ms.append((time.perf_counter() - t0) * 1e3)
        why = self.chunks.submit(chunk, self._now())
        if why:
            self._refuse(why)
            return
        self.stats["chunks"] += 1
        self.base_pub.publish(chunk_to_msg(chunk))

    def _refuse(self, why: str) -> None:
        self.stats["refused"] += 1
        self.last_refusal = why
        self.get_logger().warning(f"chunk refused, arms hold: {why}", throttle_duration_sec=1.0)

    def _tick(self) -> None:
        t0 = time.perf_counter()
        now = self._now()
        measured = {arm: (T, self.gripper.get(arm, float("nan"))) for arm, (_, T) in self.latest.items()}
        out = self.chunks.tick(now, measured)
        if isinstance(out, Hold):
            self.stats["holds"] += 1
        else:
            self.cmd_pub.publish(servo_command_to_msg(now, {a: c.T_base_tcp for a, c in out.items()},
                                                      {a: c.gripper for a, c in out.items()}))
            self.stats["commands"] += 1
        self.tick_ms.append((time.perf_counter() - t0) * 1e3)
        self.tick_ms = self.tick_ms[-500:]

    def _publish_diagnostics(self) -> None:
        st = DiagnosticStatus(name="executor", hardware_id="executor")
        st.level = DiagnosticStatus.ERROR if self.chunks.estopped else DiagnosticStatus.OK
        st.message = self.chunks.last_hold or "executing"
        values: dict[str, object] = dict(self.stats)
        values["estop_latched"] = self.chunks.estopped
        values["estop_topic"] = self.estop.topic_true
        values["gripper_unmeasured_restarts"] = self.chunks.gripper_unmeasured
        if self.tick_ms:
            values["tick_ms_p50"] = f"{np.median(self.tick_ms):.3f}"
        if self.transform_ms:
            values["transform_ms_p50"] = f"{np.median(self.transform_ms[-200:]):.3f}"
        values["last_refusal"] = self.last_refusal
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self._now())
        self.diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    spin_node(ExecutorNode, "executor_node", args, params=ExecutorNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
