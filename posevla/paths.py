"""Where the shipped data files live: `config/`, `calibration/` and `models/`.

One answer for every command and node, in this order:

1. `$POSEVLA_SHARE`, when set (a folder holding `config/`, `calibration/`, `models/`);
2. the source tree this package was imported from (a clone, or `pip install -e .`);
3. an install: `<prefix>/share/posevla/`, where `setup.py` puts the files for `pip install .` and for
   `colcon build` (prefix = the venv, or `install/posevla` of a colcon workspace);
4. the ament index (`get_package_share_directory("posevla")`), for installs laid out differently.

No ROS import unless step 4 is reached.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "posevla"
DATA_DIRS = ("config", "calibration", "models")


def _is_share(folder: Path) -> bool:
    return (folder / "config").is_dir() and (folder / "calibration").is_dir()


def source_root() -> Path | None:
    """The repository root when running from a source tree (it has pyproject.toml beside posevla/), else None."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and _is_share(root):
        return root
    return None


def share_dir() -> Path:
    """The folder that holds config/, calibration/ and models/ (see the module docstring for the order)."""
    env = os.environ.get("POSEVLA_SHARE")
    if env:
        if not _is_share(Path(env)):
            raise FileNotFoundError(f"POSEVLA_SHARE={env} has no config/ and calibration/ folders")
        return Path(env).resolve()
    root = source_root()
    if root is not None:
        return root
    here = Path(__file__).resolve()
    # <prefix>/lib/python3.X/site-packages/posevla/paths.py (or .../local/lib/.../dist-packages/...)
    for parent in [*here.parents, Path(sys.prefix)]:
        candidate = parent / "share" / PACKAGE
        if _is_share(candidate):
            return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory(PACKAGE))
        if _is_share(candidate):
            return candidate
    except Exception:  # noqa: BLE001 - no ament index, or posevla not in it
        pass
    raise FileNotFoundError(f"cannot find posevla's data files (config/, calibration/, models/) next to {here} or "
                            f"under <prefix>/share/{PACKAGE}; reinstall, or set POSEVLA_SHARE")


def config_dir() -> Path:
    """Node parameter YAMLs and robot/leader configs."""
    return share_dir() / "config"


def calibration_dir() -> Path:
    """Hand-eye calibration files in force by default."""
    return share_dir() / "calibration"


def models_dir() -> Path:
    """Model configs (tiny.yaml, posevla_3b.yaml)."""
    return share_dir() / "models"


def runs_dir() -> Path:
    """Where commands write their outputs by default: runs/ of the source tree, else ./runs."""
    root = source_root()
    return (root if root is not None else Path.cwd()) / "runs"


def default_path(kind: str, name: str) -> Path:
    """`<share>/<kind>/<name>` (kind: config, calibration or models) for a command's default path.

    For argparse defaults and --help texts: when the data files cannot be found it returns the relative
    `<kind>/<name>` instead of raising, so `--help` still works; opening that path then fails naming it.
    """
    if kind not in DATA_DIRS:
        raise ValueError(f"default_path: kind {kind!r} is not one of {list(DATA_DIRS)}")
    try:
        return share_dir() / kind / name
    except FileNotFoundError:
        return Path(kind) / name
