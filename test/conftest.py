"""Shared test set-up: DDS stays on this machine, each test gets its own ROS domain."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

# Before anything imports rclpy: discovery never leaves this machine.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

# Before any test module imports mujoco, which reads MUJOCO_GL once, at its first import: the
# package picks the offscreen backend (egl or osmesa) when the variable is unset. A test module
# that imports mujoco ahead of tdmpc_ros.sim would otherwise get MuJoCo's on-screen default.
import tdmpc_ros.sim  # noqa: E402, F401

_domain_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    """Bring up DDS in this process before any test module imports pyrealsense2: a process that
    loads librealsense before its first ROS node segfaults at exit (Fast DDS's and
    librealsense's static destructors; seen with pyrealsense2 2.59.1 and the Kilted wheels).
    The camera node creates its node first for the same reason."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=0)
    try:
        rclpy.create_node("tdmpc_ros_test_session", context=context,
                          start_parameter_services=False).destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def next_domain_id() -> int:
    """A domain id for one test: spread by process id so that concurrent test runs (CI next to
    a developer's run) rarely meet, and by a counter so that tests in one run never do."""
    return 1 + (os.getpid() * 7 + next(_domain_counter) * 13) % 100


@pytest.fixture
def ros_env() -> Iterator[dict[str, str]]:
    """The environment for this test's ROS processes: LOCALHOST discovery, a domain of its own."""
    environment = dict(os.environ)
    environment["ROS_DOMAIN_ID"] = str(next_domain_id())
    environment["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    environment["PYTHONUNBUFFERED"] = "1"
    environment["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    yield environment
