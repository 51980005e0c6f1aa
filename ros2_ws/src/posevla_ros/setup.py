"""ament_python package with the ROS 2 nodes. Each node is `ros2 run posevla_ros <name>`.

The launch files live in the repository's launch/ and are installed into share/posevla_ros/launch (for
`ros2 launch posevla_ros posevla.launch.py`); config/, calibration/ and models/ are installed by the root
package into share/posevla (see posevla.paths)."""
import os
import sys
from glob import glob

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
from posevla_ros.graph import EXECUTABLES  # noqa: E402  (plain module, no ROS imports)

setup(
    name="posevla_ros",
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/posevla_ros"]),
        ("share/posevla_ros", ["package.xml"]),
        ("share/posevla_ros/launch", sorted(os.path.relpath(p, HERE) for p in glob(os.path.join(REPO, "launch", "*.py")))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="Pose-VLA maintainers",
    maintainer_email="maintainers@posevla.invalid",
    description="ROS 2 nodes of the Pose-VLA stack",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"{name} = {mod}:main" for name, mod in EXECUTABLES.items()]},
)
