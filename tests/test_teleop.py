"""GELLO leader reading through the real dynamixel_sdk against a Protocol 2.0 servo chain on a pty, and the
safe-start / freeze logic of the teleop controller."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from posevla.teleop.controller import TeleopController, TeleopLimits
from posevla.teleop.dxl_sim import DynamixelChainSim
from posevla.teleop.gello import (
    LeaderArm,
    LeaderConfig,
    LeaderReadError,
    LeaderReading,
    offsets_for_known_pose,
)

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("dynamixel_sdk")


@pytest.fixture()
def leader_cfg():
    return LeaderConfig.from_yaml(REPO / "config" / "gello_xtrainer.yaml")


def test_shipped_leader_config_is_valid(leader_cfg):
    assert set(leader_cfg.arms) == {"left", "right"}
    arm = leader_cfg.arms["left"]
    q = np.array([0.3, -0.4, 1.2, -0.1, 0.9, 2.0])
    np.testing.assert_allclose(arm.joints_from_ticks(arm.ticks_from_joints(q)), q, atol=math.pi / 4096)
    assert arm.gripper_from_ticks(arm.ticks_from_gripper(0.25)) == pytest.approx(0.25, abs=2e-3)
    assert arm.gripper_from_ticks(arm.gripper_open_ticks + 500) == 1.0


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["arms"]["left"].update(joint_signs=[1, 1, 2, 1, 1, 1]), "joint_signs"),
    (lambda d: d["arms"]["left"].update(joint_ids=[1, 2, 3, 4, 5]), "6 entries"),
    (lambda d: d["arms"]["left"].update(joint_ids=[1, 2, 3, 4, 5, 7]), "distinct"),
    (lambda d: d["arms"]["left"].pop("gripper"), "arms.left"),
])
def test_malformed_leader_config_names_the_field(tmp_path, edit, field):
    doc = yaml.safe_load((REPO / "config" / "gello_xtrainer.yaml").read_text())
    edit(doc)
    path = tmp_path / "gello.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=field) as err:
        LeaderConfig.from_yaml(path)
    assert str(path) in str(err.value)


def test_real_sdk_reads_simulated_leader_and_notices_unplug(leader_cfg):
    arm_cfg = leader_cfg.arms["left"]
    sim = DynamixelChainSim(list(arm_cfg.all_ids) + [arm_cfg.buttons_id])
    try:
        q = np.array([0.1, -0.5, 1.0, 0.2, -0.3, 0.7])
        for i, t in zip(arm_cfg.joint_ids, arm_cfg.ticks_from_joints(q)):
            sim.set_position(i, int(t))
        sim.set_position(arm_cfg.gripper_id, arm_cfg.ticks_from_gripper(0.6))
        sim.set_register(arm_cfg.buttons_id, arm_cfg.buttons_address, bytes([0b101]))
        cfg = type(arm_cfg)(sim.port, *[getattr(arm_cfg, f) for f in list(arm_cfg.__dataclass_fields__)[1:]])
        leader = LeaderArm("left", cfg)
        leader.ping()
        r = leader.read()
        np.testing.assert_allclose(r.q, q, atol=2 * math.pi / 4096)
        assert r.gripper == pytest.approx(0.6, abs=2e-3)
        assert r.buttons == 0b101
        sim.unplug()
        with pytest.raises(LeaderReadError, match="left leader"):
            leader.read()
        sim.plug_in()
        np.testing.assert_allclose(leader.read().q, q, atol=2 * math.pi / 4096)
        leader.close()
    finally:
        sim.close()


def test_offsets_for_known_pose_make_the_leader_read_that_pose(leader_cfg):
    arm = leader_cfg.arms["right"]
    ticks = np.array([100, 2000, 3000, 4095, 1024, 2048])
    q_known = np.array([0.0, 0.0, math.pi / 2, 0.0, math.pi / 2, 0.0])
    arm2 = type(arm)(arm.port, arm.joint_ids, offsets_for_known_pose(arm, ticks, q_known), *[
        getattr(arm, f) for f in list(arm.__dataclass_fields__)[3:]])
    np.testing.assert_allclose(arm2.joints_from_ticks(ticks), q_known, atol=1e-12)


def _reading(q, t_ns, g=0.5):
    return LeaderReading(np.asarray(q, float), g, 0, t_ns)


def test_safe_start_moves_slowly_then_mirrors():
    limits = TeleopLimits(align_speed=0.5, max_speed=2.0)
    ctrl = TeleopController(("left",), limits)
    follower = np.zeros(6)
    leader_q = np.array([0.8, -0.4, 0.3, 0.0, 0.1, -0.2])
    dt, t = 0.02, 0
    steps_aligning, prev = 0, follower.copy()
    for _ in range(400):
        t += int(dt * 1e9)
        out = ctrl.step({"left": _reading(leader_q, t)}, {"left": follower}, {"left": 0.0}, t, dt)
        q, _ = out["left"]
        assert np.abs(q - prev).max() <= (limits.align_speed if ctrl.state != "mirroring" or steps_aligning == 0
                                          else limits.max_speed) * dt + 1e-12
        prev = q
        follower = q  # a perfect follower
        if ctrl.state == "aligning":
            steps_aligning += 1
        if ctrl.state == "mirroring":
            break
    assert ctrl.state == "mirroring"
    # 0.8 rad at 0.5 rad/s needs about 1.5 s (0.05 rad tolerance) -> ~75 steps at 50 Hz
    assert 70 <= steps_aligning <= 80
    # while mirroring, the followers track a moving leader
    for _k in range(10):
        t += int(dt * 1e9)
        leader_q = leader_q + 0.01
        q, _ = ctrl.step({"left": _reading(leader_q, t)}, {"left": follower}, {"left": 0.0}, t, dt)["left"]
        follower = q
    np.testing.assert_allclose(follower, leader_q, atol=1e-9)


@pytest.mark.parametrize("trouble", ["disconnect", "jump", "silent", "nan"])
def test_leader_trouble_freezes_until_resume(trouble):
    ctrl = TeleopController(("left", "right"), TeleopLimits(leader_timeout_s=0.1))
    q0 = np.zeros(6)
    t, dt = 0, 0.02
    for _ in range(3):
        t += int(dt * 1e9)
        out = ctrl.step({a: _reading(q0, t) for a in ("left", "right")}, {"left": q0, "right": q0},
                        {}, t, dt)
    assert ctrl.state == "mirroring" and set(out) == {"left", "right"}
    t += int(dt * 1e9)
    if trouble == "disconnect":
        leader = None
    elif trouble == "jump":
        leader = {"left": _reading(q0 + np.r_[0, 0, 0.5, 0, 0, 0], t), "right": _reading(q0, t)}
    elif trouble == "silent":
        leader = {"left": _reading(q0, t - int(0.5e9)), "right": _reading(q0, t)}
    else:
        leader = {"left": _reading(np.r_[np.nan, q0[1:]], t), "right": _reading(q0, t)}
    assert ctrl.step(leader, {"left": q0, "right": q0}, {}, t, dt) == {}
    assert ctrl.state == "frozen"
    # a healthy leader does not unfreeze by itself
    for _ in range(5):
        t += int(dt * 1e9)
        assert ctrl.step({a: _reading(q0, t) for a in ("left", "right")}, {"left": q0, "right": q0}, {}, t, dt) == {}
    assert ctrl.resume() == "waiting"
    t += int(dt * 1e9)
    assert ctrl.step({a: _reading(q0, t) for a in ("left", "right")}, {"left": q0, "right": q0}, {}, t, dt)
    assert ctrl.state in ("aligning", "mirroring")


def test_missed_packets_hold_then_freeze_after_the_timeout():
    """A leader read that fails leaves the previous reading in place (same stamp): the followers hold for that
    cycle without freezing; only a reading older than leader_timeout_s freezes them."""
    ctrl = TeleopController(("left",), TeleopLimits(leader_timeout_s=0.1))
    q0 = np.zeros(6)
    t, dt = 0, 0.02
    for _ in range(3):
        t += int(dt * 1e9)
        last = _reading(q0, t)
        ctrl.step({"left": last}, {"left": q0}, {}, t, dt)
    assert ctrl.state == "mirroring"
    for _ in range(4):  # 4 missed reads = 80 ms < 100 ms
        t += int(dt * 1e9)
        assert ctrl.step({"left": last}, {"left": q0}, {}, t, dt) == {}
        assert ctrl.state == "mirroring"
    t += int(dt * 1e9)
    assert set(ctrl.step({"left": _reading(q0 + 0.01, t)}, {"left": q0}, {}, t, dt)) == {"left"}  # back
    last = _reading(q0 + 0.01, t)
    for _ in range(6):  # 120 ms without a new reading
        t += int(dt * 1e9)
        ctrl.step({"left": last}, {"left": q0}, {}, t, dt)
    assert ctrl.state == "frozen" and "silent" in ctrl.reason
