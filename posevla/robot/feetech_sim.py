"""Feetech SMS/STS serial-bus servos on a pseudo-terminal, standing in for the X-Trainer's gripper servos.

Written from Feetech's published protocol and memory table, independently of the driver's use of the SDK:
- Instruction packet ``FF FF id len instr params... checksum`` with ``len = len(params) + 2`` and
  ``checksum = ~(id + len + instr + sum(params)) & 0xFF``; status packet ``FF FF id len error params... checksum``.
- Instructions: PING 0x01, READ 0x02 (addr, n), WRITE 0x03 (addr, data...), REG_WRITE 0x04, ACTION 0x05,
  SYNC_READ 0x82 (to 0xFE: addr, n, ids... -> one status packet per id, in order), SYNC_WRITE 0x83 (to 0xFE:
  addr, n, then id + n data bytes per servo; no reply). Broadcast (0xFE) WRITE/ACTION get no reply.
- A packet with a wrong checksum is ignored (no reply, no effect), as a real servo does.
- Memory table (little-endian words, positions sign-magnitude with bit 15): model 3, id 5, baud 6,
  angle limits 9/11, torque enable 40, acceleration 41, goal position 42, goal time 44, goal speed 46,
  torque limit 48, present position 56, present speed 58, load 60, voltage 62, temperature 63, moving 66.
The servo moves toward the goal (clipped to the angle limits) at the goal speed (steps/s; 0 = `max_speed`) while
torque is enabled; an `obstacle` position stops a closing gripper there, as an object in the jaws does.
"""
from __future__ import annotations

import time

from posevla.robot.pty_bus import PtyBus

HEADER = b"\xff\xff"
BROADCAST = 0xFE
INST_PING, INST_READ, INST_WRITE, INST_REG_WRITE, INST_ACTION = 0x01, 0x02, 0x03, 0x04, 0x05
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83
# memory table addresses (Feetech SMS/STS)
A_MODEL, A_ID, A_BAUD, A_MIN_LIMIT, A_MAX_LIMIT = 3, 5, 6, 9, 11
A_TORQUE_ENABLE, A_ACC, A_GOAL_POS, A_GOAL_TIME, A_GOAL_SPEED, A_TORQUE_LIMIT = 40, 41, 42, 44, 46, 48
A_PRESENT_POS, A_PRESENT_SPEED, A_PRESENT_LOAD, A_VOLTAGE, A_TEMPERATURE, A_MOVING = 56, 58, 60, 62, 63, 66
READ_ONLY_START, READ_ONLY_END = 56, 70


def checksum(body: bytes) -> int:
    """Checksum over id, length, instruction/error and parameters."""
    return (~sum(body)) & 0xFF


def packet(servo_id: int, code: int, params: bytes) -> bytes:
    """An instruction (code = instruction) or status (code = error byte) packet."""
    body = bytes([servo_id, len(params) + 2, code]) + params
    return HEADER + body + bytes([checksum(body)])


def _word(v: int) -> bytes:
    return bytes([v & 0xFF, (v >> 8) & 0xFF])


def _sm(v: int) -> int:
    """signed -> sign-magnitude word"""
    return (-v | 0x8000) if v < 0 else v


def _from_sm(w: int) -> int:
    return -(w & 0x7FFF) if w & 0x8000 else w


class _Servo:
    def __init__(self, servo_id: int, position: int, model: int) -> None:
        self.mem = bytearray(256)
        self.mem[A_MODEL:A_MODEL + 2] = _word(model)
        self.mem[A_ID] = servo_id
        self.mem[A_BAUD] = 0  # 1 Mbaud
        self.mem[A_MIN_LIMIT:A_MIN_LIMIT + 2] = _word(0)
        self.mem[A_MAX_LIMIT:A_MAX_LIMIT + 2] = _word(4095)
        self.mem[A_GOAL_POS:A_GOAL_POS + 2] = _word(_sm(position))
        self.mem[A_TORQUE_LIMIT:A_TORQUE_LIMIT + 2] = _word(1000)
        self.mem[A_VOLTAGE] = 120
        self.mem[A_TEMPERATURE] = 30
        self.pos = float(position)
        self.pending: bytes | None = None  # REG_WRITE waiting for ACTION
        self._write_present(0)

    def word(self, addr: int) -> int:
        return self.mem[addr] | self.mem[addr + 1] << 8

    def _write_present(self, speed: float) -> None:
        self.mem[A_PRESENT_POS:A_PRESENT_POS + 2] = _word(_sm(int(round(self.pos))))
        self.mem[A_PRESENT_SPEED:A_PRESENT_SPEED + 2] = _word(_sm(int(round(speed))))
        self.mem[A_MOVING] = 1 if abs(speed) > 0 else 0

    def advance(self, dt: float, max_speed: float, obstacle: tuple[float, float] | None) -> None:
        """obstacle: (position, side) -- the servo cannot move from its side of the position to the other."""
        goal = _from_sm(self.word(A_GOAL_POS))
        goal = min(max(goal, self.word(A_MIN_LIMIT)), self.word(A_MAX_LIMIT))
        speed = 0.0
        if self.mem[A_TORQUE_ENABLE] and dt > 0:
            v = self.word(A_GOAL_SPEED) or max_speed
            v = min(v, max_speed)
            step = max(-v * dt, min(v * dt, goal - self.pos))
            new = self.pos + step
            if obstacle is not None and obstacle[1] * (new - obstacle[0]) < 0:
                new = obstacle[0]  # the jaws meet the object: no motion past it
            speed = (new - self.pos) / dt
            self.pos = new
        self._write_present(speed)

    def write(self, addr: int, data: bytes) -> None:
        """Write bytes; the read-only status block (56..70) ignores writes."""
        for k, b in enumerate(data):
            a = addr + k
            if a < 256 and not READ_ONLY_START <= a <= READ_ONLY_END:
                self.mem[a] = b


class FeetechBusSim(PtyBus):
    """Servos on one pty. ``positions``: {id: initial present position (steps)}."""

    def __init__(self, positions: dict[int, int], max_speed: float = 3000.0, model: int = 777) -> None:
        # model 777 is an STS3215 (LeRobot's MODEL_NUMBER_TABLE); the X-Trainer's exact SMS model is not published
        self.servos = {i: _Servo(i, p, model) for i, p in positions.items()}
        self.max_speed = float(max_speed)
        self.obstacle: dict[int, tuple[float, float] | None] = {i: None for i in positions}
        self.corrupt_replies = False
        self.checksum_errors = 0
        self.received: list[tuple[int, int, bytes]] = []  # (id, instruction, params) of valid packets
        self._t = time.monotonic()
        super().__init__("feetech-sim")
        self._start()

    # -- test handles --------------------------------------------------------------------------------------
    def position(self, servo_id: int) -> float:
        with self._lock:
            self._advance()
            return self.servos[servo_id].pos

    def register(self, servo_id: int, addr: int, size: int = 1) -> int:
        with self._lock:
            self._advance()
            m = self.servos[servo_id].mem
            return int.from_bytes(bytes(m[addr:addr + size]), "little")

    def set_register(self, servo_id: int, addr: int, data: bytes) -> None:
        """Write the memory table directly (EPROM settings such as mode or angle limits)."""
        with self._lock:
            self.servos[servo_id].mem[addr:addr + len(data)] = data

    def move_by_hand(self, servo_id: int, pos: float) -> None:
        """Someone moves the horn (torque off): the present position jumps there."""
        with self._lock:
            self._advance()
            self.servos[servo_id].pos = float(pos)
            self.servos[servo_id].advance(0.0, self.max_speed, None)

    def set_obstacle(self, servo_id: int, pos: float | None) -> None:
        """An object at `pos` (steps): the servo cannot pass it from the side it is on now (None: remove)."""
        with self._lock:
            self._advance()
            here = self.servos[servo_id].pos
            self.obstacle[servo_id] = None if pos is None else (float(pos), 1.0 if here >= pos else -1.0)

    # -- bus -----------------------------------------------------------------------------------------------
    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._t = now - self._t, now
        for i, s in self.servos.items():
            s.advance(dt, self.max_speed, self.obstacle[i])

    def _consume(self, buf: bytes) -> bytes:
        while True:
            start = buf.find(HEADER)
            if start < 0:
                buf = buf[-1:]
                break
            # FF FF FF ...: the header is the last FF FF before the id
            while start + 2 < len(buf) and buf[start + 2] == 0xFF:
                start += 1
            if len(buf) < start + 4:
                buf = buf[start:]
                break
            length = buf[start + 3]
            end = start + 4 + length
            if length < 2:
                buf = buf[start + 2:]
                continue
            if len(buf) < end:
                buf = buf[start:]
                break
            pkt, buf = buf[start:end], buf[end:]
            body = pkt[2:-1]
            if checksum(body) != pkt[-1]:
                self.checksum_errors += 1
                continue  # a real servo stays silent
            self.requests += 1
            if self.connected:
                self._handle(body[0], body[2], bytes(body[3:]))
        return buf

    def _reply(self, servo_id: int, params: bytes, error: int = 0) -> None:
        out = packet(servo_id, error, params)
        if self.corrupt_replies:
            out = out[:-1] + bytes([out[-1] ^ 0x5A])
        self._write(out)

    def _handle(self, sid: int, inst: int, params: bytes) -> None:
        with self._lock:
            self._advance()
            self.received.append((sid, inst, params))
            if inst == INST_SYNC_WRITE and sid == BROADCAST and len(params) >= 2:
                addr, n = params[0], params[1]
                for k in range(2, len(params) - n, n + 1):
                    target = self.servos.get(params[k])
                    if target is not None:
                        target.write(addr, params[k + 1:k + 1 + n])
                return
            if inst == INST_SYNC_READ and sid == BROADCAST and len(params) >= 2:
                addr, n = params[0], params[1]
                replies = [(i, bytes(self.servos[i].mem[addr:addr + n])) for i in params[2:] if i in self.servos]
            elif inst == INST_ACTION and sid == BROADCAST:
                for s in self.servos.values():
                    if s.pending is not None:
                        s.write(s.pending[0], s.pending[1:])
                        s.pending = None
                return
            elif inst == INST_WRITE and sid == BROADCAST and params:
                for s in self.servos.values():
                    s.write(params[0], params[1:])
                return
            elif sid in self.servos:
                s = self.servos[sid]
                if inst == INST_PING:
                    replies = [(sid, b"")]
                elif inst == INST_READ and len(params) == 2:
                    replies = [(sid, bytes(s.mem[params[0]:params[0] + params[1]]))]
                elif inst == INST_WRITE and params:
                    s.write(params[0], params[1:])
                    s.advance(0.0, self.max_speed, self.obstacle[sid])
                    replies = [(sid, b"")]
                elif inst == INST_REG_WRITE and params:
                    s.pending = params
                    replies = [(sid, b"")]
                elif inst == INST_ACTION:
                    if s.pending is not None:
                        s.write(s.pending[0], s.pending[1:])
                        s.pending = None
                    replies = [(sid, b"")]
                else:
                    return
            else:
                return
        for i, data in replies:
            self._reply(i, data)
