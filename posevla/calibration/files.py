"""Hand-eye calibration files: schema, loading with validation, saving, hashing.

One YAML file per camera in calibration/:
- head camera (eye-to-hand): T_base_head, parent base_link, child head_camera_color_optical_frame;
- wrist camera (eye-in-hand): T_tcp_wrist, parent <arm>_tcp, child <arm>_wrist_camera_color_optical_frame.
The transform is stored both as a 4x4 matrix and as xyz + quaternion (xyzw); they must agree. See
calibration/SCHEMA.md.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from posevla.geometry import se3
from posevla.yaml_file import read_yaml

SCHEMA_VERSION = 1
KINDS = ("eye_to_hand", "eye_in_hand")
ARM_FRAMES = ("left", "right")
EYE_TO_HAND_PARENTS = ("base_link", "left_arm_base", "right_arm_base")
UNCERTAINTY_KEYS = ("translation_mm", "rotation_deg")  # optional uncertainty_1sigma block: parent-frame x, y, z


def expected_child(parent: str, kind: str) -> set[str]:
    if kind == "eye_to_hand":
        return {"head_camera_color_optical_frame"}
    arm = parent.removesuffix("_tcp")
    return {f"{arm}_wrist_camera_color_optical_frame"}


@dataclass
class HandEyeCalibration:
    """T_parent_child (4x4, metres): maps camera (child) coordinates into the parent frame."""

    kind: str
    parent_frame: str
    child_frame: str
    T_parent_child: np.ndarray
    camera_serial: str
    method: str = ""
    date: str = ""
    residuals: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    # 1-sigma of the transform along/about the PARENT frame's x, y, z (optional; written by the solver):
    # {"translation_mm": [x, y, z], "rotation_deg": [x, y, z]}
    uncertainty: dict[str, list[float]] = field(default_factory=dict)

    @property
    def arm(self) -> str | None:
        """The arm whose TCP carries the camera (eye-in-hand), else None."""
        return self.parent_frame.removesuffix("_tcp") if self.kind == "eye_in_hand" else None

    def to_dict(self) -> dict[str, Any]:
        p, q = se3.pos_quat_from_T(self.T_parent_child)
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "parent_frame": self.parent_frame,
                "child_frame": self.child_frame, "camera_serial": self.camera_serial, "method": self.method,
                "date": self.date,
                "transform": {"matrix": np.round(self.T_parent_child, 12).tolist(), "xyz": p.tolist(),
                              "quaternion_xyzw": q.tolist()},
                "residuals": dict(self.residuals),
                **({"uncertainty_1sigma": {k: [float(x) for x in v] for k, v in self.uncertainty.items()}}
                   if self.uncertainty else {})}

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename): a crash never leaves a half-written calibration."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, expected_serial: str | None = None) -> HandEyeCalibration:
        path = Path(path)
        data = read_yaml(path, "calibration file")
        calib = cls.from_dict(data, str(path))
        calib.path = path
        if expected_serial is not None and str(expected_serial) != calib.camera_serial:
            raise ValueError(f"calibration file {path}: field camera_serial={calib.camera_serial!r} but the connected "
                             f"camera is {expected_serial!r}")
        return calib

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> HandEyeCalibration:
        def bad(fld: str, why: str) -> ValueError:
            return ValueError(f"calibration file {source}: field {fld} {why}")

        if not isinstance(data, dict):
            raise ValueError(f"calibration file {source}: top level must be a mapping")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise bad("schema_version", f"is {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise bad("kind", f"is {kind!r}, expected one of {KINDS}")
        parent, child = data.get("parent_frame"), data.get("child_frame")
        valid_parents = EYE_TO_HAND_PARENTS if kind == "eye_to_hand" else tuple(f"{a}_tcp" for a in ARM_FRAMES)
        if parent not in valid_parents:
            raise bad("parent_frame", f"is {parent!r}, expected one of {valid_parents} for {kind}")
        if child not in expected_child(parent, kind):
            raise bad("child_frame", f"is {child!r}, expected {sorted(expected_child(parent, kind))}")
        serial = data.get("camera_serial")
        if not isinstance(serial, (str, int)) or not str(serial).strip():
            raise bad("camera_serial", "is missing")
        tf = data.get("transform")
        if not isinstance(tf, dict):
            raise bad("transform", "is missing")
        try:
            T = np.asarray(tf["matrix"], dtype=float)
            xyz = np.asarray(tf["xyz"], dtype=float)
            q = np.asarray(tf["quaternion_xyzw"], dtype=float)
        except (KeyError, TypeError, ValueError) as exc:
            raise bad("transform", f"needs matrix (4x4), xyz (3) and quaternion_xyzw (4): {exc}") from exc
        if T.shape != (4, 4) or not se3.is_rigid(T, 1e-6):
            raise bad("transform.matrix", "is not a rigid 4x4 transform (orthonormal rotation, last row 0 0 0 1)")
        if xyz.shape != (3,) or q.shape != (4,) or abs(np.linalg.norm(q) - 1) > 1e-6:
            raise bad("transform.quaternion_xyzw", "must be a unit quaternion, with xyz of length 3")
        T_q = se3.T_from_pos_quat(xyz, q)
        if np.abs(T_q - T).max() > 1e-6:
            raise bad("transform", "matrix and xyz + quaternion_xyzw disagree")
        res = data.get("residuals") or {}
        if not isinstance(res, dict):
            raise bad("residuals", "must be a mapping")
        try:
            res = {str(k): float(v) for k, v in res.items()}
        except (TypeError, ValueError) as exc:
            raise bad("residuals", f"values must be numbers: {exc}") from exc
        unc = data.get("uncertainty_1sigma") or {}
        if not isinstance(unc, dict):
            raise bad("uncertainty_1sigma", "must be a mapping with translation_mm and rotation_deg")
        unknown = set(unc) - set(UNCERTAINTY_KEYS)
        if unknown:
            raise bad(f"uncertainty_1sigma.{sorted(unknown)[0]}", f"is unknown (expected {list(UNCERTAINTY_KEYS)})")
        for k in UNCERTAINTY_KEYS if unc else ():
            v = unc.get(k)
            try:
                arr = np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                arr = np.zeros(0)
            if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise bad(f"uncertainty_1sigma.{k}", f"is {v!r}, expected 3 finite non-negative numbers (x, y, z)")
        return cls(kind, parent, child, T, str(serial), str(data.get("method", "")), str(data.get("date", "")),
                   res, uncertainty={k: [float(x) for x in unc[k]] for k in UNCERTAINTY_KEYS if unc})


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def episode_calibration_meta(paths: Iterable[str | Path]) -> dict[str, dict[str, str]]:
    """What an episode stores of the calibration in force (meta["calibration"]): file name -> {sha256, yaml}."""
    return {Path(p).name: {"sha256": file_sha256(p), "yaml": Path(p).read_text()} for p in paths}


def calibration_dir_meta(directory: str | Path) -> dict[str, dict[str, str]]:
    """episode_calibration_meta of every calibration file `load_calibrations(directory)` accepts."""
    return episode_calibration_meta(c.path for c in load_calibrations(directory).values() if c.path is not None)


def load_calibrations(directory: str | Path, files: list[str] | None = None) -> dict[str, HandEyeCalibration]:
    """All calibration files of a directory (or the named ones), keyed by camera frame (child_frame)."""
    directory = Path(directory)
    paths = [directory / f for f in files] if files else sorted(directory.glob("*.yaml"))
    if not paths:
        raise ValueError(f"no calibration files (*.yaml) in {directory}")
    out: dict[str, HandEyeCalibration] = {}
    for p in paths:
        c = HandEyeCalibration.load(p)
        if c.child_frame in out:
            raise ValueError(f"calibration file {p}: camera {c.child_frame} is already calibrated by {out[c.child_frame].path}")
        out[c.child_frame] = c
    return out
