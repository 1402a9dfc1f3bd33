"""ROS 2's own command-line tools (`ros2 launch`, `ros2 topic`, ...) for the tests.

A lab's sourced ROS 2 has them; on a machine without one, `tools/setup_ros2_cli.sh` (run by
`make test`) installs them from ../shared/ros2-cli into a prefix of their own. ``ros2_environment``
gives the environment that runs them, or None (the tests then skip, saying why).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PREFIX = Path(os.environ.get("TDMPC_ROS2_CLI_PREFIX")
              or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
              / "tdmpc_ros" / "ros2-cli")
MISSING = ("ROS 2's launch and CLI tools are not here (no sourced ROS 2, and "
           "tools/setup_ros2_cli.sh found no ../shared/ros2-cli): the real `ros2` tests skip; "
           "the project's own launcher is tested in test_launcher.py and the stack tests")


def ros2_environment(base: dict[str, str]) -> dict[str, str] | None:
    """``base`` with the ros2 tools on its paths, or None where they are not installed."""
    if os.environ.get("ROS_DISTRO") and shutil.which("ros2", path=base.get("PATH")):
        return dict(base)  # a lab's ROS 2 install
    if not (PREFIX / ".stamp").exists():
        return None
    environment = dict(base)
    site = next((PREFIX / "lib").glob("python3*/site-packages"))
    environment["PATH"] = f"{PREFIX / 'bin'}:{environment.get('PATH', '')}"
    environment["PYTHONPATH"] = f"{site}:{environment.get('PYTHONPATH', '')}"
    # composition_interfaces (launch_ros imports it): its colcon install space, sourced
    sourced = subprocess.run(
        ["bash", "-c", f"source {PREFIX / 'install' / 'local_setup.bash'} && env -0"],
        env=environment, capture_output=True, check=True).stdout
    for entry in sourced.split(b"\0"):
        name, _, value = entry.decode().partition("=")
        if name in ("AMENT_PREFIX_PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "CMAKE_PREFIX_PATH"):
            environment[name] = value
    return environment
