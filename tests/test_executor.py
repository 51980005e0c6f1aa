"""The chunk executor: time alignment, blending, watchdog, e-stop and (property-based) safety limits."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posevla.control.executor import ArmCommand, ChunkExecutor, ExecutorConfig, Hold
from posevla.control.interpolation import sample_chunk
from posevla.control.safety import SafetyLimits
from posevla.geometry import se3
from posevla.types import ActionChunk, ArmChunk

LIMITS = SafetyLimits.from_dict({"workspace": {"left": {"lo": [0.1, -0.3, 0.02], "hi": [0.8, 0.7, 0.6]},
                                               "right": {"lo": [0.1, -0.7, 0.02], "hi": [0.8, 0.3, 0.6]}},
                                 "max_linear_speed": 0.25, "max_angular_speed": 1.0, "max_linear_accel": 2.0})
MS = 1_000_000
T_HOME = se3.T_from_xyz_rpy([0.4, 0.3, 0.25], [np.pi, 0, 0])


def _line_chunk(stamp: int, start: np.ndarray, end: np.ndarray, n: int = 50, dt: float = 0.02, arm="left"):
    p = np.linspace(start, end, n)
    T = np.tile(T_HOME, (n, 1, 1))
    T[:, :3, 3] = p
    return ActionChunk("base_link", stamp, dt, {arm: ArmChunk(T, np.full(n, 0.5))})


def _run(ex: ChunkExecutor, t0: int, ticks: int) -> list:
    """Tick with a perfect arm: the measured pose is the last command."""
    measured = {"left": (T_HOME, 0.5), "right": (T_HOME, 0.5)}
    out = []
    for i in range(ticks):
        out.append(ex.tick(t0 + i * 20 * MS, measured))
        if isinstance(out[-1], dict):
            measured.update({a: (c.T_base_tcp, c.gripper) for a, c in out[-1].items()})
    return out


def test_executor_replans_from_the_arm_when_it_does_not_follow() -> None:
    ex = ChunkExecutor(ExecutorConfig(blend="replace", watchdog_s=5.0), LIMITS)
    t0 = 1_000 * MS
    ex.submit(_line_chunk(t0, [0.4, 0.3, 0.25], [0.5, 0.3, 0.25], n=100), t0)
    stuck = {"left": (T_HOME, 0.5)}  # commands are refused downstream: the arm stays at home
    cmds = [ex.tick(t0 + i * 20 * MS, stuck) for i in range(100)]
    dist = [np.linalg.norm(c["left"].T_base_tcp[:3, 3] - T_HOME[:3, 3]) for c in cmds if isinstance(c, dict)]
    assert max(dist) <= LIMITS.max_linear_speed * 0.02 * 30 and ex.resyncs >= 1


def test_interpolation_is_linear_and_slerp_between_points() -> None:
    c = _line_chunk(0, [0.4, 0.3, 0.25], [0.5, 0.3, 0.25], n=3, dt=0.1)
    c.arms["left"].T[2] = se3.T_from_xyz_rpy([0.5, 0.3, 0.25], [np.pi, 0, 0.4])
    T, g = sample_chunk(c, "left", 150 * MS)
    np.testing.assert_allclose(T[:3, 3], [0.475, 0.3, 0.25])
    assert se3.rotation_angle(c.arms["left"].T[1][:3, :3].T @ T[:3, :3]) == pytest.approx(0.2)
    np.testing.assert_allclose(sample_chunk(c, "left", -5)[0], c.arms["left"].T[0])


def test_time_alignment_skips_the_part_of_the_chunk_in_the_past() -> None:
    ex = ChunkExecutor(ExecutorConfig(blend="replace"), LIMITS)
    now = 10_000 * MS
    # observation 200 ms ago: points 0..9 (0.2 s at 20 ms) are already in the past
    chunk = _line_chunk(now - 200 * MS, [0.4, 0.3, 0.25], [0.41, 0.3, 0.25])
    assert ex.submit(chunk, now) is None
    target = ex._targets(now, "left")[0]
    np.testing.assert_allclose(target[:3, 3], chunk.arms["left"].T[10][:3, 3], atol=1e-12)


def test_commands_track_a_slow_chunk_and_hold_when_it_ends() -> None:
    ex = ChunkExecutor(ExecutorConfig(blend="replace", watchdog_s=5.0), LIMITS)
    t0 = 1_000 * MS
    ex.submit(_line_chunk(t0, [0.4, 0.3, 0.25], [0.45, 0.3, 0.25]), t0)
    out = _run(ex, t0, 60)
    cmds = [o for o in out if isinstance(o, dict)]
    assert len(cmds) >= 49
    assert abs(cmds[-1]["left"].T_base_tcp[0, 3] - 0.45) < 3e-3
    assert isinstance(out[-1], Hold) and "used up" in out[-1].reason


def test_watchdog_holds_within_one_period_and_estop_latches() -> None:
    ex = ChunkExecutor(ExecutorConfig(watchdog_s=0.2), LIMITS)
    t0 = 1_000 * MS
    ex.submit(_line_chunk(t0, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25], n=100), t0)
    out = _run(ex, t0, 20)  # 0.4 s of ticks, chunk lasts 2 s but no fresh chunk after t0
    first_hold = next(i for i, o in enumerate(out) if isinstance(o, Hold))
    assert first_hold * 20 * MS - 200 * MS <= 20 * MS and "watchdog" in out[first_hold].reason
    ex.submit(_line_chunk(t0 + 400 * MS, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25]), t0 + 400 * MS)
    assert isinstance(ex.tick(t0 + 400 * MS, {"left": (T_HOME, 0.5)}), dict)
    ex.estop()
    assert "e-stop" in ex.tick(t0 + 420 * MS, {"left": (T_HOME, 0.5)}).reason
    ex.submit(_line_chunk(t0 + 440 * MS, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25]), t0 + 440 * MS)
    assert isinstance(ex.tick(t0 + 440 * MS, {"left": (T_HOME, 0.5)}), Hold)  # still latched
    ex.reset_estop()
    ex.submit(_line_chunk(t0 + 460 * MS, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25]), t0 + 460 * MS)
    assert isinstance(ex.tick(t0 + 460 * MS, {"left": (T_HOME, 0.5)}), dict)


def test_bad_chunks_are_refused() -> None:
    ex = ChunkExecutor(ExecutorConfig(), LIMITS)
    now = 5_000 * MS
    c = _line_chunk(now, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25])
    c.arms["left"].T[3, 0, 0] = np.nan
    assert "NaN" in ex.submit(c, now)
    c = _line_chunk(now, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25])
    c.arms["left"].T[3, :3, :3] *= 2
    assert "non-rigid" in ex.submit(c, now)
    c = _line_chunk(now, [0.4, 0.3, 0.25], [0.42, 0.3, 0.25])
    c.frame_id = "head_camera_color_optical_frame"
    assert "base_link" in ex.submit(c, now)
    assert "old" in ex.submit(_line_chunk(now - 5_000 * MS, [0.4, 0.3, 0.25], [0.4, 0.3, 0.25]), now)


@pytest.mark.parametrize("blend", ["ensemble", "rtc"])
def test_blending_overlapping_chunks_is_continuous(blend: str) -> None:
    ex = ChunkExecutor(ExecutorConfig(blend=blend, watchdog_s=5.0), LIMITS)
    t0 = 1_000 * MS
    ex.submit(_line_chunk(t0, [0.4, 0.3, 0.25], [0.4, 0.3, 0.25]), t0)
    measured = {"left": (T_HOME, 0.5)}
    xs = []
    for i in range(60):
        t = t0 + i * 20 * MS
        if i == 10:  # a new chunk that wants to be 2 cm further in x
            ex.submit(_line_chunk(t, [0.42, 0.3, 0.25], [0.42, 0.3, 0.25]), t)
        cmd = ex.tick(t, measured)["left"]
        measured = {"left": (cmd.T_base_tcp, cmd.gripper)}
        xs.append(cmd.T_base_tcp[0, 3])
    steps = np.abs(np.diff(xs))
    assert steps.max() <= 0.25 * 0.02 + 1e-9
    assert 0.4 < xs[-1] <= 0.42 + 1e-4
    if blend == "rtc":
        assert xs[14] == pytest.approx(0.4)  # still following the committed chunk during the freeze


pose_values = st.one_of(st.floats(-3.0, 3.0), st.sampled_from([np.nan, np.inf, -np.inf, 0.4, 0.3, 0.25]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(pose_values, pose_values, pose_values, pose_values), min_size=2, max_size=12),
       st.sampled_from(["ensemble", "rtc", "replace"]), st.integers(-300, 300))
def test_property_no_command_outside_box_or_limits(points, blend, stamp_offset_ms) -> None:
    """Random and adversarial chunks: NaN, jumps of metres, points far outside the box, odd stamps."""
    ex = ChunkExecutor(ExecutorConfig(blend=blend, watchdog_s=1.0), LIMITS)
    t0 = 10_000 * MS
    n = len(points)
    T = np.tile(T_HOME, (n, 1, 1))
    T[:, :3, 3] = [[x, y, z] for x, y, z, _ in points]
    for k, (_, _, _, yaw) in enumerate(points):
        if np.isfinite(yaw):
            T[k, :3, :3] = se3.matrix_from_euler(np.array([np.pi, 0.0, yaw]))
    chunk = ActionChunk("base_link", t0 + stamp_offset_ms * MS, 0.05, {"left": ArmChunk(T, np.full(n, 0.5)),
                                                                        "right": ArmChunk(T.copy(), np.full(n, 2.0))})
    ex.submit(chunk, t0)
    prev = {"left": T_HOME, "right": se3.T_from_xyz_rpy([0.4, -0.3, 0.25], [np.pi, 0, 0])}
    measured = {a: (prev[a], 0.5) for a in prev}
    v_prev = {a: np.zeros(3) for a in prev}
    dt = 0.02
    for i in range(80):
        out = ex.tick(t0 + i * 20 * MS, measured)
        if isinstance(out, Hold):
            prev = {a: measured[a][0] for a in measured}
            v_prev = {a: np.zeros(3) for a in prev}
            continue
        measured.update({a: (c.T_base_tcp, c.gripper) for a, c in out.items()})
        for arm, cmd in out.items():
            assert isinstance(cmd, ArmCommand)
            assert LIMITS.check_command(arm, cmd.T_base_tcp, cmd.gripper, prev[arm], dt, tol=1e-9) is None
            v = (cmd.T_base_tcp[:3, 3] - prev[arm][:3, 3]) / dt
            assert np.linalg.norm(v - v_prev[arm]) <= LIMITS.max_linear_accel * dt + 1e-9
            prev[arm], v_prev[arm] = cmd.T_base_tcp, v


def test_motion_resumes_from_the_last_command_after_a_hold() -> None:
    """Chunks run out (hold), the arm is where it was sent (lagging a little): the next set-point continues
    from the last command, not from the lagging measured pose, so the driver sees one continuous stream."""
    ex = ChunkExecutor(ExecutorConfig(blend="replace", watchdog_s=1.0), LIMITS)
    t0 = 10_000 * MS
    ex.submit(_line_chunk(t0, [0.40, 0.3, 0.25], [0.42, 0.3, 0.25]), t0)
    measured = {"left": (T_HOME, 0.5)}
    last = None
    t = t0
    while True:
        out = ex.tick(t, measured)
        if isinstance(out, Hold):
            break
        last = out["left"].T_base_tcp
        lagging = last.copy()
        lagging[0, 3] -= 0.02  # the measured pose trails the commands (within max_tracking_error_m)
        measured = {"left": (lagging, 0.5)}
        t += 20 * MS
    ex.submit(_line_chunk(t + 20 * MS, [0.43, 0.3, 0.25], [0.45, 0.3, 0.25]), t + 20 * MS)
    nxt = ex.tick(t + 40 * MS, measured)["left"].T_base_tcp
    assert np.linalg.norm(nxt[:3, 3] - last[:3, 3]) <= 0.25 * 0.02 + 1e-9  # one step from the last command
    assert nxt[0, 3] >= last[0, 3]


def test_late_feedback_along_the_path_is_not_a_tracking_failure_but_a_stuck_arm_is() -> None:
    ex = ChunkExecutor(ExecutorConfig(blend="replace", watchdog_s=5.0), LIMITS)
    t0 = 10_000 * MS
    ex.submit(_line_chunk(t0, [0.40, 0.3, 0.25], [0.79, 0.3, 0.25], n=100), t0)  # 0.2 m/s
    sent = []
    measured = {"left": (T_HOME, 0.5)}
    for i in range(60):
        out = ex.tick(t0 + i * 20 * MS, measured)
        sent.append(out["left"].T_base_tcp)
        late = sent[max(0, len(sent) - 12)]  # feedback 0.24 s behind: up to 6 cm behind the newest command
        measured = {"left": (late, 0.5)}
    assert ex.resyncs == 0
    assert np.linalg.norm(sent[-1][:3, 3] - sent[-13][:3, 3]) > ex.cfg.max_tracking_error_m  # really that far
    stuck = {"left": (sent[20], 0.5)}  # the arm stopped 40 ticks ago (commands refused downstream)
    out = ex.tick(t0 + 60 * 20 * MS, stuck)
    assert ex.resyncs == 1
    assert np.linalg.norm(out["left"].T_base_tcp[:3, 3] - sent[20][:3, 3]) <= 0.25 * 0.02 + 1e-9  # re-planned from it
