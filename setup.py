"""Shim beside pyproject.toml (the source of truth for metadata and dependencies): installs the shipped data
files (config/, calibration/, models/) into <prefix>/share/posevla/ for `pip install .` and `colcon build`, where posevla.paths finds them.

colcon (ament_python) also needs the ament index marker and package.xml under share/. The launch files are
installed by posevla_ros (share/posevla_ros/launch).
"""
import os
from glob import glob

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _files(pattern: str) -> list[str]:
    # relative to this file, as setuptools wants; sorted so installs are reproducible
    return sorted(os.path.relpath(p, HERE) for p in glob(os.path.join(HERE, pattern)))


setup(
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/posevla"]),
        ("share/posevla", ["package.xml"]),
        ("share/posevla/config", _files("config/*.yaml")),
        ("share/posevla/calibration", _files("calibration/*.yaml") + _files("calibration/*.md")),
        ("share/posevla/models", _files("models/*.yaml")),
    ],
)
