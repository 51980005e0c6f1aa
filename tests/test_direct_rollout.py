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
                            (["--policy", "scripted", "--replan-s", "0"], "--replan-s must be > 0")):
        proc = subprocess.run([sys.executable, "-m", "posevla.cli", "benchmark", "rollout", *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
