"""Streaming reader of Omni3D annotation files (SUN RGB-D, Objectron, ARKitScenes, Hypersim, ... as Omni3D ships
them: `Omni3D_<name>_<split>.json`, COCO-like, see facebookresearch/omni3d DATA.md).

The JSON is parsed incrementally with ijson (never `json.load` of the whole file): one pass over `images`
keeps a compact table (id -> path, K, size), one pass over `annotations` keeps per image only the numbers
needed (centre, rotation, dimensions, 2D box, category). Images are then yielded one by one; pixels are read
only when a sample is made.

Per image: `K` (3x3, pixels), `width`, `height`, `file_path` (relative to `image_root`). Per object:
`center_cam` (metres, camera optical frame: x right, y down, z forward), `R_cam` (object -> camera rotation),
`dimensions` [width, height, length] (metres; length along the object's x, height along y, width along z),
`bbox2D_tight` / `bbox2D_trunc` / `bbox2D_proj` (x1, y1, x2, y2, -1 when unavailable), `valid3D`,
`behind_camera`, `category_name`. Objects that are not valid3D, lie (partly) behind the camera, have a
rotation that is not a proper rotation or a non-positive size are skipped and counted in `skipped`.
Omni3D ships no depth: give `depth_root` (+ `depth_scale_m`) when depth maps exist at
`<depth_root>/<file_path with .png>` (uint16); otherwise the depth modality of these samples is masked.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.pretrain.boxes import Box3D, omni3d_size_xyz
from posevla.pretrain.records import AnnotatedImage, Object3D


def _items(path: Path, prefix: str) -> Iterator[dict]:
    try:
        import ijson
    except ModuleNotFoundError:  # fallback without incremental parsing (small files, minimal installs)
        yield from json.loads(path.read_text()).get(prefix.split(".")[0], [])
        return
    with open(path, "rb") as f:
        try:
            yield from ijson.items(f, prefix, use_float=True)
        except ijson.JSONError as exc:
            raise ValueError(f"Omni3D file {path} is not valid JSON: {exc}") from exc


def _proper_rotation(R: np.ndarray) -> np.ndarray | None:
    """Nearest rotation (SVD) of an annotated R_cam, or None when it is not close to a proper rotation."""
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        return None
    U, _, Vt = np.linalg.svd(R)
    Rn = U @ Vt
    if np.linalg.det(Rn) < 0 or np.max(np.abs(Rn - R)) > 1e-3:
        return None
    return Rn


class Omni3DReader:
    """Iterate the annotated images of one Omni3D JSON file. `skipped` counts objects left out, by reason."""

    def __init__(self, json_path: str | Path, image_root: str | Path, depth_root: str | Path | None = None,
                 depth_scale_m: float = 0.001, name: str | None = None) -> None:
        self.json_path, self.image_root = Path(json_path), Path(image_root)
        self.depth_root = Path(depth_root) if depth_root is not None else None
        self.depth_scale_m = float(depth_scale_m)
        if not self.json_path.is_file():
            raise ValueError(f"Omni3D file {self.json_path} does not exist")
        if not self.image_root.is_dir():
            raise ValueError(f"Omni3D image_root {self.image_root} is not a folder")
        if self.depth_root is not None and not self.depth_root.is_dir():
            raise ValueError(f"Omni3D depth_root {self.depth_root} is not a folder")
        if not self.depth_scale_m > 0:
            raise ValueError(f"Omni3D depth_scale_m={depth_scale_m} must be > 0")
        self.name = name or self.json_path.stem
        self.skipped: Counter[str] = Counter()
        self._index: list[tuple[int, str, np.ndarray, int, int]] | None = None
        self._objects: dict[int, list[Object3D]] = {}
        self.categories: tuple[str, ...] = ()

    def _load_index(self) -> None:
        if self._index is not None:
            return
        index = []
        for im in _items(self.json_path, "images.item"):
            try:
                index.append((int(im["id"]), str(im["file_path"]), np.asarray(im["K"], dtype=np.float64),
                              int(im["width"]), int(im["height"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"Omni3D file {self.json_path}: image entry {im.get('id', '?')} field {exc} is "
                                 "missing or malformed") from exc
        cats = sorted({str(c["name"]) for c in _items(self.json_path, "categories.item")})
        objects: dict[int, list[Object3D]] = {}
        for a in _items(self.json_path, "annotations.item"):
            obj = self._object(a)
            if obj is not None:
                objects.setdefault(int(a["image_id"]), []).append(obj)
        self._index, self._objects, self.categories = index, objects, tuple(cats)

    def _object(self, a: dict) -> Object3D | None:
        try:
            if not a.get("valid3D", True):
                self.skipped["not valid3D"] += 1
                return None
            if a.get("behind_camera", False) is True:
                self.skipped["behind camera"] += 1
                return None
            centre = np.asarray(a["center_cam"], dtype=np.float64).reshape(3)
            size = omni3d_size_xyz(np.asarray(a["dimensions"], dtype=np.float64))
            R = _proper_rotation(np.asarray(a["R_cam"], dtype=np.float64))
            category = str(a["category_name"]).strip()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"Omni3D file {self.json_path}: annotation {a.get('id', '?')} field {exc} is missing "
                             "or malformed") from exc
        if R is None:
            self.skipped["R_cam not a rotation"] += 1
            return None
        if not np.all(np.isfinite(centre)) or centre[2] <= 0 or np.any(size <= 0) or not np.all(np.isfinite(size)):
            self.skipped["centre behind camera or size <= 0"] += 1
            return None
        box2d = None
        for key in ("bbox2D_tight", "bbox2D_trunc", "bbox2D_proj"):
            b = a.get(key)
            if b is not None and len(b) == 4 and min(b) > -1 and b[2] > b[0] and b[3] > b[1]:
                box2d = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
                break
        return Object3D(category, Box3D(se3.make_T(R, centre), size), box2d)

    def __len__(self) -> int:
        return len(self._loaded_index())

    def _loaded_index(self) -> list[tuple[int, str, np.ndarray, int, int]]:
        self._load_index()
        assert self._index is not None  # _load_index sets it or raises
        return self._index

    def __iter__(self) -> Iterator[AnnotatedImage]:
        return self.images()

    def images(self, order: np.ndarray | None = None) -> Iterator[AnnotatedImage]:
        """Images in file order (or the given order of indices)."""
        index = self._loaded_index()
        idx = range(len(index)) if order is None else order
        for i in idx:
            image_id, rel, K, w, h = index[int(i)]
            try:
                intr = CameraIntrinsics.from_K(K, w, h, distortion_model="none", distortion=())
            except ValueError as exc:
                raise ValueError(f"Omni3D file {self.json_path}: image {image_id} field K: {exc}") from exc
            depth = None
            if self.depth_root is not None:
                depth = self.depth_root / Path(rel).with_suffix(".png")
                if not depth.is_file():
                    depth = None
            yield AnnotatedImage(self.name, str(image_id), intr, self.image_root / rel,
                                 self._objects.get(image_id, []), depth, self.depth_scale_m, self.categories)
