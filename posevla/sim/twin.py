"""The X-Trainer physics twin: an MJCF model generated from the project's own robot description.

Sources (one source of truth each, nothing restated here):
- arm mountings `T_base_armbase` and controller endpoints: the robot YAML (`config/xtrainer_*robot.yaml`,
  read by `posevla.robot.driver.XTrainerConfig`);
- each arm's kinematic chain: the robot YAML's model (`XTrainerConfig.arm_kinematics`, TCP = the configured tool
  frame; an `ArmKinematics`), used through its public `fk` only.
  Each revolute joint's screw axis (direction and a point on it, arm base frame, at q = 0) is recovered
  exactly from `fk` (a finite rotation about joint i alone is a pure screw motion), so the MuJoCo chain
  is a product of exponentials that reproduces `fk` for any joint vector, whatever parameterisation
  (DH, modified DH, vendor URDF) `ArmKinematics` uses inside;
- camera poses: the hand-eye calibration files (`calibration/*.yaml`): the head camera at `T_base_head`,
  each wrist camera at `T_tcp_wrist` on its TCP body.

Frames: `base_link` is MuJoCo's world frame (table top at z = 0, metres). MuJoCo cameras look along their
-z with y up; an optical frame (x right, y down, z forward) is that frame turned by pi about x.
The gripper: two fingers sliding along the TCP's x axis, hanging along the TCP's +z (the tool points
down when grasping); opening 0..1 maps linearly to a finger stroke of 0..`finger_stroke_m` each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.transform import Rotation

from posevla.calibration.files import load_calibrations
from posevla.geometry import se3
from posevla.robot.driver import XTrainerConfig
from posevla.robot.kinematics import ArmKinematics

R_OPTICAL_MJCAM = np.diag([1.0, -1.0, -1.0])  # optical frame -> MuJoCo camera frame (and back: its own inverse)


@dataclass(frozen=True)
class JointScrew:
    """A revolute joint at q = 0, in the arm base frame: unit axis direction and a point on the axis (m)."""

    axis: np.ndarray
    point: np.ndarray


def arm_screws(kin: ArmKinematics, probe_rad: float = 0.5) -> tuple[list[JointScrew], np.ndarray]:
    """Screw axes of the six joints and `T_armbase_tcp` at q = 0, from `kin.fk` alone.

    Turning joint i alone by `probe_rad` moves the TCP by `M = fk(q_i) fk(0)^-1 = [R, (I - R) p]`, a rotation
    about the axis through p: the axis is R's rotation vector, p the least-squares solution of (I - R) p = t
    (its component along the axis is free; we take the point nearest the previous joint's point, so the links
    are short segments between consecutive axes).
    """
    q0 = np.zeros(6)
    T0 = kin.fk(q0)
    screws: list[JointScrew] = []
    prev = np.zeros(3)
    for i in range(6):
        dq = np.zeros(6)
        dq[i] = probe_rad
        M = kin.fk(q0 + dq) @ se3.invert_T(T0)
        rotvec = Rotation.from_matrix(M[:3, :3]).as_rotvec()
        angle = float(np.linalg.norm(rotvec))
        if abs(angle - probe_rad) > 1e-6:
            raise ValueError(f"ArmKinematics joint {i + 1} is not a revolute joint (turned {angle:.6f} rad for "
                             f"{probe_rad} rad)")
        axis = rotvec / angle
        p, *_ = np.linalg.lstsq(np.eye(3) - M[:3, :3], M[:3, 3], rcond=None)
        p = p + axis * float(axis @ (prev - p))  # the axis point nearest the previous joint's point
        screws.append(JointScrew(axis, p))
        prev = p
    return screws, T0


@dataclass(frozen=True)
class CameraSpec:
    """One simulated camera: parent body ('world' or '<arm>_tcp'), `T_parent_optical`, vertical field of view."""

    name: str
    parent: str
    T_parent_optical: np.ndarray
    fovy_deg: float
    near_m: float

    @property
    def frame_id(self) -> str:
        return f"{self.name}_camera_color_optical_frame"


@dataclass
class TwinSpec:
    """Everything the MJCF is generated from. `kins`: each arm's model with its TCP (tool) frame; `flange_kins`: the
    same model without the tool, as the controllers hold it before SetTool/Tool (default: the same as `kins`)."""

    T_base_armbase: dict[str, np.ndarray]
    cameras: dict[str, CameraSpec]
    kins: dict[str, ArmKinematics] = field(default_factory=dict)
    flange_kins: dict[str, ArmKinematics] = field(default_factory=dict)
    grippers: dict = field(default_factory=dict)  # arm -> posevla.robot.feetech.GripperConfig (the robot YAML's)
    cube_half_m: float = 0.02
    cube_mass_kg: float = 0.05
    finger_stroke_m: float = 0.045  # per finger, opening 1.0
    timestep_s: float = 0.002
    joint_kp: float = 3000.0  # position servo gain, N m / rad
    finger_kp: float = 400.0  # N / m (closing on a 4 cm cube: ~8 N squeeze per finger)

    def __post_init__(self) -> None:
        for arm in self.T_base_armbase:
            self.kins.setdefault(arm, ArmKinematics())
            self.flange_kins.setdefault(arm, self.kins[arm])

    @classmethod
    def from_files(cls, robot_yaml: str | Path, calibration_dir: str | Path, head_fovy_deg: float = 60.0,
                   wrist_fovy_deg: float = 58.0) -> TwinSpec:
        """Arms from the robot YAML, cameras from the calibration files (ValueError naming a bad file/field)."""
        robot = XTrainerConfig.from_yaml(robot_yaml)
        if hasattr(robot, "arm_kinematics"):
            kins = {arm: robot.arm_kinematics(arm) for arm in robot.arms}
            flange = {arm: robot.arm_kinematics(arm, with_tool=False) for arm in robot.arms}
        else:
            kins, flange = {}, {}
        calibs = load_calibrations(calibration_dir)
        cameras: dict[str, CameraSpec] = {}
        for frame, c in calibs.items():
            name = frame.removesuffix("_camera_color_optical_frame")
            if c.kind == "eye_to_hand":
                if c.parent_frame != "base_link":
                    raise ValueError(f"calibration file {c.path}: field parent_frame={c.parent_frame!r}; the twin "
                                     "places eye-to-hand cameras in base_link")
                cameras[name] = CameraSpec(name, "world", c.T_parent_child, head_fovy_deg, 0.05)
            else:
                if c.arm not in robot.arms:
                    raise ValueError(f"calibration file {c.path}: arm {c.arm!r} is not in {robot_yaml}")
                cameras[name] = CameraSpec(name, f"{c.arm}_tcp", c.T_parent_child, wrist_fovy_deg, 0.005)
        return cls({arm: ep.T_base_armbase for arm, ep in robot.arms.items()}, cameras, kins, flange,
                   dict(getattr(robot, "grippers", {}) or {}))


def _v(x: ArrayLike) -> str:
    return " ".join(f"{float(v):.9g}" for v in np.ravel(x))


def _quat_wxyz(R: np.ndarray) -> str:
    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return _v([w, x, y, z])


def _camera_xml(cam: CameraSpec) -> str:
    T = cam.T_parent_optical
    return (f'<camera name="{cam.name}" pos="{_v(T[:3, 3])}" quat="{_quat_wxyz(T[:3, :3] @ R_OPTICAL_MJCAM)}" '
            f'fovy="{cam.fovy_deg:.9g}"/>')


def _arm_xml(name: str, spec: TwinSpec) -> str:
    kin = spec.kins[name]
    screws, T_ab_tcp0 = arm_screws(kin)
    T = spec.T_base_armbase[name]
    lo, hi = kin.q_min, kin.q_max
    out = [f'<body name="{name}_arm_base" pos="{_v(T[:3, 3])}" quat="{_quat_wxyz(T[:3, :3])}">',
           '<geom class="link" type="cylinder" size="0.06 0.03" pos="0 0 0.03"/>']
    prev = np.zeros(3)
    points = [s.point for s in screws] + [T_ab_tcp0[:3, 3]]
    for i, s in enumerate(screws):
        # bodies keep the arm-base orientation at q = 0; each is placed at its joint's axis point
        out.append(f'<body name="{name}_link{i + 1}" pos="{_v(s.point - prev)}" gravcomp="1">')
        out.append('<inertial pos="0 0 0" mass="1.0" diaginertia="0.004 0.004 0.004"/>')
        out.append(f'<joint name="{name}_joint{i + 1}" class="arm" axis="{_v(s.axis)}" range="{lo[i]:.9g} {hi[i]:.9g}"/>')
        seg = points[i + 1] - s.point
        if np.linalg.norm(seg) > 1e-4:
            out.append(f'<geom class="link" type="capsule" size="0.035" fromto="0 0 0 {_v(seg)}"/>')
        prev = s.point
    stroke = spec.finger_stroke_m
    out += [f'<body name="{name}_tcp" pos="{_v(T_ab_tcp0[:3, 3] - prev)}" quat="{_quat_wxyz(T_ab_tcp0[:3, :3])}" gravcomp="1">',
            f'<site name="{name}_tcp" size="0.005"/>',
            '<geom class="grip" type="box" size="0.055 0.03 0.01" pos="0 0 0" rgba="0.2 0.2 0.2 1"/>']
    for side, sign in (("a", 1.0), ("b", -1.0)):
        out += [f'<body name="{name}_finger_{side}" pos="{sign * 0.006:.9g} 0 0.0325" gravcomp="1">',
                f'<joint name="{name}_finger_{side}" type="slide" axis="{sign:.0f} 0 0" range="0 {stroke:.9g}" '
                'armature="0.01" damping="5"/>',
                '<geom class="grip" type="box" size="0.006 0.014 0.0225" pos="0 0 0" '
                'rgba="0.85 0.85 0.85 1" mass="0.02"/>',
                '</body>']
    for cam in spec.cameras.values():
        if cam.parent == f"{name}_tcp":
            out.append(_camera_xml(cam))
    out.append("</body>")
    out += ["</body>"] * 7
    return "\n".join(out)


def build_mjcf(spec: TwinSpec) -> str:
    """The MJCF text of the twin: table, both arms with grippers and wrist cameras, head camera, one cube."""
    arms = "\n".join(_arm_xml(a, spec) for a in spec.T_base_armbase)
    world_cams = "\n".join(_camera_xml(c) for c in spec.cameras.values() if c.parent == "world")
    act = []
    for a in spec.T_base_armbase:
        act += [f'<position name="{a}_joint{i}" joint="{a}_joint{i}" kp="{spec.joint_kp:.9g}" dampratio="1"/>'
                for i in range(1, 7)]
        act += [f'<position name="{a}_finger_{s}" joint="{a}_finger_{s}" kp="{spec.finger_kp:.9g}" '
                f'ctrlrange="0 {spec.finger_stroke_m:.9g}" forcerange="-15 15"/>' for s in ("a", "b")]
    h = spec.cube_half_m
    return f"""<mujoco model="xtrainer_twin">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{spec.timestep_s:.9g}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="1280" offheight="960"/>
    <quality shadowsize="0" offsamples="0"/>
    <map znear="0.005" zfar="20"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5"/>
  </visual>
  <default>
    <joint armature="0.1" damping="2"/>
    <default class="arm"><joint limited="true"/></default>
    <default class="link"><geom contype="0" conaffinity="0" rgba="0.75 0.77 0.8 1" mass="0"/></default>
    <default class="grip"><geom contype="1" conaffinity="1" condim="4" friction="1.5 0.02 0.002" solref="0.005 1"/></default>
  </default>
  <asset>
    <texture name="wood" type="2d" builtin="checker" rgb1="0.55 0.42 0.3" rgb2="0.5 0.38 0.27" width="64" height="64"/>
    <material name="table" texture="wood" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light pos="0.3 0 1.6" dir="0 0 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.3 0.3 0.32 1" contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="0.45 0.7 0.02" pos="0.4 0 -0.02" material="table" friction="1 0.01 0.001"/>
    {world_cams}
    {arms}
    <body name="cube" pos="0.45 0.3 {h:.9g}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{h:.9g} {h:.9g} {h:.9g}" mass="{spec.cube_mass_kg:.9g}" rgba="0.85 0.1 0.1 1"
            condim="4" friction="1.2 0.02 0.002"/>
    </body>
  </worldbody>
  <actuator>
    {chr(10).join(act)}
  </actuator>
</mujoco>
"""
