#!/usr/bin/env bash
# The project's run-time environment: the venv, the colcon install space, and DDS kept on this
# machine. Source it (`source tools/env.sh`) or run a command through it
# (`tools/env.sh pytest test`).
_tdmpc_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$_tdmpc_repo/install/setup.bash" ]; then
  echo "tools/env.sh: no build yet; run 'make setup' (or tools/setup.sh) first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "${VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tdmpc_ros/venv}/bin/activate"
# colcon's setup scripts read unset variables; relax nounset while they run.
_tdmpc_nounset=$([[ $- == *u* ]] && echo 1 || true)
set +u
# shellcheck disable=SC1091
source "$_tdmpc_repo/install/setup.bash"
[ -n "$_tdmpc_nounset" ] && set -u
# Keep DDS discovery on this machine unless the caller chose otherwise; a lab that runs nodes on
# several machines sets ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET itself.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
export TDMPC_REPO=$_tdmpc_repo
unset _tdmpc_repo _tdmpc_nounset
if [ "${BASH_SOURCE[0]}" = "$0" ] && [ $# -gt 0 ]; then
  exec "$@"
fi
