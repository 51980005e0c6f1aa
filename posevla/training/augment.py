"""Training-time image augmentation that keeps the geometry exact (model config `aug_crop_scale`, `aug_color`).

A random crop is a change of intrinsics only: the cropped region is resized to the model input by the same
observation builder as on the robot, the raymap K'^-1 [u, v, 1] is computed from the cropped intrinsics, the depth
is cropped with the pixels, and the camera (the frame of the state and of the actions) does not move. So a crop
shifts and scales where the cube appears in pixels while its rays, depth and the targets stay true: the model is
pushed to localise through the geometry inputs rather than memorise pixel positions. Brightness and contrast
jitter act on RGB only.

Draws are keyed (numpy default_rng([seed, key])), so a run's augmentations depend on its seed and the sample's
draw number alone: never on the number of loader workers, and a resumed run sees the same crops.
"""
from __future__ import annotations

import numpy as np

FULL = (0.0, 0.0, 1.0, 1.0)


def random_region(base: tuple[float, float, float, float] | list[float] | None, scale_min: float,
                  rng: np.random.Generator) -> list[float]:
    """A sub-region [x0, y0, x1, y1] (fractions of the image) of `base` (the view's region of interest, or the
    whole image) whose sides are s * base's sides, s uniform in [scale_min, 1], at a uniform position inside it."""
    x0, y0, x1, y1 = base if base is not None else FULL
    s = float(rng.uniform(scale_min, 1.0))
    w, h = (x1 - x0) * s, (y1 - y0) * s
    ox, oy = float(rng.uniform(0.0, (x1 - x0) - w)), float(rng.uniform(0.0, (y1 - y0) - h))
    return [x0 + ox, y0 + oy, x0 + ox + w, y0 + oy + h]


def jitter_colour(rgb: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 -> uint8 with brightness and contrast each scaled by a factor in [1 - amount, 1 + amount]:
    out = (rgb - mean) * contrast + mean * brightness, clipped to [0, 255]."""
    brightness, contrast = rng.uniform(1.0 - amount, 1.0 + amount, size=2)
    x = rgb.astype(np.float32)
    mean = float(x.mean())
    out = (x - mean) * float(contrast) + mean * float(brightness)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
