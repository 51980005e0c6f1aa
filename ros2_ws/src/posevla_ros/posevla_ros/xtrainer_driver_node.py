"""xtrainer_driver_node: the X-Trainer's two follower arms on ROS 2 (plumbing around posevla.robot.driver).

Publishes /joint_states (left_joint1..6, left_gripper, right_joint1..6, right_gripper; rad, 0..1),
/<arm>_arm/tcp_pose (PoseStamped in base_link; stamp = feedback packet receive time) and /diagnostics.
Subscribes /xtrainer/servo_command (MultiDOFJointTrajectory, one point, base_link), /xtrainer/servo_joint_command
(JointState) and /estop (Bool, latched). Services /xtrainer/estop/trigger, /xtrainer/estop/reset, /xtrainer/clear_error.
"""
from __future__ import annotations

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla.robot import protocol as P
from posevla.robot import state_codec
from posevla.robot.driver import XTrainerConfig, XTrainerDriver
from posevla_ros.estop import EstopLatch
from posevla_ros.graph import config_dir
from posevla_ros.msg_conv import T_to_pose_stamped, msg_to_servo_command, ns_to_time, time_to_ns
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked, reject_unknown


class XTrainerDriverNode(Node):
    PARAMS: ParamSpec = {
        "robot_config": ("xtrainer_robot.yaml", "robot YAML (arms, mounting, safety); relative to config/", None),
        "publish_rate_hz": (100.0, "rate of /joint_states and TCP poses", (1.0, 500.0)),
        "connect_timeout_s": (10.0, "give up connecting at start-up after this long", (0.5, 600.0)),
    }

    def __init__(self) -> None:
        super().__init__("xtrainer_driver")
        p = declare_checked(self, self.PARAMS, dynamic=())
        reject_unknown(self)
        path = config_dir() / p["robot_config"] if "/" not in p["robot_config"] else p["robot_config"]
        self.cfg = XTrainerConfig.from_yaml(path)
        self.driver = XTrainerDriver(self.cfg)
        deadline = self.get_clock().now().nanoseconds + int(p["connect_timeout_s"] * 1e9)
        while True:
            try:
                self.driver.connect()
                break
            except ConnectionError as exc:
                if self.get_clock().now().nanoseconds > deadline:
                    raise
                self.get_logger().warning(f"{exc}; retrying", throttle_duration_sec=2.0)
                rclpy.spin_once(self, timeout_sec=0.5)
        self.get_logger().info(f"connected to {', '.join(f'{a}@{c.host}' for a, c in self.driver.clients.items())}")
        self.joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self.tcp_pubs = {arm: self.create_publisher(PoseStamped, f"/{arm}_arm/tcp_pose", 10)
                         for arm in self.cfg.arms}
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(MultiDOFJointTrajectory, "/xtrainer/servo_command", self._on_servo, 10)
        self.create_subscription(JointState, "/xtrainer/servo_joint_command", self._on_joint_command, 10)
        # /estop (latched, default-QoS and best-effort senders alike) and the trigger/reset services
        self.estop = EstopLatch(self, "xtrainer_driver", self.driver.estop, self.driver.reset_estop)
        self.create_service(Trigger, "/xtrainer/clear_error", self._srv_clear)
        self.create_timer(1.0 / p["publish_rate_hz"], self._publish_state)
        self.create_timer(1.0, self._publish_diagnostics)
        self.rejected = 0
        self._last_seq = dict.fromkeys(self.cfg.arms, 0)

    # ------------------------------------------------------------------ commands
    def _on_servo(self, msg: MultiDOFJointTrajectory) -> None:
        try:
            stamp, poses, grippers = msg_to_servo_command(msg)
        except ValueError as exc:
            self.rejected += 1
            self.get_logger().error(str(exc), throttle_duration_sec=1.0)
            return
        if msg.header.frame_id != "base_link":
            self.rejected += 1
            self.get_logger().error(f"/xtrainer/servo_command in frame {msg.header.frame_id!r}, expected base_link",
                                    throttle_duration_sec=1.0)
            return
        for arm, T in poses.items():
            why = self.driver.servo_pose(arm, T, grippers.get(arm), stamp_ns=stamp)
            if why:
                self.rejected += 1
                self.get_logger().warning(f"{arm} arm holds: {why}", throttle_duration_sec=1.0)

    def _on_joint_command(self, msg: JointState) -> None:
        try:
            arms = state_codec.decode(msg.name, msg.position, list(self.cfg.arms))
        except ValueError as exc:
            self.rejected += 1
            self.get_logger().error(f"/xtrainer/servo_joint_command: {exc}", throttle_duration_sec=1.0)
            return
        for arm, s in arms.items():
            g = s.gripper if np.isfinite(s.gripper) else None
            why = self.driver.servo_joints(arm, s.q, g, stamp_ns=time_to_ns(msg.header.stamp))
            if why:
                self.rejected += 1
                self.get_logger().warning(f"{arm} arm holds: {why}", throttle_duration_sec=1.0)

    def _srv_clear(self, request, response):
        msgs = []
        for arm in self.cfg.arms:
            try:
                self.driver.clear_error(arm)
                msgs.append(f"{arm}: cleared")
            except (ConnectionError, P.ProtocolError) as exc:
                msgs.append(f"{arm}: {exc}")
        response.success = all(m.endswith("cleared") for m in msgs)
        response.message = "; ".join(msgs)
        self.get_logger().info(f"/xtrainer/clear_error: {response.message}")
        return response

    # ------------------------------------------------------------------ state
    def _publish_state(self) -> None:
        arms: dict[str, state_codec.ArmJoints] = {}
        stamp = 0
        for arm in self.cfg.arms:
            fb = self.driver.feedback(arm)
            st = self.driver.arm_state(arm)  # None while the feedback is implausible or stale
            if fb is None or st is None or fb.seq == self._last_seq[arm]:
                continue  # never republish an old sample as new
            self._last_seq[arm] = fb.seq
            arms[arm] = state_codec.ArmJoints(st.joints, st.gripper)
            stamp = max(stamp, st.stamp_ns)
            self.tcp_pubs[arm].publish(T_to_pose_stamped(st.T_base_tcp, st.stamp_ns, "base_link"))
        if arms:
            names, positions = state_codec.encode(arms)
            js = JointState(name=names, position=positions)
            js.header.stamp = ns_to_time(stamp)
            self.joint_pub.publish(js)

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        for arm, client in self.driver.clients.items():
            fb = client.latest()
            st = DiagnosticStatus(name=f"xtrainer_driver/{arm}", hardware_id=client.host)
            mode = P.MODE_NAMES.get(fb.mode, str(fb.mode)) if fb else "no feedback"
            trusted = self.driver.trusted(arm)
            bad = (not client.connected) or fb is None or fb.mode == P.MODE_ERROR or self.driver.estopped
            st.level = (DiagnosticStatus.ERROR if bad else
                        DiagnosticStatus.WARN if isinstance(trusted, str) else DiagnosticStatus.OK)
            st.message = ("E-STOP" if self.driver.estopped else
                          client.last_error if not client.connected else
                          trusted if isinstance(trusted, str) else self.driver.refusals.get(arm, mode))
            st.values = [KeyValue(key=k, value=str(v)) for k, v in {
                "connected": client.connected, "mode": mode, "commands_sent": self.driver.sent[arm],
                "shaped": self.driver.shaped[arm], "braking_steps": self.driver.brakes[arm],
                "implausible_feedback": self.driver.monitors[arm].implausible,
                "reconnects": self.driver.reconnects[arm], "motion_errors": client.motion_errors,
                "estop_latched": self.driver.estopped, "estop_topic": self.estop.topic_true,
                "rejected_total": self.rejected}.items()]
            msg.status.append(st)
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self.driver.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(XTrainerDriverNode, "xtrainer_driver_node", args, params=XTrainerDriverNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
