"""Reading the project's YAML files (robot, safety, model, leader, calibration) with one kind of error."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, what: str) -> Any:
    """Parsed YAML of `path`; ValueError naming the file and what it should hold when missing or malformed."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{what} {path} does not exist") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{what} {path} cannot be read: {exc}") from exc


def write_yaml(path: str | Path, doc: Any) -> Path:
    """Write `doc` as YAML atomically (temporary file in the same folder, then rename): a reader in another process
    or thread sees either no file or the whole file, never a half-written one."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
    return path
