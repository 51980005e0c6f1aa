"""Data mixtures for pre-training: a YAML file naming sources on disk, each with a sampling weight.

    sources:
      - name: objectron            # any label (logs, evaluation)
        format: omni3d             # Omni3D JSON + images (posevla.pretrain.omni3d)
        json: Omni3D/Objectron_train.json
        image_root: .              # file_path in the JSON is relative to this folder
        depth_root: null           # optional: uint16 depth at <depth_root>/<file_path>.png
        depth_scale_m: 0.001       # metres per depth unit
        weight: 2.0
      - name: ycbv
        format: bop                # BOP layout (posevla.pretrain.bop)
        root: bop/ycbv
        split: train_real
        object_names: ycbv         # ycbv | lm | lmo | a JSON file {obj_id: name}
        min_visib_fract: 0.1
        weight: 1.0
      - name: xtrainer
        format: episodes           # recorded episodes (posevla.pretrain.trajectory)
        paths: [data/pick_red_cube]
        horizon: 10                # future poses per arm
        dt_s: 0.1                  # seconds between them
        cameras: [head, left_wrist, right_wrist]
        weight: 1.0
      - name: public
        format: lerobot            # a LeRobot v3.0 dataset (posevla.pretrain.lerobot_source)
        root: lerobot/xtrainer_pick
        cache: cache/xtrainer_pick # converted once into episode files here
        episodes: []               # episode indices ([]: all)
        calibration: ""            # hand-eye YAML folder for datasets whose meta has none
        assume_intrinsics: false   # accept datasets without camera parameters (60 deg pinhole assumed)
        horizon: 10
        dt_s: 0.1
        cameras: []                # [] : every camera

Relative paths are relative to the YAML file. Unknown keys are errors. Each step draws a source with
probability weight / sum(weights), then a sample from that source's shuffle buffer (streaming readers cannot
shuffle a whole dataset). Under torchrun every rank reads its own share (images, scenes or frames
i % world == rank) with its own seed.

The buffers hold *pending* samples (which image and question, or which episode frame): pixels are decoded
when a sample leaves the buffer, and no random draw depends on pixels, so `Mixture.skip(n)` reproduces the
stream position after n samples without decoding anything (how `posevla pretrain --resume` continues a run).
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posevla.model.config import PoseVLAConfig
from posevla.model.pose_tokens import PoseTokenizer
from posevla.pretrain.bop import BOPReader
from posevla.pretrain.omni3d import Omni3DReader
from posevla.pretrain.records import AnnotatedImage, ViewMaker
from posevla.pretrain.targets import PretrainSample, asked_categories, grounding_sample
from posevla.pretrain.trajectory import EpisodeTrajectories
from posevla.yaml_file import read_yaml

FORMATS: dict[str, dict[str, Any]] = {  # format -> allowed keys and defaults (None: required)
    "omni3d": {"json": None, "image_root": None, "depth_root": "", "depth_scale_m": 0.001},
    "bop": {"root": None, "split": None, "object_names": "", "models_dir": "models", "min_visib_fract": 0.1},
    "episodes": {"paths": None, "horizon": 10, "dt_s": 0.1, "cameras": []},
    "lerobot": {"root": None, "cache": None, "episodes": [], "calibration": "", "assume_intrinsics": False,
                "horizon": 10, "dt_s": 0.1, "cameras": []},
}
COMMON = {"name": "", "format": None, "weight": 1.0, "negatives": 1}
GROUNDING_FORMATS = ("omni3d", "bop")
TRAJECTORY_FORMATS = ("episodes", "lerobot")


@dataclass
class SourceSpec:
    name: str
    format: str
    weight: float
    negatives: int
    options: dict[str, Any] = field(default_factory=dict)


def read_mixture(path: str | Path) -> list[SourceSpec]:
    """Parse and check a mixture file; every fault names the file and the field."""
    path = Path(path)
    data = read_yaml(path, "mixture")
    if not isinstance(data, dict) or set(data) != {"sources"}:
        raise ValueError(f"mixture {path}: top level must be a mapping with exactly one key 'sources'")
    raw = data["sources"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"mixture {path}: field sources must be a non-empty list")
    specs = []
    for i, entry in enumerate(raw):
        where = f"mixture {path}: sources[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping")
        fmt = entry.get("format")
        if fmt not in FORMATS:
            raise ValueError(f"{where}.format={fmt!r} must be one of {sorted(FORMATS)}")
        allowed = {**COMMON, **FORMATS[fmt]}
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown} for format {fmt} (allowed: {sorted(allowed)})")
        opts = {k: entry.get(k, d) for k, d in allowed.items()}
        for k, d in allowed.items():
            if d is None and entry.get(k) in (None, ""):
                raise ValueError(f"{where}.{k} is required for format {fmt}")
        for k in ("json", "image_root", "depth_root", "root", "cache", "calibration"):
            if opts.get(k):
                opts[k] = str((path.parent / str(opts[k])).resolve())
        if fmt == "bop" and opts["object_names"] and str(opts["object_names"]).endswith(".json"):
            opts["object_names"] = str((path.parent / str(opts["object_names"])).resolve())
        if fmt == "episodes":
            paths = opts["paths"] if isinstance(opts["paths"], list) else [opts["paths"]]
            opts["paths"] = [str((path.parent / str(p)).resolve()) for p in paths]
        if fmt == "lerobot":
            eps = opts["episodes"] or []
            if not isinstance(eps, list) or not all(isinstance(e, int) and e >= 0 for e in eps):
                raise ValueError(f"{where}.episodes={opts['episodes']!r} must be a list of episode indices")
            if not isinstance(opts["assume_intrinsics"], bool):
                raise ValueError(f"{where}.assume_intrinsics={opts['assume_intrinsics']!r} must be true or false")
        if fmt in TRAJECTORY_FORMATS:
            if not isinstance(opts["cameras"], list):
                raise ValueError(f"{where}.cameras={opts['cameras']!r} must be a list of camera names")
            try:
                ok = int(opts["horizon"]) >= 1 and float(opts["dt_s"]) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{where}: horizon={opts['horizon']!r} must be an integer >= 1 and "
                                 f"dt_s={opts['dt_s']!r} a number > 0")
        try:
            weight = float(opts.pop("weight"))
            negatives = int(opts.pop("negatives"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: weight/negatives must be numbers ({exc})") from exc
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"{where}.weight={weight} must be > 0")
        if negatives < 0:
            raise ValueError(f"{where}.negatives={negatives} must be >= 0")
        name = str(opts.pop("name") or f"{fmt}{i}")
        opts.pop("format")
        specs.append(SourceSpec(name, fmt, weight, negatives, opts))
    names = Counter(s.name for s in specs)
    if any(n > 1 for n in names.values()):
        raise ValueError(f"mixture {path}: source names must be unique, got {dict(names)}")
    return specs


def episode_paths(spec: SourceSpec, arms: tuple[str, ...] = ("left", "right")) -> list[Path]:
    """The episode files of an episodes or lerobot source (a LeRobot dataset is converted on first use)."""
    o = spec.options
    if spec.format == "lerobot":
        from posevla.pretrain.lerobot_source import lerobot_episodes

        return lerobot_episodes(o["root"], o["cache"], o["episodes"] or None, arms, bool(o["assume_intrinsics"]),
                                spec.name)
    if spec.format == "episodes":
        from posevla.training.episode_dataset import find_episodes

        return find_episodes(o["paths"])
    raise ValueError(f"source {spec.name}: format {spec.format} has no episodes")


def open_source(spec: SourceSpec, arms: tuple[str, ...] = ("left", "right")):
    """The reader of one source: Omni3DReader, BOPReader or EpisodeTrajectories."""
    o = spec.options
    if spec.format == "lerobot":
        from posevla.pretrain.lerobot_source import fallback_calibrations

        paths = episode_paths(spec, arms)
        calib = fallback_calibrations(o["calibration"])
        if calib is None:
            from posevla.dataset.reader import EpisodeReader

            for p in paths:
                with EpisodeReader(p) as ep:
                    if not ep.meta.get("calibration"):
                        raise ValueError(f"source {spec.name}: {o['root']} episode {p.name} has no calibration "
                                         "(meta/posevla.json) and the source names no `calibration` folder")
        return EpisodeTrajectories(paths, int(o["horizon"]), float(o["dt_s"]), tuple(o["cameras"]) or None,
                                   arms=arms, name=spec.name, calibrations=calib)
    if spec.format == "omni3d":
        return Omni3DReader(o["json"], o["image_root"], o["depth_root"] or None, float(o["depth_scale_m"]),
                            name=spec.name)
    if spec.format == "bop":
        return BOPReader(o["root"], str(o["split"]), o["object_names"] or None, str(o["models_dir"]),
                         float(o["min_visib_fract"]), name=spec.name)
    return EpisodeTrajectories(o["paths"], int(o["horizon"]), float(o["dt_s"]), tuple(o["cameras"]) or None,
                               arms=arms, name=spec.name)


def _image_stream(reader, rng: np.random.Generator, rank: int, world: int) -> Iterator[AnnotatedImage]:
    """This rank's images of a grounding reader, a fresh random order every pass, forever."""
    n = len(reader) if isinstance(reader, Omni3DReader) else len(reader.scenes)
    share = np.arange(rank, n, world)
    if share.size == 0:
        raise ValueError(f"source {reader.name}: {n} image(s)/scene(s), too few for {world} processes")
    while True:
        got = False
        for img in reader.images(rng.permutation(share)):
            got = True
            yield img
        if not got:
            raise ValueError(f"source {reader.name}: no images")


class _Pending:
    """A sample that is decided (image and question, or episode frame) but not yet decoded. The image's view is
    shared by the questions asked of it and released when the last of them is made or skipped."""

    def __init__(self, make: Callable[[dict | None], PretrainSample], shared: dict | None = None) -> None:
        self.make, self.shared = make, shared

    def __call__(self) -> PretrainSample:
        sample = self.make(self.shared)
        self.release()
        return sample

    def release(self) -> None:
        if self.shared is not None:
            self.shared["left"] -= 1
            if self.shared["left"] == 0:
                self.shared.pop("view", None)


class Mixture:
    """Infinite stream of PretrainSamples drawn from weighted sources (see module docstring)."""

    def __init__(self, specs: list[SourceSpec], cfg: PoseVLAConfig, tok: PoseTokenizer, seed: int = 0,
                 rank: int = 0, world: int = 1, buffer: int = 32) -> None:
        self.specs, self.cfg, self.tok = specs, cfg, tok
        self.readers = [open_source(s, cfg.arms) for s in specs]
        w = np.array([s.weight for s in specs], dtype=np.float64)
        self.p = w / w.sum()
        self.rng = np.random.default_rng([seed, rank])
        self.rank, self.world, self.buffer = rank, world, buffer
        self.views = ViewMaker(cfg.image_size, cfg.reference_view)
        self.drawn: Counter[str] = Counter()
        self._streams = [self._stream(i) for i in range(len(specs))]
        self._buffers: list[list[_Pending]] = [[] for _ in specs]

    def _stream(self, i: int) -> Iterator[_Pending]:
        spec, reader = self.specs[i], self.readers[i]
        rng = np.random.default_rng([int(self.rng.integers(2**31)), i])
        if isinstance(reader, EpisodeTrajectories):
            for k in reader.indices(rng, self.rank, self.world):
                yield _Pending(functools.partial(self._trajectory_sample, reader, k))
        else:
            for img in _image_stream(reader, rng, self.rank, self.world):
                cats = asked_categories(img, rng, spec.negatives)
                shared = {"left": len(cats)}
                for cat in cats:
                    yield _Pending(functools.partial(self._grounding, img, cat), shared)

    def _trajectory_sample(self, reader: EpisodeTrajectories, k: int, _shared: dict | None) -> PretrainSample:
        return reader.sample(k, self.cfg, self.tok, self.views)

    def _grounding(self, img: AnnotatedImage, category: str, shared: dict) -> PretrainSample:
        if "view" not in shared:
            shared["view"] = self.views(img)
        return grounding_sample(img, shared["view"], category, self.cfg, self.tok)

    def _draw(self) -> tuple[int, _Pending]:
        i = int(self.rng.choice(len(self.specs), p=self.p))
        buf = self._buffers[i]
        while len(buf) < self.buffer:
            buf.append(next(self._streams[i]))
        pending = buf.pop(int(self.rng.integers(len(buf))))
        self.drawn[self.specs[i].name] += 1
        return i, pending

    def __iter__(self) -> Iterator[PretrainSample]:
        return self

    def __next__(self) -> PretrainSample:
        return self._draw()[1]()

    def skip(self, n: int) -> None:
        """Advance the stream by n samples without decoding them (the state after n draws, as if they were made)."""
        for _ in range(n):
            self._draw()[1].release()

    def close(self) -> None:
        for r in self.readers:
            if isinstance(r, EpisodeTrajectories):
                r.close()


def fit_values(specs: list[SourceSpec], max_items: int = 20000, seed: int = 0,
               arms: tuple[str, ...] = ("left", "right")) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Camera-frame translations (N, 3) and sizes (M, 3) in metres from the sources' annotations (objects'
    box centres and sizes, trajectory TCP positions), without decoding any image. Also counts per source."""
    rng = np.random.default_rng(seed)
    trans: list = []
    sizes: list = []
    counts: Counter[str] = Counter()
    for spec in specs:
        reader = open_source(spec, arms)
        if isinstance(reader, EpisodeTrajectories):
            t = reader.translations(max_samples=max(1, max_items // 10), seed=seed)
            reader.close()
            trans.append(t)
            counts[spec.name] += len(t)
            continue
        n = 0
        order = rng.permutation(len(reader) if isinstance(reader, Omni3DReader) else len(reader.scenes))
        for img in reader.images(order):
            for o in img.objects:
                trans.append(o.box.centre[None])
                sizes.append(o.box.size_xyz[None])
                n += 1
            if n >= max_items:
                break
        counts[spec.name] += n
    t = np.concatenate(trans) if trans else np.zeros((0, 3))
    s = np.concatenate(sizes) if sizes else np.zeros((0, 3))
    return t, s, counts
