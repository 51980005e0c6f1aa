"""Bring-up arguments -> node parameters, once for the launch file and the local runner (no ROS imports).

`ros2 launch posevla_ros posevla.launch.py setup:=robot calibration_dir:=... head_serial:=... cameras:=...`
and `run_graph robot --calibration-dir ... --head-serial ... --cameras ...` both call `bringup()`, which takes
the graph of `posevla_ros.graph` and applies the operator's choices:

- `cameras`: the cameras in use (a subset of head, left_wrist, right_wrist): only those camera nodes start,
  and the policy and the recorder use only those views;
- `<camera>_serial`: the RealSense serial per camera, always a string (a digit-only serial must not become
  an integer parameter);
- `calibration_dir`: the hand-eye calibration folder for the executor, the policy and the recorder
  (default: share/posevla/calibration of the install, or calibration/ of the source tree);
- `remote`: host:port of a policy server (`posevla serve-policy`): the policy node sends its observations there
  instead of loading a checkpoint (docs/remote_policy.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from posevla_ros.graph import CAMERAS, NodeSpec, graph

# executables that read hand-eye calibration files (parameter calibration_dir)
CALIBRATION_USERS = ("executor_node", "policy_node", "recorder_node")
# executables that take the list of cameras in use (parameter cameras)
CAMERA_USERS = ("policy_node", "recorder_node")


@dataclass
class BringupArgs:
    """The launch arguments beyond the graph's own (setup, checkpoint, episode, instruction, task, leader_dir)."""

    calibration_dir: str = ""
    serials: dict[str, str] = field(default_factory=dict)  # camera -> RealSense serial ("" = any camera)
    cameras: list[str] = field(default_factory=list)  # [] = all three
    remote: str = ""  # host:port of a policy server ("" = the model runs in the policy node)

    def validate(self) -> None:
        unknown = sorted(set(self.cameras) - set(CAMERAS)) + sorted(set(self.serials) - set(CAMERAS))
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}: expected among {list(CAMERAS)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras {self.cameras} lists a camera twice")


def parse_cameras(text: str) -> list[str]:
    """'[head, left_wrist]', 'head,left_wrist' or 'head left_wrist' -> ['head', 'left_wrist']; '' -> []."""
    cleaned = text.strip().strip("[]").replace(",", " ").replace("'", " ").replace('"', " ")
    return cleaned.split()


def bringup(setup: str, checkpoint: str = "", episode: str = "", instruction: str = "", task: str = "",
            leader_dir: str = "", args: BringupArgs | None = None,
            trial: dict[str, object] | None = None) -> list[NodeSpec]:
    """The graph of `setup` with the bring-up arguments applied (see the module docstring); `trial`: the
    trial_runner's options for setup trial (posevla_ros.trial_runner.PARAMS)."""
    args = args or BringupArgs()
    args.validate()
    specs = graph(setup, checkpoint=checkpoint, episode=episode, instruction=instruction, task=task,
                  leader_dir=leader_dir, trial=trial)
    cameras = list(args.cameras) or list(CAMERAS)
    out = []
    for spec in specs:
        if spec.executable == "camera_node":
            name = str(spec.parameters.get("camera_name", ""))
            if name not in cameras:
                continue
            if args.serials.get(name):  # else the YAML's serial stands
                spec.parameters["serial"] = str(args.serials[name])
        if args.calibration_dir and spec.executable in CALIBRATION_USERS:
            spec.parameters["calibration_dir"] = args.calibration_dir
        if args.cameras and spec.executable in CAMERA_USERS:
            spec.parameters["cameras"] = list(cameras)
        if args.remote and spec.executable == "policy_node":
            spec.parameters["remote"] = args.remote
        out.append(spec)
    return out
