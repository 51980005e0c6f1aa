"""The MuJoCo twin without ROS: kinematics equal ArmKinematics, cameras agree with the calibration and intrinsics,
the scripted pick lifts the cube (and does not without closing the gripper), seeds split, TCP protocol served."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from ros_helpers import REPO, sim_robot_yaml  # noqa: E402

from posevla.geometry import se3  # noqa: E402
from posevla.robot import protocol as P  # noqa: E402
from posevla.robot.kinematics import ArmKinematics  # noqa: E402
from posevla.sim.task import (  # noqa: E402
    HELDOUT_SEED_BASE,
    ApproachOffset,
    PickLiftTask,
    heldout_seeds,
    scripted_pick,
    train_seeds,
)
from posevla.sim.twin import TwinSpec, arm_screws, build_mjcf  # noqa: E402
from posevla.sim.world import TwinControllers, TwinGrippers, TwinWorld  # noqa: E402


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> TwinSpec:
    return TwinSpec.from_files(sim_robot_yaml(tmp_path_factory.mktemp("robot")), REPO / "calibration")


def test_screw_axes_reproduce_forward_kinematics(spec):
    """The MJCF chain is built from fk alone; MuJoCo's TCP site must equal T_base_armbase @ fk(q) everywhere."""
    world = TwinWorld(spec)
    rng = np.random.default_rng(1)
    for arm in world.arms:
        for _ in range(20):
            q = rng.uniform(-3.0, 3.0, 6)
            with world.lock:
                world.data.qpos[world._idx[arm].qpos] = q
                mujoco.mj_forward(world.model, world.data)
            expected = spec.T_base_armbase[arm] @ spec.kins[arm].fk(q)
            assert np.abs(world.T_base_tcp(arm) - expected).max() < 1e-9


def test_screws_follow_the_kinematics_parameters():
    """Changing a link length in ArmKinematics moves the generated axes (the twin has no copy of the numbers)."""
    kin = ArmKinematics()
    screws, T0 = arm_screws(kin)
    kin2 = ArmKinematics(a=kin.a + np.array([0.0, -0.05, 0.0, 0.0, 0.0, 0.0]))
    screws2, T02 = arm_screws(kin2)
    assert np.linalg.norm(T02[:3, 3] - T0[:3, 3]) == pytest.approx(0.05, abs=1e-9)
    assert all(abs(abs(s.axis @ s2.axis) - 1) < 1e-12 for s, s2 in zip(screws, screws2))


def test_seeds_are_disjoint_and_placements_reproducible():
    task = PickLiftTask()
    assert not set(train_seeds(5000)) & set(heldout_seeds(1000))
    assert min(heldout_seeds(3)) == HELDOUT_SEED_BASE
    a, b = task.sample(7), task.sample(7)
    assert a == b
    xs = np.array([task.sample(s).cube_xy for s in train_seeds(200)])
    assert xs[:, 0].min() >= task.x_range[0] and xs[:, 0].max() <= task.x_range[1]
    assert xs[:, 0].std() > 0.03 and xs[:, 1].std() > 0.04  # spread over the range, not one spot


def _run_path(world: TwinWorld, path, close_gripper: bool = True) -> None:
    arm = world.arms["left"]
    arm.mode = P.MODE_ENABLED
    t = 0.0
    while t < path.duration_s + 0.4:
        q, g = path.at(t)
        with arm.lock:
            arm.q_target, arm.gripper_target = q, (g if close_gripper else 1.0)
        world.step(10)
        t += 10 * world.model.opt.timestep


def test_scripted_pick_lifts_the_cube_and_fails_without_closing(spec):
    world = TwinWorld(spec)
    for seed in train_seeds(3):
        state = world.reset(seed)
        assert world.cube_pose()[2, 3] == pytest.approx(spec.cube_half_m, abs=1e-3)
        assert not world.success()
        _run_path(world, scripted_pick(state, spec.T_base_armbase["left"], spec.kins["left"]))
        assert world.success(), f"seed {seed}: cube at z={world.cube_pose()[2, 3]:.3f}"
        assert world.cube_pose()[2, 3] > 0.15
        assert 0.3 < world.arms["left"].gripper < 0.6  # the fingers stop on the 4 cm cube, not closed
    state = world.reset(train_seeds(1)[0])
    _run_path(world, scripted_pick(state, spec.T_base_armbase["left"], spec.kins["left"]), close_gripper=False)
    assert not world.success()
    assert world.cube_pose()[2, 3] < 0.05


def test_perturbed_demonstrations_miss_then_correct_and_lift(spec):
    offsets = [ApproachOffset.for_seed(s, 0.06) for s in train_seeds(200)]
    assert offsets == [ApproachOffset.for_seed(s, 0.06) for s in train_seeds(200)]  # reproducible per seed
    moved = [o for o in offsets if not o.is_zero]
    assert 0.65 < len(moved) / len(offsets) < 0.85
    dist = np.array([np.hypot(o.dx, o.dy) for o in moved])
    assert dist.min() >= 0.2 * 0.06 - 1e-12 and dist.max() <= 0.06 + 1e-12 and dist.mean() > 0.03
    assert max(abs(o.dyaw) for o in moved) <= np.radians(15) + 1e-12
    assert all(ApproachOffset.for_seed(s, 0.0).is_zero for s in range(20))
    world = TwinWorld(spec)
    seed = next(s for s, o in zip(train_seeds(200), offsets) if np.hypot(o.dx, o.dy) > 0.04)
    state = world.reset(seed)
    path = scripted_pick(state, spec.T_base_armbase["left"], spec.kins["left"], offset=offsets[seed])
    straight = scripted_pick(state, spec.T_base_armbase["left"], spec.kins["left"])
    assert path.duration_s == pytest.approx(straight.duration_s + 1.0)  # the correction phase
    T_ab, kin = spec.T_base_armbase["left"], spec.kins["left"]
    above_miss = (T_ab @ kin.fk(path.at(2.4)[0]))[:3, 3]  # end of the approach: off the cube by the offset
    assert np.hypot(*(above_miss[:2] - state.cube_xy)) == pytest.approx(np.hypot(offsets[seed].dx, offsets[seed].dy), abs=2e-3)
    _run_path(world, path)
    assert world.success() and world.cube_pose()[2, 3] > 0.15


def test_reset_drives_home_and_places_the_cube(spec):
    world = TwinWorld(spec)
    arm = world.arms["left"]
    with arm.lock:
        arm.q_target = arm.kin.home() + 0.4
    world.step(1000)
    state = world.reset(123)
    assert np.abs(arm.q - arm.kin.home()).max() < 0.01
    assert np.allclose(world.cube_pose()[:2, 3], state.cube_xy, atol=1e-4)
    assert state == PickLiftTask().sample(123)


def test_rendered_depth_and_projection_agree_with_calibration(spec):
    from posevla.sim.render import TwinRenderer, intrinsics_from_fovy

    world = TwinWorld(spec)
    world.place(5)
    r = TwinRenderer(world, 160, 120)
    try:
        K = r.intrinsics("head")
        assert K == intrinsics_from_fovy(60.0, 160, 120)
        assert K.fy == pytest.approx(60.0 / np.tan(np.radians(30.0)))
        rgb, depth = r.render("head")
        assert rgb.shape == (120, 160, 3) and depth.shape == (120, 160) and depth.dtype == np.float32
        top = world.cube_pose()[:3, 3] + [0.0, 0.0, spec.cube_half_m]  # the cube's top face centre
        p_cam = se3.transform_points(se3.invert_T(spec.cameras["head"].T_parent_optical), top[None])[0]
        u, v = (K.K @ p_cam)[:2] / p_cam[2]
        i, j = int(round(v)), int(round(u))
        assert depth[i, j] == pytest.approx(p_cam[2], abs=0.006)
        assert rgb[i, j, 0] > 150 and rgb[i, j, 1] < 80  # red cube
        # the same pixel without the cube sees the table further away
        world.place(None)
        _, depth2 = r.render("head")
        assert depth2[i, j] > depth[i, j] + 0.02
        # wrist camera above the table at home: depth = TCP height + camera offset along the tool z
        _, dw = r.render("left_wrist")
        T_w = world.T_base_tcp("left") @ spec.cameras["left_wrist"].T_parent_optical
        assert dw[60, 80] == pytest.approx(T_w[2, 3], abs=0.004)
    finally:
        r.close()


def _request(sock: socket.socket, text: str) -> str:
    sock.sendall(text.encode("ascii"))
    buf = b""
    while not buf.endswith(b";"):
        buf += sock.recv(4096)
    return buf.decode("ascii")


def test_controllers_and_gripper_bus_drive_the_physics(spec, tmp_path):
    """ServoJ over the Dobot TCP protocol moves the MuJoCo joints; the gripper's Feetech bus (as the driver writes
    it) closes the fingers, and the position read back is the physical one (stopped by the cube when grasping);
    TwinGrippers.open (the twin's reset) opens them again."""
    from posevla.robot.feetech import FeetechGripper, GripperConfig

    world = TwinWorld(spec)
    servers = TwinControllers(world, {"left": "127.0.0.1"})
    cfg = GripperConfig(port=str(tmp_path / "left_gripper"), servo_id=21, closed_pos=3055, open_pos=2048)
    grippers = TwinGrippers(world, {"left": cfg})
    world.start()
    try:
        ports = servers.endpoint("left")
        with socket.create_connection(("127.0.0.1", ports["dashboard_port"]), 5) as dash, \
                socket.create_connection(("127.0.0.1", ports["motion_port"]), 5) as motion, \
                socket.create_connection(("127.0.0.1", ports["feedback_port"]), 5) as fb:
            assert _request(dash, "EnableRobot()").startswith("0,")
            q_goal = spec.kins["left"].home() + np.radians([10.0, -5.0, 5.0, 0.0, 0.0, 0.0])
            args = ",".join(f"{v:.4f}" for v in np.degrees(q_goal))
            deadline = time.monotonic() + 30
            while np.abs(world.arms["left"].q - q_goal).max() > 2e-3 and time.monotonic() < deadline:
                assert _request(motion, f"ServoJ({args},t=0.03)").startswith("0,")
                time.sleep(0.05)
            assert np.abs(world.arms["left"].q - q_goal).max() < 2e-3
            data = b""
            while len(data) < 1440:
                data += fb.recv(1440 - len(data))
            assert len(data) == 1440
        with FeetechGripper.from_config(cfg) as g:
            g.command_opening(0.0)
            deadline = time.monotonic() + 30
            while world.arms["left"].gripper > 0.02 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert world.arms["left"].gripper < 0.02  # nothing between the fingers: they close fully
            time.sleep(0.1)
            assert g.read_opening()[0] < 0.05
            # a reset opens the grippers as an operator would: the goal register becomes "open" and stays so
            # until the driver writes again (a trial must not start with the last trial's closed gripper)
            assert grippers.open()
            deadline = time.monotonic() + 30
            while world.arms["left"].gripper < 0.98 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert world.arms["left"].gripper >= 0.98
            time.sleep(0.3)
            assert world.arms["left"].gripper >= 0.98 and g.read_opening()[0] > 0.95
    finally:
        world.stop()
        servers.close()
        grippers.close()


def test_bad_calibration_names_the_file(tmp_path):
    bad = tmp_path / "calib"
    bad.mkdir()
    (bad / "head_camera.yaml").write_text("schema_version: 1\nkind: eye_to_hand\n")
    with pytest.raises(ValueError, match="head_camera.yaml"):
        TwinSpec.from_files(sim_robot_yaml(tmp_path), bad)


def test_mjcf_is_valid_xml_and_loads():
    spec = TwinSpec({"left": np.eye(4)}, {})
    assert spec.kins["left"].fk(np.zeros(6)).shape == (4, 4)
    model = mujoco.MjModel.from_xml_string(build_mjcf(spec))
    assert model.nu == 8  # 6 joints + 2 fingers


def test_scripted_paths_respect_the_driver_speed_limit(spec):
    """The scripted leader's paths stay under the robot YAML's max_linear_speed, so the driver never refuses them
    for speed, and the way back ends exactly at home."""
    from posevla.robot.driver import XTrainerConfig
    from posevla.sim.task import scripted_return

    limit = XTrainerConfig.from_yaml(REPO / "config" / "xtrainer_sim_robot.yaml").safety.max_linear_speed
    from posevla.sim.tasks import make_task, scripted_demo, scripted_returns

    hand_over = make_task("hand_over")
    for seed in train_seeds(2):  # the hand-over moves both arms: every arm's path and way back under the limit
        paths = scripted_demo(hand_over, hand_over.sample(seed), spec)
        for paths_ in (paths, scripted_returns(paths, spec)):
            for arm, path in paths_.items():
                T_ab, kin = spec.T_base_armbase[arm], spec.kins[arm]
                xyz = np.array([(T_ab @ kin.fk(q))[:3, 3] for q in path.q])
                assert (np.linalg.norm(np.diff(xyz, axis=0), axis=1) / path.dt).max() < 0.8 * limit, (seed, arm)
    T_ab, kin = spec.T_base_armbase["left"], spec.kins["left"]
    for seed in train_seeds(2):
        pick = scripted_pick(PickLiftTask().sample(seed), T_ab, kin)
        back = scripted_return(pick.q[-1], T_ab, kin)
        for path in (pick, back):
            xyz = np.array([(T_ab @ kin.fk(q))[:3, 3] for q in path.q])
            speed = np.linalg.norm(np.diff(xyz, axis=0), axis=1) / path.dt
            assert speed.max() < 0.8 * limit, (seed, speed.max())
        assert np.allclose(back.q[-1], kin.home()) and back.gripper[-1] == 1.0
        assert pick.gripper[0] == 1.0 and pick.gripper[-1] == 0.0


def _run_paths(world: TwinWorld, paths: dict, until_s: float | None = None, hold_open: str | None = None,
               every: int = 20, on_step=None) -> None:
    """Play each arm's path on one clock (set-points straight into the physics); `hold_open`: that arm's gripper
    never closes."""
    for arm in world.arms.values():
        arm.mode = P.MODE_ENABLED
    end = max(p.duration_s for p in paths.values()) + 0.4 if until_s is None else until_s
    t = 0.0
    while t < end:
        for name, path in paths.items():
            q, g = path.at(t)
            with world.arms[name].lock:
                world.arms[name].q_target, world.arms[name].gripper_target = q, (1.0 if name == hold_open else g)
        world.step(every)
        t += every * world.model.opt.timestep
        if on_step is not None:
            on_step(t)


def test_hand_over_passes_the_cube_to_the_right_arm_without_the_arms_touching(spec):
    """The bimanual task: the scripted demonstration ends with the cube lifted in the right gripper and the left
    one away; the two arms' geometries stay >= 3 cm apart all along; success needs the right arm's grasp (a cube
    lifted by the left arm alone, or a right gripper that never closes, is a failure)."""
    from posevla.sim.handover import HandOverTask
    from posevla.sim.tasks import make_task, scripted_demo

    task = make_task("hand_over")
    assert isinstance(task, HandOverTask) and task.sample(5) == PickLiftTask().sample(5)  # same placements
    world = TwinWorld(spec, task)
    m = world.model
    body = lambda g: mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or ""  # noqa: E731
    left = [g for g in range(m.ngeom) if body(g).startswith("left")]
    right = [g for g in range(m.ngeom) if body(g).startswith("right")]
    assert left and right
    for seed in train_seeds(2):
        state = world.reset(seed)
        paths = scripted_demo(task, state, spec)
        assert set(paths) == {"left", "right"} and len(paths["left"].q) == len(paths["right"].q)
        closest = [np.inf]
        success_at: list[float] = []

        def watch(t: float, closest: list[float] = closest, success_at: list[float] = success_at) -> None:
            closest[0] = min(closest[0], min(mujoco.mj_geomDistance(m, world.data, a, b, 0.1, None)
                                             for a in left for b in right))
            if world.success() and not success_at:
                success_at.append(t)

        _run_paths(world, paths, on_step=watch)
        cube = world.cube_pose()[:3, 3]
        assert world.success(), f"seed {seed}: cube at {np.round(cube, 3)}"
        assert cube[2] > 0.15 and abs(cube[1] - task.spot_xy[1]) < 0.02  # lifted at the hand-over spot
        assert 0.3 < world.arms["right"].gripper < 0.6 and world.arms["left"].gripper > 0.9  # right holds, left open
        assert closest[0] > 0.03, f"seed {seed}: the arms came {closest[0] * 100:.1f} cm close"
        assert success_at[0] > paths["right"].duration_s - 3.0  # only once the right arm has lifted it
    # the right gripper never closes: the cube stays at the spot -> failure
    state = world.reset(train_seeds(1)[0])
    _run_paths(world, scripted_demo(task, state, spec), hold_open="right")
    assert not world.success() and world.cube_pose()[2, 3] < 0.05
    assert np.hypot(*(world.cube_pose()[:2, 3] - task.spot_xy)) < 0.02  # the left arm did set it down there
    # the left arm alone lifts the cube (the pick task's demonstration): lifted, but not handed over -> failure
    state = world.reset(train_seeds(1)[0])
    _run_paths(world, {"left": scripted_pick(state, spec.T_base_armbase["left"], spec.kins["left"])})
    assert world.cube_pose()[2, 3] > task.lift_height_m and not world.success()
    assert PickLiftTask().success(world.cube_pose())


def test_tasks_by_name_and_the_benchmarks_offer_them():
    import argparse

    from posevla.sim.benchmark import add_arguments
    from posevla.sim.tasks import TASKS, make_task, task_name

    assert all(task_name(make_task(n)) == n for n in TASKS)
    with pytest.raises(ValueError, match="unknown task .stack.*pick_cube, pick_cube_overview, hand_over"):
        make_task("stack")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("closed-loop", "rollout", "probe"):
        task_arg = next(a for a in sub.choices[cmd]._actions if a.dest == "task")
        assert tuple(task_arg.choices) == tuple(TASKS) and task_arg.default == "pick_cube"
