"""Geometry core checked against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from posevla.geometry import se3
from posevla.geometry.depth import depth_prior, depth_to_metres, sparse_depth_prior
from posevla.geometry.image_ops import ViewTransform, plan, plan_resize_with_pad
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.projection import depth_to_points, project, unproject
from posevla.geometry.raymap import raymap

D455 = CameraIntrinsics(fx=386.2, fy=385.7, cx=321.4, cy=238.9, width=640, height=480)


def _continuous_map(vt: ViewTransform, uv: np.ndarray) -> np.ndarray:
    """Independent pixel-coordinate map of crop -> resize -> pad (pixel centres at integers)."""
    x0, y0, w, h = vt.crop
    sx, sy = vt.resize_w / w, vt.resize_h / h
    u = (uv[..., 0] - x0 + 0.5) * sx - 0.5 + vt.pad[0]
    v = (uv[..., 1] - y0 + 0.5) * sy - 0.5 + vt.pad[1]
    return np.stack([u, v], axis=-1)


TRANSFORMS = [
    plan_resize_with_pad(640, 480, 224, 224),
    plan("center_crop", 640, 480, 224, 224),
    ViewTransform(640, 480, (37, 11, 500, 420), 300, 160, (3, 7, 11, 2)),
    ViewTransform(640, 480, (0, 0, 640, 480), 1280, 960),
]


@pytest.mark.parametrize("vt", TRANSFORMS)
def test_point_lands_on_same_ray_through_raw_and_preprocessed_image(vt: ViewTransform) -> None:
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-0.5, 0.5, (200, 2)), rng.uniform(0.3, 3.0, 200)]
    k_new = vt.apply_intrinsics(D455)
    uv_raw, uv_new = project(pts, D455), project(pts, k_new)
    np.testing.assert_allclose(uv_new, _continuous_map(vt, uv_raw), atol=1e-9)
    # The ray K'^-1 [u', v', 1] of the new pixel coordinate points at the same 3D point.
    rays = unproject(uv_new, np.ones(len(pts)), k_new)
    np.testing.assert_allclose(rays * pts[:, 2:3], pts, atol=1e-9)


@pytest.mark.parametrize("vt", TRANSFORMS[:3])
def test_resampled_image_content_agrees_with_updated_intrinsics(vt: ViewTransform) -> None:
    """A blurred dot rendered at a 3D point's raw projection appears where the updated K projects it."""
    point = np.array([0.08, -0.05, 0.9])
    u, v = project(point, D455)
    yy, xx = np.mgrid[0:480, 0:640]
    blob = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 6.0**2))
    img = np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = vt.apply_rgb(img)[..., 0].astype(float)
    w = out * (out > 10)
    ys, xs = np.mgrid[0:out.shape[0], 0:out.shape[1]]
    centroid = np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    np.testing.assert_allclose(centroid, project(point, vt.apply_intrinsics(D455)), atol=0.15)


def test_raymap_centre_pixel_is_principal_ray_and_matches_Kinv() -> None:
    intr = CameraIntrinsics(fx=200.0, fy=210.0, cx=112.0, cy=100.0, width=224, height=224)
    rm = raymap(intr)
    assert rm.shape == (224, 224, 3) and rm.dtype == np.float32
    np.testing.assert_allclose(rm[100, 112], [0.0, 0.0, 1.0], atol=1e-7)
    j, i = 37, 201
    np.testing.assert_allclose(rm[j, i], intr.K_inv @ np.array([i, j, 1.0]), rtol=1e-6)
    assert not rm.flags.writeable  # cached and shared: nobody may modify it


def test_raymap_of_preprocessed_view_points_at_the_same_3d_points() -> None:
    vt = plan_resize_with_pad(640, 480, 224, 224)
    k_new = vt.apply_intrinsics(D455)
    rm = raymap(k_new).astype(float)
    # Pixel (i, j) of the model image and depth z: the 3D point z * ray projects back to (i, j) in K_new
    j, i, z = 150, 60, 1.7
    p = rm[j, i] * z
    np.testing.assert_allclose(project(p, k_new), [i, j], atol=1e-4)


def test_intrinsics_round_trip_camera_info_and_errors() -> None:
    info = D455.to_camera_info()
    assert CameraIntrinsics.from_camera_info(info) == D455
    with pytest.raises(ValueError, match="fx"):
        CameraIntrinsics(fx=-1.0, fy=1.0, cx=1, cy=1, width=4, height=4)
    with pytest.raises(ValueError, match="cx"):
        CameraIntrinsics(fx=100.0, fy=100.0, cx=5000.0, cy=240.0, width=640, height=480)
    with pytest.raises(ValueError, match="width"):
        CameraIntrinsics(fx=100.0, fy=100.0, cx=1, cy=1, width=0, height=480)
    with pytest.raises(ValueError, match="k has 4"):
        CameraIntrinsics.from_camera_info({"k": [1, 2, 3, 4], "width": 4, "height": 4})
    with pytest.raises(ValueError, match="crop"):
        D455.cropped(600, 0, 100, 100)
    with pytest.raises(ValueError, match="camera_info says 640x480"):
        D455.check_image((240, 320))
    with pytest.raises(ValueError, match="crop"):
        ViewTransform(640, 480, (600, 0, 100, 100), 224, 224)


def test_depth_resampling_never_mixes_valid_and_invalid_pixels() -> None:
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.3, 2.0, (480, 640)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.3] = 0.0
    depth[100:140, 200:260] = 0.0  # a hole
    for vt in TRANSFORMS:
        out = vt.apply_depth(depth)
        assert out.shape == (vt.out_h, vt.out_w)
        # Every output value is one of the input values (nearest neighbour, no blending)
        assert np.isin(out, depth).all()
        # Padding is invalid
        left, top, right, bottom = vt.pad
        assert not out[:top].any() and not out[:, :left].any()
    # Each output pixel copies the source pixel containing its centre
    vt = TRANSFORMS[2]
    out = vt.apply_depth(depth)
    jj, ii = 50, 120
    src = _continuous_map_inverse(vt, np.array([ii, jj], float))
    assert out[jj, ii] == depth[int(np.floor(src[1] + 0.5)), int(np.floor(src[0] + 0.5))]


def _continuous_map_inverse(vt: ViewTransform, uv: np.ndarray) -> np.ndarray:
    x0, y0, w, h = vt.crop
    sx, sy = vt.resize_w / w, vt.resize_h / h
    return np.array([(uv[0] - vt.pad[0] + 0.5) / sx - 0.5 + x0, (uv[1] - vt.pad[1] + 0.5) / sy - 0.5 + y0])


def test_depth_prior_handles_nan_inf_negative_and_range() -> None:
    d = np.array([[np.nan, np.inf, -1.0], [0.0, 0.5, 20.0]], dtype=np.float32)
    prior = depth_prior(d, min_m=0.1, max_m=10.0)
    np.testing.assert_array_equal(prior[..., 1], [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(prior[..., 0], [[0, 0, 0], [0, 0.5, 0]])
    assert np.isfinite(prior).all()
    with pytest.raises(ValueError, match="uint16"):
        depth_prior(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="HxW"):
        depth_prior(np.zeros((2, 2, 1), np.float32))
    raw = np.array([[0, 1000, 65535]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(raw, 0.001), [[0, 1.0, 65.535]], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("given_out", [False, True])
def test_depth_prior_equals_the_plain_masked_definition(dtype, given_out) -> None:
    rng = np.random.default_rng(7)
    d = rng.uniform(-1.0, 12.0, (37, 53)).astype(dtype)
    special = rng.integers(0, 5, d.shape)
    d[special == 0] = np.nan
    d[special == 1] = np.inf
    d[special == 2] = -np.inf
    d[0, :3] = [0.05, 10.0, -0.0]  # the range ends are valid
    out = np.full((37, 53, 2), 123.0, np.float32) if given_out else None
    prior = depth_prior(d, min_m=0.05, max_m=10.0, out=out)
    valid = (d >= 0.05) & (d <= 10.0)
    np.testing.assert_array_equal(prior[..., 1], valid.astype(np.float32))
    np.testing.assert_array_equal(prior[..., 0], np.where(valid, d, 0).astype(np.float32))
    assert prior.dtype == np.float32 and (out is None or prior is out)
    assert not np.signbit(prior[..., 0]).any()  # invalid pixels are +0.0, not -0.0


def test_sparse_depth_keeps_requested_fraction_of_valid_pixels_only() -> None:
    rng = np.random.default_rng(2)
    d = rng.uniform(0.2, 3.0, (200, 200)).astype(np.float32)
    d[:, :100] = np.nan
    prior = depth_prior(d)
    sparse = sparse_depth_prior(prior, 0.1, rng)
    kept = sparse[..., 1] > 0
    assert not kept[:, :100].any()
    assert 0.08 < kept[:, 100:].mean() < 0.12
    np.testing.assert_array_equal(sparse[..., 0][kept], prior[..., 0][kept])
    assert (sparse[..., 0][~kept] == 0).all()


rotations = st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=4).filter(
    lambda q: np.linalg.norm(q) > 0.1)


@settings(max_examples=200, deadline=None)
@given(rotations, st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3))
@example([1.0, 5.960464477539063e-08, 1.0, 0.0], [0.0, 0.0, 0.0])  # near gimbal lock: found by CI
def test_rotation_conversions_round_trip(q: list[float], p: list[float]) -> None:
    q = np.array(q) / np.linalg.norm(q)
    T = se3.T_from_pos_quat(np.array(p), q)
    assert se3.is_rigid(T)
    p2, q2 = se3.pos_quat_from_T(T)
    np.testing.assert_allclose(se3.T_from_pos_quat(p2, q2), T, atol=1e-9)
    assert min(np.abs(q2 - q).max(), np.abs(q2 + q).max()) < 1e-9
    R = T[:3, :3]
    np.testing.assert_allclose(se3.matrix_from_rot6d(se3.rot6d_from_matrix(R)), R, atol=1e-9)
    xyz, rpy = se3.xyz_rpy_from_T(T)
    np.testing.assert_allclose(se3.T_from_xyz_rpy(xyz, rpy), T, atol=1e-9)
    # Euler convention matches scipy's extrinsic xyz independently
    np.testing.assert_allclose(Rotation.from_euler("xyz", rpy).as_matrix(), R, atol=1e-9)
    np.testing.assert_allclose(se3.invert_T(T) @ T, np.eye(4), atol=1e-9)


def test_rot6d_gram_schmidt_gives_rotation_from_any_vector() -> None:
    x = np.random.default_rng(3).normal(size=(100, 6))
    R = se3.matrix_from_rot6d(x)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", R, R), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)


def test_slerp_endpoints_midpoint_and_composition_naming() -> None:
    T0 = se3.T_from_xyz_rpy([0, 0, 0], [0, 0, 0])
    T1 = se3.T_from_xyz_rpy([1, 2, 3], [0, 0, np.pi / 2])
    np.testing.assert_allclose(se3.slerp_T(T0, T1, 0.0), T0, atol=1e-12)
    np.testing.assert_allclose(se3.slerp_T(T0, T1, 1.0), T1, atol=1e-12)
    mid = se3.slerp_T(T0, T1, 0.5)
    np.testing.assert_allclose(mid[:3, 3], [0.5, 1, 1.5])
    assert se3.rotation_angle(mid[:3, :3]) == pytest.approx(np.pi / 4)
    # T_a_c = T_a_b @ T_b_c maps points of c into a
    T_a_b = se3.T_from_xyz_rpy([1, 0, 0], [0, 0, np.pi / 2])
    T_b_c = se3.T_from_xyz_rpy([0, 1, 0], [0, 0, 0])
    p_c = np.array([0.1, 0.2, 0.3])
    p_a = se3.transform_points(T_a_b @ T_b_c, p_c)
    np.testing.assert_allclose(p_a, se3.transform_points(T_a_b, se3.transform_points(T_b_c, p_c)))
    np.testing.assert_allclose(p_a, [1 - 1.2, 0.1, 0.3], atol=1e-12)
    assert not se3.is_rigid(np.diag([2.0, 1, 1, 1]))


def test_unproject_depth_image_round_trip() -> None:
    d = np.zeros((480, 640), np.float32)
    d[240, 320] = 1.5
    d[10, 600] = np.nan
    pts, uv = depth_to_points(d, D455)
    assert pts.shape == (1, 3)
    np.testing.assert_allclose(project(pts, D455), uv, atol=1e-9)
    with pytest.raises(ValueError, match="behind"):
        project(np.array([0.0, 0.0, -1.0]), D455)


def test_fast_quaternion_helpers_match_scipy() -> None:
    rng = np.random.default_rng(4)
    R0, R1 = Rotation.random(2, random_state=5).as_matrix()
    q0, q1 = se3.quat_from_matrix(R0), se3.quat_from_matrix(R1)
    np.testing.assert_allclose(se3.matrix_from_quat(q0), R0, atol=1e-12)
    for s in rng.random(5):
        expected = se3.slerp_T(se3.make_T(R0, np.zeros(3)), se3.make_T(R1, np.zeros(3)), s)[:3, :3]
        np.testing.assert_allclose(se3.matrix_from_quat(se3.quat_slerp(q0, q1, s)), expected, atol=1e-9)
