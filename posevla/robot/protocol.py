"""Dobot TCP/IP remote-control protocol (CR/Nova controllers, V3/V4), as far as the stack uses it.

Facts from Dobot's public TCP/IP protocol documents:
- Ports: 29999 dashboard (one reply per command), 30003 motion commands (V3; V4 also takes them on 29999),
  30004 real-time feedback every 8 ms, 30005 every 200 ms, 30006 configurable (50 ms by default).
- Commands are ASCII `Name(p1,p2,...)`, case-insensitive; replies are `ErrorID,{values},Name(p1,...);`
  with ErrorID 0 on success.
- Feedback packets are 1440 bytes, little-endian. Offsets used here (bytes): MessageSize u16 @0,
  DigitalInputs u64 @8, DigitalOutputs u64 @16, RobotMode u64 @24, TimeStamp u64 (ms) @32,
  TestValue u64 @48 (0x0123456789ABCDEF), SpeedScaling f64 @64, QTarget 6xf64 @192, QActual 6xf64 @432,
  QDActual 6xf64 @480, ToolVectorActual 6xf64 @624 (x,y,z mm, rx,ry,rz deg), ToolVectorTarget 6xf64 @768.
- RobotMode: 1 init, 2 brake open, 4 disabled, 5 enabled/idle, 6 backdrive, 7 running, 8 single move,
  9 error, 10 pause, 11 collision.

The feedback layout is the vendor's (`posevla.robot.dobot_fields`, transcribed once from Dobot's SDK and guide):
the simulator encodes and the client decodes through that one table. The X-Trainer's grippers are not behind the
Dobot controller (Feetech servos on RS-485: `posevla.robot.feetech`), so nothing here carries a gripper.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from posevla.robot import dobot_fields

DASHBOARD_PORT = 29999
MOTION_PORT = 30003
FEEDBACK_PORT = 30004
PACKET_SIZE = 1440
TEST_VALUE = 0x0123456789ABCDEF

MODE_INIT, MODE_BRAKE_OPEN, MODE_DISABLED, MODE_ENABLED, MODE_BACKDRIVE = 1, 2, 4, 5, 6
MODE_RUNNING, MODE_SINGLE_MOVE, MODE_ERROR, MODE_PAUSE, MODE_COLLISION = 7, 8, 9, 10, 11
MODE_NAMES = {1: "init", 2: "brake_open", 4: "disabled", 5: "enabled", 6: "backdrive", 7: "running",
              8: "single_move", 9: "error", 10: "pause", 11: "collision"}

FEEDBACK_DTYPE = dobot_fields.feedback_dtype()


class ProtocolError(RuntimeError):
    """A reply that does not parse, or a non-zero ErrorID from the controller."""


@dataclass
class Reply:
    error_id: int
    values: list[str]
    command: str


def _fmt(v: float | int | str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if not np.isfinite(v):
        raise ValueError(f"refusing to format a non-finite value {v} into a controller command")
    return f"{float(v):.4f}"


def format_command(name: str, *args: float | int | str, **kwargs: float | int | str) -> str:
    """`ServoP(1.0000,...,t=0.0200)` style command text."""
    parts = [_fmt(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kwargs.items()]
    return f"{name}({','.join(parts)})"


MAX_REPLY_BYTES = 4096  # longer replies are malformed (the longest real one, GetPose/GetAngle, is ~100 bytes)
_REPLY = re.compile(r"^\s*(-?\d{1,10})\s*,\s*\{([^}]*)\}\s*,\s*(.*?);?\s*$", re.S)
_COMMAND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*;?\s*$", re.S)


def parse_reply(text: str) -> Reply:
    """`ErrorID,{values},Command;` -> Reply. Anything else (too long, a 5000-digit ErrorID, binary) is a
    ProtocolError, never another exception."""
    if len(text) > MAX_REPLY_BYTES:
        raise ProtocolError(f"controller reply of {len(text)} characters exceeds {MAX_REPLY_BYTES}")
    m = _REPLY.match(text)
    if m is None:
        raise ProtocolError(f"unparseable controller reply {text[:80]!r}")
    values = [v.strip() for v in m.group(2).split(",")] if m.group(2).strip() else []
    return Reply(int(m.group(1)), values, m.group(3))


def format_reply(error_id: int, values: list[float | int | str], command: str) -> str:
    return f"{error_id},{{{','.join(_fmt(v) if not isinstance(v, str) else v for v in values)}}},{command};"


def parse_command(text: str) -> tuple[str, list[float], dict[str, float]]:
    """`Name(a,b,k=v)` -> (lower-case name, positional floats, keyword floats). Raises ProtocolError."""
    m = _COMMAND.match(text)
    if m is None:
        raise ProtocolError(f"unparseable command {text!r}")
    args, kwargs = [], {}
    body = m.group(2).replace("{", "").replace("}", "").strip()  # SetTool(1,{x,y,z,rx,ry,rz}): flattened
    for part in body.split(",") if body else []:
        part = part.strip()
        try:
            if "=" in part:
                k, v = part.split("=", 1)
                kwargs[k.strip().lower()] = float(v)
            else:
                args.append(float(part))
        except ValueError as exc:
            raise ProtocolError(f"bad parameter {part!r} in {text!r}") from exc
    return m.group(1).lower(), args, kwargs


def pack_feedback(**fields) -> bytes:
    pkt = np.zeros(1, dtype=FEEDBACK_DTYPE)
    pkt["message_size"] = PACKET_SIZE
    pkt["test_value"] = TEST_VALUE
    for k, v in fields.items():
        pkt[k] = v
    return pkt.tobytes()


def unpack_feedback(data: bytes) -> np.void:
    if len(data) != PACKET_SIZE:
        raise ProtocolError(f"feedback packet has {len(data)} bytes, expected {PACKET_SIZE}")
    pkt = np.frombuffer(data, dtype=FEEDBACK_DTYPE)[0]
    if int(pkt["test_value"]) != TEST_VALUE or int(pkt["message_size"]) != PACKET_SIZE:
        raise ProtocolError("feedback packet failed its TestValue/MessageSize check (stream out of sync)")
    return pkt
