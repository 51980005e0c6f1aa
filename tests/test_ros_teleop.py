"""Teleoperation over real DDS and real sockets: a simulated GELLO leader (Protocol 2.0 on a pty, read by the
real dynamixel_sdk in teleop_node) drives the simulated followers through xtrainer_driver_node over TCP;
unplugging the leader freezes the followers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("dynamixel_sdk")
from posevla_ros.graph import NodeSpec  # noqa: E402
from posevla_ros.run_graph import GraphRunner  # noqa: E402
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from ros_helpers import call_trigger, sim_robot_yaml, spin  # noqa: E402
from sensor_msgs.msg import JointState, Joy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from posevla.robot.kinematics import ArmKinematics  # noqa: E402
from posevla.teleop.dxl_sim import DynamixelChainSim  # noqa: E402
from posevla.teleop.gello import LeaderConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ARMS = ("left", "right")



class Leader:
    """Both simulated leader arms, posed in follower joint angles."""

    def __init__(self) -> None:
        self.cfg = LeaderConfig.from_yaml(REPO / "config" / "gello_xtrainer.yaml")
        self.sims = {a: DynamixelChainSim(list(c.all_ids) + [c.buttons_id]) for a, c in self.cfg.arms.items()}

    def pose(self, q: dict[str, np.ndarray], gripper: float = 0.5, buttons: int = 0) -> None:
        for arm, c in self.cfg.arms.items():
            for i, t in zip(c.joint_ids, c.ticks_from_joints(q[arm])):
                self.sims[arm].set_position(i, int(t))
            self.sims[arm].set_position(c.gripper_id, c.ticks_from_gripper(gripper))
            self.sims[arm].set_register(c.buttons_id, c.buttons_address, bytes([buttons]))

    def close(self) -> None:
        for s in self.sims.values():
            s.close()


class Probe:
    def __init__(self, ctx) -> None:
        self.node = rclpy.create_node("teleop_probe", context=ctx)
        self.q: dict[str, list[tuple[float, np.ndarray]]] = {a: [] for a in ARMS}  # (feedback stamp s, joints)
        self.states: list[str] = []
        self.joy: list[list[int]] = []
        self.node.create_subscription(JointState, "/joint_states", self._joints, 2000)  # kept while not spinning
        latched = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, "/teleop/state", lambda m: self.states.append(m.data), latched)
        self.node.create_subscription(Joy, "/teleop/buttons", lambda m: self.joy.append(list(m.buttons)), 50)
        self.ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)

    def _joints(self, m: JointState) -> None:
        idx = {n: i for i, n in enumerate(m.name)}
        for a in ARMS:
            if f"{a}_joint1" in idx:
                self.q[a].append((m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec,
                                  np.array([m.position[idx[f"{a}_joint{i}"]] for i in range(1, 7)])))

    def spin(self, seconds: float, until=None) -> None:
        spin(self.ex, seconds, until, step_s=0.01)

    def call(self, name: str) -> str:
        res = call_trigger(self.node, self.ex, name, 5.0)
        assert res is not None and res.success
        return res.message


def test_leader_drives_followers_with_safe_start_and_unplug_freezes(tmp_path, rclpy_context) -> None:
    robot = sim_robot_yaml(tmp_path)
    home = ArmKinematics().home()
    offset = np.array([0.5, -0.3, 0.3, 0.0, 0.2, -0.4])  # the leader starts away from the followers
    leader = Leader()
    leader.pose({a: home + offset for a in ARMS})
    align_speed = 0.4
    runner = GraphRunner([
        NodeSpec("xtrainer_sim", "xtrainer_sim", [], {"robot_config": str(robot)}),
        NodeSpec("xtrainer_driver_node", "xtrainer_driver", ["xtrainer.yaml"], {"robot_config": str(robot)})])
    teleop = GraphRunner([
        NodeSpec("teleop_node", "teleop", ["teleop.yaml"], {"left_port": leader.sims["left"].port,
                                                             "right_port": leader.sims["right"].port,
                                                             "align_speed": align_speed})])
    probe = Probe(rclpy_context)
    try:
        runner.start(delay_s=1.0)
        # the probe must see the followers before the leader takes over, to check where they started
        probe.spin(30.0, until=lambda: all(probe.q[a] for a in ARMS))
        assert all(probe.q[a] for a in ARMS), "no /joint_states from the driver"
        teleop.start()
        target = home + offset
        # safe start: the followers creep to the leader pose, never faster than align_speed, then mirror
        probe.spin(30.0, until=lambda: any(s.startswith("mirroring") for s in probe.states))
        assert not runner.dead(), runner.dead()
        assert any(s.startswith("aligning") for s in probe.states), probe.states
        assert any(s.startswith("mirroring") for s in probe.states), probe.states
        probe.spin(10.0, until=lambda: all(np.abs(probe.q[a][-1][1] - target).max() < 0.06 for a in ARMS))
        for arm in ARMS:
            t, q = zip(*probe.q[arm])
            t, q = np.array(t), np.array(q)
            assert np.abs(q[0] - home).max() < 1e-3  # the followers started at home
            np.testing.assert_allclose(q[-1], target, atol=0.06)
            keep = [0]  # velocities over >= 100 ms windows of feedback stamps (message timing noise)
            for i in range(1, len(t)):
                if t[i] - t[keep[-1]] >= 0.1:
                    keep.append(i)
            assert len(keep) > 10
            tk, qk = t[keep], q[keep]
            speed = np.abs(np.diff(qk, axis=0)).max(axis=1) / np.diff(tk)
            assert speed.max() < 1.5 * align_speed, speed.max()
        # mirroring: the leader moves, the followers follow
        probe.joy.clear()
        moved = target + np.array([0.0, 0.0, 0.0, 0.1, 0.0, 0.0])
        leader.pose({a: moved for a in ARMS}, buttons=0b1)
        probe.spin(10.0, until=lambda: all(np.abs(probe.q[a][-1][1] - moved).max() < 0.03 for a in ARMS)
                   and probe.joy and probe.joy[-1][0] == 1 and probe.joy[-1][8] == 1)
        for arm in ARMS:
            np.testing.assert_allclose(probe.q[arm][-1][1], moved, atol=0.03)
        assert probe.joy and probe.joy[-1][0] == 1 and probe.joy[-1][8] == 1  # left bit 0, right bit 0
        # unplug the left leader: both followers freeze where they are, even as the right leader moves
        leader.sims["left"].unplug()
        probe.spin(1.0, until=lambda: probe.states[-1].startswith("frozen"))
        assert probe.states[-1].startswith("frozen") and "leader" in probe.states[-1], probe.states[-1]
        # where the leader goes meanwhile: 0.2 rad on three joints, the followers' TCP staying in the workspace box
        # (the driver checks every ServoJ's TCP through the kinematics against the box)
        away = moved + np.array([-0.2, 0.0, 0.0, 0.2, 0.0, 0.2])
        leader.pose({a: away for a in ARMS})
        probe.spin(0.5)
        frozen_at = {a: probe.q[a][-1][1] for a in ARMS}
        probe.spin(1.5)
        for arm in ARMS:
            assert np.abs(probe.q[arm][-1][1] - frozen_at[arm]).max() < 1e-3
            np.testing.assert_allclose(frozen_at[arm], moved, atol=0.03)
        # plugging back in does not move anything until the operator resumes; then a slow re-alignment
        leader.sims["left"].plug_in()
        probe.spin(1.0)
        for arm in ARMS:
            assert np.abs(probe.q[arm][-1][1] - frozen_at[arm]).max() < 1e-3
        assert "waiting" in probe.call("/teleop/resume")
        probe.spin(10.0, until=lambda: probe.states[-1].startswith("mirroring"))
        # the probe keeps every /joint_states (deep queue) and may work through a backlog on a busy machine:
        # wait until the followers are seen at the leader (or 10 s), not for a fixed time
        probe.spin(10.0, until=lambda: all(np.abs(probe.q[a][-1][1] - away).max() < 0.06 for a in ARMS))
        for arm in ARMS:
            np.testing.assert_allclose(probe.q[arm][-1][1], away, atol=0.06)
        assert not runner.dead() and not teleop.dead(), (runner.dead(), teleop.dead())
    finally:
        probe.node.destroy_node()
        teleop.stop()
        runner.stop()
        leader.close()
