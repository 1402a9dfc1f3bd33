"""The project's packaging: the colcon install holds what a lab's launch needs, and setup.py
builds a ROS-free wheel with the `tdmpc-ros` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tdmpc_ros.msg

REPO = Path(__file__).resolve().parents[1]


def test_messages_and_hand_written_modules_share_one_package() -> None:
    import tdmpc_ros.core.episodes
    import tdmpc_ros.interfaces

    # Not resolve(): with --symlink-install the files link back into the build tree.
    install = Path(tdmpc_ros.msg.__file__).absolute().parents[1]
    assert "install" in install.parts, f"tdmpc_ros.msg not from the colcon install: {install}"
    assert Path(tdmpc_ros.interfaces.__file__).parent.name == "tdmpc_ros"
    assert tdmpc_ros.core.episodes.FORMAT_VERSION >= 1


def test_install_space_has_share_files_for_ros2_launch() -> None:
    share = Path(tdmpc_ros.msg.__file__).absolute()
    prefix = next(parent for parent in share.parents if parent.name == "lib").parent
    for name in ("package.xml", "launch", "config", "models"):
        assert (prefix / "share" / "tdmpc_ros" / name).exists(), name
    messages = {path.stem for path in (REPO / "msg").glob("*.msg")}
    installed = {path.stem for path in (prefix / "share" / "tdmpc_ros" / "msg").glob("*.msg")}
    assert messages and messages == installed


def test_setup_py_builds_a_ros_free_wheel_with_the_cli(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to setup.py, and build/
    # is colcon's.
    source = tmp_path / "source"
    shutil.copytree(REPO / "tdmpc_ros", source / "tdmpc_ros",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("tdmpc_ros-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        assert "tdmpc-ros = tdmpc_ros.cli:main" in archive.read(entry_points).decode()
    assert "tdmpc_ros/core/episodes.py" in names
    assert not any(name.startswith("tdmpc_ros/msg/") for name in names)
