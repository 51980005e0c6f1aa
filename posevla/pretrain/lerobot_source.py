"""Stage-2 trajectory targets from LeRobot v3.0 datasets (mixture `format: lerobot`).

The dataset is converted once with the project's LeRobot import (`posevla.dataset.lerobot_io.import_lerobot`,
the same code as `posevla dataset import-lerobot`) into episode files under `cache`, then read like recorded
episodes (`posevla.pretrain.trajectory.EpisodeTrajectories`): the future TCP poses of each arm in each camera's
optical frame. What the targets need, and where it comes from:

  end-effector poses  features observation.tcp_pose.{left,right} (x y z qx qy qz qw in base_link, metres), as
                      `posevla dataset export-lerobot` writes them; a dataset with joint angles only is refused
  calibration         the per-episode calibration copy in meta/posevla.json (our exports), else the source's
                      `calibration` folder (hand-eye YAML files, as the repository's calibration/); neither:
                      refused, naming both
  intrinsics          meta/posevla.json camera_info; else the import assumes a 60 deg pinhole and flags the
                      episode (`intrinsics_assumed`); such a source is refused unless `assume_intrinsics: true`
  stamps              observation.stamp_ns.* when present, else the frame timestamps

The cache holds `converted.json` (the dataset's meta/info.json digest and the episode list); a cache made from
another dataset or selection is refused by name rather than overwritten.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posevla.calibration.files import HandEyeCalibration, load_calibrations
from posevla.dataset.reader import EpisodeReader
from posevla.types import ARM_NAMES

CACHE_TASK = "episodes"
MARKER = "converted.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lerobot_episodes(root: str | Path, cache: str | Path, episodes: list[int] | None = None,
                     arms: tuple[str, ...] = ARM_NAMES, assume_intrinsics: bool = False,
                     name: str = "lerobot") -> list[Path]:
    """Episode files converted from the LeRobot v3.0 dataset at `root` (converted on first use into `cache`)."""
    from posevla.dataset.lerobot_io import import_lerobot

    root, cache = Path(root), Path(cache)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"source {name}: {root} has no meta/info.json (not a LeRobot v3.0 dataset folder)")
    try:
        features = json.loads(info_path.read_text()).get("features", {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"source {name}: {info_path} is not valid JSON ({exc})") from exc
    for arm in arms:
        if f"observation.tcp_pose.{arm}" not in features:
            raise ValueError(f"source {name}: {info_path} has no feature observation.tcp_pose.{arm}; trajectory targets "
                             "need end-effector poses (datasets from `posevla dataset export-lerobot` carry them)")
    want = {"info_sha256": _digest(info_path), "episodes": sorted(episodes) if episodes else "all",
            "dataset": str(root.resolve())}
    marker = cache / MARKER
    if marker.is_file():
        have = json.loads(marker.read_text())
        if have != want:
            raise ValueError(f"source {name}: cache {cache} was converted from {have.get('dataset')} "
                             f"(episodes {have.get('episodes')}); delete it or choose another `cache`")
        paths = sorted((cache / CACHE_TASK).glob("episode_*.h5"))
        if paths:
            return paths
    elif cache.exists() and any(cache.iterdir()):
        raise ValueError(f"source {name}: cache {cache} exists and is not a conversion cache; choose an empty folder")
    paths = import_lerobot(root, cache, task=CACHE_TASK, episodes=list(episodes) if episodes else None)
    if not assume_intrinsics:
        for p in paths:
            with EpisodeReader(p) as ep:
                if ep.meta.get("intrinsics_assumed"):
                    raise ValueError(f"source {name}: {root} has no camera parameters (meta/posevla.json camera_info) "
                                     f"for {ep.meta['intrinsics_assumed']}; raymaps and targets would use an assumed "
                                     "60 deg pinhole: set `assume_intrinsics: true` to accept that")
    marker.write_text(json.dumps(want, indent=1))
    return paths


def fallback_calibrations(folder: str | Path | None) -> dict[str, HandEyeCalibration] | None:
    """{camera frame: calibration} from a folder of hand-eye YAML files, or None without a folder."""
    return load_calibrations(folder) if folder else None
