"""ros2 launch posevla_ros posevla.launch.py setup:=robot checkpoint:=/path/to/ckpt instruction:="..."

ros2 launch posevla_ros posevla.launch.py setup:=collect task:=stack_cups instruction:="stack the cups"

ros2 launch posevla_ros posevla.launch.py setup:=trial checkpoint:=/path/to/ckpt task:=stack_cups \
    instruction:="stack the cups" trials:=20 time_limit_s:=60 conditions:="full:modalities=full;rgb_only:modalities=rgb"

Starts a graph described in posevla_ros.graph (the same description the local runner `run_graph` uses), with
the bring-up arguments applied by posevla_ros.bringup: setup:=robot (trials: RealSense cameras + X-Trainer +
policy + executor), setup:=sim (replayed episode + the X-Trainer TCP simulator), setup:=collect
(demonstrations: cameras + X-Trainer + leader arms + recorder), setup:=collect_sim (rehearsal with simulated
leaders), setup:=trial (the robot graph + recorder + trial_runner: `posevla trial` as a node, marked through the
/trial/* services). Parameter defaults come from share/posevla/config/*.yaml of the install (posevla.paths).

Camera serials are passed as strings whatever they look like (head_serial:=123456789 stays "123456789").
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from posevla_ros.bringup import BringupArgs, bringup, parse_cameras
from posevla_ros.graph import CAMERAS, SETUPS
from posevla_ros.trial_runner import trial_options

from launch import LaunchDescription


def _value(v):
    # strings verbatim: launch_ros would otherwise parse "123456789" as an integer and "true" as a bool
    return ParameterValue(v, value_type=str) if isinstance(v, str) else v


def _nodes(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    extra = BringupArgs(calibration_dir=get("calibration_dir"), cameras=parse_cameras(get("cameras")), remote=get("remote"),
                        serials={c: get(f"{c}_serial") for c in CAMERAS if get(f"{c}_serial")})
    trial = trial_options(get("trials"), get("time_limit_s"), get("conditions"), get("trial_out"), get("record"),
                          get("seed")) if get("setup") == "trial" else None
    specs = bringup(get("setup"), checkpoint=get("checkpoint"), episode=get("episode"),
                    instruction=get("instruction"), task=get("task"), leader_dir=get("leader_dir"), args=extra,
                    trial=trial)
    return [Node(package="posevla_ros", executable=s.executable, name=s.name, output="screen",
                 parameters=[*(str(p) for p in s.param_paths()), {k: _value(v) for k, v in s.parameters.items()}])
            for s in specs]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("setup", default_value="robot", description=" | ".join(SETUPS)),
        DeclareLaunchArgument("checkpoint", default_value="", description="policy checkpoint directory"),
        DeclareLaunchArgument("remote", default_value="",
                              description="host:port of a policy server (posevla serve-policy) instead of checkpoint"),
        DeclareLaunchArgument("episode", default_value="", description="episode to replay (setup:=sim)"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction"),
        DeclareLaunchArgument("task", default_value="", description="task name of recorded episodes (collect)"),
        DeclareLaunchArgument("leader_dir", default_value="", description="simulated leader ports (collect_sim)"),
        DeclareLaunchArgument("calibration_dir", default_value="",
                              description="hand-eye calibration folder (default: share/posevla/calibration)"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="cameras in use, e.g. [head, left_wrist] (default: all three)"),
        *(DeclareLaunchArgument(f"{c}_serial", default_value="",
                                description=f"RealSense serial of the {c} camera (default: from config/)")
          for c in CAMERAS),
        # setup:=trial (trial_runner's parameters; '' keeps its default)
        DeclareLaunchArgument("trials", default_value="", description="trial: trials per condition (default 20)"),
        DeclareLaunchArgument("time_limit_s", default_value="", description="trial: seconds per trial (default 60)"),
        DeclareLaunchArgument("conditions", default_value="",
                              description="trial: conditions separated by ';', e.g. full:modalities=full;rgb_only:modalities=rgb"),
        DeclareLaunchArgument("trial_out", default_value="", description="trial: session folder (default runs/trials/<task>)"),
        DeclareLaunchArgument("record", default_value="", description="trial: record each trial (true | false, default true)"),
        DeclareLaunchArgument("seed", default_value="", description="trial: seed of the randomised block order (default 0)"),
        OpaqueFunction(function=_nodes),
    ])
