"""The demo's ray-cast scene agrees with the geometry core (projection, depth, frames)."""
from __future__ import annotations

import numpy as np

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.projection import depth_to_points, project
from posevla.tools.synthetic_scene import TabletopScene


def _look_down_camera(height: float) -> np.ndarray:
    # optical z points down (-z base), x right = -y base, y down = -x base
    R = np.stack([[0, -1.0, 0], [-1.0, 0, 0], [0, 0, -1.0]], axis=1)
    return se3.make_T(R, [0.35, 0.10, height])


def test_box_top_seen_from_above_has_right_colour_depth_and_position() -> None:
    intr = CameraIntrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)
    scene = TabletopScene.default()
    T_base_cam = _look_down_camera(0.5)
    rgb, depth = scene.render(T_base_cam, intr)
    box = scene.boxes[0]
    top_centre = box.centre + [0, 0, box.size[2] / 2]
    u, v = project(se3.transform_points(se3.invert_T(T_base_cam), top_centre), intr)
    i, j = int(round(u)), int(round(v))
    assert depth[j, i] == np.float32(0.5 - top_centre[2])
    assert rgb[j, i, 0] > 150 and rgb[j, i, 2] < 80  # red box
    # Back-projected table pixels lie on z = 0 in base_link, box-top pixels on the top face
    pts_cam, uv = depth_to_points(depth, intr)
    pts_base = se3.transform_points(T_base_cam, pts_cam)
    on_table = np.abs(pts_base[:, 2]) < 1e-4
    on_top = np.abs(pts_base[:, 2] - top_centre[2]) < 1e-4
    assert on_table.mean() > 0.5 and on_top.sum() > 50
    assert (on_table | on_top | (pts_base[:, 2] > 0)).all()
