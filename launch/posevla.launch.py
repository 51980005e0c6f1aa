"""ros2 launch posevla_ros posevla.launch.py setup:=robot checkpoint:=/path/to/ckpt instruction:="..."

Starts the Pose-VLA graph described in posevla_ros.graph (the same description the local runner
`run_graph` uses): setup:=robot (RealSense cameras + X-Trainer) or setup:=sim (replayed episode +
the X-Trainer TCP simulator). Parameter defaults come from config/*.yaml.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from posevla_ros.graph import graph

from launch import LaunchDescription


def _nodes(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    specs = graph(get("setup"), checkpoint=get("checkpoint"), episode=get("episode"), instruction=get("instruction"))
    return [Node(package="posevla_ros", executable=s.executable, name=s.name, output="screen",
                 parameters=[*(str(p) for p in s.param_paths()), s.parameters]) for s in specs]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("setup", default_value="robot", description="robot | sim"),
        DeclareLaunchArgument("checkpoint", default_value="", description="policy checkpoint directory"),
        DeclareLaunchArgument("episode", default_value="", description="episode to replay (setup:=sim)"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction"),
        OpaqueFunction(function=_nodes),
    ])
