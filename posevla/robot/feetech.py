"""The X-Trainer's follower grippers: one Feetech SMS/STS serial-bus servo per arm behind a USB-RS485 adapter,
driven with Feetech's SDK from PyPI (``feetech-servo-sdk``, module ``scservo_sdk``, the one LeRobot uses).

Facts from the vendor (github.com/Dobot-Arm/dobot_xtrainer, commit 04cbec5f57aee6355b70c3933d84962376029f1d):
- ``dobot_control/gripper/dobot_gripper.py``: SMS servo, 1 Mbaud, STS/SMS byte order (little-endian,
  ``protocol_end=0``), ping at start, torque limit 300 written to address 48, position read from address 56,
  goal written as acc (41), position (42-43), time (44-45) = 0, speed (46-47) in one 7-byte write,
  ``servo_pos`` = [min, max] mapped linearly to the vendor's 0..255.
- ``dobot_control/robots/dobot.py`` and ``dobot_function/manipulate_utils``/``dynamixel.py``: the gripper command
  is the leader trigger's 0 (open) .. 1 (closed) times 255, so servo ``min`` is OPEN and ``max`` is CLOSED.
- ``settings/dobot_config/dobot_settings.ini``: left id 21 on /dev/ttyUSB3, right id 22 on /dev/ttyUSB2, both
  ``pos = 2048, 3055``.
Register addresses (SMS/STS memory table, as in the ``sms_sts.py`` Feetech ships with the SDK and the X-Trainer
vendors): see `REG`. Positions are 12-bit steps (4096 per turn), sign-magnitude with bit 15 as the sign.

Opening convention of this stack, everywhere: 0 = closed .. 1 = open, through `opening_from_position` /
`position_from_opening` (one calibrated linear map per arm from ``closed_pos`` and ``open_pos``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import scservo_sdk as scs

from posevla.yaml_file import read_yaml

# SMS/STS memory table (address, size in bytes). EPROM: 0..39, SRAM: 40..
REG: dict[str, tuple[int, int]] = {
    "model": (3, 2),
    "id": (5, 1),
    "baud_rate": (6, 1),  # 0 = 1 Mbaud
    "min_angle_limit": (9, 2),
    "max_angle_limit": (11, 2),
    "mode": (33, 1),  # 0 = position servo
    "torque_enable": (40, 1),
    "acceleration": (41, 1),
    "goal_position": (42, 2),
    "goal_time": (44, 2),
    "goal_speed": (46, 2),
    "torque_limit": (48, 2),  # 0..1000 (per mille of stall torque); the X-Trainer writes 300
    "lock": (55, 1),
    "present_position": (56, 2),
    "present_speed": (58, 2),
    "present_load": (60, 2),
    "present_voltage": (62, 1),  # 0.1 V
    "present_temperature": (63, 1),  # deg C
    "moving": (66, 1),
    "present_current": (69, 2),
}
STEPS_PER_REV = 4096
SIGN_BIT = 15
BAUD_CODES = {1_000_000: 0, 500_000: 1, 250_000: 2, 128_000: 3, 115_200: 4, 76_800: 5, 57_600: 6, 38_400: 7}
# status-packet error bits (SDK: ERRBIT_*)
ERROR_BITS = {1: "input voltage", 2: "angle sensor", 4: "overheat", 8: "overcurrent", 32: "overload"}


def to_sign_magnitude(value: int) -> int:
    """Signed step count -> the servo's 16-bit sign-magnitude word (bit 15 = negative)."""
    return (-value | (1 << SIGN_BIT)) if value < 0 else value


def from_sign_magnitude(word: int) -> int:
    return -(word & ~(1 << SIGN_BIT)) if word & (1 << SIGN_BIT) else word


def opening_from_position(pos: int | float, closed_pos: int, open_pos: int) -> float:
    """Servo position (steps) -> gripper opening 0 (closed) .. 1 (open), clipped."""
    g = (float(pos) - closed_pos) / (open_pos - closed_pos)
    return min(1.0, max(0.0, g))


def position_from_opening(g: float, closed_pos: int, open_pos: int) -> int:
    """Gripper opening (clipped to 0..1) -> servo goal position (steps)."""
    g = min(1.0, max(0.0, float(g)))
    return int(round(closed_pos + g * (open_pos - closed_pos)))


class FeetechError(RuntimeError):
    """The gripper servo did not answer, answered garbage, or reported a fault."""


@dataclass(frozen=True)
class GripperConfig:
    """One follower gripper: serial port, servo id and the calibrated closed/open positions (steps)."""

    port: str
    servo_id: int
    closed_pos: int
    open_pos: int
    baudrate: int = 1_000_000
    torque_limit: int = 300  # per mille; the X-Trainer's value
    goal_speed: int = 4096  # steps/s written with every goal; the X-Trainer's speed 100 % maps to 4096
    acceleration: int = 0  # 0 = the servo's maximum; the X-Trainer's value
    reply_timeout_s: float = 0.034  # wait for a status packet; the SDK's own default (2 x 16 ms latency + 2 ms)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"gripper parameter {name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.port, str) or not self.port:
            bad("port", "must be a non-empty serial device path")
        for name in ("servo_id", "closed_pos", "open_pos", "baudrate", "torque_limit", "goal_speed", "acceleration"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                bad(name, "must be an integer")
        if not 0 <= self.servo_id <= 252:
            bad("servo_id", "must be 0..252 (253-254 are reserved/broadcast)")
        for name in ("closed_pos", "open_pos"):
            if not 0 <= getattr(self, name) < STEPS_PER_REV:
                bad(name, f"must be a servo position 0..{STEPS_PER_REV - 1}")
        if abs(self.open_pos - self.closed_pos) < 50:
            bad("open_pos", f"must differ from closed_pos={self.closed_pos} by at least 50 steps")
        if self.baudrate not in BAUD_CODES:
            bad("baudrate", f"must be one of {sorted(BAUD_CODES)}")
        if not 1 <= self.torque_limit <= 1000:
            bad("torque_limit", "must be 1..1000 (per mille)")
        if not 0 <= self.goal_speed <= 0x7FFF:
            bad("goal_speed", "must be 0..32767 steps/s")
        if not 0 <= self.acceleration <= 254:
            bad("acceleration", "must be 0..254")
        if not isinstance(self.reply_timeout_s, (int, float)) or not 0.001 <= self.reply_timeout_s <= 2.0:
            bad("reply_timeout_s", "must be 0.001..2.0 seconds")

    def opening(self, pos: int | float) -> float:
        return opening_from_position(pos, self.closed_pos, self.open_pos)

    def position(self, g: float) -> int:
        return position_from_opening(g, self.closed_pos, self.open_pos)

    @classmethod
    def from_mapping(cls, doc: Any, where: str = "gripper") -> GripperConfig:
        """From a mapping with exactly the field names; unknown or missing keys are errors naming them."""
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(doc).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        missing = sorted(n for n in ("port", "servo_id", "closed_pos", "open_pos") if n not in doc)
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        try:
            return cls(**doc)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def load_grippers(path: str | Path) -> dict[str, GripperConfig]:
    """``config/grippers_xtrainer.yaml`` -> {arm: GripperConfig}. Top level: ``baudrate`` (shared default)
    and ``arms: {left: {...}, right: {...}}``; unknown keys anywhere are errors naming the file and key."""
    path = Path(path)
    doc = read_yaml(path, "gripper configuration")
    if not isinstance(doc, dict) or not isinstance(doc.get("arms"), dict) or not doc["arms"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'arms' section")
    unknown = sorted(set(doc) - {"arms", "baudrate"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; allowed: ['arms', 'baudrate']")
    out = {}
    for arm, entry in doc["arms"].items():
        if arm not in ("left", "right"):
            raise ValueError(f"{path}: arms.{arm}: arm must be 'left' or 'right'")
        entry = dict(entry) if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and "baudrate" in doc:
            entry.setdefault("baudrate", doc["baudrate"])
        out[arm] = GripperConfig.from_mapping(entry, f"{path}: arms.{arm}")
    ports = [c.port for c in out.values()]
    if len(set(ports)) != len(ports):
        raise ValueError(f"{path}: arms share a serial port {ports}; each gripper has its own RS485 adapter")
    return out


class _PortHandler(scs.PortHandler):
    """The SDK's port with a configurable status-packet timeout (the SDK hard-codes 2 x 16 ms + 2 ms) and a
    blocking (1 ms) read instead of a busy poll."""

    def __init__(self, port_name: str, reply_timeout_s: float) -> None:
        super().__init__(port_name)
        self.reply_timeout_ms = 1000.0 * reply_timeout_s

    def setupPort(self, cflag_baud: int) -> bool:  # noqa: N802 - SDK name
        ok = super().setupPort(cflag_baud)
        # The SDK polls the port with timeout=0 (a busy loop that holds a CPU core and the GIL while waiting for
        # the reply); a 1 ms read timeout sleeps in the kernel instead and still returns as soon as bytes arrive.
        self.ser.timeout = 0.001
        return ok

    def setPacketTimeout(self, packet_length: int) -> None:  # noqa: N802 - SDK name
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * packet_length + self.reply_timeout_ms


class FeetechGripper:
    """One gripper servo on its own bus. Thread-safe: reads and commands may come from different threads.

    Every bus transaction waits at most ``reply_timeout_s`` (+ the bytes' transfer time) for the status packet; a
    servo that does not answer, a corrupt reply or a vanished port raises `FeetechError` naming the port, id and what failed."""

    def __init__(self, port: str, servo_id: int, closed_pos: int, open_pos: int, baudrate: int = 1_000_000,
                 *, torque_limit: int = 300, goal_speed: int = 4096, acceleration: int = 0,
                 reply_timeout_s: float = 0.034) -> None:
        self.cfg = GripperConfig(port=port, servo_id=servo_id, closed_pos=closed_pos, open_pos=open_pos,
                                 baudrate=baudrate, torque_limit=torque_limit, goal_speed=goal_speed,
                                 acceleration=acceleration, reply_timeout_s=reply_timeout_s)
        self._lock = threading.Lock()
        self._port: _PortHandler | None = None
        self._ph: Any = None  # scservo_sdk.PacketHandler (untyped SDK)
        self.model_number: int | None = None
        self.status_error = 0  # error bits of the last status packet (overload while gripping is normal)

    @classmethod
    def from_config(cls, cfg: GripperConfig) -> FeetechGripper:
        return cls(cfg.port, cfg.servo_id, cfg.closed_pos, cfg.open_pos, cfg.baudrate,
                   torque_limit=cfg.torque_limit, goal_speed=cfg.goal_speed, acceleration=cfg.acceleration,
                   reply_timeout_s=cfg.reply_timeout_s)

    # -- connection ----------------------------------------------------------------------------------------
    def open(self, torque: bool = True) -> None:
        """Open the port, ping the servo, write the torque limit and (by default) enable torque."""
        port = _PortHandler(self.cfg.port, self.cfg.reply_timeout_s)
        try:
            ok = port.setBaudRate(self.cfg.baudrate)  # opens the port
        except Exception as exc:  # pyserial raises SerialException/OSError
            raise FeetechError(f"gripper port {self.cfg.port} cannot be opened: {exc}") from None
        if not ok:
            raise FeetechError(f"gripper port {self.cfg.port} cannot be opened at {self.cfg.baudrate} baud")
        self._port, self._ph = port, scs.PacketHandler(0)  # 0: STS/SMS byte order
        try:
            model, result, error = self._call("ping", lambda: self._ph.ping(self._port, self.cfg.servo_id))
            self._check(result, error, "ping")
            self.model_number = int(model)
            self._check_setup()
            self._write(*REG["torque_limit"], self.cfg.torque_limit, "write torque limit")
            if torque:
                self.torque(True)
        except FeetechError:
            self.close()
            raise

    def _check_setup(self) -> None:
        """The servo must be in position mode with the calibrated range inside its angle limits."""
        mode = self._read(*REG["mode"], "read mode")
        if mode != 0:
            raise FeetechError(self._where(f"servo is in mode {mode}, expected 0 (position servo)"))
        lo, hi = self._read(*REG["min_angle_limit"], "read angle limits"), self._read(*REG["max_angle_limit"], "read angle limits")
        if lo < hi:  # 0/0 means no limits (multi-turn); otherwise the range must lie inside them
            for name in ("closed_pos", "open_pos"):
                v = getattr(self.cfg, name)
                if not lo <= v <= hi:
                    raise FeetechError(self._where(f"{name}={v} lies outside the servo's angle limits {lo}..{hi}"))

    def _read(self, addr: int, size: int, what: str) -> int:
        data, result, error = self._call("read", lambda: self._ph.readTxRx(self._port, self.cfg.servo_id, addr, size))
        self._check(result, error, what)
        if len(data) != size:
            raise FeetechError(self._where(f"{what} returned {len(data)} bytes, expected {size}"))
        return int.from_bytes(bytes(data), "little")

    def close(self) -> None:
        with self._lock:
            if self._port is not None:
                try:
                    self._port.closePort()
                except Exception:
                    pass
            self._port = None

    def __enter__(self) -> FeetechGripper:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- API -----------------------------------------------------------------------------------------------
    def torque(self, enable: bool) -> None:
        self._write(*REG["torque_enable"], 1 if enable else 0, "write torque enable")

    def read_position(self) -> tuple[int, int]:
        """(present position in steps, stamp_ns): the stamp is the midpoint of request and reply (time_ns)."""
        t0 = time.time_ns()
        addr, size = REG["present_position"]
        data, result, error = self._call("read", lambda: self._ph.readTxRx(self._port, self.cfg.servo_id, addr, size))
        t1 = time.time_ns()
        self._check(result, error, "read present position")
        if len(data) != size:
            raise FeetechError(self._where(f"read present position returned {len(data)} bytes, expected {size}"))
        return from_sign_magnitude(data[0] | data[1] << 8), (t0 + t1) // 2

    def read_opening(self) -> tuple[float, int]:
        """(opening 0 closed .. 1 open, stamp_ns) from the servo's present position."""
        pos, stamp = self.read_position()
        return self.cfg.opening(pos), stamp

    def command_position(self, pos: int) -> None:
        lo, hi = min(self.cfg.closed_pos, self.cfg.open_pos), max(self.cfg.closed_pos, self.cfg.open_pos)
        pos = to_sign_magnitude(int(min(hi, max(lo, int(pos)))))
        speed = self.cfg.goal_speed
        # acc (41), goal position (42-43), goal time (44-45) = 0, goal speed (46-47): the vendor's one write
        block = [self.cfg.acceleration, pos & 0xFF, pos >> 8, 0, 0, speed & 0xFF, speed >> 8]
        addr = REG["acceleration"][0]
        result, error = self._call("write", lambda: self._ph.writeTxRx(self._port, self.cfg.servo_id, addr,
                                                                       len(block), block))
        self._check(result, error, "write goal position")

    def command_opening(self, g: float) -> None:
        """Command an opening 0 (closed) .. 1 (open); values outside are clamped, NaN is refused."""
        if g != g:
            raise ValueError("gripper opening is NaN")
        self.command_position(self.cfg.position(g))

    # -- internals -----------------------------------------------------------------------------------------
    def _where(self, what: str) -> str:
        return f"gripper servo id {self.cfg.servo_id} on {self.cfg.port}: {what}"

    def _call(self, what: str, fn):
        with self._lock:
            if self._port is None:
                raise FeetechError(self._where(f"{what} on a closed port"))
            try:
                return fn()
            except Exception as exc:  # the port vanished (unplugged adapter): pyserial raises
                self._port.is_using = False
                raise FeetechError(self._where(f"{what} failed: {type(exc).__name__}: {exc}")) from None

    def _check(self, result: int, error: int, what: str) -> None:
        if result != scs.COMM_SUCCESS:
            raise FeetechError(self._where(f"{what} failed: {self._ph.getTxRxResult(result)}"))
        self.status_error = int(error)

    def _write(self, addr: int, size: int, value: int, what: str) -> None:
        if size == 1:
            result, error = self._call("write", lambda: self._ph.write1ByteTxRx(self._port, self.cfg.servo_id, addr,
                                                                                value))
        else:
            result, error = self._call("write", lambda: self._ph.write2ByteTxRx(self._port, self.cfg.servo_id, addr,
                                                                                value))
        self._check(result, error, what)


def describe_status_error(bits: int) -> str:
    names = [name for bit, name in ERROR_BITS.items() if bits & bit]
    return ", ".join(names) if names else "none"


class GripperPoller:
    """Reads one gripper at a fixed rate on its own thread and keeps the latest measurement.

    A failed read, or no successful read for ``stale_s``, FREEZES the gripper: `latest()` and `command_opening()`
    raise `FeetechError` with the reason until the operator calls `resume()` (which succeeds only if the servo
    answers again) -- the same rule as for the leader arms. Nothing is commanded while frozen."""

    def __init__(self, gripper: FeetechGripper, rate_hz: float = 50.0, stale_s: float = 0.2) -> None:
        if not rate_hz > 0 or not stale_s > 0:
            raise ValueError(f"gripper poller: rate_hz={rate_hz} and stale_s={stale_s} must be > 0")
        self.gripper, self.period_s, self.stale_s = gripper, 1.0 / rate_hz, stale_s
        self._lock = threading.Lock()
        self._latest: tuple[float, int] | None = None
        self._last_ok = time.monotonic()
        self.frozen: str | None = None
        self.reads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GripperPoller:
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"gripper-{self.gripper.cfg.servo_id}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _freeze(self, why: str) -> None:
        with self._lock:
            if self.frozen is None:
                self.frozen = why

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                g, stamp = self.gripper.read_opening()
                with self._lock:
                    self._latest, self._last_ok = (g, stamp), time.monotonic()
                    self.reads += 1
            except FeetechError as exc:
                self._freeze(str(exc))
            if time.monotonic() - self._last_ok > self.stale_s:
                self._freeze(f"gripper servo id {self.gripper.cfg.servo_id}: no reading for {self.stale_s} s")
            next_t += self.period_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))
            next_t = max(next_t, time.monotonic() - self.period_s)

    def latest(self) -> tuple[float, int]:
        """(opening 0 closed .. 1 open, stamp_ns) of the last successful read; FeetechError when frozen."""
        with self._lock:
            if self.frozen is not None:
                raise FeetechError(f"gripper frozen: {self.frozen}")
            if self._latest is None:
                raise FeetechError(f"gripper servo id {self.gripper.cfg.servo_id}: no reading yet")
            return self._latest

    def command_opening(self, g: float) -> None:
        with self._lock:
            if self.frozen is not None:
                raise FeetechError(f"gripper frozen: {self.frozen}")
        self.gripper.command_opening(g)

    def resume(self) -> None:
        """Operator's request after a fault: clears the freeze if the servo answers now (else FeetechError)."""
        g, stamp = self.gripper.read_opening()
        with self._lock:
            self._latest, self._last_ok, self.frozen = (g, stamp), time.monotonic(), None
