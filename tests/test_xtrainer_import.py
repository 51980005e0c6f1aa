"""`posevla dataset import-xtrainer` on tiny files written in the vendor's layout (dobot_xtrainer sencondThread.py):
joints kept, TCP poses through the Nova kinematics and tool frame (checked against Dobot's URDF chain), gripper
convention flipped, images decoded in RGB order, bad input -> exit 2 with one line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import yaml

from posevla.dataset import cli as dataset_cli
from posevla.dataset.reader import EpisodeReader
from posevla.geometry import se3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_kinematics_vendor import urdf_flange  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
W, H, T = 64, 48, 6
COLOURS = {"top": (200, 30, 30), "left_wrist": (30, 200, 30), "right_wrist": (30, 30, 200)}  # RGB


def vendor_file(path: Path, compress: bool = True) -> np.ndarray:
    """An episode in the vendor's layout; returns its qpos."""
    rng = np.random.default_rng(0)
    start_l, start_r = np.deg2rad([-90, 0, -90, 0, 90, 90]), np.deg2rad([90, 0, 90, 0, -90, -90])
    qpos = np.zeros((T, 14))
    for k in range(T):
        qpos[k, :6] = start_l + 0.05 * k * rng.standard_normal(6)
        qpos[k, 7:13] = start_r + 0.05 * k * rng.standard_normal(6)
        qpos[k, 6], qpos[k, 13] = k / (T - 1), 0.25  # leader trigger: 0 open .. 1 closed
    imgs = {c: np.tile(np.array(rgb, np.uint8), (T, H, W, 1)) for c, rgb in COLOURS.items()}
    with h5py.File(path, "w") as root:
        root.attrs["sim"] = False
        root.attrs["compress"] = compress
        obs = root.create_group("observations")
        obs.create_dataset("qpos", data=qpos)
        obs.create_dataset("qvel", data=qpos)
        root.create_dataset("action", data=qpos + 0.01)
        g = obs.create_group("images")
        if compress:
            enc = {c: [cv2.imencode(".jpg", im, [int(cv2.IMWRITE_JPEG_QUALITY), 50])[1].reshape(-1) for im in v]
                   for c, v in imgs.items()}
            pad = max(len(e) for v in enc.values() for e in v)
            for c, v in enc.items():
                ds = g.create_dataset(c, (T, pad), dtype="uint8")
                for k, e in enumerate(v):
                    row = np.zeros(pad, np.uint8)
                    row[:len(e)] = e
                    ds[k] = row
            root.create_dataset("compress_len", data=np.array([[len(e) for e in v] for v in enc.values()]))
        else:
            for c, v in imgs.items():
                g.create_dataset(c, data=v)
    return qpos


def intrinsics_yaml(path: Path, width: int = W) -> Path:
    info = {"k": [50.0, 0, 32.0, 0, 50.0, 24.0, 0, 0, 1], "d": [0, 0, 0, 0, 0], "width": width, "height": H,
            "distortion_model": "plumb_bob"}
    path.write_text(yaml.safe_dump({c: info for c in ("head", "left_wrist", "right_wrist")}))
    return path


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    dataset_cli.add_arguments(parser)
    return dataset_cli.run(parser.parse_args(argv))


@pytest.mark.parametrize("compress", [True, False], ids=["jpeg", "raw"])
def test_import_converts_joints_to_tool_poses_and_flips_the_gripper(tmp_path, compress, capsys):
    src = tmp_path / "episode_init_0.hdf5"
    qpos = vendor_file(src, compress)
    robot = REPO / "config" / "xtrainer_robot.yaml"
    rc = _main(["import-xtrainer", str(src), "--out", str(tmp_path / "data"), "--task", "clean_dish",
                "--instruction", "clean the dish", "--robot", str(robot), "--intrinsics",
                str(intrinsics_yaml(tmp_path / "intr.yaml")), "--fps", "50",
                "--calibration", str(REPO / "calibration")])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "data" / "clean_dish" / "episode_000000.h5"
    mounts = yaml.safe_load(robot.read_text())["arms"]
    with EpisodeReader(out) as ep:
        assert ep.num_frames == T and sorted(ep.camera_names) == ["head", "left_wrist", "right_wrist"]
        q = ep.array("observations/qpos")
        np.testing.assert_array_equal(q[:, :6], qpos[:, :6])
        np.testing.assert_allclose(q[:, 6], 1.0 - qpos[:, 6])
        np.testing.assert_allclose(q[:, 13], 0.75)
        np.testing.assert_allclose(ep.array("action")[:, 6], 1.0 - (qpos[:, 6] + 0.01))
        for arm, off in (("left", 0), ("right", 7)):
            T_base_arm = se3.T_from_xyz_rpy(np.array(mounts[arm]["mount_xyz"]), np.array(mounts[arm]["mount_rpy"]))
            tool = np.eye(4)
            tool[2, 3] = 0.197
            for k in range(T):
                expected = T_base_arm @ urdf_flange("nova2", qpos[k, off:off + 6]) @ tool
                got = ep.frame(k).state.arms[arm].T_base_tcp
                assert np.linalg.norm(got[:3, 3] - expected[:3, 3]) < 1e-4  # 0.1 mm, independent URDF chain
                assert se3.rotation_angle(got[:3, :3].T @ expected[:3, :3]) < 1e-4
        stamps = ep.array("stamps/frame")
        np.testing.assert_array_equal(np.diff(stamps), 20_000_000)
        for cam, vendor in (("head", "top"), ("left_wrist", "left_wrist"), ("right_wrist", "right_wrist")):
            mean = ep.rgb(cam, T - 1).reshape(-1, 3).mean(axis=0)
            np.testing.assert_allclose(mean, COLOURS[vendor], atol=12)  # RGB order kept through both JPEGs
        meta = ep.meta
        assert meta["import"]["kinematics"] == "nova2" and meta["import"]["tool_mm_deg"][2] == pytest.approx(197)
        assert meta["import"]["tool_index"] == 1
        assert meta["instruction"] == "clean the dish" and meta["fps"] == 50.0
        assert set(meta["calibration"]) == {"head_camera.yaml", "left_wrist_camera.yaml", "right_wrist_camera.yaml"}
    assert json.loads(json.dumps(meta))  # plain JSON


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    src = tmp_path / "episode_init_0.hdf5"
    vendor_file(src)
    base = ["import-xtrainer", str(src), "--out", str(tmp_path / "data"), "--task", "t", "--instruction", "i",
            "--robot", str(REPO / "config" / "xtrainer_robot.yaml")]
    cases = [
        (["--intrinsics", str(intrinsics_yaml(tmp_path / "wide.yaml", width=80))], "images are 64x48"),
        (["--intrinsics", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
        (["--intrinsics", str(intrinsics_yaml(tmp_path / "ok.yaml")), "--fps", "0"], "fps=0"),
    ]
    bad_cam = tmp_path / "cam.yaml"
    bad_cam.write_text(yaml.safe_dump({"top": {"k": [1, 0, 0, 0, 1, 0, 0, 0, 1], "width": W, "height": H}}))
    cases.append((["--intrinsics", str(bad_cam)], "unknown camera 'top'"))
    broken = tmp_path / "broken.hdf5"
    with h5py.File(broken, "w") as root:
        root.create_dataset("observations/qpos", data=np.zeros((3, 14)))
    cases.append((["--intrinsics", str(tmp_path / "ok.yaml")], "missing /action"))
    for n, (extra, msg) in enumerate(cases):
        argv = base + extra if n < len(cases) - 1 else [base[0], str(broken), *base[2:], *extra]
        rc = _main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    assert not list(tmp_path.rglob("episode_0*.h5"))  # nothing written, not even partly
