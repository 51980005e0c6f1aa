"""X-Trainer simulator: two Nova-like arms behind the real Dobot TCP/IP protocol, on loopback.

Each arm is its own "controller" with a dashboard port (commands + replies), a motion port (ServoJ/ServoP/
MovJ, replies too, as V3 controllers do) and a feedback port streaming 1440-byte packets every 8 ms.
Simple dynamics: a first-order lag (time constant `lag_s`) toward the joint target, with a joint speed cap;
ServoP goes through inverse kinematics (unreachable -> controller error state, like the real one); joint
limits. Every motion command received is recorded (for tests that check what reached the socket).

Run it: `posevla xtrainer-sim --help`.
"""
from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posevla.geometry import se3
from posevla.robot import protocol as P
from posevla.robot import units
from posevla.robot.feetech import GripperConfig
from posevla.robot.feetech_sim import FeetechBusSim
from posevla.robot.kinematics import ArmKinematics

ERROR_IK = 22  # controller alarm id used by the simulator for an unreachable Cartesian target


@dataclass
class Faults:
    """Faults a test injects into one simulated controller (all off by default)."""

    reply_delay_s: dict[str, float] = field(default_factory=dict)  # command name (lower case) -> reply delay (s)
    trickle_s: float = 0.0  # > 0: dashboard replies go out one byte every trickle_s seconds
    dashboard_reply: str | None = None  # replace every dashboard reply with this text (garbage, huge ErrorID)
    motion_reply: str | None = None  # replace every motion-port reply with this text
    tcp_offset_m: np.ndarray | None = None  # added to the reported TCP position (feedback glitch), metres
    tcp_nan: bool = False  # report NaN in the TCP pose
    feedback_delay_s: float = 0.0  # deliver feedback packets this late (they keep their controller timestamp)


@dataclass
class ArmSim:
    """State of one simulated arm (radians). Its gripper is not here: the X-Trainer's grippers are Feetech servos
    on their own RS-485 bus (`posevla.robot.feetech_sim` simulates that bus on a pty)."""

    name: str
    kin: ArmKinematics = field(default_factory=ArmKinematics)
    lag_s: float = 0.04
    max_joint_speed: float = 3.0  # rad/s
    q: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    q_target: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__
    tool_index: int = 0  # the selected tool frame (Tool(i)); 0 = the flange
    tools: dict[int, np.ndarray] = field(default_factory=dict)  # SetTool(i, {x,y,z,rx,ry,rz}) -> T_flange_tool
    mode: int = P.MODE_DISABLED
    errors: list[int] = field(default_factory=list)
    # every command received: (monotonic time, text, port "motion"|"dashboard", T_armbase_tcp of the arm then)
    received: list[tuple[float, str, str, np.ndarray]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.q is None:
            self.q = self.kin.home()
        self.q_target = self.q.copy()

    def step(self, dt: float) -> None:
        with self.lock:
            if self.mode in (P.MODE_ENABLED, P.MODE_RUNNING):
                dq = (self.q_target - self.q) * min(1.0, dt / self.lag_s)
                dq = np.clip(dq, -self.max_joint_speed * dt, self.max_joint_speed * dt)
                self.q = self.q + dq
                moving = np.abs(self.q_target - self.q).max() > 1e-5
                self.mode = P.MODE_RUNNING if moving else P.MODE_ENABLED

    def feedback(self) -> bytes:
        with self.lock:
            T_tcp = self.kin.fk(self.q)
            tcp = units.pose_to_controller(T_tcp)
            if self.faults.tcp_offset_m is not None:
                tcp[:3] += np.asarray(self.faults.tcp_offset_m, float) * units.MM_PER_M
            if self.faults.tcp_nan:
                tcp[:] = np.nan
            return P.pack_feedback(robot_mode=self.mode, timestamp_ms=int(time.time() * 1000),
                                   q_actual=units.joints_to_controller(self.q),
                                   q_target=units.joints_to_controller(self.q_target),
                                   tool_vector_actual=tcp,
                                   tool_vector_target=units.pose_to_controller(self.kin.fk(self.q_target)),
                                   actual_quaternion=np.roll(se3.quat_from_matrix(T_tcp[:3, :3]), 1),  # xyzw -> the wire's wxyz
                                   tool=self.tool_index, enable_status=int(self.mode in (P.MODE_ENABLED, P.MODE_RUNNING)),
                                   speed_scaling=1.0)

    # ------------------------------------------------------------------ commands
    def handle(self, text: str, motion: bool) -> str:
        try:
            name, args, kw = P.parse_command(text)
        except P.ProtocolError:
            return P.format_reply(-10000, [], text.strip())
        with self.lock:
            self.received.append((time.monotonic(), text, "motion" if motion else "dashboard", self.kin.fk(self.q)))
        ik_solution = None
        if name == "servop" and len(args) == 6 and np.all(np.isfinite(args)):
            with self.lock:
                seed = self.q_target.copy()
            # inverse kinematics outside the lock, so feedback keeps streaming while it runs
            ik_solution = self.kin.ik(units.pose_from_controller(np.array(args)), seed)
        with self.lock:
            return P.format_reply(*self._dispatch(name, args, kw, ik_solution), text.strip())

    def _dispatch(self, name: str, args: list[float], kw: dict[str, float],
                  ik_solution: np.ndarray | None = None) -> tuple[int, list]:
        if name == "enablerobot":
            if self.mode == P.MODE_ERROR:
                return -1, []
            self.mode = P.MODE_ENABLED
            self.q_target = self.q.copy()
            return 0, []
        if name == "disablerobot":
            self.mode = P.MODE_DISABLED
            return 0, []
        if name == "clearerror":
            self.errors.clear()
            if self.mode == P.MODE_ERROR:
                self.mode = P.MODE_DISABLED
            return 0, []
        if name in ("stop", "emergencystop"):
            self.q_target = self.q.copy()
            if name == "emergencystop":
                self.mode = P.MODE_DISABLED
            return 0, []
        if name == "robotmode":
            return 0, [self.mode]
        if name == "geterrorid":
            return 0, ["[" + ",".join(str(e) for e in self.errors) + "]"]
        if name == "getangle":
            return 0, list(units.joints_to_controller(self.q))
        if name == "getpose":
            return 0, list(units.pose_to_controller(self.kin.fk(self.q)))
        if name == "settool":  # SetTool(index, {x, y, z, rx, ry, rz}) in mm/deg, on the flange
            if len(args) != 7 or not 0 <= args[0] <= 9:
                return -2, []
            self.tools[int(args[0])] = units.pose_from_controller(np.array(args[1:7]))
            self._apply_tool()
            return 0, []
        if name == "tool":
            if len(args) != 1 or int(args[0]) != 0 and int(args[0]) not in self.tools:
                return -1, []
            self.tool_index = int(args[0])
            self._apply_tool()
            return 0, []
        if name in ("speedfactor", "accj", "accl", "speedj", "speedl"):
            return (0, []) if len(args) == 1 and 1 <= args[0] <= 100 else (-2, [])
        if name in ("servoj", "servop", "movj"):
            if self.mode not in (P.MODE_ENABLED, P.MODE_RUNNING):
                return -1, []  # not enabled (or in error): the command is refused
            if len(args) != 6 or not np.all(np.isfinite(args)):
                return -2, []
            if name in ("servoj", "movj"):
                q = units.joints_from_controller(np.array(args))
                if not self.kin.within_limits(q):
                    return self._alarm(ERROR_IK)
            else:
                if ik_solution is None:
                    return self._alarm(ERROR_IK)
                q = ik_solution
            self.q_target = q
            return 0, []
        return -10000, []  # unknown command

    def _apply_tool(self) -> None:
        self.kin.T_flange_tool = self.tools.get(self.tool_index, np.eye(4)) if self.tool_index else np.eye(4)

    def _alarm(self, error_id: int) -> tuple[int, list]:
        self.errors.append(error_id)
        self.mode = P.MODE_ERROR
        self.q_target = self.q.copy()
        return -1, []


class _Server:
    """One listening port; one thread per client; line-less command framing `Name(...)`."""

    def __init__(self, host: str, port: int, on_client) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.on_client = on_client
        self.clients: list[socket.socket] = []
        self.refuse_until = 0.0
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.clients.append(conn)
            threading.Thread(target=self.on_client, args=(conn,), daemon=True).start()

    def drop_clients(self) -> None:
        for c in list(self.clients):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.clients.clear()

    def close(self) -> None:
        self.running = False
        self.drop_clients()
        self.sock.close()


class ArmController:
    """The three ports of one simulated arm controller."""

    def __init__(self, arm: ArmSim, host: str = "127.0.0.1", dashboard_port: int = 0, motion_port: int = 0,
                 feedback_port: int = 0, feedback_period_s: float = 0.008) -> None:
        self.arm, self.host, self.period = arm, host, feedback_period_s
        self.dashboard = _Server(host, dashboard_port, lambda c: self._serve_commands(c, motion=False))
        self.motion = _Server(host, motion_port, lambda c: self._serve_commands(c, motion=True))
        self.feedback = _Server(host, feedback_port, self._serve_feedback)

    @property
    def ports(self) -> dict[str, int]:
        return {"dashboard_port": self.dashboard.port, "motion_port": self.motion.port,
                "feedback_port": self.feedback.port}

    def _serve_commands(self, conn: socket.socket, motion: bool) -> None:
        buf = ""
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data.decode("ascii", errors="replace")
                while ")" in buf:
                    cmd, buf = buf.split(")", 1)
                    cmd = cmd.strip().lstrip(";").strip() + ")"
                    reply = self.arm.handle(cmd, motion)
                    f = self.arm.faults
                    name = cmd.split("(", 1)[0].strip().lower()
                    if f.reply_delay_s.get(name, 0.0) > 0:
                        time.sleep(f.reply_delay_s[name])
                    override = f.motion_reply if motion else f.dashboard_reply
                    if override is not None:
                        reply = override
                    if f.trickle_s > 0 and not motion:
                        for ch in reply:
                            conn.sendall(ch.encode("ascii"))
                            time.sleep(f.trickle_s)
                    else:
                        conn.sendall(reply.encode("ascii"))
        except OSError:
            return
        finally:
            conn.close()

    def _serve_feedback(self, conn: socket.socket) -> None:
        next_t = time.monotonic()
        queue: deque[tuple[float, bytes]] = deque()
        try:
            while True:
                queue.append((time.monotonic() + self.arm.faults.feedback_delay_s, self.arm.feedback()))
                while queue and queue[0][0] <= time.monotonic():
                    conn.sendall(queue.popleft()[1])
                next_t += self.period
                time.sleep(max(0.0, next_t - time.monotonic()))
        except OSError:
            return
        finally:
            conn.close()

    def drop_clients(self) -> None:
        for s in (self.dashboard, self.motion, self.feedback):
            s.drop_clients()

    def refuse_connections(self, seconds: float) -> None:
        for s in (self.dashboard, self.motion, self.feedback):
            s.refuse_until = time.monotonic() + seconds

    def close(self) -> None:
        for s in (self.dashboard, self.motion, self.feedback):
            s.close()


class XTrainerSimulator:
    """Both arms plus the physics thread. Ports default to free ones (0); pass the real ones for a demo."""

    def __init__(self, hosts: dict[str, str] | None = None, ports: dict[str, dict[str, int]] | None = None,
                 physics_hz: float = 500.0, lag_s: float = 0.04,
                 grippers: dict[str, GripperConfig] | None = None,
                 kinematics: dict[str, ArmKinematics] | None = None) -> None:
        """grippers: arm -> the gripper's configuration; a simulated Feetech bus is linked at its `port` path.
        kinematics: arm -> its model (flange frame; the tool comes from SetTool/Tool as on the controller)."""
        hosts = hosts or {"left": "127.0.0.1", "right": "127.0.0.1"}
        self.gripper_buses: dict[str, FeetechBusSim] = {}
        self._links: list[Path] = []
        for arm, g in (grippers or {}).items():
            bus = FeetechBusSim({g.servo_id: g.open_pos})
            link = Path(g.port)
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                raise OSError(f"simulated gripper port {link} exists and is not a link: refusing to replace it")
            link.symlink_to(bus.port)
            self.gripper_buses[arm] = bus
            self._links.append(link)
        self.arms = {name: ArmSim(name, lag_s=lag_s) if not (kinematics and name in kinematics)
                     else ArmSim(name, kinematics[name], lag_s=lag_s) for name in hosts}
        self.controllers = {name: ArmController(self.arms[name], host, **(ports or {}).get(name, {}))
                            for name, host in hosts.items()}
        self._running = True
        self._dt = 1.0 / physics_hz
        self._thread = threading.Thread(target=self._physics, daemon=True)
        self._thread.start()

    def _physics(self) -> None:
        last = time.monotonic()
        while self._running:
            time.sleep(self._dt)
            now = time.monotonic()
            for arm in self.arms.values():
                arm.step(now - last)
            last = now

    def endpoint(self, arm: str) -> dict:
        c = self.controllers[arm]
        return {"host": c.host, **c.ports}

    def close(self) -> None:
        self._running = False
        for c in self.controllers.values():
            c.close()
        for bus in self.gripper_buses.values():
            bus.close()
        for link in self._links:
            if link.is_symlink():
                link.unlink()


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--left-host", default="127.0.0.1", help="loopback address of the left controller")
    parser.add_argument("--right-host", default="127.0.0.2", help="loopback address of the right controller")
    parser.add_argument("--dashboard-port", type=int, default=P.DASHBOARD_PORT)
    parser.add_argument("--motion-port", type=int, default=P.MOTION_PORT)
    parser.add_argument("--feedback-port", type=int, default=P.FEEDBACK_PORT)
    parser.add_argument("--lag", type=float, default=0.04, help="tracking lag time constant, seconds")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: forever)")


def run(args: argparse.Namespace) -> int:
    ports = {"dashboard_port": args.dashboard_port, "motion_port": args.motion_port,
             "feedback_port": args.feedback_port}
    sim = XTrainerSimulator({"left": args.left_host, "right": args.right_host},
                            {"left": ports, "right": ports}, lag_s=args.lag)
    for arm in sim.arms:
        print(f"[xtrainer-sim] {arm} arm controller on {sim.endpoint(arm)}", flush=True)
    t_end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    try:
        while time.monotonic() < t_end:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    sim.close()
    return 0
