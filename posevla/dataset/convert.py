"""Re-encode an episode into another storage format (e.g. old JPEG episodes -> video), keeping everything else.

Depth, stamps, robot state, actions, camera_info and metadata (calibration, instruction, success, ...) are
copied exactly; colour is decoded and re-encoded (JPEG -> H.264 adds the second generation's small loss).
The new episode goes through the normal writer: `.incomplete/` first, checked, then renamed into place.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from posevla.dataset.reader import EpisodeReader
from posevla.dataset.video import ColourCodec
from posevla.dataset.writer import EpisodeWriter, FrameRecord

_FORMAT_KEYS = ("format_version", "storage", "task", "complete", "num_frames", "success")


def convert_episode(path: Path, out_root: Path, storage: str = "video", colour_codec: ColourCodec | None = None,
                    depth_every: int = 1) -> Path:
    """Write `path` as `<out_root>/<task>/episode_NNNNNN.h5` in `storage` (colour with `colour_codec`, depth of
    every `depth_every`-th frame: see EpisodeWriter); returns the new file."""
    with EpisodeReader(path) as ep:
        task = str(ep.meta.get("task") or Path(path).parent.name)
        meta = {k: v for k, v in ep.meta.items() if k not in _FORMAT_KEYS}
        meta["converted_from"] = {"file": str(path), "storage": ep.storage}
        scales = set(ep.depth_scale.values())
        if len(scales) > 1:
            raise ValueError(f"episode {path}: cameras have different depth_scale {sorted(scales)}; cannot convert")
        w = EpisodeWriter(out_root, task, meta, dict(ep.intrinsics), depth_scale=scales.pop() if scales else 0.001,
                          storage=storage, min_free_bytes=64 * 1024 * 1024, colour_codec=colour_codec,
                          depth_every=depth_every)
        qpos = ep.array("observations/qpos")
        for i in range(ep.num_frames):
            f = ep.frame(i)
            rec = FrameRecord(f.stamp_ns, {c: cf.rgb for c, cf in f.cameras.items()},
                              {c: ep.raw_depth(c, i) for c in f.cameras}, {c: cf.stamp_ns for c, cf in f.cameras.items()},
                              f.state, f.action, qpos=np.asarray(qpos[i]))
            while not w.add_frame(rec):
                time.sleep(0.002)
        return w.finish(success=bool(ep.meta.get("success", True)))
