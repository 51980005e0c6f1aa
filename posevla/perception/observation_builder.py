"""ObservationBuilder: synchronised camera frames + robot state + instruction -> model-ready Observation.

Per view: resize-with-pad (or centre crop) to the model's square input, intrinsics updated exactly, RGB
resampled with area filtering, depth with nearest neighbour, raymap K'^-1 [u, v, 1], depth prior [D, M]
(NaN/inf/out-of-range pixels masked), and the camera pose T_base_cam at the image's own stamp (head:
static calibration; wrist: T_base_tcp(t) @ T_tcp_wrist). This is where staleness is checked: an
observation older than `max_age_s`, or whose views are further apart than `slop_s`, is refused with a reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from posevla.calibration.transforms import CameraToBase
from posevla.geometry.depth import depth_prior
from posevla.geometry.image_ops import ViewTransform, plan, plan_region_resize_with_pad
from posevla.geometry.raymap import raymap
from posevla.types import CameraFrame, ModelView, Observation, RobotState


def _region(r: list[float] | tuple[float, ...]) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1] as fractions of the image (a view crop)."""
    if len(r) != 4:
        raise ValueError(f"view crop {list(r)}: expected [x0, y0, x1, y1]")
    return float(r[0]), float(r[1]), float(r[2]), float(r[3])


class StaleObservation(ValueError):
    """The frames cannot make a trustworthy observation (too old, too far apart, inconsistent)."""


@dataclass
class BuilderConfig:
    image_size: int = 224
    resize_mode: str = "resize_with_pad"
    min_depth_m: float = 0.05
    max_depth_m: float = 4.0
    max_age_s: float = 0.5
    slop_s: float = 0.05
    reference_view: str = "head"
    crops: dict[str, list[float]] = field(default_factory=dict)  # view -> [x0, y0, x1, y1] fractions (model config)


class ObservationBuilder:
    def __init__(self, cfg: BuilderConfig, camera_to_base: CameraToBase | None = None) -> None:
        self.cfg = cfg
        self.camera_to_base = camera_to_base
        self._plans: dict[tuple[str, int, int], ViewTransform] = {}
        self.refusals: Counter[str] = Counter()
        self.built = 0
        self.invalid_depth_pixels: Counter[str] = Counter()

    def _plan(self, name: str, w: int, h: int, region: list[float] | None = None) -> ViewTransform:
        if region is not None:  # a one-off region (training augmentation): not cached
            return plan_region_resize_with_pad(w, h, _region(region), self.cfg.image_size, self.cfg.image_size)
        vt = self._plans.get((name, w, h))
        if vt is None:
            size = self.cfg.image_size
            region = self.cfg.crops.get(name)
            vt = (plan_region_resize_with_pad(w, h, _region(region), size, size) if region is not None
                  else plan(self.cfg.resize_mode, w, h, size, size))
            self._plans[(name, w, h)] = vt
        return vt

    def view(self, frame: CameraFrame, region: list[float] | None = None) -> ModelView:
        """One camera frame -> ModelView (T_base_cam filled in by build()). region: [x0, y0, x1, y1] fractions
        used instead of the configured crop (training augmentation)."""
        intr = frame.intrinsics
        if frame.rgb.ndim != 3 or frame.rgb.shape[2] != 3 or frame.rgb.dtype != np.uint8:
            raise StaleObservation(f"{frame.name}: color image must be HxWx3 uint8, got {frame.rgb.shape} {frame.rgb.dtype}")
        try:
            intr.check_image(frame.rgb.shape, f"{frame.name} color image")
            if frame.depth is not None:
                intr.check_image(frame.depth.shape, f"{frame.name} depth image")
        except ValueError as exc:
            raise StaleObservation(str(exc)) from exc
        vt = self._plan(frame.name, intr.width, intr.height, region)
        model_intr = vt.apply_intrinsics(intr)
        prior = None
        if frame.depth is not None:
            d = vt.apply_depth(frame.depth)
            prior = depth_prior(d, self.cfg.min_depth_m, self.cfg.max_depth_m)
            bad = int(np.count_nonzero(~np.isfinite(d)))
            if bad:
                self.invalid_depth_pixels[frame.name] += bad
        return ModelView(frame.name, vt.apply_rgb(frame.rgb), raymap(model_intr), prior, model_intr, frame.frame_id,
                         frame.stamp_ns)

    def build(self, frames: dict[str, CameraFrame], state: RobotState | None, instruction: str,
              now_ns: int, regions: dict[str, list[float]] | None = None) -> Observation:
        """Raises StaleObservation (and counts the reason) when the frames must not reach the policy. regions:
        per view, a crop used instead of the configured one (training augmentation only)."""
        try:
            return self._build(frames, state, instruction, now_ns, regions or {})
        except StaleObservation as exc:
            self.refusals[str(exc).split(":")[0]] += 1
            raise

    def _build(self, frames, state, instruction, now_ns, regions) -> Observation:
        if not frames:
            raise StaleObservation("no frames")
        stamps = [f.stamp_ns for f in frames.values()]
        spread = (max(stamps) - min(stamps)) * 1e-9
        if spread > self.cfg.slop_s:
            raise StaleObservation(f"views too far apart: {spread * 1e3:.0f} ms, more than the slop {self.cfg.slop_s * 1e3:.0f} ms")
        age = (now_ns - min(stamps)) * 1e-9
        if age > self.cfg.max_age_s:
            raise StaleObservation(f"too old: observation {age * 1e3:.0f} ms old, more than max_age {self.cfg.max_age_s * 1e3:.0f} ms")
        if max(stamps) > now_ns + 50_000_000:
            raise StaleObservation(f"stamps in the future: {(max(stamps) - now_ns) * 1e-9:.3f} s ahead of now")
        views = {}
        order = sorted(frames, key=lambda n: (n != self.cfg.reference_view, n))
        for name in order:
            v = self.view(frames[name], regions.get(name))
            if self.camera_to_base is not None:
                try:
                    v.T_base_cam = self.camera_to_base.T_base_cam(v.frame_id, v.stamp_ns)
                except ValueError as exc:
                    raise StaleObservation(f"{name} camera pose: {exc}") from exc
            views[name] = v
        ref = frames.get(self.cfg.reference_view)
        stamp = ref.stamp_ns if ref is not None else min(stamps)
        self.built += 1
        return Observation(views, state, instruction, stamp)
