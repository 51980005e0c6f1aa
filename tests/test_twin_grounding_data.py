"""Pose pre-training data rendered by the twin: the written boxes are the cube where the images show it, in the
camera frames the observation builder uses, readable by the project's Omni3D reader; bad input exits 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from ros_helpers import REPO, sim_robot_yaml  # noqa: E402

from posevla.geometry import se3  # noqa: E402
from posevla.pretrain.mixture import read_mixture  # noqa: E402
from posevla.pretrain.omni3d import Omni3DReader  # noqa: E402
from posevla.sim.grounding_data import main, write_dataset  # noqa: E402
from posevla.sim.task import PickLiftTask  # noqa: E402
from posevla.sim.twin import TwinSpec  # noqa: E402


def test_boxes_are_the_cube_where_the_images_show_it(tmp_path: Path) -> None:
    (tmp_path / "robot").mkdir()
    robot = sim_robot_yaml(tmp_path / "robot")
    info = write_dataset(tmp_path / "g", 8, "train", 3, ["head", "left_wrist"], 160, 120, 0.5, robot,
                         REPO / "calibration", progress=False)
    assert info["images"] >= 8 and info["per_camera"]["head"] >= 6  # the arm hides the cube now and then
    imgs = list(Omni3DReader(info["json"], tmp_path / "g", tmp_path / "g" / "depth"))
    assert len(imgs) == info["images"]
    spec = TwinSpec.from_files(robot, REPO / "calibration")
    T_base_head = spec.cameras["head"].T_parent_optical
    task = PickLiftTask()


    anns = json.loads(info["json"].read_text())["annotations"]
    for img, ann in zip(imgs, anns):
        (obj,) = img.objects
        assert obj.category == "red cube"
        np.testing.assert_allclose(obj.box.size_xyz, [0.04] * 3, atol=1e-12)
        c = obj.box.centre
        u, v = (img.intrinsics.K @ (c / c[2]))[:2]
        rgb, depth = img.load_rgb(), img.load_depth()
        i, j = int(round(v)), int(round(u))
        if 0 <= i < 120 and 0 <= j < 160:  # centre in view: red there, and the depth of a cube face
            assert rgb[i, j, 0] > 90 and rgb[i, j, 0] > 2 * rgb[i, j, 1], (ann["camera"], rgb[i, j])
            assert c[2] - 0.035 < depth[i, j] < c[2] + 0.005
        if ann["camera"] == "head":  # the box in base_link is the task's placement for its seed (independent path)
            p_base = se3.transform_points(T_base_head, c[None])[0]
            st = task.sample(ann["seed"])
            np.testing.assert_allclose(p_base, [*st.cube_xy, 0.02], atol=2e-3)  # resting cube settles < 2 mm
    assert {a["seed"] for a in anns} <= set(range(3, 11))
    (spec_src,) = read_mixture(info["mixture"])
    assert spec_src.format == "omni3d"


@pytest.mark.parametrize("argv, message", [
    (["--scenes", "0"], "--scenes"),
    (["--arm-moved", "1.5"], "--arm-moved"),
    (["--cameras", "head,nose"], "nose"),
    (["--calibration-dir", "/nonexistent"], "--calibration-dir"),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "robot").mkdir()
    robot = sim_robot_yaml(tmp_path / "robot")
    assert main(["--out", str(tmp_path / "o"), "--robot-config", str(robot), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
