"""Generated tabletop scenes with known box poses, depth and intrinsics, written in the Omni3D and BOP layouts.

Each image is a ray-cast table (plane z = 0 of a table frame, z up) seen by a camera looking down at it
from 0.45-0.75 m, with 1-3 oriented boxes standing on it (yaw only). Categories are box "models" of fixed
size and colour, so the same scenes are valid BOP data (one model per obj_id, origin at the box centre).
Pixel (i, j) is centred at (u, v) = (i, j); depth is float metres along the optical z axis.

    python -m posevla.pretrain.synthetic --out data/synthetic --images 200 --split train

writes
    <out>/omni3d/Omni3D_synthetic_<split>.json        Omni3D annotation file (images, categories, annotations)
    <out>/omni3d/images/synthetic/<split>/000000.png  RGB (file_path in the JSON is relative to <out>/omni3d)
    <out>/omni3d/depth/images/synthetic/<split>/000000.png  uint16 depth in mm (depth_root + file_path)
    <out>/bop/models/models_info.json                 box models (millimetres), origin at the box centre
    <out>/bop/object_names.json                       obj_id -> category name (BOP itself has no names)
    <out>/bop/<split>/<scene:06d>/{scene_camera,scene_gt,scene_gt_info}.json, rgb/, depth/ (depth_scale 0.1)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.geometry.raymap import raymap
from posevla.pretrain.boxes import Box3D, omni3d_dimensions


@dataclass(frozen=True)
class BoxModel:
    obj_id: int
    name: str
    size_xyz: tuple[float, float, float]  # metres
    colour: tuple[int, int, int]


MODELS: tuple[BoxModel, ...] = (
    BoxModel(1, "red box", (0.10, 0.06, 0.05), (210, 40, 40)),
    BoxModel(2, "green box", (0.06, 0.06, 0.10), (40, 180, 60)),
    BoxModel(3, "blue box", (0.12, 0.05, 0.04), (40, 70, 220)),
)
BOP_DEPTH_SCALE = 0.1  # BOP: depth_mm = value * depth_scale
OMNI3D_DEPTH_SCALE_M = 0.001  # our Omni3D depth files: metres = value * 0.001
IMAGES_PER_SCENE = 10


@dataclass
class SceneObject:
    model: BoxModel
    box: Box3D  # in the camera frame
    box2d: tuple[float, float, float, float] | None  # tight box of visible pixels (x1, y1, x2, y2)
    visible_px: int


@dataclass
class Scene:
    rgb: np.ndarray
    depth_m: np.ndarray
    intrinsics: CameraIntrinsics
    objects: list[SceneObject]
    T_cam_table: np.ndarray


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """T_table_cam of an optical camera (x right, y down, z forward) at `eye` looking at `target`."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return se3.make_T(np.stack([x, y, z], axis=1), eye)


def default_intrinsics(width: int = 160, height: int = 120, focal_scale: float = 0.95) -> CameraIntrinsics:
    """Pinhole intrinsics with fx = fy = focal_scale x width (0.95: a ~55 deg wide view, the head camera's
    field at 0.6 m covers the table; 1.5: zoomed onto the +-0.16 m placement area)."""
    f = focal_scale * width
    return CameraIntrinsics(f, f, (width - 1) / 2 + 1.5, (height - 1) / 2 - 1.0, width, height)


def _render(T_cam_table: np.ndarray, boxes: list[tuple[Box3D, tuple[int, int, int]]], intr: CameraIntrinsics,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB, depth (metres) and the index of the box hit per pixel (-1: none)."""
    d = raymap(intr).reshape(-1, 3).astype(np.float64)  # camera-frame rays with z = 1: t is the depth
    n = d.shape[0]
    t_best = np.full(n, np.inf)
    hit_id = np.full(n, -1)
    rgb = np.empty((n, 3), np.float64)
    rgb[:] = (130, 160, 190)
    # table plane: normal and a point in the camera frame
    normal, point = T_cam_table[:3, 2], T_cam_table[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = (normal @ point) / (d @ normal)
    on = np.isfinite(t_plane) & (t_plane > 0)
    p_table = se3.transform_points(se3.invert_T(T_cam_table), t_plane[:, None] * d)
    on &= np.all(np.abs(p_table[:, :2]) < 0.6, axis=1)
    t_best[on] = t_plane[on]
    parity = (np.floor(p_table[:, 0] / 0.05) + np.floor(p_table[:, 1] / 0.05)) % 2
    rgb[on] = np.where(parity[on, None] > 0, (190, 180, 160), (150, 140, 125))
    for k, (box, colour) in enumerate(boxes):
        T_obj_cam = se3.invert_T(box.T_cam_obj)
        o = T_obj_cam[:3, 3]
        dl = d @ T_obj_cam[:3, :3].T
        lo, hi = -box.size_xyz / 2, box.size_xyz / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - o) / dl, (hi - o) / dl
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < t_best)
        t_best[hit] = t_near[hit]
        hit_id[hit] = k
        q = o + t_near[hit, None] * dl[hit]
        face = np.argmin(np.minimum(np.abs(q - lo), np.abs(q - hi)), axis=1)
        rgb[hit] = np.asarray(colour)[None, :] * np.array([0.75, 0.6, 1.0])[face][:, None]
    rgb += rng.normal(0.0, 3.0, rgb.shape)
    depth = np.where(np.isfinite(t_best), t_best, 0.0).astype(np.float32)
    h, w = intr.height, intr.width
    return (np.clip(rgb, 0, 255).astype(np.uint8).reshape(h, w, 3), depth.reshape(h, w), hit_id.reshape(h, w))


def make_scene(rng: np.random.Generator, intr: CameraIntrinsics | None = None,
               models: tuple[BoxModel, ...] = MODELS, max_objects: int = 3, fixed_camera: bool = False,
               grid: int = 0, max_yaw_deg: float = 45.0) -> Scene:
    """One random scene: 1..max_objects boxes (no overlaps); the camera 0.45-0.75 m from the table centre at
    45-70 deg elevation, or, with fixed_camera, always 0.6 m away at 60 deg (a head camera over a table).
    Boxes stand anywhere within +-0.16 m with yaw in +-max_yaw_deg, or, with grid = n > 0, on the cells of an n x n
    lattice over +-0.12 m with yaw 0 (a controlled layout for quick learning checks)."""
    intr = intr or default_intrinsics()
    if fixed_camera:
        dist, elev, azim, target = 0.6, np.deg2rad(60.0), 0.0, np.zeros(3)
    else:
        dist = rng.uniform(0.45, 0.75)
        elev = np.deg2rad(rng.uniform(45.0, 70.0))
        azim = np.deg2rad(rng.uniform(-30.0, 30.0))
        target = np.r_[rng.uniform(-0.03, 0.03, 2), 0.0]
    eye = dist * np.array([np.cos(elev) * np.sin(azim), -np.cos(elev) * np.cos(azim), np.sin(elev)])
    T_cam_table = se3.invert_T(look_at(eye, target))
    placed: list[tuple[BoxModel, np.ndarray]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        model = models[int(rng.integers(len(models)))]
        for _try in range(20):
            if grid > 0:
                cells = np.linspace(-0.12, 0.12, grid) if grid > 1 else np.zeros(1)
                xy = cells[rng.integers(grid, size=2)]
            else:
                xy = rng.uniform(-0.16, 0.16, 2)
            if all(np.linalg.norm(xy - T[:2, 3]) > 0.11 for _, T in placed):
                yaw = 0.0 if grid > 0 else rng.uniform(-1.0, 1.0) * np.deg2rad(max_yaw_deg)
                T_table_obj = se3.T_from_xyz_rpy(np.r_[xy, model.size_xyz[2] / 2], np.array([0.0, 0.0, yaw]))
                placed.append((model, T_table_obj))
                break
    boxes = [(Box3D(T_cam_table @ T, np.array(m.size_xyz)), m.colour) for m, T in placed]
    rgb, depth, hit_id = _render(T_cam_table, boxes, intr, rng)
    objects = []
    for k, (m, _T) in enumerate(placed):
        vs, us = np.nonzero(hit_id == k)
        box2d = (float(us.min()), float(vs.min()), float(us.max()), float(vs.max())) if us.size else None
        objects.append(SceneObject(m, boxes[k][0], box2d, int(us.size)))
    return Scene(rgb, depth, intr, objects, T_cam_table)


# ------------------------------------------------------------------------------------------ writers
def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = img[..., ::-1] if img.ndim == 3 else img
    if not cv2.imwrite(str(path), np.ascontiguousarray(out)):
        raise OSError(f"cannot write {path}")


def _projected_box(box: Box3D, intr: CameraIntrinsics) -> list[float]:
    c = box.corners()
    uv = np.stack([intr.fx * c[:, 0] / c[:, 2] + intr.cx, intr.fy * c[:, 1] / c[:, 2] + intr.cy], axis=1)
    return [float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())]


def write_dataset(out: str | Path, num_images: int, split: str = "train", seed: int = 0,
                  intr: CameraIntrinsics | None = None, max_objects: int = 3, fixed_camera: bool = False,
                  grid: int = 0, max_yaw_deg: float = 45.0, categories: int | None = None,
                  models: tuple[BoxModel, ...] = MODELS) -> dict:
    """Generate `num_images` scenes and write them in both layouts, with boxes of the first `categories` of
    `models`. Returns paths and the ground truth."""
    categories = len(models) if categories is None else categories
    if not 1 <= categories <= len(models):
        raise ValueError(f"categories={categories} must be 1..{len(models)}")
    models = models[:categories]
    out = Path(out)
    rng = np.random.default_rng(seed)
    intr = intr or default_intrinsics()
    o3d_root, bop_root = out / "omni3d", out / "bop"
    images, annotations, truth = [], [], []
    ann_id = 0
    bop_scenes: dict[int, dict[str, dict]] = {}
    for i in range(num_images):
        scene = make_scene(rng, intr, models, max_objects=max_objects, fixed_camera=fixed_camera, grid=grid,
                           max_yaw_deg=max_yaw_deg)
        rel = f"images/synthetic/{split}/{i:06d}.png"
        _write_png(o3d_root / rel, scene.rgb)
        depth_mm = np.round(scene.depth_m * 1000.0).clip(0, 65535).astype(np.uint16)
        _write_png(o3d_root / "depth" / rel, depth_mm)
        images.append({"id": i, "dataset_id": 0, "width": intr.width, "height": intr.height, "file_path": rel,
                       "K": intr.K.tolist(), "src_90_rotate": 0, "src_flagged": False})
        truth.append(scene)
        for obj in scene.objects:
            b = obj.box
            annotations.append({
                "id": ann_id, "image_id": i, "category_id": obj.model.obj_id, "category_name": obj.model.name,
                "valid3D": obj.visible_px > 0, "bbox2D_tight": list(obj.box2d) if obj.box2d else [-1] * 4,
                "bbox2D_proj": _projected_box(b, intr), "bbox2D_trunc": _projected_box(b, intr),
                "bbox3D_cam": b.corners().tolist(), "center_cam": b.centre.tolist(),
                "dimensions": omni3d_dimensions(b.size_xyz).tolist(), "R_cam": b.T_cam_obj[:3, :3].tolist(),
                "behind_camera": bool(np.any(b.corners()[:, 2] <= 0)), "visibility": -1, "truncation": -1,
                "segmentation_pts": obj.visible_px, "lidar_pts": -1, "depth_error": -1})
            ann_id += 1
        # BOP: scenes of IMAGES_PER_SCENE images
        s, im = divmod(i, IMAGES_PER_SCENE)
        sd = bop_root / split / f"{s:06d}"
        _write_png(sd / "rgb" / f"{im:06d}.png", scene.rgb)
        _write_png(sd / "depth" / f"{im:06d}.png",
                   np.round(scene.depth_m * 1000.0 / BOP_DEPTH_SCALE).clip(0, 65535).astype(np.uint16))
        entry = bop_scenes.setdefault(s, {"scene_camera": {}, "scene_gt": {}, "scene_gt_info": {}})
        entry["scene_camera"][str(im)] = {"cam_K": intr.K.reshape(-1).tolist(), "depth_scale": BOP_DEPTH_SCALE}
        entry["scene_gt"][str(im)] = [{"obj_id": o.model.obj_id, "cam_R_m2c": o.box.T_cam_obj[:3, :3].reshape(-1).tolist(),
                                       "cam_t_m2c": (o.box.centre * 1000.0).tolist()} for o in scene.objects]
        entry["scene_gt_info"][str(im)] = [
            {"bbox_obj": [int(v) for v in _xywh(_projected_box(o.box, intr))],
             "bbox_visib": [int(v) for v in _xywh(o.box2d)] if o.box2d else [-1, -1, -1, -1],
             "px_count_visib": o.visible_px, "visib_fract": 1.0 if o.visible_px else 0.0} for o in scene.objects]
    o3d_root.mkdir(parents=True, exist_ok=True)
    json_path = o3d_root / f"Omni3D_synthetic_{split}.json"
    json_path.write_text(json.dumps({
        "info": {"id": "synthetic", "source": 0, "name": "posevla synthetic tabletop", "split": split,
                 "version": "1", "url": ""},
        "images": images, "categories": [{"id": m.obj_id, "name": m.name, "supercategory": "box"} for m in models],
        "annotations": annotations}))
    for s, entry in bop_scenes.items():
        for name, data in entry.items():
            (bop_root / split / f"{s:06d}" / f"{name}.json").write_text(json.dumps(data))
    (bop_root / "models").mkdir(parents=True, exist_ok=True)
    (bop_root / "models" / "models_info.json").write_text(json.dumps({
        str(m.obj_id): {"diameter": float(np.linalg.norm(m.size_xyz) * 1000.0),
                        **{f"min_{a}": -v * 500.0 for a, v in zip("xyz", m.size_xyz)},
                        **{f"size_{a}": v * 1000.0 for a, v in zip("xyz", m.size_xyz)}} for m in models}))
    (bop_root / "object_names.json").write_text(json.dumps({str(m.obj_id): m.name for m in models}))
    return {"omni3d_json": json_path, "omni3d_root": o3d_root, "omni3d_depth_root": o3d_root / "depth",
            "bop_root": bop_root, "split": split, "scenes": truth}


def _xywh(b: list[float] | tuple[float, ...]) -> list[float]:
    x1, y1, x2, y2 = b
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posevla.pretrain.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--images", type=int, default=100, help="number of images")
    p.add_argument("--split", default="train", help="split name used in file names (train, val, test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=160, help="image width in pixels")
    p.add_argument("--height", type=int, default=120, help="image height in pixels")
    p.add_argument("--focal-scale", type=float, default=0.95,
                   help="focal length in image widths (fx = fy); 1.5 zooms onto the placement area")
    p.add_argument("--max-objects", type=int, default=3, help="boxes per image: 1..max")
    p.add_argument("--fixed-camera", action="store_true", help="one camera pose for every image (else random)")
    p.add_argument("--grid", type=int, default=0, help="n > 0: boxes on an n x n lattice, yaw 0 (else anywhere)")
    p.add_argument("--max-yaw-deg", type=float, default=45.0, help="boxes placed anywhere: yaw within +- this")
    p.add_argument("--categories", type=int, default=len(MODELS), help=f"box models used: the first 1..{len(MODELS)}")
    args = p.parse_args(argv)
    if args.images < 1 or args.width < 16 or args.height < 16 or args.max_objects < 1 or args.grid < 0:
        print("posevla synthetic: --images and --max-objects must be >= 1, --grid >= 0, --width/--height >= 16", file=sys.stderr)
        return 2
    if not 0.2 <= args.focal_scale <= 5.0:
        print(f"posevla synthetic: --focal-scale {args.focal_scale} must be in [0.2, 5]", file=sys.stderr)
        return 2
    if not (0 <= args.max_yaw_deg <= 180 and 1 <= args.categories <= len(MODELS)):
        print(f"posevla synthetic: --max-yaw-deg must be in [0, 180] and --categories in 1..{len(MODELS)}", file=sys.stderr)
        return 2
    info = write_dataset(args.out, args.images, args.split, args.seed, default_intrinsics(args.width, args.height, args.focal_scale),
                         args.max_objects, args.fixed_camera, args.grid, args.max_yaw_deg, args.categories)
    print(f"wrote {args.images} images: {info['omni3d_json']} and {info['bop_root']}/{args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
