"""Dobot CR/Nova TCP/IP protocol tables, transcribed once from the vendor's own SDK and guide.

Sources (read, not copied; facts only):
- Feedback layout: ``MyType`` in ``dobot_api.py`` of github.com/Dobot-Arm/TCP-IP-Python-V4, commit
  66295e9835fa49706201235374aa2f3a920193a9 (2025-12-16; "dobot_v4_api: CRA/E6/CRAF/NovaLite"), checked
  field by field against the byte-position table in "Dobot TCP_IP Remote Control Interface Guide
  V4.5.1_20240815_en.pdf" (github.com/Dobot-Arm/TCP-IP-Protocol-6AXis-V4, commit
  e0034dd9eb0739b00e45a29ff935fcaa719ea636), section "Real-time Feedback", pages 101-105.
  Where the two differ, the SDK wins and the difference is noted next to the field: the guide calls
  1418-1439 reserved, the SDK reads ExportStatus (u16) and SafetyState (u8) there; the guide lists
  J6ApproachState at 1041 (a typo: the running byte count puts it at 1042, as the SDK does).
- The X-Trainer's own copy (github.com/Dobot-Arm/dobot_xtrainer, ``dobot_control/robots/dobot_api.py``,
  commit 04cbec5f57aee6355b70c3933d84962376029f1d) is an older V3-era structure: it names some reserved
  bytes differently (``test_value_keep_bit``, ``trace_index``, ...) but puts every field this stack reads
  at the same offset (robot_mode 24, test_value 48, q_target 192, q_actual 432, tool_vector_actual 624,
  tool_vector_target 768, enable_status 1026, error_status 1029, actual_quaternion 1384);
  tests/test_dobot_fields.py checks that.
- Commands, replies, RobotMode values and reply ErrorIDs: the same V4 guide (sections 1, 2.1, 2.2, 2.3,
  2.7 and 5 "Error Code") and the V4 SDK's method docstrings. Controller alarm ids:
  ``posevla.robot.dobot_alarms``.

Units on the wire: joints in degrees, TCP positions in mm, TCP angles in degrees (rx, ry, rz), times in ms,
quaternions ``[qw, qx, qy, qz]`` (scalar FIRST, unlike this stack's xyzw: use `quaternion_xyzw`).
All multi-byte values are little-endian.

This module is the one table; `feedback_dtype()` builds the numpy structured dtype from it with explicit
offsets, so an encoder (simulator) and a decoder (driver) built from it cannot drift apart silently.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from posevla.robot.dobot_alarms import CONTROLLER_ALARMS

PACKET_SIZE = 1440
TEST_VALUE = 0x0123456789ABCDEF  # "memory test standard value" at byte 48
DASHBOARD_PORT = 29999
MOTION_PORT = 30003  # V3 motion port; V4 takes motion commands on 29999 too
FEEDBACK_PORT = 30004  # real-time feedback, one 1440-byte packet every 8 ms
FEEDBACK_PERIOD_S = 0.008

# (name, numpy type, count) in packet order, every byte accounted for (reserved bytes as "reserved_*").
# Types: <u2/<u8 unsigned little-endian, <f8 double, i1 the SDK's np.byte (C char).
FEEDBACK_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("message_size", "<u2", 1),            # 0     MessageSize: total length in bytes (1440)
    ("reserved_0", "u1", 6),               # 2
    ("digital_inputs", "<u8", 1),          # 8     bit k = DI k+1
    ("digital_outputs", "<u8", 1),         # 16
    ("robot_mode", "<u8", 1),              # 24    see ROBOT_MODES
    ("timestamp_ms", "<u8", 1),            # 32    Unix time, ms
    ("run_time_ms", "<u8", 1),             # 40    robot running time, ms
    ("test_value", "<u8", 1),              # 48    0x0123456789ABCDEF
    ("reserved_56", "u1", 8),              # 56
    ("speed_scaling", "<f8", 1),           # 64    speed rate
    ("reserved_72", "u1", 16),             # 72
    ("v_robot", "<f8", 1),                 # 88    robot voltage
    ("i_robot", "<f8", 1),                 # 96    robot current
    ("program_state", "<f8", 1),           # 104   script running status
    ("safety_io_in", "<u2", 1),            # 112   SDK only (guide: reserved)
    ("safety_io_out", "<u2", 1),           # 114   SDK only (guide: reserved)
    ("reserved_116", "u1", 76),            # 116
    ("q_target", "<f8", 6),                # 192   deg
    ("qd_target", "<f8", 6),               # 240   deg/s
    ("qdd_target", "<f8", 6),              # 288   deg/s^2
    ("i_target", "<f8", 6),                # 336   joint current
    ("m_target", "<f8", 6),                # 384   joint torque
    ("q_actual", "<f8", 6),                # 432   deg
    ("qd_actual", "<f8", 6),               # 480   deg/s
    ("i_actual", "<f8", 6),                # 528
    ("actual_tcp_force", "<f8", 6),        # 576   from the six-axis sensor
    ("tool_vector_actual", "<f8", 6),      # 624   x, y, z mm, rx, ry, rz deg (global user/tool frames)
    ("tcp_speed_actual", "<f8", 6),        # 672
    ("tcp_force", "<f8", 6),               # 720   from joint currents
    ("tool_vector_target", "<f8", 6),      # 768   mm, deg
    ("tcp_speed_target", "<f8", 6),        # 816
    ("motor_temperatures", "<f8", 6),      # 864
    ("joint_modes", "<f8", 6),             # 912   8 position mode, 10 torque mode
    ("v_actual", "<f8", 6),                # 960   joint voltage
    ("hand_type", "i1", 4),                # 1008  (guide: reserved)
    ("user", "i1", 1),                     # 1012  global user frame index
    ("tool", "i1", 1),                     # 1013  global tool frame index
    ("run_queued_cmd", "i1", 1),           # 1014
    ("pause_cmd_flag", "i1", 1),           # 1015
    ("velocity_ratio", "i1", 1),           # 1016  joint speed ratio 0..100
    ("acceleration_ratio", "i1", 1),       # 1017
    ("reserved_1018", "i1", 1),            # 1018
    ("xyz_velocity_ratio", "i1", 1),       # 1019
    ("r_velocity_ratio", "i1", 1),         # 1020
    ("xyz_acceleration_ratio", "i1", 1),   # 1021
    ("r_acceleration_ratio", "i1", 1),     # 1022
    ("reserved_1023", "i1", 2),            # 1023
    ("brake_status", "i1", 1),             # 1025  bit 5..0 = J1..J6 brake open
    ("enable_status", "i1", 1),            # 1026
    ("drag_status", "i1", 1),              # 1027
    ("running_status", "i1", 1),           # 1028
    ("error_status", "i1", 1),             # 1029  alarm status
    ("jog_status", "i1", 1),               # 1030
    ("robot_type", "i1", 1),               # 1031  see ROBOT_TYPES
    ("drag_button_signal", "i1", 1),       # 1032
    ("enable_button_signal", "i1", 1),     # 1033
    ("record_button_signal", "i1", 1),     # 1034
    ("reappear_button_signal", "i1", 1),   # 1035
    ("jaw_button_signal", "i1", 1),        # 1036
    ("six_force_online", "i1", 1),         # 1037
    ("collision_state", "i1", 1),          # 1038
    ("arm_approach_state", "i1", 1),       # 1039  SafeSkin
    ("j4_approach_state", "i1", 1),        # 1040
    ("j5_approach_state", "i1", 1),        # 1041
    ("j6_approach_state", "i1", 1),        # 1042  (guide's table says 1041: typo)
    ("reserved_1043", "i1", 61),           # 1043
    ("vibration_dis_z", "<f8", 1),         # 1104
    ("current_command_id", "<u8", 1),      # 1112  current queue id
    ("m_actual", "<f8", 6),                # 1120  joint torques
    ("load", "<f8", 1),                    # 1168  kg
    ("center_x", "<f8", 1),                # 1176  mm
    ("center_y", "<f8", 1),                # 1184
    ("center_z", "<f8", 1),                # 1192
    ("user_value", "<f8", 6),              # 1200  the global user frame, mm/deg
    ("tool_value", "<f8", 6),              # 1248  the global tool frame, mm/deg
    ("reserved_1296", "i1", 8),            # 1296
    ("six_force_value", "<f8", 6),         # 1304
    ("target_quaternion", "<f8", 4),       # 1352  [qw, qx, qy, qz]
    ("actual_quaternion", "<f8", 4),       # 1384  [qw, qx, qy, qz]
    ("auto_manual_mode", "<u2", 1),        # 1416
    ("export_status", "<u2", 1),           # 1418  SDK only (guide: reserved)
    ("safety_state", "i1", 1),             # 1420  SDK only (guide: reserved)
    ("reserved_1421", "i1", 19),           # 1421 .. 1439
)

# The vendor's own field names (SDK MyType), for cross-reference with Dobot's documents.
VENDOR_NAMES: dict[str, str] = {
    "message_size": "len", "robot_mode": "RobotMode", "timestamp_ms": "TimeStamp", "test_value": "TestValue",
    "q_target": "QTarget", "q_actual": "QActual", "qd_actual": "QDActual",
    "tool_vector_actual": "ToolVectorActual", "tool_vector_target": "ToolVectorTarget",
    "enable_status": "EnableStatus", "error_status": "ErrorStatus", "robot_type": "CRRobotType",
    "tool_value": "ToolValue[6]", "user_value": "UserValue[6]", "current_command_id": "CurrentCommandId",
    "target_quaternion": "TargetQuaternion", "actual_quaternion": "ActualQuaternion",
}


def field_offsets() -> dict[str, int]:
    """Byte offset of every field, from the running sum of the table."""
    out, pos = {}, 0
    for name, typ, count in FEEDBACK_FIELDS:
        out[name] = pos
        pos += np.dtype(typ).itemsize * count
    return out


@functools.lru_cache(maxsize=1)
def feedback_dtype() -> np.dtype:
    """numpy structured dtype of one 1440-byte feedback packet, with explicit offsets from the table."""
    offsets = field_offsets()
    return np.dtype({
        "names": [n for n, _, _ in FEEDBACK_FIELDS],
        "formats": [typ if count == 1 else (typ, (count,)) for _, typ, count in FEEDBACK_FIELDS],
        "offsets": [offsets[n] for n, _, _ in FEEDBACK_FIELDS],
        "itemsize": PACKET_SIZE,
    })


class FeedbackError(ValueError):
    """A feedback packet that is not a vendor packet (size, MessageSize or TestValue wrong)."""


def encode_feedback(**fields: object) -> bytes:
    """One packet with MessageSize and TestValue set and the given fields (names of FEEDBACK_FIELDS); others 0."""
    dt = feedback_dtype()
    unknown = sorted(set(fields) - set(dt.names or ()))
    if unknown:
        raise KeyError(f"not feedback fields: {unknown}")
    pkt = np.zeros(1, dtype=dt)
    pkt["message_size"] = PACKET_SIZE
    pkt["test_value"] = TEST_VALUE
    for k, v in fields.items():
        pkt[k] = v
    return pkt.tobytes()


def decode_feedback(data: bytes) -> np.void:
    """Parse one packet; FeedbackError unless it has 1440 bytes, MessageSize 1440 and the TestValue."""
    if len(data) != PACKET_SIZE:
        raise FeedbackError(f"feedback packet has {len(data)} bytes, expected {PACKET_SIZE}")
    pkt = np.frombuffer(data, dtype=feedback_dtype())[0]
    if int(pkt["test_value"]) != TEST_VALUE or int(pkt["message_size"]) != PACKET_SIZE:
        raise FeedbackError("feedback packet failed its TestValue/MessageSize check (stream out of sync)")
    return pkt


def quaternion_xyzw(wxyz: np.ndarray) -> np.ndarray:
    """The controller's [qw, qx, qy, qz] -> this stack's [qx, qy, qz, qw]."""
    q = np.asarray(wxyz, dtype=np.float64)
    return np.array([q[1], q[2], q[3], q[0]])


# RobotMode() reply value and the robot_mode feedback field (V4 guide 2.3 "RobotMode").
ROBOT_MODES: dict[int, str] = {
    1: "init", 2: "brake_open", 3: "power_off", 4: "disabled", 5: "enabled", 6: "backdrive",
    7: "running", 8: "single_move", 9: "error", 10: "pause", 11: "collision",
}
# robot_type feedback byte (V4 guide "RobotType description").
ROBOT_TYPES: dict[int, str] = {
    3: "CR3", 5: "CR5", 7: "CR7", 10: "CR10", 12: "CR12", 16: "CR16", 101: "Nova 2", 103: "Nova 5",
    113: "CR3A", 115: "CR5A", 117: "CR7A", 120: "CR10A", 122: "CR12A", 126: "CR16A", 130: "CR20A",
    150: "Magician E6",
}


@dataclass(frozen=True)
class CommandSpec:
    """One dashboard/motion command: its arguments and the values its reply carries."""

    name: str
    args: tuple[str, ...]  # required, in order; "key=" marks a keyword parameter; "[...]" optional
    reply_values: tuple[str, ...]  # what is inside {} of the reply; () means {}
    notes: str = ""


# Reply: "ErrorID,{value,...,valueN},Name(Param1,...);" (guide section 1 "Message format").
REPLY_FORMAT = "ErrorID,{value,...,valueN},Name(Param1,...,ParamN);"
REPLY_PATTERN = re.compile(r"^\s*(-?\d{1,6})\s*,\s*\{([^{}]*)\}\s*,\s*(.*?)\s*;?\s*$", re.S)

COMMANDS: dict[str, CommandSpec] = {c.name: c for c in (
    CommandSpec("EnableRobot", ("[load kg]", "[centerX mm]", "[centerY mm]", "[centerZ mm]", "[isCheck 0|1]"), (),
                "0, 1, 4 or 5 parameters"),
    CommandSpec("DisableRobot", (), ()),
    CommandSpec("ClearError", (), (), "some alarms need their cause removed or a controller restart"),
    CommandSpec("Stop", (), (), "stops the delivered motion queue (or a RunScript project)"),
    CommandSpec("EmergencyStop", ("mode 1 press|0 release",), (), "disables the arm and raises an alarm"),
    CommandSpec("SpeedFactor", ("ratio 1..100",), (), "global speed ratio; ServoJ/ServoP ignore it"),
    CommandSpec("AccJ", ("R 1..100",), (), "joint-motion acceleration ratio (MovJ family)"),
    CommandSpec("AccL", ("R 1..100",), (), "linear/arc acceleration ratio (MovL family)"),
    CommandSpec("VelJ", ("R 1..100",), (), "V4 name; the V3 SDK (and the X-Trainer code) sends SpeedJ(R)"),
    CommandSpec("VelL", ("R 1..100",), (), "V4 name; V3 sends SpeedL(R)"),
    CommandSpec("SpeedJ", ("R 1..100",), (), "V3 name of VelJ, sent by the X-Trainer code"),
    CommandSpec("SpeedL", ("R 1..100",), (), "V3 name of VelL"),
    CommandSpec("SetTool", ("index 0..9", "{x,y,z,rx,ry,rz} mm/deg", "[type 0 session|1 saved]"), (),
                "offset from the flange frame (tool 0); X-Trainer: SetTool(1,{0,0,197,0,0,0})"),
    CommandSpec("Tool", ("index 0..9",), ("ResultID",), "select the global tool frame; -1: index not calibrated"),
    CommandSpec("ServoJ", ("J1..J6 deg", "[t= 0.02..3600 s, default 0.1]", "[aheadtime= 20..100, default 50]",
                           "[gain= 200..1000, default 500]"), ("ResultID",),
                "streamed ~33 Hz (30 ms); not affected by SpeedFactor, limited by the speed limit; "
                "X-Trainer streams t=0.03"),
    CommandSpec("ServoP", ("X,Y,Z mm, Rx,Ry,Rz deg", "[t= 0.02..3600 s, default 0.1]", "[aheadtime= 20..100]",
                           "[gain= 200..1000]"), ("ResultID",),
                "pose in the global user and tool frames"),
    CommandSpec("RobotMode", (), ("mode",), "see ROBOT_MODES"),
    CommandSpec("GetErrorID", (), ("[[controller ids],[J1 ids],...,[J6 ids]]",),
                "controller/algorithm alarms then one list per servo; [] = none"),
    CommandSpec("GetAngle", (), ("J1..J6 deg",)),
    CommandSpec("GetPose", ("[user=index]", "[tool=index]"), ("x,y,z mm, rx,ry,rz deg",),
                "in the global user/tool frames unless both are given"),
)}

# Reply ErrorID values (V4 guide section 5 "Error Code").
REPLY_ERRORS: dict[int, str] = {
    0: "no error (command delivered)",
    -1: "failed to execute (received but not executed)",
    -2: "robot in alarm status (clear the alarm and resend)",
    -3: "robot in emergency-stop status",
    -4: "robot powered off",
    -5: "script running or paused",
    -10000: "command does not exist",
    -20000: "wrong number of parameters",
}
_REPLY_ERROR_FAMILIES = {
    -30000: "type of required parameter {k} (or of a named required parameter) is wrong",
    -40000: "range of required parameter {k} (or of a named required parameter) is wrong",
    -50000: "type of optional parameter {k} (or of a named optional parameter) is wrong",
    -60000: "range of optional parameter {k} (or of a named optional parameter) is wrong",
}


def describe_error_id(error_id: int) -> str:
    """Human text for a reply's ErrorID, per the vendor's error-code table."""
    if error_id in REPLY_ERRORS:
        return REPLY_ERRORS[error_id]
    family = -((-error_id) // 10000) * 10000 if error_id < 0 else None
    if family in _REPLY_ERROR_FAMILIES and error_id != family:
        return _REPLY_ERROR_FAMILIES[family].format(k=family - error_id)
    return f"unknown ErrorID {error_id}"


def describe_alarm(alarm_id: int) -> str:
    """Controller alarm id (GetErrorID) -> the vendor's English description."""
    entry = CONTROLLER_ALARMS.get(int(alarm_id))
    return entry[1] if entry else f"unknown controller alarm {alarm_id}"


_ID_LIST = re.compile(r"\[([^\[\]]*)\]")


def parse_error_ids(value: str) -> tuple[list[int], list[list[int]]]:
    """GetErrorID()'s reply value ``[[c,...],[j1],...,[j6]]`` -> (controller ids, six servo id lists).

    Raises ValueError on anything else (bounded: at most 64 ids of at most 6 digits each)."""
    text = value.strip()
    if len(text) > 4096 or not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"GetErrorID value is not a list of lists: {value[:80]!r}")
    groups = _ID_LIST.findall(text[1:-1])
    if len(groups) != 7:
        raise ValueError(f"GetErrorID value has {len(groups)} lists, expected 7 (controller + 6 servos)")
    out: list[list[int]] = []
    for g in groups:
        ids = [p.strip() for p in g.split(",") if p.strip()]
        if len(ids) > 64 or any(not re.fullmatch(r"-?\d{1,6}", i) for i in ids):
            raise ValueError(f"GetErrorID value has a malformed id list [{g[:80]}]")
        out.append([int(i) for i in ids])
    return out[0], out[1:]
