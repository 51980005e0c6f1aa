"""Metric depth priors [D, M]: depth in metres and a validity mask, as the model consumes them.

Depth in memory is float32 metres with 0 = invalid; raw camera depth is uint16 scaled by `depth_scale`
(metres per unit, 0.001 for realsense2_camera's 16UC1 topics).
"""
from __future__ import annotations

import numpy as np

DEFAULT_MIN_M = 0.05
DEFAULT_MAX_M = 10.0


def depth_to_metres(raw: np.ndarray, depth_scale: float) -> np.ndarray:
    """uint16 raw depth -> float32 metres (0 stays 0 = invalid)."""
    if raw.dtype != np.uint16:
        raise ValueError(f"raw depth must be uint16, got {raw.dtype}")
    if not (depth_scale > 0 and np.isfinite(depth_scale)):
        raise ValueError(f"depth_scale={depth_scale} must be a positive finite number")
    return raw.astype(np.float32) * np.float32(depth_scale)


def depth_prior(depth_m: np.ndarray, min_m: float = DEFAULT_MIN_M, max_m: float = DEFAULT_MAX_M,
                out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 2) float32 [D, M]. NaN, inf, negative, 0 and out-of-range pixels get D = 0, M = 0.

    The result is a view of a channel-first (2, H, W) buffer, so `torch.from_numpy(p).permute(2, 0, 1)` is
    contiguous and free. `out`, if given, is an (H, W, 2) float32 array to write into.
    """
    if depth_m.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {depth_m.shape}")
    if depth_m.dtype not in (np.float32, np.float64):
        raise ValueError(f"depth must be float32/float64 metres, got {depth_m.dtype} (convert raw depth with "
                         "depth_to_metres)")
    if not (0 <= min_m < max_m):
        raise ValueError(f"depth range min_m={min_m}, max_m={max_m} is invalid")
    h, w = depth_m.shape
    if out is None:
        out = np.empty((2, h, w), dtype=np.float32).transpose(1, 2, 0)
    elif out.shape != (h, w, 2):
        raise ValueError(f"depth prior output has shape {out.shape}, expected {(h, w, 2)}")
    valid = depth_m >= depth_m.dtype.type(min_m)  # NaN compares False
    valid &= depth_m <= depth_m.dtype.type(max_m)  # inf is > max
    d32 = np.ascontiguousarray(depth_m, dtype=np.float32)
    # D = depth where valid, else exactly 0.0: AND the float bits with an all-ones/all-zeros mask
    # (half the time of a masked copy; NaN/inf never reach the output)
    mask = np.negative(valid.view(np.int8), dtype=np.int32)
    d_out = out[..., 0]
    if d_out.flags.c_contiguous:
        np.bitwise_and(d32.view(np.int32), mask, out=d_out.view(np.int32))
    else:
        d_out[...] = np.bitwise_and(d32.view(np.int32), mask).view(np.float32)
    np.copyto(out[..., 1], valid)
    return out


def sparse_depth_prior(prior: np.ndarray, keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a random `keep_fraction` of the valid pixels of a [D, M] prior (training-time sparse sampling)."""
    if prior.ndim != 3 or prior.shape[2] != 2:
        raise ValueError(f"depth prior must be HxWx2, got shape {prior.shape}")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction={keep_fraction} must be in [0, 1]")
    keep = (rng.random(prior.shape[:2]) < keep_fraction) & (prior[..., 1] > 0)
    out = np.zeros_like(prior)
    out[..., 0] = np.where(keep, prior[..., 0], 0.0)
    out[..., 1] = keep
    return out
