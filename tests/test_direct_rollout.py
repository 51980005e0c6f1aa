"""Direct (ROS-free) rollouts on the twin: the scripted path played through the rollout's transform, executor,
IK and physics lifts the cube; a policy that only holds the arm where it is does not."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from posevla.geometry import se3  # noqa: E402
from posevla.model.config import PoseVLAConfig  # noqa: E402
from posevla.paths import calibration_dir, default_path  # noqa: E402
from posevla.sim.rollout import DirectRollout, RolloutConfig, ScriptedPolicy  # noqa: E402
from posevla.types import ActionChunk, ArmChunk  # noqa: E402

ROBOT = default_path("config", "xtrainer_sim_robot.yaml")
CALIB = calibration_dir()


def _config() -> PoseVLAConfig:
    return PoseVLAConfig.from_yaml(default_path("models", "closed_loop.yaml"))


class _Holder:
    """Chunks that keep every arm at its measured pose, gripper open."""

    def __init__(self, config) -> None:
        self.config = config

    def predict(self, obs, modalities: str = "full", noise_seed=None) -> ActionChunk:
        T_ref_base = se3.invert_T(obs.views[self.config.reference_view].T_base_cam)
        n = self.config.chunk_length
        arms = {a: ArmChunk(np.repeat((T_ref_base @ s.T_base_tcp)[None], n, 0), np.ones(n)) for a, s in obs.state.arms.items()}
        return ActionChunk(obs.views[self.config.reference_view].frame_id, obs.stamp_ns, self.config.control_dt, arms)


@pytest.fixture(scope="module")
def rollout():
    r = DirectRollout(_Holder(_config()), ROBOT, CALIB, RolloutConfig(trial_s=9.0, replan_s=0.3, latency_s=0.1,
                                                                      width=96, height=72))
    yield r
    r.close()


def test_scripted_path_through_the_rollout_lifts_the_cube(rollout) -> None:
    rollout.policy = ScriptedPolicy(_config(), rollout)
    for seed in (0, 1_000_003):
        res = rollout.trial(seed)
        assert res.success, res
        assert res.cube_z_m > 0.15
        assert res.min_grasp_dist_m < 0.01  # the fingers closed over the cube's (x, y)
        assert res.chunks == 30  # 9 s / 0.3 s


def test_holding_policy_leaves_the_cube(rollout) -> None:
    rollout.policy = _Holder(_config())
    res = rollout.trial(5)
    assert not res.success
    assert abs(res.cube_z_m - 0.02) < 0.002
    assert res.tcp_travel_m < 0.01


def test_rollout_cli_refuses_bad_input_with_one_line(tmp_path) -> None:
    import subprocess
    import sys

    for extra, expected in ((["--trials", "3"], "--checkpoint is required"),
                            (["--checkpoint", str(tmp_path)], f"--checkpoint {tmp_path}: no config.yaml"),
                            (["--policy", "scripted", "--replan-s", "0"], "--replan-s must be > 0"),
                            (["--policy", "scripted", "--flow-noise-scale", "2"], "--flow-noise-scale must lie in")):
        proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "rollout", *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_miscalibrated_stack_holds_still_like_one_with_a_single_wrong_file(tmp_path) -> None:
    """--perturb-calibration: the stack reads one perturbed head calibration for both the TCP state it shows the
    policy and the chunks it executes, as a robot with one wrong file would. A policy holding the arm where it
    sees it then keeps it still. (Reading the perturbed file in the executor only, stop 25's ablation, made every
    chunk move the arm by the calibration error, and the arm drifted chunk after chunk.)"""
    from posevla.sim.benchmark import perturbed_calibration

    seen: list[np.ndarray] = []

    class _Recorder(_Holder):
        def predict(self, obs, modalities: str = "full", noise_seed=None) -> ActionChunk:
            seen.append(obs.views[self.config.reference_view].T_base_cam.copy())
            return super().predict(obs, modalities, noise_seed)

    bad = perturbed_calibration(CALIB, tmp_path / "perturbed")
    r = DirectRollout(_Recorder(_config()), ROBOT, CALIB, RolloutConfig(trial_s=4.0, replan_s=0.3, latency_s=0.1,
                                                                        width=64, height=48),
                      stack_calibration_dir=bad)
    try:
        res = r.trial(5)
        T_true = r.calibs["head_camera_color_optical_frame"].T_parent_child
    finally:
        r.close()
    assert res.tcp_travel_m < 0.01, res
    # the policy saw the perturbed head pose (2 cm off the one the twin renders)
    assert np.linalg.norm(seen[0][:3, 3] - T_true[:3, 3]) == pytest.approx(0.02, abs=1e-6)
