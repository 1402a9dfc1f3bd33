#!/usr/bin/env bash
# Every GPU check of the project in one short run, for the device machine (an NVIDIA H200 with
# its own python3 and CUDA PyTorch; nothing can be fetched there). Budget: 15 minutes of device
# time a session, start-up included, so this stays well under 10 minutes.
#
# Prepare here, once (the wheels its python3 lacks, for Python 3.12; .whl/ is git-ignored):
#   echo /.whl/ >> .git/info/exclude
#   for p in gymnasium==1.2.2 farama-notifications==0.0.4 mujoco==3.3.7 glfw==2.10.0 \
#            pyopengl==3.1.10 absl-py==2.3.1 etils==1.13.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl "$p"; done
# Then: run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540).
# What it prints: the core tests on the CUDA build of torch (the CPU paths, and every test that
# picks CUDA when there is one), `tools/bench_core.py --device cuda` (plan times, paper and fast
# settings, CUDA graphs on and off; updates per second, state and pixels at batch 256), and a
# short pixel pretraining on the GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== core tests"
timeout 180 python3 -m pytest -q -x test/core -p no:cacheprovider 2>&1 | tail -5 \
  | tee "$OUT/tests.txt"
echo "== bench (cuda)"
timeout 180 python3 tools/bench_core.py --device cuda --repeats 30 | tee "$OUT/bench.jsonl"
timeout 90 python3 tools/bench_core.py --device cuda --only plan --repeats 30 --cuda-graphs \
  | tee -a "$OUT/bench.jsonl"
echo "== pixel pretraining on the GPU (if time is left)"
if python3 -c "import mujoco" 2>/dev/null; then
  timeout 200 python3 -m tdmpc_ros.sim.datasets --task reach --pixels --episodes 60 \
    --out /tmp/reach-pixels --quiet && \
  timeout 240 python3 -m tdmpc_ros.cli pretrain --dataset /tmp/reach-pixels --device cuda \
    --set model.obs_type=pixels+proprio --updates 3000 --out "$OUT/pretrain" \
    2>&1 | grep "\[pretrain\]" | tail -5 | tee "$OUT/pretrain.txt"
fi
