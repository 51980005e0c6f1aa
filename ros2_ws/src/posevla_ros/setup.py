"""ament_python package with the ROS 2 nodes. Each node is `ros2 run posevla_ros <name>`."""
import os
import sys
from glob import glob

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from posevla_ros.graph import EXECUTABLES  # noqa: E402  (plain module, no ROS imports)

setup(
    name="posevla_ros",
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/posevla_ros"]),
        ("share/posevla_ros", ["package.xml"]),
        ("share/posevla_ros/launch", glob("launch/*.py")),
        ("share/posevla_ros/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="Pose-VLA maintainers",
    maintainer_email="maintainers@posevla.invalid",
    description="ROS 2 nodes of the Pose-VLA stack",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{name} = {mod}:main" for name, mod in EXECUTABLES.items()]},
)
