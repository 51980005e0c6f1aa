"""ament_python package with the ROS 2 nodes. Each node is `ros2 run posevla_ros <name>`."""
from glob import glob

from setuptools import find_packages, setup

NODES = {
    # name: module  (each module has main(args=None))
    "camera_node": "posevla_ros.camera_node",
    "observation_node": "posevla_ros.observation_node",
    "replay_node": "posevla_ros.replay_node",
    "policy_node": "posevla_ros.policy_node",
    "executor_node": "posevla_ros.executor_node",
    "xtrainer_driver_node": "posevla_ros.xtrainer_driver_node",
    "xtrainer_sim": "posevla_ros.xtrainer_sim_node",
    "teleop_node": "posevla_ros.teleop_node",
    "recorder_node": "posevla_ros.recorder_node",
}

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
    entry_points={"console_scripts": [f"{name} = {mod}:main" for name, mod in NODES.items()]},
)
