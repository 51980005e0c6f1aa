"""Fault injection against the real driver and the protocol simulator, measured at the simulated controller.

Each scenario drives `XTrainerDriver` (real sockets, real threads) while a fault is injected into the simulator
(`posevla.robot.simulator.Faults`) or into the command stream, then measures what the *controller* received:
for every pair of consecutive motion set-points, the step over the `t` sent with it (speed), the change of that
velocity over t (acceleration), the rotation over t, the distance from the set-point to where the simulated arm
actually was when it arrived, and whether anything ran after the last Stop(). `tests/test_robot_faults.py`
asserts the bounds; `posevla bench` prints the table (`benchmarks/bench_faults.py`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from posevla.geometry import se3
from posevla.robot import protocol as P
from posevla.robot import units
from posevla.robot.driver import XTrainerConfig, XTrainerDriver
from posevla.robot.simulator import XTrainerSimulator

LIMITS = {"max_linear_speed": 0.25, "max_angular_speed": 1.0, "max_linear_accel": 2.0}  # the shipped limits


@dataclass
class ControllerStats:
    """What one simulated controller received (base_link, metres, seconds)."""

    setpoints: int = 0
    max_speed: float = 0.0  # |step| / t
    max_accel: float = 0.0  # |v_i - v_{i-1}| / t_i (v = 0 before the first and after a gap > max_gap_s)
    max_angular_speed: float = 0.0
    max_distance_to_arm: float = 0.0  # set-point vs the simulated arm's actual TCP when it arrived
    max_t: float = 0.0
    after_last_stop: int = 0  # motion commands that arrived after the last Stop()
    stops: int = 0
    bunched: int = 0  # set-points that arrived together with the previous one (starved simulator thread)
    foreign: int = 0  # motion commands the controller received that the driver never sent
    notes: dict[str, float] = field(default_factory=dict)


def controller_stats(sim: XTrainerSimulator, cfg: XTrainerConfig, arm: str, since: float = 0.0,
                     sent_log: list[tuple[int, str]] | None = None) -> ControllerStats:
    """Measure the motion commands one controller received after monotonic time `since`.

    Intervals: a simulator thread starved by a busy test machine reads commands late and in bunches, so with
    `sent_log` (the driver's (send time, text) list) each received command is matched, in order, to the one the
    driver sent and the interval is the real one at the sender; a received command that the driver never sent
    is counted in `foreign`. Without it the arrival times are used."""
    T_base_armbase = cfg.arms[arm].T_base_armbase
    st = ControllerStats()
    prev: tuple[float, np.ndarray, np.ndarray, float] | None = None  # (time, T_base, v, t)
    last_stop = max((t for t, text, port, _ in sim.arms[arm].received if t >= since
                     and text.strip().lower().startswith("stop(")), default=None)
    kin = sim.arms[arm].kin
    log, k = list(sent_log or []), 0
    for t_rx, text, port, T_arm in list(sim.arms[arm].received):
        if t_rx < since:
            continue
        name = text.split("(", 1)[0].strip().lower()
        if name == "stop":
            st.stops += 1
            continue
        if port != "motion" or name not in ("servop", "servoj"):
            continue
        _, args, kw = P.parse_command(text)
        t = float(kw.get("t", cfg.servo_t))
        lost = 0
        if sent_log is not None:
            while k < len(log) and log[k][1] != text.strip():
                k += 1  # sent but lost (a dropped link): the controller stood at its last received set-point
                lost += 1
            if k == len(log):
                st.foreign += 1
                continue
            t_rx_sender = log[k][0] * 1e-9
            k += 1
        else:
            t_rx_sender = t_rx
        if name == "servop":
            T = T_base_armbase @ units.pose_from_controller(np.array(args))
        else:
            T = T_base_armbase @ kin.fk(units.joints_from_controller(np.array(args)))
        T_actual = T_base_armbase @ T_arm
        st.setpoints += 1
        st.max_t = max(st.max_t, t)
        st.max_distance_to_arm = max(st.max_distance_to_arm, float(np.linalg.norm(T[:3, 3] - T_actual[:3, 3])))
        if last_stop is not None and t_rx > last_stop:
            st.after_last_stop += 1
        # consecutive (previous velocity carries over) or after a gap (at rest, at the last set-point or at the arm);
        # arrival times jitter around the sender's, so near the gap threshold both readings are allowed
        gap = t_rx_sender - prev[0] if prev is not None else float("inf")
        slack = 0.0 if sent_log is not None else 0.05
        readings = []
        if gap <= cfg.guard.max_gap_s + slack and prev is not None:
            v = (T[:3, 3] - prev[1][:3, 3]) / t
            readings.append((v, float(np.linalg.norm(v - prev[2])) / t))
        # without the sender's times: a starved simulator thread reads several commands at once (gap unknown)
        bunched = sent_log is None and prev is not None and gap < 0.5 * prev[3]
        st.bunched += int(bunched)
        if gap > cfg.guard.max_gap_s - slack or bunched or lost:
            refs = [T_actual] + ([prev[1]] if prev is not None
                                 and float(np.linalg.norm(prev[1][:3, 3] - T_actual[:3, 3])) <= 0.005 else [])
            for R in refs:
                v = (T[:3, 3] - R[:3, 3]) / t
                readings.append((v, float(np.linalg.norm(v)) / t))
        v, acc = min(readings, key=lambda r: r[1])
        st.max_speed = max(st.max_speed, float(np.linalg.norm(v)))
        st.max_accel = max(st.max_accel, acc)
        if prev is not None and gap <= cfg.guard.max_gap_s + slack:
            ang = float(se3.rotation_angle(prev[1][:3, :3].T @ T[:3, :3])) / t
            st.max_angular_speed = max(st.max_angular_speed, ang)
        prev = (t_rx_sender, T, v, t)
    return st


def rig_config(sim: XTrainerSimulator, guard: dict | None = None) -> XTrainerConfig:
    arms = {}
    for arm, y in (("left", 0.3), ("right", -0.3)):
        ep = sim.endpoint(arm)
        arms[arm] = {**ep, "mount_xyz": [0.0, y, 0.0], "mount_rpy": [0.0, 0.0, np.pi]}
    safety = {"workspace": {"left": {"lo": [0.1, -0.3, 0.02], "hi": [0.8, 0.7, 0.6]},
                            "right": {"lo": [0.1, -0.7, 0.02], "hi": [0.8, 0.3, 0.6]}}, **LIMITS}
    g = {"feedback_timeout_s": 0.3, "feedback_max_delay_s": 0.15, **(guard or {})}
    return XTrainerConfig.from_dict({"arms": arms, "safety": safety, "reconnect_period_s": 0.2, "guard": g})


class Rig:
    """Simulator + connected driver; `stream` plays a request function at ~50 Hz like the executor."""

    def __init__(self, guard: dict | None = None) -> None:
        self.sim = XTrainerSimulator({"left": "127.0.0.1", "right": "127.0.0.2"}, lag_s=0.03)
        self.cfg = rig_config(self.sim, guard)
        self.driver = XTrainerDriver(self.cfg)
        self.driver.connect()
        self.refusals: list[str] = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(self.driver.arm_state(a) is None for a in self.cfg.arms):
            time.sleep(0.01)
        states = {arm: self.driver.arm_state(arm) for arm in self.cfg.arms}
        missing = [arm for arm, s in states.items() if s is None]
        if missing:
            raise RuntimeError(f"no feedback from the {missing} arm(s) within 10 s of connecting")
        self.T0 = {arm: s.T_base_tcp.copy() for arm, s in states.items() if s is not None}

    def close(self) -> None:
        self.driver.close()
        self.sim.close()

    def actual(self, arm: str) -> np.ndarray:
        with self.sim.arms[arm].lock:
            q = self.sim.arms[arm].q.copy()
        return self.cfg.arms[arm].T_base_armbase @ self.sim.arms[arm].kin.fk(q)

    def stream(self, seconds: float, request: Callable[[float], dict[str, np.ndarray]], period_s: float = 0.02,
               jitter_s: float = 0.0, stamp_offset_s: float = 0.0, pause: Callable[[float], float] | None = None,
               rng: np.random.Generator | None = None) -> None:
        """Send request(t) (arm -> T_base_tcp) every period_s for `seconds`; pause(t) may return a stall (s)."""
        rng = rng or np.random.default_rng(0)
        t0 = time.monotonic()
        while (t := time.monotonic() - t0) < seconds:
            for arm, T in request(t).items():
                why = self.driver.servo_pose(arm, T, stamp_ns=time.time_ns() + int(stamp_offset_s * 1e9))
                if why:
                    self.refusals.append(why)
            stall = pause(t) if pause else 0.0
            time.sleep(period_s + (rng.uniform(-jitter_s, jitter_s) if jitter_s else 0.0) + stall)


def goal_ahead(rig: Rig, arm: str, direction: np.ndarray | Sequence[float], speed: float) -> Callable[[float], np.ndarray]:
    """A goal moving from the start pose along `direction` at `speed` (m/s), as a fast policy would ask."""
    T0, d = rig.T0[arm], np.asarray(direction, float) / np.linalg.norm(direction)

    def f(t: float) -> np.ndarray:
        T = T0.copy()
        T[:3, 3] += d * min(speed * t, 0.12)
        return T
    return f


# ---------------------------------------------------------------------------------------- scenarios
def _measure(rig: Rig, since: float, arms: tuple[str, ...] = ("left",)) -> dict[str, ControllerStats]:
    time.sleep(0.3)  # let braking finish
    return {arm: controller_stats(rig.sim, rig.cfg, arm, since, list(rig.driver.sent_log[arm])) for arm in arms}


def s_baseline(rig: Rig) -> dict[str, ControllerStats]:
    """A policy asking for 0.3 m/s streamed at 50 Hz: shaped to the limits (then refused once the request runs
    more than max_request_m ahead of the set-points)."""
    since = time.monotonic()
    g = goal_ahead(rig, "left", [1, 0.5, 0], 0.3)
    rig.stream(1.2, lambda t: {"left": g(t)})
    return _measure(rig, since)


def s_jitter(rig: Rig) -> dict[str, ControllerStats]:
    """Send intervals 5..45 ms (a loaded machine): steps sized and sent with the real interval."""
    since = time.monotonic()
    g = goal_ahead(rig, "left", [0, 1, 0], 0.24)
    rig.stream(1.5, lambda t: {"left": g(t)}, period_s=0.025, jitter_s=0.02)
    return _measure(rig, since)


def s_stall(rig: Rig) -> dict[str, ControllerStats]:
    """The sender stalls 0.3 s mid-motion, then resumes with the goal far ahead."""
    since = time.monotonic()
    g = goal_ahead(rig, "left", [1, 0, 0], 0.2)
    stalled = [False]

    def pause(t: float) -> float:
        if t > 0.4 and not stalled[0]:
            stalled[0] = True
            return 0.3
        return 0.0
    rig.stream(1.5, lambda t: {"left": g(t)}, pause=pause)
    return _measure(rig, since)


def s_slow_dashboard(rig: Rig) -> dict[str, ControllerStats]:
    """Each dashboard reply takes 0.45 s while diagnostics poll RobotMode(): the set-points keep their timing."""
    rig.sim.arms["left"].faults.reply_delay_s["robotmode"] = 0.45
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                rig.driver.clients["left"].request("RobotMode()", 1.0)
            except (ConnectionError, P.ProtocolError):
                pass
    th = threading.Thread(target=poll, daemon=True)
    th.start()
    since = time.monotonic()
    g = goal_ahead(rig, "left", [0, 0, 1], 0.2)
    t0 = time.monotonic()
    rig.stream(1.5, lambda t: {"left": g(t)})
    stop.set()
    st = _measure(rig, since)
    st["left"].notes["stream_s"] = time.monotonic() - t0
    th.join(2.0)
    rig.sim.arms["left"].faults.reply_delay_s.clear()
    return st


def s_reconnect(rig: Rig) -> dict[str, ControllerStats]:
    """The link drops mid-motion and comes back: the first set-point afterwards starts at the arm, at rest."""
    since = time.monotonic()
    g = goal_ahead(rig, "left", [1, 0, 0], 0.2)
    dropped = [False]

    def pause(t: float) -> float:
        if t > 0.4 and not dropped[0]:
            dropped[0] = True
            rig.sim.controllers["left"].drop_clients()
        return 0.0
    rig.stream(2.5, lambda t: {"left": g(t)}, pause=pause)
    st = _measure(rig, since)
    st["left"].notes["reconnects"] = rig.driver.reconnects["left"]
    return st


def s_feedback_glitch(rig: Rig) -> dict[str, ControllerStats]:
    """The reported TCP jumps 100 mm for 50 ms while the policy re-plans from the measured pose."""
    since = time.monotonic()
    glitch = threading.Timer(0.3, lambda: setattr(rig.sim.arms["left"].faults, "tcp_offset_m", np.array([0.1, 0, 0])))
    end = threading.Timer(0.35, lambda: setattr(rig.sim.arms["left"].faults, "tcp_offset_m", None))
    glitch.start()
    end.start()
    rig.stream(1.0, lambda t: {"left": _measured_or_start(rig, "left")})
    st = _measure(rig, since)
    st["left"].notes["arm_moved_m"] = float(np.linalg.norm(rig.actual("left")[:3, 3] - rig.T0["left"][:3, 3]))
    return st


def s_feedback_offset(rig: Rig) -> dict[str, ControllerStats]:
    """A persistent 100 mm offset of the reported TCP (not of the joints) while the policy follows the
    measured pose plus 5 mm: with the FK cross-check the arm does not run away."""
    since = time.monotonic()
    rig.sim.arms["left"].faults.tcp_offset_m = np.array([0.1, 0.0, 0.0])
    step = np.array([0.005, 0, 0])

    def req(t: float) -> dict[str, np.ndarray]:
        T = _measured_or_start(rig, "left").copy()
        T[:3, 3] += step
        return {"left": T}
    rig.stream(1.0, req)
    rig.sim.arms["left"].faults.tcp_offset_m = None
    st = _measure(rig, since)
    st["left"].notes["arm_moved_m"] = float(np.linalg.norm(rig.actual("left")[:3, 3] - rig.T0["left"][:3, 3]))
    return st


def s_feedback_nan(rig: Rig) -> dict[str, ControllerStats]:
    """NaN in the reported TCP for 0.2 s while a far goal is requested: nothing moves on NaN."""
    since = time.monotonic()
    threading.Timer(0.2, lambda: setattr(rig.sim.arms["left"].faults, "tcp_nan", True)).start()
    threading.Timer(0.4, lambda: setattr(rig.sim.arms["left"].faults, "tcp_nan", False)).start()
    g = goal_ahead(rig, "left", [0, -1, 0], 0.2)
    rig.stream(1.0, lambda t: {"left": g(t)})
    return _measure(rig, since)


def s_feedback_late(rig: Rig) -> dict[str, ControllerStats]:
    """Feedback delivered 0.3 s late (it keeps its controller timestamp): the arm holds."""
    rig.sim.arms["left"].faults.feedback_delay_s = 0.3
    time.sleep(0.5)
    since = time.monotonic()
    g = goal_ahead(rig, "left", [1, 0, 0], 0.2)
    rig.stream(0.6, lambda t: {"left": g(t)})
    st = _measure(rig, since)
    rig.sim.arms["left"].faults.feedback_delay_s = 0.0
    return st


def s_arm_pause(rig: Rig) -> dict[str, ControllerStats]:
    """The right arm's stream pauses 0.5 s at full speed while the left continues, then resumes."""
    since = time.monotonic()
    gl = goal_ahead(rig, "left", [1, 0, 0], 0.2)
    gr = goal_ahead(rig, "right", [1, 0, 0], 0.3)

    def req(t: float) -> dict[str, np.ndarray]:
        out = {"left": gl(t)}
        if not 0.4 < t < 0.9:
            out["right"] = gr(t)
        return out
    rig.stream(1.4, req)
    return _measure(rig, since, ("left", "right"))


def s_rotation(rig: Rig) -> dict[str, ControllerStats]:
    """A request turning at 3 rad/s about z toward 180 deg: shaped to 1 rad/s, no Euler wrap in the speed."""
    since = time.monotonic()
    T0 = rig.T0["left"]

    def req(t: float) -> dict[str, np.ndarray]:
        T = T0.copy()
        T[:3, :3] = se3.matrix_from_euler(np.array([0.0, 0.0, min(3.0 * t, np.pi - 0.01)])) @ T0[:3, :3]
        return {"left": T}
    rig.stream(1.5, req)
    return _measure(rig, since)


def s_forged_stamps(rig: Rig) -> dict[str, ControllerStats]:
    """Commands stamped 1 s in the future with a far goal: refused, nothing sent."""
    since = time.monotonic()
    g = goal_ahead(rig, "left", [1, 0, 0], 3.0)
    rig.stream(0.5, lambda t: {"left": g(t)}, stamp_offset_s=1.0)
    return _measure(rig, since)


def s_estop_under_load(rig: Rig) -> dict[str, ControllerStats]:
    """E-stop while both arms stream from another thread: nothing runs after the last Stop()."""
    since = time.monotonic()
    gl, gr = goal_ahead(rig, "left", [1, 0, 0], 0.25), goal_ahead(rig, "right", [1, 0, 0], 0.25)
    th = threading.Thread(target=rig.stream, args=(1.0, lambda t: {"left": gl(t), "right": gr(t)}), daemon=True)
    th.start()
    time.sleep(0.5)
    t_stop = time.monotonic()
    rig.driver.estop()
    returned = time.monotonic() - t_stop
    th.join()
    st = _measure(rig, since, ("left", "right"))
    for s in st.values():
        s.notes["estop_returned_s"] = returned
    rig.driver.reset_estop()
    return st


def s_trickle(rig: Rig) -> dict[str, ControllerStats]:
    """The dashboard trickles one byte every 0.5 s: e-stop still returns promptly and Stop() reaches both arms."""
    for a in ("left", "right"):
        rig.sim.arms[a].faults.trickle_s = 0.5
    rig.driver.command_gripper("left", 0.3)  # a dashboard request now hangs on the trickle
    time.sleep(0.05)
    since = time.monotonic()
    t_stop = time.monotonic()
    rig.driver.estop()
    returned = time.monotonic() - t_stop
    st = _measure(rig, since, ("left", "right"))
    for s in st.values():
        s.notes["estop_returned_s"] = returned
    for a in ("left", "right"):
        rig.sim.arms[a].faults.trickle_s = 0.0
    return st


def s_malformed(rig: Rig) -> dict[str, ControllerStats]:
    """Dashboard replies with a 5000-digit ErrorID, then motion replies are garbage: never a crash, the arm holds."""
    rig.sim.arms["left"].faults.dashboard_reply = "9" * 5000 + ",{},Stop();"
    errors = []
    try:
        rig.driver.clients["left"].request("RobotMode()", 0.5)
    except (ConnectionError, P.ProtocolError) as exc:
        errors.append(type(exc).__name__)
    rig.sim.arms["left"].faults.dashboard_reply = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not rig.driver.clients["left"].connected or rig.driver.arm_state("left") is None):
        time.sleep(0.02)
    rig.sim.arms["left"].faults.motion_reply = "garbage;"
    since = time.monotonic()
    g = goal_ahead(rig, "left", [0, 1, 0], 0.2)
    rig.stream(0.6, lambda t: {"left": g(t)})
    rig.sim.arms["left"].faults.motion_reply = None
    st = _measure(rig, since)
    st["left"].notes["protocol_errors_raised"] = float(len(errors))
    return st


def _measured_or_start(rig: Rig, arm: str) -> np.ndarray:
    s = rig.driver.arm_state(arm)
    return rig.T0[arm] if s is None else s.T_base_tcp


SCENARIOS: dict[str, Callable[[Rig], dict[str, ControllerStats]]] = {
    "policy asks 0.3 m/s": s_baseline, "send jitter 5-45 ms": s_jitter, "0.3 s sender stall": s_stall,
    "dashboard replies 0.45 s": s_slow_dashboard, "link drop + reconnect": s_reconnect,
    "feedback glitch 100 mm / 50 ms": s_feedback_glitch, "feedback offset 100 mm, persistent": s_feedback_offset,
    "NaN feedback 0.2 s": s_feedback_nan, "feedback 0.3 s late": s_feedback_late,
    "one arm pauses 0.5 s": s_arm_pause, "180 deg turn at 3 rad/s": s_rotation,
    "future-stamped commands": s_forged_stamps, "e-stop while streaming": s_estop_under_load,
    "trickling dashboard + e-stop": s_trickle, "malformed replies": s_malformed,
}


def run_all(names: list[str] | None = None) -> dict[str, dict[str, ControllerStats]]:
    """Run scenarios, each on a fresh simulator and driver."""
    out = {}
    for name, fn in SCENARIOS.items():
        if names and name not in names:
            continue
        rig = Rig()
        try:
            out[name] = fn(rig)
        finally:
            rig.close()
    return out


def table(results: dict[str, dict[str, ControllerStats]], cfg: XTrainerConfig | None = None) -> str:
    lim = LIMITS
    lead = (cfg.guard.max_lead_m if cfg else 0.03) * 1e3
    lines = [f"{'scenario':38s} {'arm':5s} {'n':>4s} {'dist mm':>8s} {'v m/s':>6s} {'a m/s2':>7s} {'w rad/s':>7s} "
             f"{'after Stop':>10s} {'Stops':>5s} {'foreign':>7s}",
             f"{'limits':38s} {'':5s} {'':>4s} {lead:8.0f} {lim['max_linear_speed']:6.2f} "
             f"{lim['max_linear_accel']:7.2f} {lim['max_angular_speed']:7.2f} {0:10d} {'':>5s}"]
    for name, per_arm in results.items():
        for arm, s in per_arm.items():
            lines.append(f"{name:38s} {arm:5s} {s.setpoints:4d} {s.max_distance_to_arm * 1e3:8.1f} {s.max_speed:6.3f} "
                         f"{s.max_accel:7.2f} {s.max_angular_speed:7.3f} {s.after_last_stop:10d} {s.stops:5d} {s.foreign:7d}"
                         + "".join(f"  {k}={v:.3g}" for k, v in s.notes.items()))
    return "\n".join(lines)
