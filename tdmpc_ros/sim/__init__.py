"""MuJoCo tabletop tasks for an xArm-like arm, and scripted experts for offline data.

Importing this package picks an offscreen OpenGL backend for MuJoCo when ``MUJOCO_GL`` is unset:
``egl`` (Mesa's EGL, which renders on the CPU with llvmpipe where there is no GPU, and on the GPU
where there is one), or ``osmesa`` where only libOSMesa is installed. MuJoCo reads the variable
when it is first imported, so import ``tdmpc_ros.sim`` before ``mujoco``, or set it yourself
(``MUJOCO_GL=egl`` or ``MUJOCO_GL=osmesa``). The Debian packages both need are listed in
``requirements/apt.txt``.

It also registers the gymnasium ids ``tdmpc_ros/XArmReach-v0``, ``tdmpc_ros/XArmPush-v0`` and
``tdmpc_ros/XArmLift-v0`` (see ``tdmpc_ros.sim.env``).
"""

from __future__ import annotations

import ctypes.util
import os


def default_mujoco_gl() -> str:
    """The offscreen backend to use on this machine when the user has not chosen one."""
    platform = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    if platform in ("egl", "osmesa"):  # PyOpenGL is already bound to one: MuJoCo must agree
        return platform
    if ctypes.util.find_library("EGL") or not ctypes.util.find_library("OSMesa"):
        return "egl"
    return "osmesa"


os.environ.setdefault("MUJOCO_GL", default_mujoco_gl())

ENV_IDS = {
    "reach": "tdmpc_ros/XArmReach-v0",
    "push": "tdmpc_ros/XArmPush-v0",
    "lift": "tdmpc_ros/XArmLift-v0",
}


def register_envs() -> None:
    """Register the gymnasium ids; calling it again does nothing."""
    import gymnasium

    for task, env_id in ENV_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point="tdmpc_ros.sim.env:XArmTaskEnv",
            kwargs={"task": task},
            max_episode_steps=None,  # the env truncates at the task's 25 steps itself
        )


register_envs()
