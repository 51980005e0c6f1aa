"""One Dobot arm controller over TCP: dashboard requests, motion commands, and the feedback stream.

Feedback stamps are the packet's receive time (`time.time_ns()`, i.e. ROS system time on the robot PC);
the controller's own TimeStamp field is kept as `controller_ms` for diagnostics.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from posevla.robot import protocol as P
from posevla.robot import units


@dataclass
class Feedback:
    """One decoded feedback packet (stack units): joints rad, T_armbase_tcp metres, gripper 0..1."""

    stamp_ns: int
    seq: int
    mode: int
    q: np.ndarray
    T_armbase_tcp: np.ndarray
    gripper: float
    controller_ms: int


class DobotArmClient:
    def __init__(self, host: str, dashboard_port: int = P.DASHBOARD_PORT, motion_port: int = P.MOTION_PORT,
                 feedback_port: int = P.FEEDBACK_PORT, timeout_s: float = 1.0) -> None:
        self.host, self.timeout_s = host, timeout_s
        self.ports = (dashboard_port, motion_port, feedback_port)
        self._dash: socket.socket | None = None
        self._motion: socket.socket | None = None
        self._feed: socket.socket | None = None
        self._dash_lock = threading.Lock()
        self._motion_lock = threading.Lock()
        self._latest: Feedback | None = None
        self._seq = 0
        self._fb_event = threading.Event()
        self.connected = False
        self.last_error = ""
        self.motion_errors = 0

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Open the three sockets; raises ConnectionError naming the host and port."""
        self.close()
        socks = []
        try:
            for port in self.ports:
                s = socket.create_connection((self.host, port), timeout=self.timeout_s)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks.append(s)
        except OSError as exc:
            for s in socks:
                s.close()
            raise ConnectionError(f"cannot connect to Dobot controller {self.host}:{port}: {exc}") from exc
        self._dash, self._motion, self._feed = socks
        self._latest = None
        self._fb_event.clear()
        self.connected = True
        self.last_error = ""
        threading.Thread(target=self._read_feedback, args=(self._feed,), daemon=True).start()
        threading.Thread(target=self._drain_motion, args=(self._motion,), daemon=True).start()

    def close(self) -> None:
        self.connected = False
        for s in (self._dash, self._motion, self._feed):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._dash = self._motion = self._feed = None

    def _lost(self, why: str) -> None:
        if self.connected:
            self.last_error = why
        self.connected = False

    # ------------------------------------------------------------------ feedback
    def _read_feedback(self, sock: socket.socket) -> None:
        sock.settimeout(max(self.timeout_s, 0.5))
        buf = b""
        while self.connected and sock is self._feed:
            try:
                data = sock.recv(P.PACKET_SIZE * 4)
            except TimeoutError:
                self._lost(f"{self.host}: no feedback for {sock.gettimeout():.1f} s")
                return
            except OSError as exc:
                self._lost(f"{self.host}: feedback socket error: {exc}")
                return
            if not data:
                self._lost(f"{self.host}: feedback connection closed by the controller")
                return
            buf += data
            while len(buf) >= P.PACKET_SIZE:
                pkt_bytes, buf = buf[:P.PACKET_SIZE], buf[P.PACKET_SIZE:]
                try:
                    pkt = P.unpack_feedback(pkt_bytes)
                except P.ProtocolError as exc:
                    self._lost(f"{self.host}: {exc}")
                    return
                self._seq += 1
                self._latest = Feedback(
                    stamp_ns=time.time_ns(), seq=self._seq, mode=int(pkt["robot_mode"]),
                    q=units.joints_from_controller(pkt["q_actual"]),
                    T_armbase_tcp=units.pose_from_controller(pkt["tool_vector_actual"]),
                    gripper=float(pkt["gripper_actual"]), controller_ms=int(pkt["timestamp_ms"]))
                self._fb_event.set()

    def latest(self) -> Feedback | None:
        return self._latest

    def wait_feedback(self, timeout_s: float = 1.0, newer_than: int = 0) -> Feedback | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fb = self._latest
            if fb is not None and fb.seq > newer_than:
                return fb
            self._fb_event.wait(0.01)
            self._fb_event.clear()
        return None

    # ------------------------------------------------------------------ commands
    def request(self, command: str) -> P.Reply:
        """Dashboard command and its reply. Raises ConnectionError / ProtocolError (non-zero ErrorID)."""
        with self._dash_lock:
            sock = self._dash
            if not self.connected or sock is None:
                raise ConnectionError(f"{self.host}: not connected ({self.last_error or 'never connected'})")
            try:
                sock.sendall(command.encode("ascii"))
                sock.settimeout(self.timeout_s)
                buf = b""
                while not buf.rstrip().endswith(b";"):
                    data = sock.recv(4096)
                    if not data:
                        raise OSError("connection closed")
                    buf += data
            except OSError as exc:
                self._lost(f"{self.host}: dashboard: {exc}")
                raise ConnectionError(f"{self.host}: dashboard command {command} failed: {exc}") from exc
        reply = P.parse_reply(buf.decode("ascii", errors="replace"))
        if reply.error_id != 0:
            raise P.ProtocolError(f"{self.host}: {command} returned ErrorID {reply.error_id}")
        return reply

    def send_motion(self, command: str) -> None:
        """Fire a motion command (ServoP/ServoJ); its reply is drained in the background and errors counted."""
        with self._motion_lock:
            sock = self._motion
            if not self.connected or sock is None:
                raise ConnectionError(f"{self.host}: not connected ({self.last_error or 'never connected'})")
            try:
                sock.sendall(command.encode("ascii"))
            except OSError as exc:
                self._lost(f"{self.host}: motion: {exc}")
                raise ConnectionError(f"{self.host}: motion command failed: {exc}") from exc

    def _drain_motion(self, sock: socket.socket) -> None:
        buf = ""
        while self.connected and sock is self._motion:
            try:
                sock.settimeout(0.5)
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                self._lost(f"{self.host}: motion connection closed by the controller")
                return
            buf += data.decode("ascii", errors="replace")
            while ";" in buf:
                line, buf = buf.split(";", 1)
                try:
                    if P.parse_reply(line + ";").error_id != 0:
                        self.motion_errors += 1
                except P.ProtocolError:
                    self.motion_errors += 1
