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
