"""xtrainer_sim: run the X-Trainer TCP simulator (posevla.robot.simulator) from `ros2 run`/the graph runner.

It speaks only the Dobot TCP protocol (no ROS topics), exactly like the real controllers, and the Feetech
protocol of the grippers on pseudo-terminals linked at the gripper ports of the robot YAML; ROS arguments
are accepted and parameters read from `--params-file` (robot_config: the robot YAML whose hosts/ports
the simulator binds).
"""
from __future__ import annotations

import sys
import time

import rclpy

from posevla.robot.driver import XTrainerConfig
from posevla.robot.simulator import XTrainerSimulator
from posevla_ros.graph import config_dir
from posevla_ros.network import apply_network_policy
from posevla_ros.params import declare_checked


def main(args: list[str] | None = None) -> None:
    apply_network_policy()
    rclpy.init(args=args)
    node = rclpy.create_node("xtrainer_sim")
    p = declare_checked(node, {
        "robot_config": ("xtrainer_sim_robot.yaml", "robot YAML whose hosts/ports to serve; relative to config/", None),
        "lag_s": (0.04, "tracking lag time constant (s)", (0.001, 1.0)),
    })
    path = config_dir() / p["robot_config"] if "/" not in p["robot_config"] else p["robot_config"]
    cfg = XTrainerConfig.from_yaml(path)
    hosts = {arm: ep.host for arm, ep in cfg.arms.items()}
    ports = {arm: {"dashboard_port": ep.dashboard_port, "motion_port": ep.motion_port,
                   "feedback_port": ep.feedback_port} for arm, ep in cfg.arms.items()}
    try:
        sim = XTrainerSimulator(hosts, ports, lag_s=p["lag_s"], grippers=cfg.grippers,
                                kinematics={arm: cfg.arm_kinematics(arm, with_tool=False) for arm in cfg.arms})
    except OSError as exc:
        node.get_logger().error(f"cannot bind the simulator ports of {path}: {exc}")
        rclpy.try_shutdown()
        sys.exit(2)
    for arm in sim.arms:
        node.get_logger().info(f"{arm} arm controller on {sim.endpoint(arm)}")
    try:
        while rclpy.ok():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
