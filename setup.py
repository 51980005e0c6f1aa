"""Shim so that colcon (ament_python) can build the root `posevla` package; pyproject.toml is the source of truth."""
from setuptools import setup

setup(
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/posevla"]),
        ("share/posevla", ["package.xml"]),
    ],
)
