"""Pose pre-training data from the X-Trainer twin: renders of the pick-and-lift cube with its 3D box, in the
Omni3D layout that `posevla pretrain --stage grounding` reads (docs/pretraining.md).

Each scene places the cube as the task's seed says (`PickLiftTask.sample`; give training seeds only, the
held-out evaluation seeds start at 1 000 000), puts the task arm at home or, with probability `--arm-moved`, at
a random reachable pose above the placement area (so the arm occludes and the wrist camera sees the cube from
many poses), and renders the named cameras. The box of the cube is written in each camera's optical frame,
`T_cam_cube = inv(T_base_cam) @ T_base_cube`, with T_base_cam from the calibration files the twin renders
(head: eye-to-hand; wrists: `T_base_tcp @ T_tcp_cam`), exactly as the observation builder computes it.
An image is written only where the cube is visible: at least `min_visible_px` red pixels inside its projected
box (the arm or the image border may hide it).

    python -m posevla.sim.grounding_data --out data/twin_grounding --scenes 3000 --split train
    python -m posevla.sim.grounding_data --out data/twin_grounding --scenes 100 --split val --first-seed 1000000

writes <out>/Omni3D_twin_<split>.json, <out>/images/<split>/<camera>_<n>.png and uint16 depth (mm) under
<out>/depth/images/<split>/, and <out>/<split>.yaml, a mixture file naming the source.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from posevla.paths import calibration_dir, default_path

CATEGORY = "red cube"


def _visible_px(rgb: np.ndarray, box_px: list[float]) -> int:
    """Red cube pixels inside the cube's projected box (the arm or the image border may hide it)."""
    h, w = rgb.shape[:2]
    x1, y1 = max(0, int(np.floor(box_px[0]))), max(0, int(np.floor(box_px[1])))
    x2, y2 = min(w, int(np.ceil(box_px[2])) + 1), min(h, int(np.ceil(box_px[3])) + 1)
    if x2 <= x1 or y2 <= y1:
        return 0
    patch = rgb[y1:y2, x1:x2].astype(np.int16)
    red = (patch[..., 0] > 90) & (patch[..., 0] > 2 * patch[..., 1] + 20) & (patch[..., 0] > 2 * patch[..., 2] + 20)
    return int(red.sum())


def write_dataset(out: str | Path, scenes: int, split: str, first_seed: int, cameras: list[str], width: int,
                  height: int, arm_moved: float, robot_yaml: str | Path, calib_dir: str | Path,
                  rng_seed: int = 0, progress: bool = True, min_visible_px: int = 3) -> dict:
    """Render `scenes` placements (seeds first_seed..) and write the visible views; returns counts and paths."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from scipy.spatial.transform import Rotation

    from posevla.calibration.files import load_calibrations
    from posevla.geometry import se3
    from posevla.pretrain.boxes import Box3D, omni3d_dimensions
    from posevla.robot.driver import XTrainerConfig
    from posevla.sim.render import TwinRenderer
    from posevla.sim.twin import TwinSpec
    from posevla.sim.world import TwinWorld
    from posevla.types import optical_frame

    out = Path(out)
    spec = TwinSpec.from_files(robot_yaml, calib_dir)
    world = TwinWorld(spec)
    renderer = TwinRenderer(world, width, height)
    unknown = [c for c in cameras if c not in renderer.camera_ids]
    if unknown:
        renderer.close()
        raise ValueError(f"--cameras: {unknown} not in the twin (has {sorted(renderer.camera_ids)})")
    calibs = load_calibrations(calib_dir)
    robot = XTrainerConfig.from_yaml(robot_yaml)
    arm = world.task.arm
    kin = robot.arm_kinematics(arm)
    T_armbase_base = se3.invert_T(spec.T_base_armbase[arm])
    T_home = world.T_base_tcp(arm)
    q_home = world.arms[arm].q.copy()
    rng = np.random.default_rng([rng_seed, first_seed])
    size = np.full(3, 2.0 * spec.cube_half_m)
    images: list = []
    annotations: list = []
    written = {c: 0 for c in cameras}
    iterator = range(first_seed, first_seed + scenes)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"twin grounding {split}", unit="scene")
    import mujoco

    try:
        for seed in iterator:
            world.place(seed)
            q = q_home
            if rng.uniform() < arm_moved:  # a random reachable pose above the placement area
                x0, x1 = world.task.x_range
                y0, y1 = world.task.y_range
                T = T_home.copy()
                T[:3, :3] = Rotation.from_euler("z", rng.uniform(-0.6, 0.6)).as_matrix() @ T_home[:3, :3]
                T[:3, 3] = [rng.uniform(x0 - 0.05, x1 + 0.05), rng.uniform(y0 - 0.05, y1 + 0.05),
                            rng.uniform(0.08, 0.26)]
                q_ik = kin.ik(T_armbase_base @ T, q_home)
                if q_ik is not None:
                    q = np.asarray(q_ik)
            with world.lock:
                world.data.qpos[world._idx[arm].qpos] = q
                mujoco.mj_forward(world.model, world.data)
            T_base_cube = world.cube_pose()
            for cam in cameras:
                rgb, depth = renderer.render(cam)
                frame = optical_frame(cam)
                calib = calibs[frame]
                T_base_cam = (calib.T_parent_child if calib.kind == "eye_to_hand" or calib.arm is None
                              else world.T_base_tcp(calib.arm) @ calib.T_parent_child)
                T_cam_cube = se3.invert_T(T_base_cam) @ T_base_cube
                intr = renderer.intrinsics(cam)
                box = Box3D(T_cam_cube, size)
                corners = box.corners()
                if np.any(corners[:, 2] <= 0.01):
                    continue
                pix = (intr.K @ (corners / corners[:, 2:3]).T).T[:, :2]
                proj = [float(pix[:, 0].min()), float(pix[:, 1].min()), float(pix[:, 0].max()), float(pix[:, 1].max())]
                visible = _visible_px(rgb, proj)
                if visible < min_visible_px:
                    continue
                n = len(images)
                rel = f"images/{split}/{cam}_{n:06d}.png"
                _write_png(out / rel, rgb)
                _write_png(out / "depth" / rel, np.round(depth * 1000.0).clip(0, 65535).astype(np.uint16))
                images.append({"id": n, "dataset_id": 0, "width": width, "height": height, "file_path": rel,
                               "K": intr.K.tolist(), "src_90_rotate": 0, "src_flagged": False})
                annotations.append({
                    "id": n, "image_id": n, "category_id": 1, "category_name": CATEGORY, "valid3D": True,
                    "bbox2D_tight": proj, "bbox2D_proj": proj, "bbox2D_trunc": proj,
                    "bbox3D_cam": corners.tolist(), "center_cam": box.centre.tolist(),
                    "dimensions": omni3d_dimensions(box.size_xyz).tolist(), "R_cam": T_cam_cube[:3, :3].tolist(),
                    "behind_camera": False, "visibility": -1, "truncation": -1, "segmentation_pts": visible,
                    "lidar_pts": -1, "depth_error": -1, "seed": int(seed), "camera": cam})
                written[cam] += 1
    finally:
        renderer.close()
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"Omni3D_twin_{split}.json"
    json_path.write_text(json.dumps({
        "info": {"id": "twin", "source": 0, "name": "posevla X-Trainer twin", "split": split, "version": "1",
                 "url": ""},
        "images": images, "categories": [{"id": 1, "name": CATEGORY, "supercategory": "box"}],
        "annotations": annotations}))
    mixture = out / f"{split}.yaml"
    mixture.write_text(f"sources:\n  - {{name: twin_{split}, format: omni3d, json: {json_path.name}, image_root: .,"
                       f" depth_root: depth, depth_scale_m: 0.001}}\n")
    return {"json": json_path, "mixture": mixture, "images": len(images), "per_camera": written}


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), img[..., ::-1] if img.ndim == 3 else img)
    if not ok:
        raise OSError(f"could not write {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posevla.sim.grounding_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--scenes", type=int, default=100, help="placements rendered")
    p.add_argument("--split", default="train", help="split name in file names (train, val)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="placement seeds first..first+scenes-1 (held-out evaluation seeds start at 1000000)")
    p.add_argument("--cameras", default="head,left_wrist", help="comma-separated twin cameras")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--arm-moved", type=float, default=0.7,
                   help="probability that the task arm stands at a random pose above the table (else home)")
    p.add_argument("--robot-config", type=Path, default=default_path("config", "xtrainer_sim_robot.yaml"))
    p.add_argument("--calibration-dir", type=Path, default=calibration_dir())
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    prog = "posevla.sim.grounding_data"
    if args.scenes < 1 or args.first_seed < 0 or args.width < 16 or args.height < 16:
        print(f"{prog}: --scenes must be >= 1, --first-seed >= 0, --width/--height >= 16", file=sys.stderr)
        return 2
    if not 0.0 <= args.arm_moved <= 1.0:
        print(f"{prog}: --arm-moved {args.arm_moved} must be in [0, 1]", file=sys.stderr)
        return 2
    for name in ("robot_config", "calibration_dir"):
        if not getattr(args, name).exists():
            print(f"{prog}: --{name.replace('_', '-')} {getattr(args, name)} does not exist", file=sys.stderr)
            return 2
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    try:
        info = write_dataset(args.out, args.scenes, args.split, args.first_seed, cameras, args.width, args.height,
                             args.arm_moved, args.robot_config, args.calibration_dir, progress=not args.no_progress)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {info['images']} images ({info['per_camera']}): {info['json']}; mixture {info['mixture']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
