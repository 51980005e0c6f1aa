"""A chain of Dynamixel servos speaking Protocol 2.0 on a pseudo-terminal, standing in for a GELLO leader arm.

It answers the real dynamixel_sdk (PING, READ, WRITE, SYNC_READ) with correct headers, byte stuffing and
CRC-16 (polynomial 0x8005), so the leader-reading code is tested exactly as it runs on the robot. Facts
from ROBOTIS' Protocol 2.0 documentation: header FF FF FD 00, length = instruction/error + params + 2 (CRC),
status instruction 0x55, Present Position at address 132 (4 bytes) on X-series servos.
"""
from __future__ import annotations

import time

from posevla.robot.pty_bus import PtyBus

HEADER = bytes([0xFF, 0xFF, 0xFD, 0x00])
INST_PING, INST_READ, INST_WRITE, INST_SYNC_READ, INST_STATUS = 0x01, 0x02, 0x03, 0x82, 0x55
ADDR_PRESENT_POSITION = 132
TICKS_PER_REV = 4096


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD in the payload (the header is not stuffed)."""
    out = bytearray()
    for b in payload:
        out.append(b)
        if len(out) >= 3 and out[-3:] == b"\xff\xff\xfd":
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(payload):
        out.append(payload[i])
        if len(out) >= 3 and out[-3:] == b"\xff\xff\xfd" and i + 1 < len(payload) and payload[i + 1] == 0xFD:
            i += 1
        i += 1
    return bytes(out)


def packet(dxl_id: int, inst: int, params: bytes) -> bytes:
    body = stuff(bytes([inst]) + params)
    length = len(body) + 2
    raw = HEADER + bytes([dxl_id, length & 0xFF, length >> 8]) + body
    c = crc16(raw)
    return raw + bytes([c & 0xFF, c >> 8])


class DynamixelChainSim(PtyBus):
    """Servos with a control table (4-byte Present Position at 132, 1-byte torque at 64) on a pty."""

    def __init__(self, ids: list[int]) -> None:
        self.table: dict[int, bytearray] = {i: bytearray(256) for i in ids}
        super().__init__("dynamixel-sim")
        self._start()

    def set_position(self, dxl_id: int, ticks: int) -> None:
        with self._lock:
            self.table[dxl_id][ADDR_PRESENT_POSITION:ADDR_PRESENT_POSITION + 4] = int(ticks).to_bytes(4, "little", signed=True)

    def set_register(self, dxl_id: int, address: int, data: bytes) -> None:
        """Write raw bytes into a device's control table (e.g. a buttons board's bit mask)."""
        with self._lock:
            self.table[dxl_id][address:address + len(data)] = data

    def _consume(self, buf: bytes) -> bytes:
        while True:
            start = buf.find(HEADER)
            if start < 0 or len(buf) < start + 7:
                break
            length = buf[start + 5] | (buf[start + 6] << 8)
            end = start + 7 + length
            if len(buf) < end:
                break
            pkt, buf = buf[start:end], buf[end:]
            if crc16(pkt[:-2]) != (pkt[-2] | pkt[-1] << 8):
                continue  # corrupt: a real servo stays silent
            self.requests += 1
            if self.connected:
                self._handle(pkt[4], unstuff(pkt[7:-2]))
        return buf

    def _reply(self, dxl_id: int, params: bytes, error: int = 0) -> None:
        self._write(packet(dxl_id, INST_STATUS, bytes([error]) + params))

    def _handle(self, dxl_id: int, body: bytes) -> None:
        inst, params = body[0], body[1:]
        with self._lock:
            if inst == INST_SYNC_READ and dxl_id == 0xFE:
                addr, size = params[0] | params[1] << 8, params[2] | params[3] << 8
                for i in params[4:]:
                    if i in self.table:
                        self._reply(i, bytes(self.table[i][addr:addr + size]))
                        time.sleep(0)
            elif dxl_id in self.table:
                if inst == INST_PING:
                    self._reply(dxl_id, bytes([0x2C, 0x04, 52]))  # model number and firmware (XL330-like)
                elif inst == INST_READ:
                    addr, size = params[0] | params[1] << 8, params[2] | params[3] << 8
                    self._reply(dxl_id, bytes(self.table[dxl_id][addr:addr + size]))
                elif inst == INST_WRITE:
                    addr = params[0] | params[1] << 8
                    self.table[dxl_id][addr:addr + len(params) - 2] = params[2:]
                    self._reply(dxl_id, b"")
