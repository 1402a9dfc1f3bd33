#!/usr/bin/env bash
# ROS 2's own launch and command-line tools (`ros2 launch`, `ros2 run`, `ros2 topic`, ...) for the
# tests, on a machine without a ROS 2 install: PyPI has no wheels of them, so they come from
# ../shared/ros2-cli (wheels built unchanged from ROS 2's sources, and the source of
# composition_interfaces, which launch_ros imports). `make test` runs this; `make setup` and
# `make demo` do not: a lab has these tools from its ROS install, and they are not the project's.
#
# They go into a prefix of their own (default ~/.cache/tdmpc_ros/ros2-cli), never into the
# project's venv; test/ros/ros2_cli.py puts that prefix on the path of the commands it runs.
# Safe to run again (a stamp skips what is done). Without ../shared/ros2-cli (or
# TDMPC_ROS2_CLI=DIR) it says so and does nothing: those tests then skip, saying why.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source_dir=${TDMPC_ROS2_CLI:-$repo/../shared/ros2-cli}
prefix=${TDMPC_ROS2_CLI_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/tdmpc_ros/ros2-cli}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ -n "${ROS_DISTRO:-}" ] && command -v ros2 >/dev/null; then
  log "ROS 2 $ROS_DISTRO is sourced: the tests use its ros2 tools"
  exit 0
fi
if ! ls "$source_dir"/wheels/launch_ros-*.whl >/dev/null 2>&1; then
  log "no ROS 2 launch/CLI wheels in $source_dir: the tests of the real ros2 tools will skip"
  exit 0
fi
# shellcheck disable=SC1091
source "$repo/tools/env.sh"
wanted=$( (ls "$source_dir"/wheels; cat "$repo/requirements/ros2-cli.txt";
           find "$source_dir/src" -type f | sort | xargs cat) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$prefix/.stamp" 2>/dev/null)" = "$wanted" ]; then
  exit 0
fi
log "installing ROS 2's launch and CLI tools from $source_dir into $prefix (for the tests)"
rm -rf "$prefix"
mkdir -p "$prefix"
python -m pip install -q --disable-pip-version-check --no-deps --prefix "$prefix" \
  "$source_dir"/wheels/*.whl -r "$repo/requirements/ros2-cli.txt"
if [ -z "${ROS_DISTRO:-}" ]; then  # built against the wheels, as tools/setup.sh builds
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  cmake_extra=(-DCMAKE_PROJECT_INCLUDE="$repo/tools/cmake/ros_wheels.cmake")
else
  cmake_extra=()
fi
colcon --log-base "$prefix/log" build --base-paths "$source_dir/src" \
  --build-base "$prefix/build" --install-base "$prefix/install" \
  --event-handlers console_cohesion- summary- \
  --cmake-args -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DBUILD_TESTING=OFF -Wno-dev \
  "${cmake_extra[@]}" > "$prefix/colcon-build.log" 2>&1 \
  || { tail -n 40 "$prefix/colcon-build.log"; log "building composition_interfaces failed"; exit 1; }
rm -rf "$prefix/build"
echo "$wanted" > "$prefix/.stamp"
log "ROS 2 launch/CLI tools ready in $prefix"
