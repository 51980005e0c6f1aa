"""GELLO-style leader arms: Dynamixel servos on USB serial, read with the real dynamixel_sdk (Protocol 2.0).

Joint angle (radians) of leader joint i: ``q_i = sign_i * (ticks_i * 2*pi / 4096 - offset_i)``, so that the
leader's angles equal the follower's joint angles (the follower's zero and direction conventions). The
gripper trigger maps linearly from ``closed_ticks`` (0.0) to ``open_ticks`` (1.0), clipped. Buttons on the
handles are read as a one-byte bit mask from a Dynamixel-protocol device (an OpenRB-150-style board) at a
configurable id and address; button k is bit k.

One YAML file per robot (``config/gello_xtrainer.yaml``) holds both leaders; `LeaderConfig.from_yaml` checks it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posevla.yaml_file import read_yaml

TICKS_PER_REV = 4096
ADDR_PRESENT_POSITION = 132
LEN_PRESENT_POSITION = 4


@dataclass(frozen=True)
class LeaderArmConfig:
    """One leader arm on one serial port: 6 joint servos and a gripper-trigger servo."""

    port: str
    joint_ids: tuple[int, ...]
    joint_offsets: tuple[float, ...]  # radians, subtracted from the raw servo angle
    joint_signs: tuple[int, ...]  # +1 or -1
    gripper_id: int
    gripper_open_ticks: int
    gripper_closed_ticks: int
    buttons_id: int | None = None
    buttons_address: int = 0

    @property
    def all_ids(self) -> tuple[int, ...]:
        return (*self.joint_ids, self.gripper_id)

    def joints_from_ticks(self, ticks: np.ndarray) -> np.ndarray:
        raw = np.asarray(ticks, float) * (2.0 * math.pi / TICKS_PER_REV)
        return np.asarray(self.joint_signs, float) * (raw - np.asarray(self.joint_offsets, float))

    def ticks_from_joints(self, q: np.ndarray) -> np.ndarray:
        """Inverse of joints_from_ticks (rounded to whole ticks); used by the leader simulator."""
        raw = np.asarray(q, float) * np.asarray(self.joint_signs, float) + np.asarray(self.joint_offsets, float)
        return np.round(raw * TICKS_PER_REV / (2.0 * math.pi)).astype(np.int64)

    def ticks_from_gripper(self, opening: float) -> int:
        return int(round(self.gripper_closed_ticks + opening * (self.gripper_open_ticks - self.gripper_closed_ticks)))

    def gripper_from_ticks(self, ticks: int) -> float:
        span = self.gripper_open_ticks - self.gripper_closed_ticks
        return float(np.clip((ticks - self.gripper_closed_ticks) / span, 0.0, 1.0))


@dataclass(frozen=True)
class LeaderConfig:
    """Both leaders of a robot plus the serial settings shared by them."""

    arms: dict[str, LeaderArmConfig]
    baudrate: int = 1_000_000
    protocol: float = 2.0
    source: str = "<memory>"

    @classmethod
    def from_yaml(cls, path: str | Path) -> LeaderConfig:
        path = Path(path)
        doc = read_yaml(path, "leader configuration")
        if not isinstance(doc, dict) or not isinstance(doc.get("arms"), dict) or not doc["arms"]:
            raise ValueError(f"{path}: expected a mapping with a non-empty 'arms' section")
        arms = {}
        for name, a in doc["arms"].items():
            where = f"{path}: arms.{name}"
            try:
                ids = tuple(int(i) for i in a["joint_ids"])
                offsets = tuple(float(o) for o in a["joint_offsets"])
                signs = tuple(int(s) for s in a["joint_signs"])
                g = a["gripper"]
                arm = LeaderArmConfig(str(a["port"]), ids, offsets, signs, int(g["id"]), int(g["open_ticks"]),
                                      int(g["closed_ticks"]),
                                      int(a["buttons"]["id"]) if a.get("buttons") else None,
                                      int(a["buttons"]["address"]) if a.get("buttons") else 0)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{where}: missing or malformed field ({exc})") from exc
            if not (len(ids) == len(offsets) == len(signs) == 6):
                raise ValueError(f"{where}: joint_ids, joint_offsets and joint_signs need 6 entries each, "
                                 f"got {len(ids)}, {len(offsets)}, {len(signs)}")
            if any(s not in (-1, 1) for s in signs):
                raise ValueError(f"{where}.joint_signs: every sign must be +1 or -1, got {list(signs)}")
            if len(set(arm.all_ids)) != 7:
                raise ValueError(f"{where}: servo ids must be distinct, got {list(arm.all_ids)}")
            if arm.gripper_open_ticks == arm.gripper_closed_ticks:
                raise ValueError(f"{where}.gripper: open_ticks equals closed_ticks ({arm.gripper_open_ticks})")
            arms[str(name)] = arm
        return cls(arms, int(doc.get("baudrate", 1_000_000)), float(doc.get("protocol", 2.0)), str(path))

    def with_ports(self, ports: dict[str, str]) -> LeaderConfig:
        """The same configuration with some serial ports replaced (e.g. from a ROS parameter)."""
        arms = {n: (LeaderArmConfig(ports[n], *[getattr(a, f) for f in list(a.__dataclass_fields__)[1:]])
                    if ports.get(n) else a) for n, a in self.arms.items()}
        return LeaderConfig(arms, self.baudrate, self.protocol, self.source)


@dataclass(frozen=True)
class LeaderReading:
    """One sample of a leader arm: joints (6,) radians, gripper opening 0..1, buttons bit mask."""

    q: np.ndarray
    gripper: float
    buttons: int
    stamp_ns: int


class LeaderReadError(RuntimeError):
    """The leader did not answer (unplugged, powered off) or answered garbage."""


class LeaderArm:
    """Reads one leader arm with one GroupSyncRead per cycle (plus one read for the buttons board)."""

    def __init__(self, name: str, cfg: LeaderArmConfig, baudrate: int = 1_000_000, protocol: float = 2.0) -> None:
        import dynamixel_sdk as dxl  # the real SDK, also on the robot PC

        self.name, self.cfg, self._dxl = name, cfg, dxl
        self.port = dxl.PortHandler(cfg.port)
        self.packet = dxl.PacketHandler(protocol)
        try:
            opened = self.port.openPort()
        except Exception as exc:  # noqa: BLE001 - pyserial raises SerialException for a missing device
            raise LeaderReadError(f"{name} leader: cannot open serial port {cfg.port}: {exc}") from exc
        if not opened:
            raise LeaderReadError(f"{name} leader: cannot open serial port {cfg.port}")
        if not self.port.setBaudRate(baudrate):
            self.port.closePort()
            raise LeaderReadError(f"{name} leader: cannot set baud rate {baudrate} on {cfg.port}")
        self.sync = dxl.GroupSyncRead(self.port, self.packet, ADDR_PRESENT_POSITION, LEN_PRESENT_POSITION)
        for i in cfg.all_ids:
            self.sync.addParam(i)

    def ping(self) -> None:
        """Check that every configured servo answers; raises naming the missing ids."""
        missing = [i for i in self.cfg.all_ids
                   if self.packet.ping(self.port, i)[1] != self._dxl.COMM_SUCCESS]
        if missing:
            raise LeaderReadError(f"{self.name} leader on {self.cfg.port}: servo ids {missing} do not answer")

    def read_raw(self) -> tuple[np.ndarray, int]:
        """Raw Present Position of every servo (joints then gripper, ticks, signed) and the buttons bit mask."""
        result = self.sync.txRxPacket()
        if result != self._dxl.COMM_SUCCESS:
            raise LeaderReadError(f"{self.name} leader on {self.cfg.port}: {self.packet.getTxRxResult(result)}")
        ticks = []
        for i in self.cfg.all_ids:
            if not self.sync.isAvailable(i, ADDR_PRESENT_POSITION, LEN_PRESENT_POSITION):
                raise LeaderReadError(f"{self.name} leader on {self.cfg.port}: no position from servo id {i}")
            raw = self.sync.getData(i, ADDR_PRESENT_POSITION, LEN_PRESENT_POSITION)
            ticks.append(raw - (1 << 32) if raw >= 1 << 31 else raw)  # Present Position is signed 32-bit
        buttons = 0
        if self.cfg.buttons_id is not None:
            value, result, error = self.packet.read1ByteTxRx(self.port, self.cfg.buttons_id, self.cfg.buttons_address)
            if result != self._dxl.COMM_SUCCESS:
                raise LeaderReadError(f"{self.name} leader buttons (id {self.cfg.buttons_id}): "
                                      f"{self.packet.getTxRxResult(result)}")
            buttons = int(value)
        return np.array(ticks, np.int64), buttons

    def read(self) -> LeaderReading:
        """Joints (radians, follower convention), gripper opening 0..1 and buttons."""
        ticks, buttons = self.read_raw()
        return LeaderReading(self.cfg.joints_from_ticks(ticks[:6]), self.cfg.gripper_from_ticks(int(ticks[6])),
                             buttons, time.monotonic_ns())

    def close(self) -> None:
        self.port.closePort()


def offsets_for_known_pose(cfg: LeaderArmConfig, ticks: np.ndarray, q_known: np.ndarray) -> tuple[float, ...]:
    """Joint offsets (radians) that make the leader read q_known when its servos read `ticks`.

    Used once per leader: put leader and follower in the same known pose (e.g. the start pose) and solve.
    """
    raw = np.asarray(ticks, float) * (2.0 * math.pi / TICKS_PER_REV)
    return tuple(float(o) for o in raw - np.asarray(q_known, float) * np.asarray(cfg.joint_signs, float))
