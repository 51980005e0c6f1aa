"""mujoco_sim: the X-Trainer physics twin (posevla.sim) behind the real interfaces.

- Both Dobot controllers over the existing TCP protocol (dashboard / motion / feedback ports of the robot YAML,
  `robot_config`): the protocol simulator's servers with MuJoCo-backed arms (ServoJ, ServoP through the arm's
  IK, SetTool/Tool) -- the driver cannot tell it from `xtrainer_sim` or the robot. The grippers as on the
  X-Trainer: a Feetech servo bus per arm at the YAML's gripper port, closing the MuJoCo fingers.
- The three cameras as realsense2_camera publishes them, at `rate_hz` and `width` x `height`:
  `/<camera>/color/image_raw` (rgb8), `/<camera>/aligned_depth_to_color/image_raw` (16UC1, millimetres),
  `/<camera>/color/camera_info`; poses from the calibration files (`calibration_dir`), sensor-data QoS,
  header.stamp = the time the physics state was rendered.
- The task (`task`: `pick_cube`, the left arm lifts the cube; `hand_over`, the left arm sets it down between the
  arms and the right arm lifts it; `posevla.sim.tasks`).
- Task topics: `/sim/reset` (std_msgs/Int64: a seed; the arms drive home, the cube is placed for that seed),
  `/sim/episode` (std_msgs/String, JSON, reliable + transient-local: task, seed, reset count, cube placement,
  instruction; sent when a reset is complete), `/sim/success` (std_msgs/Bool, every camera frame: the task's
  success test, e.g. the cube lifted).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool, Int64, String

from posevla.paths import calibration_dir
from posevla.robot.driver import XTrainerConfig
from posevla.sim.render import TwinRenderer
from posevla.sim.tasks import TASKS, make_task
from posevla.sim.twin import TwinSpec
from posevla.sim.world import TwinControllers, TwinGrippers, TwinWorld
from posevla_ros.graph import config_dir
from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg
from posevla_ros.node_main import spin_node
from posevla_ros.params import ParamSpec, declare_checked


class MujocoSimNode(Node):
    PARAMS: ParamSpec = {
        "robot_config": ("xtrainer_sim_robot.yaml", "robot YAML: arm mountings and the controller endpoints to "
                         "serve; relative to config/", None),
        "calibration_dir": ("", "camera poses (hand-eye files) the twin renders from (default: calibration/)", None),
        "cameras": (["head", "left_wrist", "right_wrist"], "cameras to publish", None),
        "rate_hz": (10.0, "camera frame rate (Hz)", (0.5, 60.0)),
        "width": (320, "image width (pixels)", (16, 1280)),
        "height": (240, "image height (pixels)", (16, 960)),
        "head_fovy_deg": (60.0, "vertical field of view of the head camera (deg)", (10.0, 150.0)),
        "wrist_fovy_deg": (58.0, "vertical field of view of the wrist cameras (deg)", (10.0, 150.0)),
        "task": ("pick_cube", "the task: cube placements per seed and the success test", tuple(TASKS)),
        "seed": (-1, "placement seed at start-up (-1: the nominal placement)", (-1, 2**31 - 1)),
        "realtime_factor": (1.0, "simulated seconds per wall-clock second", (0.05, 20.0)),
    }

    def __init__(self) -> None:
        super().__init__("mujoco_sim")
        p = declare_checked(self, self.PARAMS)
        robot_path = Path(p["robot_config"]) if "/" in p["robot_config"] else config_dir() / p["robot_config"]
        calib_dir = Path(p["calibration_dir"]) if p["calibration_dir"] else calibration_dir()
        spec = TwinSpec.from_files(robot_path, calib_dir, head_fovy_deg=p["head_fovy_deg"],
                                   wrist_fovy_deg=p["wrist_fovy_deg"])
        unknown = [c for c in p["cameras"] if c not in spec.cameras]
        if unknown:
            raise ValueError(f"parameter cameras: {unknown} have no calibration file in {calib_dir} "
                             f"(has {sorted(spec.cameras)})")
        self.cameras = list(p["cameras"])
        self.spec = spec
        self.task_name = p["task"]
        self.world = TwinWorld(spec, make_task(p["task"]), realtime_factor=p["realtime_factor"])
        if p["seed"] >= 0:
            self.world.place(p["seed"])
        robot = XTrainerConfig.from_yaml(robot_path)
        try:
            self.servers = TwinControllers(self.world, {a: ep.host for a, ep in robot.arms.items()},
                                           {a: {"dashboard_port": ep.dashboard_port, "motion_port": ep.motion_port,
                                                "feedback_port": ep.feedback_port} for a, ep in robot.arms.items()})
        except OSError as exc:
            raise ValueError(f"parameter robot_config: cannot bind the controller ports of {robot_path}: {exc}") from exc
        try:
            self.grippers = TwinGrippers(self.world, spec.grippers)
        except OSError as exc:
            self.servers.close()
            raise ValueError(f"parameter robot_config: cannot serve the gripper ports of {robot_path}: {exc}") from exc
        self.renderer = TwinRenderer(self.world, p["width"], p["height"])
        self.intrinsics = {c: self.renderer.intrinsics(c) for c in self.cameras}
        self.pubs = {c: (self.create_publisher(Image, f"/{c}/color/image_raw", qos_profile_sensor_data),
                         self.create_publisher(Image, f"/{c}/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
                         self.create_publisher(CameraInfo, f"/{c}/color/camera_info", qos_profile_sensor_data))
                     for c in self.cameras}
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self.episode_pub = self.create_publisher(String, "/sim/episode", latched)
        self.success_pub = self.create_publisher(Bool, "/sim/success", 10)
        self.create_subscription(Int64, "/sim/reset", self._on_reset, 10)
        self._reset_lock = threading.Lock()
        self._resetting = False
        self.frames = 0
        self.world.start()
        self._publish_episode()
        self.create_timer(1.0 / p["rate_hz"], self._tick)
        for arm in self.servers.controllers:
            self.get_logger().info(f"{arm} arm controller (MuJoCo) on {self.servers.endpoint(arm)}")
        self.get_logger().info(f"cameras {self.cameras} at {p['rate_hz']} Hz, {p['width']}x{p['height']}")

    def _publish_episode(self) -> None:
        st = self.world.state
        if st is None:
            return  # no episode yet
        self.episode_pub.publish(String(data=json.dumps({
            "task": self.task_name, "seed": st.seed, "resets": self.world.resets, "cube_xy": list(st.cube_xy), "cube_yaw": st.cube_yaw,
            "instruction": self.world.task.instruction})))

    def _on_reset(self, msg: Int64) -> None:
        if self._resetting:
            self.get_logger().warning(f"/sim/reset {msg.data} ignored: a reset is in progress")
            return
        self._resetting = True
        threading.Thread(target=self._reset, args=(int(msg.data),), daemon=True).start()

    def _reset(self, seed: int) -> None:
        try:
            with self._reset_lock:
                if self.grippers is not None and not self.grippers.open():  # the operator opens the grippers
                    self.get_logger().warning("reset: the simulated gripper buses did not take the open goal")
                st = self.world.reset(seed)
                self._publish_episode()
                self.get_logger().info(f"reset: seed {seed}, cube at {np.round(st.cube_xy, 3).tolist()}")
        finally:
            self._resetting = False

    def _tick(self) -> None:
        stamp = self.get_clock().now().nanoseconds
        for c in self.cameras:
            rgb, depth = self.renderer.render(c)
            frame = self.spec.cameras[c].frame_id
            color_pub, depth_pub, info_pub = self.pubs[c]
            depth_mm = np.round(depth * 1000.0).clip(0, 65535).astype(np.uint16)
            color_pub.publish(image_to_msg(rgb, "rgb8", stamp, frame))
            depth_pub.publish(image_to_msg(depth_mm, "16UC1", stamp, frame))
            info_pub.publish(intrinsics_to_msg(self.intrinsics[c], stamp, frame))
        self.frames += 1
        self.success_pub.publish(Bool(data=self.world.success()))

    def destroy_node(self) -> None:
        self.world.stop()
        self.servers.close()
        self.grippers.close()
        self.renderer.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(MujocoSimNode, "mujoco_sim_node", args, params=MujocoSimNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
