"""The node graphs of the stack, described once (no ROS imports).

Both the ROS 2 launch file (`launch/posevla.launch.py`, robot PCs with a full ROS 2 install) and the
local runner (`posevla_ros.run_graph`, this machine, where `launch` is not installed) build the graph
from here, so they can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def config_dir() -> Path:
    """config/ of the source tree, or share/posevla/config of an install (one resolver: posevla.paths)."""
    from posevla.paths import config_dir as _config_dir

    return _config_dir()


@dataclass
class NodeSpec:
    """One node: the posevla_ros executable, its name, YAML parameter files (in config/) and overrides."""

    executable: str
    name: str
    param_files: list[str] = field(default_factory=list)
    parameters: dict[str, object] = field(default_factory=dict)

    def param_paths(self) -> list[Path]:
        return [config_dir() / f for f in self.param_files]


CAMERAS = ("head", "left_wrist", "right_wrist")

# executable -> module with main(args=None); setup.py registers exactly these as console scripts.
EXECUTABLES: dict[str, str] = {
    "camera_node": "posevla_ros.camera_node",
    "observation_node": "posevla_ros.observation_node",
    "replay_node": "posevla_ros.replay_node",
    "policy_node": "posevla_ros.policy_node",
    "executor_node": "posevla_ros.executor_node",
    "xtrainer_driver_node": "posevla_ros.xtrainer_driver_node",
    "xtrainer_sim": "posevla_ros.xtrainer_sim_node",
    "teleop_node": "posevla_ros.teleop_node",
    "recorder_node": "posevla_ros.recorder_node",
    "capture_recorder_node": "posevla_ros.capture_recorder_node",
    "run_graph": "posevla_ros.run_graph",
    "trigger": "posevla_ros.trigger",
    "mujoco_sim": "posevla_ros.mujoco_sim_node",
    "live_view": "posevla_ros.live_view",
    "trial_runner": "posevla_ros.trial_runner",
}


SETUPS = ("robot", "sim", "collect", "collect_sim", "sim_mujoco", "collect_mujoco", "trial")


def graph(setup: str, checkpoint: str = "", episode: str = "", instruction: str = "", task: str = "",
          leader_dir: str = "", overrides: dict[str, dict[str, object]] | None = None,
          trial: dict[str, object] | None = None) -> list[NodeSpec]:
    """Nodes for a setup.

    robot:       RealSense cameras, X-Trainer driver, policy, executor (trials on the robot)
    sim:         replayed cameras, X-Trainer TCP simulator + driver, policy, executor
    collect:     RealSense cameras, X-Trainer driver, teleop (leader arms), recorder (demonstrations)
    collect_sim: replayed cameras, simulator + driver, teleop on simulated leaders (`posevla teleop sim-leaders`,
                 ports <leader_dir>/<arm>), recorder -- a rehearsal of data collection without hardware
    sim_mujoco:  like sim, with the MuJoCo twin (`mujoco_sim`: physics, both controllers over TCP, the three
                 rendered cameras) in place of the TCP simulator and the replayed cameras
    collect_mujoco: like collect_sim, with the MuJoCo twin in place of the TCP simulator and the replay; without
                 leader_dir there is no teleop node: a scripted leader publishes the joint commands
                 (/xtrainer/servo_joint_command, as teleop_node does), see posevla_ros.closed_loop
    trial:       the robot graph (RealSense cameras, driver, policy waiting with an empty instruction, executor), a
                 recorder for the trials (observe only: require_action false) unless trial["record"] is false, and
                 trial_runner (`posevla trial` as a node: task, instruction and the `trial` dict are its parameters,
                 posevla_ros.trial_runner.PARAMS)
    `overrides` (node name -> parameters) are applied last, e.g. {"recorder": {"fps": 10.0}}.
    """
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r} (expected one of {list(SETUPS)})")
    if setup == "trial":
        return _trial_graph(checkpoint, instruction, task, dict(trial or {}))
    if trial:
        raise ValueError(f"trial options {sorted(trial)} are for setup trial, not {setup}")
    if setup in ("sim_mujoco", "collect_mujoco"):
        return _mujoco_graph(setup, checkpoint, instruction, task, leader_dir, overrides or {})
    sim = setup in ("sim", "collect_sim")
    if sim:
        nodes = [NodeSpec("xtrainer_sim", "xtrainer_sim", ["xtrainer_sim.yaml"]),
                 NodeSpec("xtrainer_driver_node", "xtrainer_driver", ["xtrainer.yaml", "xtrainer_sim.yaml"]),
                 NodeSpec("replay_node", "replay", ["replay.yaml"], {"episode": episode} if episode else {})]
    else:
        nodes = [NodeSpec("camera_node", f"{c}_camera", ["camera_head.yaml" if c == "head" else "camera_wrist.yaml"],
                          {"camera_name": c}) for c in CAMERAS]
        nodes.append(NodeSpec("xtrainer_driver_node", "xtrainer_driver", ["xtrainer.yaml"]))
    if setup in ("robot", "sim"):
        nodes.append(NodeSpec("policy_node", "policy", ["policy.yaml"],
                              {k: v for k, v in (("checkpoint", checkpoint), ("instruction", instruction)) if v}))
        nodes.append(NodeSpec("executor_node", "executor", ["executor.yaml"] + (["xtrainer_sim.yaml"] if sim else [])))
        return nodes
    ports: dict[str, object] = {f"{a}_port": f"{leader_dir}/{a}" for a in ("left", "right")} if leader_dir else {}
    nodes.append(NodeSpec("teleop_node", "teleop", ["teleop.yaml"], ports))
    nodes.append(NodeSpec("recorder_node", "recorder", ["recorder.yaml"],
                          {k: v for k, v in (("task", task), ("instruction", instruction)) if v}))
    return nodes


def _mujoco_graph(setup: str, checkpoint: str, instruction: str, task: str, leader_dir: str,
                  overrides: dict[str, dict[str, object]]) -> list[NodeSpec]:
    """The sim / collect_sim graphs with the MuJoCo twin as robot and cameras."""
    base = graph("sim" if setup == "sim_mujoco" else "collect_sim", checkpoint, "", instruction, task, leader_dir)
    nodes = [NodeSpec("mujoco_sim", "mujoco_sim", ["mujoco_sim.yaml"])]
    nodes += [n for n in base if n.executable not in ("xtrainer_sim", "replay_node")
              and not (n.executable == "teleop_node" and not leader_dir)]
    for n in nodes:
        if n.name == "recorder":  # sample at the twin's camera rate (config/mujoco_sim.yaml), no sound; a rendered
            # camera on a busy machine may pause longer than a RealSense would before the episode is stopped
            n.parameters.update(fps=10.0, sound_cues=False, stream_timeout_s=2.0)
        if "xtrainer_sim.yaml" in n.param_files:  # that file also holds the lag model's parameter
            n.param_files.remove("xtrainer_sim.yaml")
            n.parameters["robot_config"] = "xtrainer_sim_robot.yaml"
    unknown = sorted(set(overrides) - {n.name for n in nodes})
    if unknown:
        raise ValueError(f"overrides for unknown node(s) {unknown} (graph {setup} has {[n.name for n in nodes]})")
    for n in nodes:
        n.parameters.update(overrides.get(n.name, {}))
    return nodes


def _trial_graph(checkpoint: str, instruction: str, task: str, trial: dict[str, object]) -> list[NodeSpec]:
    """The robot graph + recorder + trial_runner (see graph())."""
    from posevla_ros.trial_runner import PARAMS as RUNNER_PARAMS  # a plain table: no ROS import

    unknown = sorted((set(trial) - set(RUNNER_PARAMS)) | (set(trial) & {"task", "instruction"}))
    if unknown:
        raise ValueError(f"unknown trial option(s) {unknown} (trial_runner takes "
                         f"{sorted(set(RUNNER_PARAMS) - {'task', 'instruction'})}; task and instruction are arguments)")
    if not task or not instruction:
        raise ValueError("setup trial needs task and instruction (task:=... instruction:=...)")
    nodes = graph("robot", checkpoint=checkpoint)  # the policy gets no instruction: the runner sets it per trial
    runner = {"task": task, "instruction": instruction, **trial}
    if runner.get("record", RUNNER_PARAMS["record"][0]):
        nodes.append(NodeSpec("recorder_node", "recorder", ["recorder.yaml"],
                              {"task": task, "instruction": instruction, "require_action": False,
                               "root": runner.get("data_root", RUNNER_PARAMS["data_root"][0])}))
    nodes.append(NodeSpec("trial_runner", "trial_runner", [], runner))
    return nodes
