"""Streaming reader of BOP datasets (YCB-V, LineMOD, T-LESS, HOT3D, ...; layout of thodan/bop_toolkit
docs/bop_datasets_format.md), one scene folder at a time.

    <root>/models[_type]/models_info.json   per obj_id: min_x/y/z, size_x/y/z (mm) of the model's 3D box
    <root>/<split>/<scene_id:06d>/scene_camera.json  per image id: cam_K (3x3 row-wise, px), depth_scale
                                                      (depth_mm = value * depth_scale)
    <root>/<split>/<scene_id:06d>/scene_gt.json      per image id: [{obj_id, cam_R_m2c (row-wise), cam_t_m2c (mm)}]
    <root>/<split>/<scene_id:06d>/scene_gt_info.json optional: bbox_visib (x, y, w, h), visib_fract
    <root>/<split>/<scene_id:06d>/rgb|gray/<im_id:06d>.png|jpg, depth/<im_id:06d>.png (uint16)

Boxes: the model's 3D bounding box (centre min + size/2 in model coordinates) posed by T_cam_model, converted
to metres. Category names are not part of BOP: they come from `object_names` (obj_id -> name; a JSON file or
the built-in tables for ycbv and lm/lmo), else "obj_000001". Instances with visib_fract below
`min_visib_fract` are skipped (counted in `skipped`).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.pretrain.boxes import Box3D
from posevla.pretrain.records import AnnotatedImage, Object3D

YCBV_NAMES = ("master chef can", "cracker box", "sugar box", "tomato soup can", "mustard bottle",
              "tuna fish can", "pudding box", "gelatin box", "potted meat can", "banana", "pitcher base",
              "bleach cleanser", "bowl", "mug", "power drill", "wood block", "scissors", "large marker",
              "large clamp", "extra large clamp", "foam brick")
LM_NAMES = ("ape", "benchvise", "bowl", "camera", "can", "cat", "cup", "driller", "duck", "eggbox", "glue",
            "holepuncher", "iron", "lamp", "phone")
BUILTIN_NAMES = {"ycbv": {i + 1: n for i, n in enumerate(YCBV_NAMES)},
                 "lm": {i + 1: n for i, n in enumerate(LM_NAMES)},
                 "lmo": {i + 1: n for i, n in enumerate(LM_NAMES)}}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"BOP {what} {path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"BOP {what} {path} is not valid JSON: {exc}") from exc


class BOPReader:
    def __init__(self, root: str | Path, split: str, object_names: str | Path | dict | None = None,
                 models_dir: str = "models", min_visib_fract: float = 0.1, name: str | None = None) -> None:
        self.root = Path(root)
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise ValueError(f"BOP split folder {self.split_dir} does not exist")
        self.name = name or f"{self.root.name}/{split}"
        self.min_visib_fract = float(min_visib_fract)
        info = _read_json(self.root / models_dir / "models_info.json", "models_info")
        self.models: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # obj_id -> (box centre, size) metres
        for key, m in info.items():
            try:
                lo = np.array([m["min_x"], m["min_y"], m["min_z"]], dtype=np.float64) / 1000.0
                size = np.array([m["size_x"], m["size_y"], m["size_z"]], dtype=np.float64) / 1000.0
            except (KeyError, TypeError) as exc:
                raise ValueError(f"BOP models_info {self.root / models_dir}: object {key} field {exc} is missing") from exc
            self.models[int(key)] = (lo + size / 2.0, size)
        names: dict[int, str] = {}
        if isinstance(object_names, dict):
            names = {int(k): str(v) for k, v in object_names.items()}
        elif isinstance(object_names, str) and object_names in BUILTIN_NAMES:
            names = BUILTIN_NAMES[object_names]
        elif object_names is not None:
            names = {int(k): str(v) for k, v in _read_json(Path(object_names), "object_names").items()}
        self.names = {i: names.get(i, f"obj_{i:06d}") for i in self.models}
        self.categories = tuple(sorted(set(self.names.values())))
        self.scenes = sorted(p for p in self.split_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not self.scenes:
            raise ValueError(f"BOP split folder {self.split_dir} has no scene folders (000000, 000001, ...)")
        self.skipped: Counter[str] = Counter()

    def _image_file(self, scene: Path, folder: tuple[str, ...], im: int) -> Path | None:
        for f in folder:
            for ext in (".png", ".jpg", ".tif"):
                p = scene / f / f"{im:06d}{ext}"
                if p.is_file():
                    return p
        return None

    def scene_images(self, scene: Path) -> Iterator[AnnotatedImage]:
        cams = _read_json(scene / "scene_camera.json", "scene_camera")
        gts = _read_json(scene / "scene_gt.json", "scene_gt")
        info_path = scene / "scene_gt_info.json"
        infos = _read_json(info_path, "scene_gt_info") if info_path.is_file() else {}
        for key in sorted(gts, key=int):
            im = int(key)
            cam = cams.get(key)
            if cam is None:
                raise ValueError(f"BOP {scene / 'scene_camera.json'}: image {key} is missing")
            rgb = self._image_file(scene, ("rgb", "gray"), im)
            if rgb is None:
                raise ValueError(f"BOP scene {scene}: no rgb/gray image {im:06d}")
            depth = self._image_file(scene, ("depth",), im)
            with Image.open(rgb) as pil:  # reads the header only
                shape = (pil.size[1], pil.size[0])
            try:
                intr = CameraIntrinsics.from_K(np.asarray(cam["cam_K"], dtype=np.float64).reshape(3, 3), shape[1],
                                               shape[0], distortion_model="none", distortion=())
            except (KeyError, ValueError) as exc:
                raise ValueError(f"BOP {scene / 'scene_camera.json'}: image {key} field cam_K: {exc}") from exc
            objects = []
            for k, g in enumerate(gts[key]):
                listed = infos.get(key) or []
                info = listed[k] if k < len(listed) else None
                if info is not None and float(info.get("visib_fract", 1.0)) < self.min_visib_fract:
                    self.skipped["visib_fract below min"] += 1
                    continue
                try:
                    obj_id = int(g["obj_id"])
                    R = np.asarray(g["cam_R_m2c"], dtype=np.float64).reshape(3, 3)
                    t = np.asarray(g["cam_t_m2c"], dtype=np.float64).reshape(3) / 1000.0
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"BOP {scene / 'scene_gt.json'}: image {key} instance {k} field {exc}") from exc
                if obj_id not in self.models:
                    raise ValueError(f"BOP {scene / 'scene_gt.json'}: image {key} obj_id {obj_id} not in models_info")
                U, _, Vt = np.linalg.svd(R)
                centre_m, size = self.models[obj_id]
                T_cam_box = se3.make_T(U @ Vt, t) @ se3.make_T(np.eye(3), centre_m)
                if T_cam_box[2, 3] <= 0:
                    self.skipped["behind camera"] += 1
                    continue
                box2d = None
                if info is not None and "bbox_visib" in info and min(info["bbox_visib"]) >= 0:
                    x, y, w, h = info["bbox_visib"]
                    box2d = (float(x), float(y), float(x + w - 1), float(y + h - 1))
                objects.append(Object3D(self.names[obj_id], Box3D(T_cam_box, size), box2d))
            scale_m = float(cam.get("depth_scale", 1.0)) / 1000.0
            yield AnnotatedImage(self.name, f"{scene.name}/{im:06d}", intr, rgb, objects, depth, scale_m,
                                 self.categories)

    def __iter__(self) -> Iterator[AnnotatedImage]:
        return self.images()

    def images(self, scene_order: np.ndarray | None = None) -> Iterator[AnnotatedImage]:
        order = range(len(self.scenes)) if scene_order is None else scene_order
        for i in order:
            yield from self.scene_images(self.scenes[int(i)])
