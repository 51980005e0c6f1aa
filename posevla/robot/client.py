"""One Dobot arm controller over TCP: dashboard requests, motion commands, the feedback stream, and a
separate e-stop channel.

Every socket operation has a deadline for the whole call (a controller that trickles one byte at a time
cannot hang a caller), replies are bounded in size and parsed into `ProtocolError` or a `Reply`, never
another exception. `Stop()` goes out on its own dashboard connection under its own lock, so a motion or
dashboard call that is stuck cannot delay it.

Feedback stamps: the controller's own TimeStamp (ms) mapped onto this PC's wall clock
(`time.time_ns()`, i.e. ROS system time) through the smallest receive-minus-controller offset seen
recently, so a packet that arrives late keeps its capture time and its delivery delay is known
(`Feedback.delay_s`). Without a controller timestamp the receive time is used and the delay is 0.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from posevla.robot import protocol as P
from posevla.robot import units

# the best-seen clock offset may rise this much per packet (controller clock drift), ns; a constant extra
# delivery delay is therefore only absorbed after minutes, never within a control episode
_OFFSET_DRIFT_NS_PER_PACKET = 20_000


@dataclass
class Feedback:
    """One decoded feedback packet (stack units): joints rad, T_armbase_tcp metres (of the selected tool frame).
    gripper: always NaN here (the grippers are not on the Dobot controller; the driver adds them).

    stamp_ns: capture time on this PC's wall clock (controller time mapped); recv_ns: arrival time;
    delay_s: how much later than the fastest recent packet this one arrived (stale feedback has a large one).
    """

    stamp_ns: int
    seq: int
    mode: int
    q: np.ndarray
    T_armbase_tcp: np.ndarray
    gripper: float
    controller_ms: int
    recv_ns: int = 0
    delay_s: float = 0.0


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left


def _recv_reply(sock: socket.socket, deadline: _Deadline) -> str:
    """Read one `...;` reply within the deadline, at most MAX_REPLY_BYTES."""
    buf = b""
    while not buf.rstrip().endswith(b";"):
        sock.settimeout(deadline.left())
        data = sock.recv(4096)
        if not data:
            raise OSError("connection closed")
        buf += data
        if len(buf) > P.MAX_REPLY_BYTES:
            raise P.ProtocolError(f"reply longer than {P.MAX_REPLY_BYTES} bytes")
    return buf.decode("ascii", errors="replace")


class DobotArmClient:
    def __init__(self, host: str, dashboard_port: int = P.DASHBOARD_PORT, motion_port: int = P.MOTION_PORT,
                 feedback_port: int = P.FEEDBACK_PORT, timeout_s: float = 1.0,
                 on_feedback: Callable[[Feedback], None] | None = None,
                 on_motion_error: Callable[[str], None] | None = None) -> None:
        self.host, self.timeout_s = host, timeout_s
        self.ports = (dashboard_port, motion_port, feedback_port)
        self.on_feedback, self.on_motion_error = on_feedback, on_motion_error
        self._dash: socket.socket | None = None
        self._motion: socket.socket | None = None
        self._feed: socket.socket | None = None
        self._estop_sock: socket.socket | None = None
        self._dash_lock = threading.Lock()
        self._motion_lock = threading.Lock()
        self._estop_lock = threading.Lock()
        self._latest: Feedback | None = None
        self._seq = 0
        self._offset_ns: int | None = None
        self._fb_event = threading.Event()
        self.connected = False
        self.last_error = ""
        self.motion_sent = 0
        self.motion_replied = 0
        self.motion_errors = 0
        self.last_motion_error = ""

    # ------------------------------------------------------------------ connection
    def _open(self, port: int) -> socket.socket:
        s = socket.create_connection((self.host, port), timeout=self.timeout_s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def connect(self) -> None:
        """Open the three sockets and the e-stop channel; raises ConnectionError naming the host and port."""
        self.close()
        socks: list[socket.socket] = []
        port = self.ports[0]
        try:
            for port in self.ports:
                socks.append(self._open(port))
        except OSError as exc:
            for s in socks:
                s.close()
            raise ConnectionError(f"cannot connect to Dobot controller {self.host}:{port}: {exc}") from exc
        self._dash, self._motion, self._feed = socks
        try:  # a second dashboard connection only for Stop(); without it Stop() shares the dashboard's
            self._estop_sock = self._open(self.ports[0])
        except OSError:
            self._estop_sock = None
        self._latest = None
        self._offset_ns = None
        self._fb_event.clear()
        self.motion_sent = self.motion_replied = 0
        self.connected = True
        self.last_error = ""
        threading.Thread(target=self._read_feedback, args=(self._feed,), daemon=True,
                         name=f"dobot-feedback-{self.host}").start()
        threading.Thread(target=self._drain_motion, args=(self._motion,), daemon=True,
                         name=f"dobot-motion-{self.host}").start()

    def close(self) -> None:
        self.connected = False
        for s in (self._dash, self._motion, self._feed, self._estop_sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._dash = self._motion = self._feed = self._estop_sock = None

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
                    fb = self._decode(pkt_bytes)
                except P.ProtocolError as exc:
                    self._lost(f"{self.host}: {exc}")
                    return
                self._latest = fb
                if self.on_feedback is not None:
                    self.on_feedback(fb)
                self._fb_event.set()

    def _decode(self, pkt_bytes: bytes) -> Feedback:
        pkt = P.unpack_feedback(pkt_bytes)
        recv = time.time_ns()
        ctrl_ms = int(pkt["timestamp_ms"])
        stamp, delay = recv, 0.0
        if ctrl_ms > 0:
            offset = recv - ctrl_ms * 1_000_000
            if self._offset_ns is None:
                self._offset_ns = offset
            else:
                self._offset_ns = min(self._offset_ns + _OFFSET_DRIFT_NS_PER_PACKET, offset)
            stamp = ctrl_ms * 1_000_000 + self._offset_ns
            delay = (offset - self._offset_ns) * 1e-9
        self._seq += 1
        return Feedback(stamp_ns=stamp, seq=self._seq, mode=int(pkt["robot_mode"]),
                        q=units.joints_from_controller(pkt["q_actual"]),
                        T_armbase_tcp=units.pose_from_controller(pkt["tool_vector_actual"]),
                        gripper=float("nan"), controller_ms=ctrl_ms, recv_ns=recv, delay_s=delay)

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
    def request(self, command: str, timeout_s: float | None = None) -> P.Reply:
        """Dashboard command and its reply within timeout_s for the whole call (lock wait included).

        Raises ConnectionError (link down, deadline passed) or ProtocolError (malformed reply, ErrorID != 0).
        """
        deadline = _Deadline(self.timeout_s if timeout_s is None else timeout_s)
        if not self._dash_lock.acquire(timeout=max(deadline.end - time.monotonic(), 0.0)):
            raise ConnectionError(f"{self.host}: dashboard busy, {command} not sent within the deadline")
        try:
            sock = self._dash
            if not self.connected or sock is None:
                raise ConnectionError(f"{self.host}: not connected ({self.last_error or 'never connected'})")
            try:
                sock.settimeout(deadline.left())
                sock.sendall(command.encode("ascii"))
                text = _recv_reply(sock, deadline)
            except (OSError, P.ProtocolError) as exc:  # TimeoutError is an OSError
                # the stream is out of step with its replies now: drop the link, the supervisor reconnects
                self._lost(f"{self.host}: dashboard: {exc or 'deadline passed'}")
                raise ConnectionError(f"{self.host}: dashboard command {command} failed: "
                                      f"{exc or 'deadline passed'}") from exc
        finally:
            self._dash_lock.release()
        reply = P.parse_reply(text)
        if reply.error_id != 0:
            raise P.ProtocolError(f"{self.host}: {command} returned ErrorID {reply.error_id}")
        return reply

    def stop_now(self, timeout_s: float = 0.2) -> bool:
        """Send Stop() on the e-stop channel (its own connection and lock). True when the controller acknowledged."""
        if self._estop_sock is None:
            try:
                self.request("Stop()", timeout_s)
                return True
            except (ConnectionError, P.ProtocolError):
                return False
        deadline = _Deadline(timeout_s)
        with self._estop_lock:
            sock = self._estop_sock
            if sock is None:
                return False
            try:
                sock.settimeout(deadline.left())
                sock.sendall(b"Stop()")
                return P.parse_reply(_recv_reply(sock, deadline)).error_id == 0
            except (OSError, P.ProtocolError):
                return False

    def send_motion(self, command: str, timeout_s: float = 0.05) -> None:
        """Fire a motion command (ServoP/ServoJ) within timeout_s; replies are drained in the background.
        A controller that rejects one (ErrorID != 0) or answers garbage calls on_motion_error."""
        if not self._motion_lock.acquire(timeout=timeout_s):
            raise ConnectionError(f"{self.host}: motion channel busy")
        try:
            sock = self._motion
            if not self.connected or sock is None:
                raise ConnectionError(f"{self.host}: not connected ({self.last_error or 'never connected'})")
            try:
                sock.sendall(command.encode("ascii"))
            except OSError as exc:
                self._lost(f"{self.host}: motion: {exc}")
                raise ConnectionError(f"{self.host}: motion command failed: {exc}") from exc
            self.motion_sent += 1
        finally:
            self._motion_lock.release()

    def motion_idle(self) -> bool:
        """Every motion command sent so far has been answered (the controller has read them all)."""
        return self.motion_replied >= self.motion_sent

    def _drain_motion(self, sock: socket.socket) -> None:
        # the send side uses the same timeout: a controller that stops reading cannot block sendall for long
        sock.settimeout(0.2)
        buf = ""
        while self.connected and sock is self._motion:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                self._lost(f"{self.host}: motion connection closed by the controller")
                return
            buf += data.decode("ascii", errors="replace")
            if len(buf) > P.MAX_REPLY_BYTES and ";" not in buf:
                self._motion_error(f"motion reply longer than {P.MAX_REPLY_BYTES} bytes")
                buf = ""
            while ";" in buf:
                line, buf = buf.split(";", 1)
                self.motion_replied += 1
                try:
                    reply = P.parse_reply(line + ";")
                except P.ProtocolError as exc:
                    self._motion_error(str(exc))
                    continue
                if reply.error_id != 0:
                    self._motion_error(f"{reply.command or 'motion command'} rejected with ErrorID {reply.error_id}")

    def _motion_error(self, why: str) -> None:
        self.motion_errors += 1
        self.last_motion_error = why
        if self.on_motion_error is not None:
            self.on_motion_error(why)
