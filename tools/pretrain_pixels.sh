#!/usr/bin/env bash
# Pretrain a pixel model (pixels + proprioception) of a sim task on the project's own camera's
# offline data, resumably: run it again after a stop and it carries on from its newest
# checkpoint. Niced, one torch thread, progress in the run's log.txt.
#   tools/pretrain_pixels.sh TASK [MAX_UPDATES [MIN_UPDATES]]
# It stops at MAX_UPDATES (default 20000) or, after MIN_UPDATES (default 2000), once the value
# check has passed twice in a row (tdmpc_ros/core/pretraining.py). SEED (default 1, the config's) seeds the
# model and its updates; the run is runs/pretrain-<task>-pixels-seed<SEED>. A run resumed with
# another EPISODES carries on from its checkpoint on the new data (its log says so).
set -euo pipefail
task=${1:?usage: tools/pretrain_pixels.sh TASK [MAX_UPDATES [MIN_UPDATES]]}
updates=${2:-20000}
min_updates=${3:-2000}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck disable=SC1091
source tools/env.sh
seed=${SEED:-1}
out=runs/pretrain-$task-pixels-seed$seed
mkdir -p "$out"
# EPISODES: offline episodes (default: the task's, as in the paper); more go to their own
# directory. The generator skips the episode files already there, so this is quick once done.
data=data/$task-pixels${EPISODES:+-$EPISODES}
python -m tdmpc_ros.sim.datasets --task "$task" --pixels --out "$data" --seed 0 --quiet \
  ${EPISODES:+--episodes "$EPISODES"} > /dev/null
exec nice -n 10 python -m tdmpc_ros.cli pretrain --dataset "$data" --out "$out" --resume \
  --env "tdmpc_ros/XArm${task^}-v0" --env-kwargs '{"render_pixels": true}' \
  --eval-episodes 30 --updates "$updates" --threads 1 --device cpu --seed "$seed" \
  --set model.obs_type=pixels+proprio --set model.mlp_dim=128 --set learner.batch_size=64 \
  --set planner.num_samples=128 --set planner.iterations=3 --set planner.num_elites=16 \
  --set run.action_repeat=1 --set run.convergence_check_every=500 \
  --set run.checkpoint_every=500 --set run.convergence_min_updates="$min_updates" \
  >> "$out/log.txt" 2>&1
