"""Takeover (DAgger-style) episodes: the expert plans from wherever the arm is and lifts the cube; the rollout
hands over with a fresh executor and records every twin camera at the set period; bad CLI input exits 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from posevla.geometry import se3  # noqa: E402
from posevla.model.config import PoseVLAConfig  # noqa: E402
from posevla.paths import calibration_dir, default_path  # noqa: E402
from posevla.robot.kinematics import ArmKinematics  # noqa: E402
from posevla.sim.dagger import main  # noqa: E402
from posevla.sim.rollout import DirectRollout, MissRule, RolloutConfig, ScriptedPolicy  # noqa: E402
from posevla.sim.task import PickLiftTask, ScriptTiming, scripted_pick_from  # noqa: E402
from posevla.types import ActionChunk, ArmChunk  # noqa: E402

ROBOT = default_path("config", "xtrainer_sim_robot.yaml")


class _Wanderer:
    """Chunks that move the task arm 12 cm sideways and close the gripper: a policy in a state the demos never
    show."""

    def __init__(self, config) -> None:
        self.config = config

    def predict(self, obs, modalities: str = "full", noise_seed=None) -> ActionChunk:
        ref = obs.views[self.config.reference_view]
        T_ref_base = se3.invert_T(ref.T_base_cam)
        n = self.config.chunk_length
        arms = {}
        for a, s in obs.state.arms.items():
            T = s.T_base_tcp.copy()
            if a == "left":
                T[1, 3] -= 0.12
                T[2, 3] -= 0.05
            arms[a] = ArmChunk(np.repeat((T_ref_base @ T)[None], n, 0), np.full(n, 0.0 if a == "left" else 1.0))
        return ActionChunk(ref.frame_id, obs.stamp_ns, self.config.control_dt, arms)


def test_expert_plans_from_the_current_state() -> None:
    kin, T_base_armbase = ArmKinematics(), se3.T_from_xyz_rpy([0.0, 0.3, 0.0], [0.0, 0.0, np.pi])
    task = PickLiftTask()
    state = task.sample(1_000_005)
    q0 = kin.ik(se3.invert_T(T_base_armbase) @ se3.make_T(
        (T_base_armbase @ kin.fk(kin.home()))[:3, :3], [0.45, 0.33, 0.12]), kin.home())
    path = scripted_pick_from(state, q0, 0.1, T_base_armbase, kin)
    np.testing.assert_allclose(path.q[0], q0)
    assert path.gripper[0] == pytest.approx(0.1) and path.gripper[12] == pytest.approx(1.0)  # opens first (0.6 s)
    T_end = T_base_armbase @ kin.fk(path.q[-1])
    np.testing.assert_allclose(T_end[:3, 3], [*state.cube_xy, ScriptTiming().lift_tcp_z_m], atol=1e-3)
    assert path.gripper[-1] == 0.0
    grasp = [T_base_armbase @ kin.fk(q) for q, g in zip(path.q[13:], path.gripper[13:]) if g < 0.5]
    assert grasp and abs(grasp[0][2, 3] - ScriptTiming().grasp_tcp_z_m) < 1e-3  # closes at the grasp height


def test_takeover_lifts_and_records_every_camera() -> None:
    cfg = PoseVLAConfig.from_yaml(default_path("models", "closed_loop.yaml"))
    r = DirectRollout(_Wanderer(cfg), ROBOT, calibration_dir(), RolloutConfig(trial_s=11.0, replan_s=0.3, width=64,
                                                                               height=48))
    try:
        frames: list = []
        res = r.trial(1_000_005, takeover_s=1.5, record=lambda t, f, s, c: frames.append((t, sorted(f), c)))
        assert res.success and res.cube_z_m > 0.15  # the expert recovered from the wanderer's state
        assert len(frames) == 110  # 11 s at 10 Hz
        assert frames[0][1] == ["head", "left_wrist", "right_wrist"]
        assert all(c.shape == (14,) for _, _, c in frames)
        assert np.diff([t for t, _, _ in frames]).min() >= 99_000_000
        before = np.array([c[6] for _, _, c in frames[:15]])  # the wanderer closed the left gripper
        assert before[-1] < 0.2
        res2 = r.trial(1_000_005)  # without takeover the wanderer never lifts
        assert not res2.success
    finally:
        r.close()


def test_miss_rule() -> None:
    rule = MissRule(closed_s=1.5, lifted_z_m=0.035, latest_s=9.0)
    assert not rule.missed(2.0, None, 0.02)  # open, early
    assert not rule.missed(2.0, 1.4, 0.02)  # closing, not yet a miss
    assert rule.missed(2.0, 1.5, 0.02)  # closed 1.5 s, cube on the table
    assert not rule.missed(2.0, 3.0, 0.05)  # closed and the cube rises: a grasp
    assert rule.missed(9.0, None, 0.02) and not rule.missed(9.0, None, 0.2)  # late without a lift


def test_takeover_on_a_miss_records_the_recovery() -> None:
    """The wanderer closes its gripper 12 cm beside the cube: the expert takes over closed_s after the close, opens
    and lifts the cube; a policy that lifts the cube itself ends the trial early without any takeover."""
    cfg = PoseVLAConfig.from_yaml(default_path("models", "closed_loop.yaml"))
    r = DirectRollout(_Wanderer(cfg), ROBOT, calibration_dir(), RolloutConfig(trial_s=12.0, replan_s=0.3, width=64,
                                                                               height=48))
    try:
        res = r.trial(1_000_005, miss=MissRule(closed_s=1.0, latest_s=8.0), stop_on_success=True)
        closed = res.trace[res.trace[:, 4] < 0.5, 0]
        t_close = closed[0] - res.trace[0, 0]  # the wanderer's first close (trial time, s)
        assert res.takeover_at_s is not None and 0.95 <= res.takeover_at_s - t_close <= 1.1
        assert res.success and not res.stopped_early and res.cube_z_m > 0.15
        res_late = r.trial(1_000_005, miss=MissRule(closed_s=20.0, latest_s=3.0))
        assert res_late.takeover_at_s == pytest.approx(3.0, abs=0.02) and res_late.success
        r.policy = ScriptedPolicy(cfg, r)  # lifts the cube itself: no miss, the trial stops at the lift
        res_own = r.trial(1_000_005, miss=MissRule(closed_s=1.0, latest_s=11.0), stop_on_success=True)
        assert res_own.takeover_at_s is None and res_own.stopped_early and res_own.success
        assert res_own.trace[-1, 0] - res_own.trace[0, 0] < 11.0
    finally:
        r.close()


def test_rollout_places_the_cube_from_the_task_it_is_given() -> None:
    """The collector's --x-range/--y-range: a wider task moves the cube outside the benchmark's ranges."""
    cfg = PoseVLAConfig.from_yaml(default_path("models", "closed_loop.yaml"))
    wide = PickLiftTask(x_range=(0.36, 0.37), y_range=(0.44, 0.45))
    r = DirectRollout(_Wanderer(cfg), ROBOT, calibration_dir(), RolloutConfig(width=32, height=24), task=wide)
    try:
        state = r.world.reset(7)
        cube = r.world.cube_pose()[:3, 3]
        assert 0.36 <= state.cube_xy[0] <= 0.37 and 0.44 <= state.cube_xy[1] <= 0.45
        np.testing.assert_allclose(cube[:2], state.cube_xy, atol=1e-3)
        assert state.cube_xy[0] < PickLiftTask().x_range[0] and state.cube_xy[1] > PickLiftTask().y_range[1]
    finally:
        r.close()


@pytest.mark.parametrize("argv, message", [
    (["--episodes", "0"], "--episodes"),
    (["--first-seed", "1000000"], "training placements"),
    (["--takeover-s", "5", "2"], "--takeover-s"),
    (["--x-range", "0.5", "0.4"], "--x-range"),
    (["--y-range", "0.3", "0.3"], "--y-range"),
    (["--takeover-on-miss", "--miss-latest-s", "20"], "--miss-latest-s"),
])
def test_bad_input_exits_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.yaml").write_text("image_size: 28\n")
    assert main(["--checkpoint", str(ck), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
