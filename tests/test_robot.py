"""X-Trainer driver against the protocol-level simulator over real loopback sockets."""
from __future__ import annotations

import dataclasses
import struct
import time

import numpy as np
import pytest

from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.robot import protocol as P
from posevla.robot import units
from posevla.robot.driver import XTrainerConfig, XTrainerDriver
from posevla.robot.feetech import GripperConfig
from posevla.robot.guard import GuardConfig, SetpointGuard
from posevla.robot.simulator import XTrainerSimulator


def test_protocol_text_and_feedback_layout() -> None:
    assert P.format_command("ServoP", 1, 2.5, -3.25, t=0.02) == "ServoP(1,2.5000,-3.2500,t=0.0200)"
    assert P.parse_command("servoP(1.5, -2,3,4,5,6,t=0.02)") == ("servop", [1.5, -2, 3, 4, 5, 6], {"t": 0.02})
    r = P.parse_reply("0,{-541.6,12.0},GetPose();")
    assert r.error_id == 0 and r.values == ["-541.6", "12.0"] and r.command == "GetPose()"
    assert P.parse_reply("-1,{},ServoP(1,2,3,4,5,6);").error_id == -1
    with pytest.raises(P.ProtocolError):
        P.parse_reply("garbage")
    with pytest.raises(ValueError, match="non-finite"):
        P.format_command("ServoJ", float("nan"))
    q = [1.0, 2, 3, 4, 5, 6]
    tv = [10.0, 20, 30, 40, 50, 60]
    raw = P.pack_feedback(robot_mode=5, q_actual=q, tool_vector_actual=tv, timestamp_ms=1234,
                          actual_quaternion=[1.0, 0.0, 0.0, 0.0])
    assert len(raw) == 1440
    # offsets as documented by Dobot
    assert struct.unpack_from("<H", raw, 0)[0] == 1440
    assert struct.unpack_from("<Q", raw, 24)[0] == 5
    assert struct.unpack_from("<Q", raw, 32)[0] == 1234
    assert struct.unpack_from("<Q", raw, 48)[0] == P.TEST_VALUE
    assert struct.unpack_from("<6d", raw, 432) == tuple(q)
    assert struct.unpack_from("<6d", raw, 624) == tuple(tv)
    assert struct.unpack_from("<4d", raw, 1384) == (1.0, 0.0, 0.0, 0.0)  # the vendor's actual_quaternion, wxyz
    pkt = P.unpack_feedback(raw)
    assert int(pkt["robot_mode"]) == 5 and list(pkt["tool_vector_actual"]) == tv
    with pytest.raises(P.ProtocolError, match="TestValue"):
        P.unpack_feedback(b"\x00" * 1440)


def test_units_round_trip_in_one_place() -> None:
    T = se3.T_from_xyz_rpy([0.4, -0.1, 0.25], [3.0, 0.2, -1.0])
    p = units.pose_to_controller(T)
    np.testing.assert_allclose(p[:3], [400.0, -100.0, 250.0])
    np.testing.assert_allclose(units.pose_from_controller(p), T, atol=1e-12)
    np.testing.assert_allclose(units.joints_from_controller(units.joints_to_controller([0.1, -2.0, 1, 0, 0, 3])),
                               [0.1, -2.0, 1, 0, 0, 3])


def _config(sim: XTrainerSimulator, grippers: dict | None = None, **safety) -> XTrainerConfig:
    arms = {}
    for arm, y in (("left", 0.3), ("right", -0.3)):
        ep = sim.endpoint(arm)
        arms[arm] = {"host": ep["host"], "dashboard_port": ep["dashboard_port"], "motion_port": ep["motion_port"],
                     "feedback_port": ep["feedback_port"], "mount_xyz": [0.0, y, 0.0], "mount_rpy": [0.0, 0.0, np.pi]}
    lim = {"workspace": {"left": {"lo": [0.1, -0.3, 0.02], "hi": [0.8, 0.7, 0.6]},
                         "right": {"lo": [0.1, -0.7, 0.02], "hi": [0.8, 0.3, 0.6]}},
           "max_linear_speed": 0.3, "max_angular_speed": 1.5, **safety}
    # feedback timing bounds generous enough for a loaded 2-core CI machine (the fault tests use larger faults)
    guard = {"feedback_timeout_s": 0.3, "feedback_max_delay_s": 0.15}
    return XTrainerConfig.from_dict({"arms": arms, "safety": lim, "reconnect_period_s": 0.2, "guard": guard,
                                     **({"grippers": grippers} if grippers else {})})


@pytest.fixture
def rig(tmp_path):
    grippers = {arm: {"port": str(tmp_path / f"{arm}_gripper"), "servo_id": 21 + i, "closed_pos": 3055, "open_pos": 2048,
                      "reply_timeout_s": 0.2}  # a busy CI machine delays the pty simulator
                for i, arm in enumerate(("left", "right"))}
    gcfg = {arm: GripperConfig.from_mapping(g) for arm, g in grippers.items()}
    sim = XTrainerSimulator({"left": "127.0.0.1", "right": "127.0.0.2"}, lag_s=0.03, grippers=gcfg)
    driver = XTrainerDriver(_config(sim, grippers))
    driver.connect()
    yield sim, driver
    driver.close()
    sim.close()


def _state(driver: XTrainerDriver, arm: str):
    """The arm's trusted state, waiting up to 5 s for one: on a loaded machine the newest feedback can be older
    than the driver's staleness bound for a moment, and arm_state() is then None (the arm takes no set-point)."""
    deadline = time.monotonic() + 5.0
    while (st := driver.arm_state(arm)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert st is not None, f"{arm} arm: no trusted state for 5 s"
    return st


def _drive_to(driver: XTrainerDriver, arm: str, T_goal: np.ndarray, rate_hz: float = 50.0) -> None:
    """Stream ServoP set-points from the current pose to T_goal within the speed limits."""
    T0 = _state(driver, arm).T_base_tcp
    dist = np.linalg.norm(T_goal[:3, 3] - T0[:3, 3])
    ang = float(se3.rotation_angle(T0[:3, :3].T @ T_goal[:3, :3]))
    n = int(np.ceil(max(dist / (0.2 / rate_hz), ang / (1.0 / rate_hz), 1)))
    path = [se3.slerp_T(T0, T_goal, s) for s in np.linspace(0, 1, n + 1)[1:]]
    # the guard shapes the start (acceleration limit), so the stream holds the goal a little longer at the end
    refused = []
    for T in path + [T_goal] * int(0.5 * rate_hz):
        if (why := driver.servo_pose(arm, T, 0.5, stamp_ns=time.time_ns())) is not None:
            refused.append(why)  # a loaded machine delays feedback: the lead bound may refuse a few
        time.sleep(1.0 / rate_hz)
    assert len(refused) < len(path), refused  # on a quiet machine none; the final pose is checked by the caller


def _settle(driver: XTrainerDriver, arm: str, T_goal: np.ndarray, timeout: float = 3.0) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        T = _state(driver, arm).T_base_tcp
        if np.linalg.norm(T[:3, 3] - T_goal[:3, 3]) < 2e-4:
            break
        time.sleep(0.02)
    return _state(driver, arm).T_base_tcp


def test_servo_pose_reaches_base_frame_target_on_both_arms(rig) -> None:
    sim, driver = rig
    for arm, dy in (("left", 0.06), ("right", -0.04)):
        T0 = _state(driver, arm).T_base_tcp
        T_goal = se3.T_from_xyz_rpy(T0[:3, 3] + [0.05, dy, -0.04], [0, 0, 0]) @ se3.make_T(T0[:3, :3], [0, 0, 0])
        T_goal = T_goal @ se3.T_from_xyz_rpy([0, 0, 0], [0.1, -0.05, 0.2])
        _drive_to(driver, arm, T_goal)
        T = _settle(driver, arm, T_goal)
        assert np.linalg.norm(T[:3, 3] - T_goal[:3, 3]) < 1e-3
        assert np.rad2deg(se3.rotation_angle(T[:3, :3].T @ T_goal[:3, :3])) < 0.5
    # the mounting transforms differ: the same base-frame target maps to different arm-frame commands
    assert "ServoP(" in sim.arms["left"].received[-1][1] and "ServoP(" in sim.arms["right"].received[-1][1]


def test_servo_joints_and_gripper(rig) -> None:
    sim, driver = rig
    q0 = driver.feedback("left").q
    refused = 0
    for k in range(1, 41):  # a teleop-like ramp at ~0.13 m/s of the TCP
        refused += driver.servo_joints("left", q0 + [0.0025 * k, 0, -0.002 * k, 0, 0, 0.0015 * k], gripper=0.2) is not None
        time.sleep(0.02)
    assert refused <= 4, refused  # jitter of the sending loop may refuse a few; the driver brakes meanwhile
    deadline = time.monotonic() + 3.0
    target = q0 + [0.1, 0, -0.08, 0, 0, 0.06]
    while time.monotonic() < deadline and np.abs(driver.feedback("left").q - target).max() > 1e-3:
        # shaped; a request that stops shorter than the deceleration limit allows is refused, and the driver
        # brakes the joint stream itself, after which the requests are followed again
        driver.servo_joints("left", target, gripper=0.2)
        time.sleep(0.02)
    np.testing.assert_allclose(driver.feedback("left").q, target, atol=1e-3)
    # the gripper is a Feetech servo on its own (simulated) RS-485 bus, measured there
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not abs(_state(driver, "left").gripper - 0.2) < 0.01:
        time.sleep(0.02)
    assert abs(_state(driver, "left").gripper - 0.2) < 0.01
    assert abs(sim.gripper_buses["left"].position(21) - (3055 + 0.2 * (2048 - 3055))) < 15  # servo steps
    # a joint jump whose TCP moves further than max_request_m is refused; the TCP is checked through FK
    assert "max_request_m" in driver.servo_joints("left", q0 + [0.5, 0, 0, 0, 0, 0])


def test_unsafe_and_stale_commands_are_refused_and_never_reach_the_socket(rig) -> None:
    sim, driver = rig
    T = _state(driver, "left").T_base_tcp
    n0 = len(sim.arms["left"].received)
    far = T.copy()
    far[:3, 3] += [0.2, 0, 0]
    assert "mm from the current set-point" in driver.servo_pose("left", far, stamp_ns=time.time_ns())
    bad = T.copy()
    bad[0, 0] = np.nan
    assert "NaN" in driver.servo_pose("left", bad)
    outside = T.copy()
    outside[2, 3] = -0.5
    assert "workspace" in driver.servo_pose("left", outside)
    assert "old" in driver.servo_pose("left", T, stamp_ns=time.time_ns() - int(1e9))
    assert "future" in driver.servo_pose("left", T, stamp_ns=time.time_ns() + int(1e9))
    assert len(sim.arms["left"].received) == n0


def _wide_guard(driver: XTrainerDriver, **guard) -> None:
    """Speed, workspace and lead limits out of the way, so only the reachability check can refuse."""
    wide = SafetyLimits.from_dict({"workspace": {"left": {"lo": [-5, -5, -5], "hi": [5, 5, 5]},
                                                 "right": {"lo": [-5, -5, -5], "hi": [5, 5, 5]}},
                                   "max_linear_speed": 1000.0, "max_angular_speed": 100.0, "max_linear_accel": 1e6})
    g = GuardConfig(max_request_m=10.0, max_lead_m=10.0, max_request_rad=3.0, max_lead_rad=3.0, **guard)
    driver.guards["left"] = SetpointGuard("left", wide, g)
    driver.cfg = dataclasses.replace(driver.cfg, guard=g)


def test_unreachable_pose_is_never_sent(rig) -> None:
    """A ServoP set-point without an IK solution near the measured joints is refused by the driver: the controller
    receives nothing and stays enabled (sent, it would raise an IK alarm and stop)."""
    sim, driver = rig
    _wide_guard(driver)
    n0 = len(sim.arms["left"].received)
    T = _state(driver, "left").T_base_tcp.copy()
    T[:3, 3] = [2.5, 0.3, 0.3]  # beyond the arm's reach
    reason = driver.servo_pose("left", T)
    assert reason is not None and "inverse-kinematics" in reason and "unreachable" in reason, reason
    time.sleep(0.1)
    assert len(sim.arms["left"].received) == n0 and not sim.arms["left"].errors
    assert driver.feedback("left").mode != P.MODE_ERROR
    assert driver.servo_pose("left", _state(driver, "left").T_base_tcp) is None  # a reachable one still goes


def test_setpoint_needing_a_large_joint_turn_is_refused(rig) -> None:
    """The TCP limits do not bound joint speeds near a singularity: a set-point whose IK solution turns a joint
    further than max_ik_joint_step_rad from the measured joints is not sent; a smaller turn is."""
    sim, driver = rig
    _wide_guard(driver, max_ik_joint_step_rad=0.2)
    q0 = driver.feedback("left").q
    T0 = _state(driver, "left").T_base_tcp
    n0 = len(sim.arms["left"].received)
    turn = lambda a: T0 @ se3.T_from_xyz_rpy([0.0, 0.0, 0.0], [0.0, 0.0, a])  # noqa: E731 - about the tool z
    reason = driver.servo_pose("left", turn(0.4))
    assert reason is not None and "joint 6 to turn 0.40 rad" in reason and "0.2" in reason, reason
    assert len(sim.arms["left"].received) == n0
    assert driver.servo_pose("left", turn(0.1)) is None
    deadline = time.monotonic() + 5.0
    while len(sim.arms["left"].received) < n0 + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sim.arms["left"].received) == n0 + 1
    sent = units.pose_from_controller(np.array(P.parse_command(sim.arms["left"].received[-1][1])[1]))
    np.testing.assert_allclose(sent, driver.T_armbase_base["left"] @ turn(0.1), atol=1e-4)
    np.testing.assert_allclose(driver.feedback("left").q[:5], q0[:5], atol=1e-3)


def test_controller_alarm_holds_the_arm_until_cleared(rig) -> None:
    sim, driver = rig
    q_before = driver.feedback("left").q
    T_here = _state(driver, "left").T_base_tcp  # where the arm rests (a loaded machine may let feedback age)
    with sim.arms["left"].lock:
        sim.arms["left"]._alarm(22)  # an alarm raised by the controller itself (IK, collision detection, ...)
    deadline = time.monotonic() + 5.0  # until the alarm's feedback arrived
    while driver.feedback("left").mode != P.MODE_ERROR and time.monotonic() < deadline:
        time.sleep(0.01)
    assert driver.feedback("left").mode == P.MODE_ERROR
    n0 = len(sim.arms["left"].received)
    reason = driver.servo_pose("left", T_here)
    assert reason is not None and ("error state" in reason or "rejected" in reason), reason
    assert len(sim.arms["left"].received) == n0
    np.testing.assert_allclose(driver.feedback("left").q, q_before, atol=1e-4)
    driver.clear_error("left")
    deadline = time.monotonic() + 5.0  # until feedback after the clear is in: then the arm takes set-points again
    while (reason := driver.servo_pose("left", T_here)) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reason is None, reason


def test_estop_stops_sending_until_reset(rig) -> None:
    sim, driver = rig
    T = _state(driver, "right").T_base_tcp
    driver.estop()
    n0 = len(sim.arms["right"].received)
    assert "e-stop" in driver.servo_pose("right", T)
    assert len(sim.arms["right"].received) == n0
    driver.reset_estop()
    assert driver.servo_pose("right", T) is None


def test_dropped_connection_recovers_without_a_jump(rig) -> None:
    sim, driver = rig
    T0 = _state(driver, "left").T_base_tcp
    T_goal = T0.copy()
    T_goal[:3, 3] += [0.04, 0.0, 0.0]
    _drive_to(driver, "left", T_goal)
    sim.controllers["left"].refuse_connections(0.6)
    sim.controllers["left"].drop_clients()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and driver.clients["left"].connected:
        time.sleep(0.01)
    why = driver.servo_pose("left", T_goal)
    assert "not connected" in why or "feedback" in why, why
    deadline = time.monotonic() + 5  # until the driver has noticed the drop and reconnected
    while time.monotonic() < deadline and not (driver.clients["left"].connected and driver.reconnects["left"] >= 1):
        time.sleep(0.05)
    assert driver.clients["left"].connected and driver.reconnects["left"] >= 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and driver.arm_state("left") is None:
        time.sleep(0.01)
    actual = _state(driver, "left").T_base_tcp
    # a command from before the drop, 45 mm from the actual pose, restarts from the measured pose at rest:
    # what goes out is one acceleration-limited step from the arm, not the requested point
    stale_target = actual.copy()
    stale_target[:3, 3] += [0.045, 0, 0]
    n0 = len(sim.arms["left"].received)
    deadline = time.monotonic() + 5  # the restart waits for two fresh packets showing the arm at rest
    while (why := driver.servo_pose("left", stale_target, stamp_ns=time.time_ns())) is not None:
        assert "rest" in why or "fresh" in why, why
        assert time.monotonic() < deadline, why
        time.sleep(0.01)
    actual = _state(driver, "left").T_base_tcp
    deadline = time.monotonic() + 2
    while len(sim.arms["left"].received) <= n0 and time.monotonic() < deadline:
        time.sleep(0.01)
    first = sim.arms["left"].received[n0][1]
    _, args, kw = P.parse_command(first)
    T_sent = driver.cfg.arms["left"].T_base_armbase @ units.pose_from_controller(np.array(args))
    step = np.linalg.norm(T_sent[:3, 3] - actual[:3, 3])
    assert step <= driver.cfg.safety.max_linear_accel * kw["t"] ** 2 + 1e-3, step  # no jump after reconnecting


def test_unreachable_controller_gives_clear_error() -> None:
    cfg = XTrainerConfig.from_dict({"arms": {"left": {"host": "127.0.0.1", "dashboard_port": 1, "motion_port": 1,
                                                      "feedback_port": 1, "mount_xyz": [0, 0, 0], "mount_rpy": [0, 0, 0]}},
                                    "safety": {"workspace": {"left": {"lo": [0, 0, 0], "hi": [1, 1, 1]}}}})
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        XTrainerDriver(cfg).connect()
    with pytest.raises(ValueError, match="arms.left"):
        XTrainerConfig.from_dict({"arms": {"left": {"host": "x"}}, "safety": {"workspace": {}}})


