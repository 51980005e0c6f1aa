"""The Dobot feedback/command tables against the vendor's documents: self-consistency, the guide's byte
positions, the X-Trainer's own structure, and a packet built independently with struct.pack."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from posevla.robot import dobot_fields as df


def test_sizes_add_up_to_1440_without_gaps_or_overlaps():
    dt = df.feedback_dtype()
    assert dt.itemsize == df.PACKET_SIZE == 1440
    spans = sorted((dt.fields[n][1], dt.fields[n][1] + dt.fields[n][0].itemsize, n) for n in dt.names)
    assert spans[0][0] == 0 and spans[-1][1] == 1440
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert end == start, f"{a} ends at {end} but {b} starts at {start}"
    assert sum(np.dtype(t).itemsize * c for _, t, c in df.FEEDBACK_FIELDS) == 1440
    assert len({n for n, _, _ in df.FEEDBACK_FIELDS}) == len(df.FEEDBACK_FIELDS)


# Byte positions as printed in the V4 guide's "Real-time Feedback" table (pages 101-105).
GUIDE_OFFSETS = {
    "message_size": 0, "digital_inputs": 8, "digital_outputs": 16, "robot_mode": 24, "timestamp_ms": 32,
    "run_time_ms": 40, "test_value": 48, "speed_scaling": 64, "v_robot": 88, "i_robot": 96, "program_state": 104,
    "q_target": 192, "qd_target": 240, "qdd_target": 288, "i_target": 336, "m_target": 384, "q_actual": 432,
    "qd_actual": 480, "i_actual": 528, "actual_tcp_force": 576, "tool_vector_actual": 624,
    "tcp_speed_actual": 672, "tcp_force": 720, "tool_vector_target": 768, "tcp_speed_target": 816,
    "motor_temperatures": 864, "joint_modes": 912, "v_actual": 960, "user": 1012, "tool": 1013,
    "run_queued_cmd": 1014, "velocity_ratio": 1016, "xyz_velocity_ratio": 1019, "brake_status": 1025,
    "enable_status": 1026, "drag_status": 1027, "running_status": 1028, "error_status": 1029,
    "robot_type": 1031, "six_force_online": 1037, "collision_state": 1038, "vibration_dis_z": 1104,
    "current_command_id": 1112, "m_actual": 1120, "load": 1168, "center_x": 1176, "center_y": 1184,
    "center_z": 1192, "user_value": 1200, "tool_value": 1248, "six_force_value": 1304,
    "target_quaternion": 1352, "actual_quaternion": 1384, "auto_manual_mode": 1416,
}
# Offsets of the same fields in the X-Trainer's own (V3-era) dobot_api.py structure, by its running sum.
XTRAINER_OFFSETS = {"robot_mode": 24, "test_value": 48, "q_target": 192, "q_actual": 432,
                    "tool_vector_actual": 624, "tool_vector_target": 768, "enable_status": 1026,
                    "error_status": 1029, "actual_quaternion": 1384, "target_quaternion": 1352}


@pytest.mark.parametrize("table", [GUIDE_OFFSETS, XTRAINER_OFFSETS], ids=["v4_guide", "xtrainer_api"])
def test_offsets_match_the_vendor_documents(table):
    offsets = df.field_offsets()
    wrong = {k: (offsets[k], v) for k, v in table.items() if offsets[k] != v}
    assert not wrong, f"(ours, vendor's): {wrong}"
    assert offsets["actual_quaternion"] == 1384


def _vendor_packet() -> tuple[bytes, dict]:
    """A packet built from a literal list of the vendor's fields with struct, independent of the table."""
    v = {
        "len": 1440, "DigitalInputs": 0b1011, "DigitalOutputs": 1 << 40, "RobotMode": 7, "TimeStamp": 1764134400123,
        "RunTime": 86_400_000, "TestValue": 0x0123456789ABCDEF, "SpeedScaling": 0.5, "VRobot": 48.1, "IRobot": 1.25,
        "ProgramState": 1.0, "SafetyIOIn": 3, "SafetyIOOut": 4,
        "QTarget": [1.0, -2.0, 3.0, -4.0, 5.0, -6.0], "QDTarget": [0.1] * 6, "QDDTarget": [0.2] * 6,
        "ITarget": [0.3] * 6, "MTarget": [0.4] * 6,
        "QActual": [10.5, -45.25, 90.125, -30.0, 89.5, 179.75], "QDActual": [0.5, 0, 0, 0, 0, -0.5],
        "IActual": [0.6] * 6, "ActualTCPForce": [0.7] * 6,
        "ToolVectorActual": [-350.5, 120.25, 410.0, 179.5, -1.25, 90.0], "TCPSpeedActual": [0.8] * 6,
        "TCPForce": [0.9] * 6, "ToolVectorTarget": [-351.0, 121.0, 409.0, 178.0, -2.0, 91.0],
        "TCPSpeedTarget": [1.1] * 6, "MotorTemperatures": [35.0] * 6, "JointModes": [8.0] * 6, "VActual": [48.0] * 6,
        "HandType": [1, 2, 3, 4], "User": 0, "Tool": 1, "RunQueuedCmd": 1, "PauseCmdFlag": 0, "VelocityRatio": 20,
        "AccelerationRatio": 20, "XYZVelocityRatio": 30, "RVelocityRatio": 31, "XYZAccelerationRatio": 32,
        "RAccelerationRatio": 33, "BrakeStatus": 0b111111, "EnableStatus": 1, "DragStatus": 0, "RunningStatus": 1,
        "ErrorStatus": 0, "JogStatusCR": 0, "CRRobotType": 101, "flags_1032_1042": list(range(11)),
        "VibrationDisZ": 0.01, "CurrentCommandId": 4242, "MActual": [1.5] * 6, "Load": 0.8, "CenterX": 1.0,
        "CenterY": 2.0, "CenterZ": 3.0, "UserValue": [0.0] * 6, "ToolValue": [0.0, 0.0, 197.0, 0.0, 0.0, 0.0],
        "SixForceValue": [2.5] * 6, "TargetQuaternion": [0.0, 1.0, 0.0, 0.0],
        "ActualQuaternion": [0.5, 0.5, -0.5, 0.5], "AutoManualMode": 1, "ExportStatus": 2, "SafetyState": 3,
    }
    fmt = ("<H6x" "QQQQQQ8x" "d16xdddHH76x" + "6d" * 17 + "4b" "6b" "x" "4b" "2x" "7b" "11b" "61x"
           "dQ" "6d" "dddd" "6d6d" "8x" "6d" "4d4d" "HHb19x")
    vals = [v["len"], v["DigitalInputs"], v["DigitalOutputs"], v["RobotMode"], v["TimeStamp"], v["RunTime"],
            v["TestValue"], v["SpeedScaling"], v["VRobot"], v["IRobot"], v["ProgramState"], v["SafetyIOIn"],
            v["SafetyIOOut"]]
    for k in ("QTarget", "QDTarget", "QDDTarget", "ITarget", "MTarget", "QActual", "QDActual", "IActual",
              "ActualTCPForce", "ToolVectorActual", "TCPSpeedActual", "TCPForce", "ToolVectorTarget",
              "TCPSpeedTarget", "MotorTemperatures", "JointModes", "VActual"):
        vals += v[k]
    vals += v["HandType"] + [v[k] for k in ("User", "Tool", "RunQueuedCmd", "PauseCmdFlag", "VelocityRatio",
                                            "AccelerationRatio", "XYZVelocityRatio", "RVelocityRatio",
                                            "XYZAccelerationRatio", "RAccelerationRatio", "BrakeStatus",
                                            "EnableStatus", "DragStatus", "RunningStatus", "ErrorStatus",
                                            "JogStatusCR", "CRRobotType")]
    vals += v["flags_1032_1042"] + [v["VibrationDisZ"], v["CurrentCommandId"]] + v["MActual"]
    vals += [v["Load"], v["CenterX"], v["CenterY"], v["CenterZ"]] + v["UserValue"] + v["ToolValue"]
    vals += v["SixForceValue"] + v["TargetQuaternion"] + v["ActualQuaternion"]
    vals += [v["AutoManualMode"], v["ExportStatus"], v["SafetyState"]]
    assert struct.calcsize(fmt) == 1440
    return struct.pack(fmt, *vals), v


def test_decodes_a_packet_built_independently_from_the_vendor_field_list():
    data, v = _vendor_packet()
    pkt = np.frombuffer(data, dtype=df.feedback_dtype())[0]
    assert int(pkt["message_size"]) == 1440 and int(pkt["test_value"]) == df.TEST_VALUE
    assert int(pkt["robot_mode"]) == 7 and df.ROBOT_MODES[int(pkt["robot_mode"])] == "running"
    assert int(pkt["timestamp_ms"]) == v["TimeStamp"] and int(pkt["run_time_ms"]) == v["RunTime"]
    assert int(pkt["digital_outputs"]) == 1 << 40 and int(pkt["safety_io_out"]) == 4
    np.testing.assert_array_equal(pkt["q_actual"], v["QActual"])
    np.testing.assert_array_equal(pkt["q_target"], v["QTarget"])
    np.testing.assert_array_equal(pkt["tool_vector_actual"], v["ToolVectorActual"])
    np.testing.assert_array_equal(pkt["tool_vector_target"], v["ToolVectorTarget"])
    np.testing.assert_array_equal(pkt["tool_value"], v["ToolValue"])
    assert int(pkt["tool"]) == 1 and int(pkt["velocity_ratio"]) == 20 and int(pkt["r_acceleration_ratio"]) == 33
    assert int(pkt["brake_status"]) == 0b111111 and int(pkt["enable_status"]) == 1
    assert int(pkt["error_status"]) == 0 and df.ROBOT_TYPES[int(pkt["robot_type"])] == "Nova 2"
    assert [int(pkt[n]) for n in ("drag_button_signal", "collision_state", "j6_approach_state")] == [0, 6, 10]
    assert int(pkt["current_command_id"]) == 4242 and float(pkt["load"]) == 0.8
    np.testing.assert_array_equal(pkt["actual_quaternion"], v["ActualQuaternion"])
    np.testing.assert_array_equal(df.quaternion_xyzw(pkt["actual_quaternion"]), [0.5, -0.5, 0.5, 0.5])
    assert int(pkt["auto_manual_mode"]) == 1 and int(pkt["safety_state"]) == 3


def test_encoding_with_the_table_matches_struct_byte_for_byte():
    data, v = _vendor_packet()
    pkt = np.zeros(1, dtype=df.feedback_dtype())
    decoded = np.frombuffer(data, dtype=df.feedback_dtype())[0]
    for name in decoded.dtype.names:
        pkt[name] = decoded[name]
    assert pkt.tobytes() == data


# A real reply transcript published by a Nova 5 user (github.com/Dobot-Arm/DOBOT_6Axis_ROS2_V4 issue #11,
# 2025-12-19): the reply echoes the command, braces included.
REAL_REPLY = "-30001,{},MovJ(joint={10.000,20.000,30.000,0.000,0.000,0.000},a=20,v=50);"


# The two reply examples printed in the V4 guide (section 1, "Message format").
GUIDE_REPLIES = [("0,{},MovL(-500,100,200,150,0,90);", 0, "", "MovL(-500,100,200,150,0,90)"),
                 ("-10000,{},Mov(-500,100,200,150,0,90);", -10000, "", "Mov(-500,100,200,150,0,90)")]


@pytest.mark.parametrize("text, error_id, values, echo", GUIDE_REPLIES)
def test_guide_reply_examples_parse(text, error_id, values, echo):
    m = df.REPLY_PATTERN.match(text)
    assert m is not None and (int(m.group(1)), m.group(2), m.group(3)) == (error_id, values, echo)
    assert df.describe_error_id(error_id) in (df.REPLY_ERRORS[0], "command does not exist")


def test_real_reply_transcript_parses_and_its_error_id_is_described():
    m = df.REPLY_PATTERN.match(REAL_REPLY)
    assert m is not None
    assert int(m.group(1)) == -30001 and m.group(2) == "" and m.group(3).startswith("MovJ(joint={10.000")
    assert "type of required parameter 1" in df.describe_error_id(-30001)
    assert "range of optional parameter 2" in df.describe_error_id(-60002)
    assert df.describe_error_id(-10000) == "command does not exist"
    assert df.describe_error_id(-12345) == "unknown ErrorID -12345"
    m = df.REPLY_PATTERN.match("0,{5},RobotMode();")
    assert m and df.ROBOT_MODES[int(m.group(2))] == "enabled"
    assert df.REPLY_PATTERN.match("0,{1" + "9" * 5000 + "},RobotMode();") is not None  # values: bounded by caller
    assert df.REPLY_PATTERN.match("9" * 5000 + ",{},Stop();") is None  # an ErrorID has at most 6 digits


def test_get_error_id_value_and_alarm_table():
    controller, servos = df.parse_error_ids("[[22,117],[],[],[],[],[],[3]]")
    assert controller == [22, 117] and servos == [[], [], [], [], [], [3]]
    assert "Collision" in df.describe_alarm(117)
    assert df.describe_alarm(17) == "Inverse kinematics error with no solution"
    assert df.describe_alarm(999_999).startswith("unknown")
    for bad in ("[[1],[2]]", "[[a],[],[],[],[],[],[]]", "22,117", "[[" + ",".join(["1"] * 65) + "],[],[],[],[],[],[]]"):
        with pytest.raises(ValueError):
            df.parse_error_ids(bad)


def test_command_table_has_what_the_stack_sends():
    for name in ("EnableRobot", "DisableRobot", "ClearError", "Stop", "SetTool", "Tool", "SpeedFactor", "AccJ",
                 "AccL", "VelJ", "VelL", "SpeedJ", "ServoJ", "ServoP", "RobotMode", "GetErrorID"):
        assert name in df.COMMANDS
    assert df.COMMANDS["ServoJ"].reply_values == ("ResultID",)
    assert "0.02..3600" in df.COMMANDS["ServoP"].args[1]


def test_encode_decode_round_trip_and_out_of_sync_packets():
    data = df.encode_feedback(q_actual=[1, 2, 3, 4, 5, 6], robot_mode=5, actual_quaternion=[1, 0, 0, 0])
    assert len(data) == 1440 and struct.unpack_from("<H", data, 0)[0] == 1440
    assert struct.unpack_from("<Q", data, 48)[0] == df.TEST_VALUE
    assert struct.unpack_from("<6d", data, 432) == (1, 2, 3, 4, 5, 6)
    assert struct.unpack_from("<4d", data, 1384) == (1, 0, 0, 0)
    pkt = df.decode_feedback(data)
    assert int(pkt["robot_mode"]) == 5
    with pytest.raises(df.FeedbackError, match="1439 bytes"):
        df.decode_feedback(data[:-1])
    with pytest.raises(df.FeedbackError, match="TestValue"):
        df.decode_feedback(data[8:] + data[:8])  # a stream that slipped by 8 bytes
    with pytest.raises(KeyError, match="gripper_actual"):
        df.encode_feedback(gripper_actual=0.5)
