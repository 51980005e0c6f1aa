"""ros2 launch posevla_ros posevla.launch.py setup:=robot checkpoint:=/path/to/ckpt instruction:="..."

ros2 launch posevla_ros posevla.launch.py setup:=collect task:=stack_cups instruction:="stack the cups"

Starts a graph described in posevla_ros.graph (the same description the local runner `run_graph` uses):
setup:=robot (trials: RealSense cameras + X-Trainer + policy + executor), setup:=sim (replayed episode + the
X-Trainer TCP simulator), setup:=collect (demonstrations: cameras + X-Trainer + leader arms + recorder),
setup:=collect_sim (rehearsal with simulated leaders). Parameter defaults come from config/*.yaml.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from posevla_ros.graph import graph

from launch import LaunchDescription


def _nodes(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    specs = graph(get("setup"), checkpoint=get("checkpoint"), episode=get("episode"), instruction=get("instruction"),
                  task=get("task"), leader_dir=get("leader_dir"))
    return [Node(package="posevla_ros", executable=s.executable, name=s.name, output="screen",
                 parameters=[*(str(p) for p in s.param_paths()), s.parameters]) for s in specs]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("setup", default_value="robot", description="robot | sim | collect | collect_sim"),
        DeclareLaunchArgument("checkpoint", default_value="", description="policy checkpoint directory"),
        DeclareLaunchArgument("episode", default_value="", description="episode to replay (setup:=sim)"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction"),
        DeclareLaunchArgument("task", default_value="", description="task name of recorded episodes (collect)"),
        DeclareLaunchArgument("leader_dir", default_value="", description="simulated leader ports (collect_sim)"),
        OpaqueFunction(function=_nodes),
    ])
