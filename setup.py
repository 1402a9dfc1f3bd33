"""pip install of the ROS-free part of tdmpc_ros, for a machine without ROS 2.

The ROS 2 package is built by colcon from CMakeLists.txt (it needs rosidl for the messages);
this file serves the other use: `pip install .` on a GPU server or a laptop gives the core
(world model, planner, learner, replay), the MuJoCo tasks and the `tdmpc-ros` command, to
pretrain and evaluate with no ROS installed. `tdmpc_ros.msg` and the nodes need the colcon build.
"""

from setuptools import find_packages, setup

setup(
    name="tdmpc_ros",
    version="0.1.0",
    description="Finetune offline TD-MPC world models on a robot (FOWM), core without ROS",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tdmpc_ros", "tdmpc_ros.*"]),
    # Ranges for a library install; the exact pins of this project's own set-up live in
    # requirements/python.txt.
    install_requires=[
        "torch>=2.4",
        "numpy>=1.26",
        "safetensors>=0.4",
        "gymnasium>=1.0",
        "mujoco>=3.2",
        "PyYAML>=6",
        "matplotlib>=3.8",
    ],
    entry_points={"console_scripts": ["tdmpc-ros = tdmpc_ros.cli:main"]},
)
