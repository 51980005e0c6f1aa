"""teleop_node: GELLO leader arms drive the X-Trainer followers (plumbing around posevla.teleop).

Reads both leaders (dynamixel_sdk, Protocol 2.0) at `rate_hz`, runs the safe-start / freeze logic of
posevla.teleop.controller against the followers' /joint_states, and publishes joint targets on
/xtrainer/servo_joint_command (JointState: left_joint1..6, left_gripper, right_...; rad, 0..1; this is also
the action the recorder stores). Publishes /teleop/buttons (sensor_msgs/Joy: 8 buttons per leader, in the
order of `arms`, on every change), /teleop/state (std_msgs/String, transient-local, on every change) and /diagnostics.
Services (std_srvs/Trigger): /teleop/resume (leave `frozen`, re-align slowly), /teleop/freeze.
"""
from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from posevla.robot import state_codec
from posevla.teleop.controller import TeleopController, TeleopLimits
from posevla.teleop.gello import LeaderArm, LeaderConfig, LeaderReadError, LeaderReading
from posevla_ros.graph import config_dir
from posevla_ros.msg_conv import ns_to_time
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked, reject_unknown, spec_from_dataclass
from posevla_ros.qos import LATEST_STATE

BUTTONS_PER_ARM = 8


class TeleopNode(Node):
    PARAMS: ParamSpec = {
        "leader_config": ("gello_xtrainer.yaml", "leader YAML (ports, ids, offsets, signs); relative to config/", None),
        "left_port": ("", "override the left leader's serial port", None),
        "right_port": ("", "override the right leader's serial port", None),
        "arms": (["left", "right"], "arms to teleoperate", None),
        "rate_hz": (50.0, "teleoperation rate (Hz)", (5.0, 500.0)),
        # defaults from TeleopLimits (posevla.teleop.controller), the one place they are written
        **spec_from_dataclass(TeleopLimits, {
            "align_speed": ("follower joint speed while moving to the leader pose (rad/s)", (0.01, 2.0)),
            "max_speed": ("follower joint speed limit while mirroring (rad/s)", (0.1, 6.0)),
            "max_leader_jump": ("a larger leader change between two readings freezes (rad)", (0.01, 3.0)),
            "leader_timeout_s": ("a leader silent this long freezes the followers (s)", (0.01, 5.0)),
        }),
    }

    def __init__(self) -> None:
        super().__init__("teleop")
        self.leaders: dict[str, LeaderArm | None] = {}
        p = declare_checked(self, self.PARAMS, dynamic=())
        reject_unknown(self)  # before any serial port opens
        path = p["leader_config"] if "/" in p["leader_config"] else config_dir() / p["leader_config"]
        cfg = LeaderConfig.from_yaml(path).with_ports({"left": p["left_port"], "right": p["right_port"]})
        unknown = [a for a in p["arms"] if a not in cfg.arms]
        if unknown:
            raise ValueError(f"parameter arms: {unknown} not in {cfg.source} (has {sorted(cfg.arms)})")
        self.cfg, self.arm_names = cfg, tuple(p["arms"])
        self.leaders = dict.fromkeys(self.arm_names)
        self._last_open_try = 0.0
        self._open_leaders()
        self.ctrl = TeleopController(self.arm_names, TeleopLimits(
            align_speed=p["align_speed"], max_speed=p["max_speed"], max_leader_jump=p["max_leader_jump"],
            leader_timeout_s=p["leader_timeout_s"]))
        self.follower_q: dict[str, np.ndarray] = {}
        self.follower_g: dict[str, float] = {}
        self.readings: dict[str, LeaderReading] = {}
        self.read_errors = 0
        self._buttons: tuple[int, ...] | None = None
        self.cmd_pub = self.create_publisher(JointState, "xtrainer/servo_joint_command", 10)
        self.joy_pub = self.create_publisher(Joy, "teleop/buttons", 10)
        state_qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                               durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.state_pub = self.create_publisher(String, "teleop/state", state_qos)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointState, "joint_states", self._on_joint_states, LATEST_STATE)
        self.create_service(Trigger, "teleop/resume", self._srv_resume)
        self.create_service(Trigger, "teleop/freeze", self._srv_freeze)
        self.dt = 1.0 / p["rate_hz"]
        self.create_timer(self.dt, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self._last_state = ""

    def _open_leaders(self) -> None:
        self._last_open_try = time.monotonic()
        for name in self.arm_names:
            if self.leaders[name] is None:
                try:
                    self.leaders[name] = LeaderArm(name, self.cfg.arms[name], self.cfg.baudrate, self.cfg.protocol)
                except (LeaderReadError, OSError) as exc:
                    self.get_logger().error(f"{exc}; retrying every second", throttle_duration_sec=5.0)

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            arms = state_codec.decode(msg.name, msg.position, list(self.arm_names))
        except ValueError as exc:
            self.get_logger().error(f"joint_states: {exc}", throttle_duration_sec=5.0)
            return
        for arm, st in arms.items():
            self.follower_q[arm] = st.q
            if np.isfinite(st.gripper):
                self.follower_g[arm] = st.gripper

    def _read_leaders(self) -> dict[str, LeaderReading] | None:
        if any(v is None for v in self.leaders.values()) and time.monotonic() - self._last_open_try > 1.0:
            self._open_leaders()
        for name, leader in self.leaders.items():
            if leader is None:
                return None
            try:
                self.readings[name] = leader.read()
            except LeaderReadError as exc:  # no or garbled answer: the previous (aging) reading stands, and the
                self.read_errors += 1        # controller freezes once it is older than leader_timeout_s
                self.get_logger().error(str(exc), throttle_duration_sec=1.0)
            except OSError as exc:  # the device node went away: freeze now, reopen later
                self.read_errors += 1
                self.get_logger().error(str(exc), throttle_duration_sec=1.0)
                leader.close()
                self.leaders[name] = None
                return None
        if any(name not in self.readings for name in self.leaders):
            return None
        return dict(self.readings)

    def _tick(self) -> None:
        now = time.monotonic_ns()
        readings = self._read_leaders()
        targets = self.ctrl.step(readings, self.follower_q, self.follower_g, now, self.dt)
        if targets:
            names, position = state_codec.encode({arm: state_codec.ArmJoints(np.asarray(q, float), float(g))
                                                  for arm, (q, g) in targets.items()})
            msg = JointState(name=names, position=position)
            msg.header.stamp = self.get_clock().now().to_msg()
            self.cmd_pub.publish(msg)
        if readings:
            buttons = tuple(int(bool(readings[a].buttons >> k & 1)) for a in self.arm_names for k in range(BUTTONS_PER_ARM))
            if buttons != self._buttons:
                self._buttons = buttons
                joy = Joy(buttons=list(buttons))
                joy.header.stamp = self.get_clock().now().to_msg()
                self.joy_pub.publish(joy)
        if self.ctrl.state != self._last_state:
            self._last_state = self.ctrl.state
            if self.ctrl.state == "frozen":
                self.get_logger().error(f"teleop frozen: {self.ctrl.reason}")
            else:
                self.get_logger().info(f"teleop {self.ctrl.state}: {self.ctrl.reason}")
            self.state_pub.publish(String(data=f"{self.ctrl.state}: {self.ctrl.reason}"))

    def _srv_resume(self, request, response):
        response.message = f"teleop {self.ctrl.resume()}"
        response.success = True
        return response

    def _srv_freeze(self, request, response):
        self.ctrl.freeze("operator request (/teleop/freeze)")
        response.success, response.message = True, "teleop frozen"
        return response

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.ERROR if self.ctrl.state == "frozen" else DiagnosticStatus.OK
        st = DiagnosticStatus(level=level, name="teleop", hardware_id=",".join(self.arm_names),
                              message=f"{self.ctrl.state}: {self.ctrl.reason}")
        st.values = [KeyValue(key="read_errors", value=str(self.read_errors))]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        for leader in self.leaders.values():
            if leader is not None:
                leader.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(TeleopNode, "teleop_node", args, params=TeleopNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
