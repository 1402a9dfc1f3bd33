"""Simulator speed: agent steps per second of each task with 84x84 images, on this machine.

    python tools/bench_sim.py [--steps 200] [--no-pixels] [--tasks reach push lift]

Prints one JSON object a line per task. Random actions; episode resets are counted in the time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout, too
import tdmpc_ros.sim  # noqa: E402, F401  (picks MUJOCO_GL before mujoco is imported)
from tdmpc_ros.sim.env import XArmTaskEnv  # noqa: E402
from tdmpc_ros.tasks import TASKS  # noqa: E402


def bench(task: str, steps: int, pixels: bool) -> dict[str, object]:
    env = XArmTaskEnv(task, render_pixels=pixels, seed=0)
    rng = np.random.default_rng(0)
    env.reset()
    env.step(env.action_space.sample())  # warm up: renderer and GL context
    env.reset()
    started = time.perf_counter()
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - started
    env.close()
    return {
        "bench": "sim",
        "task": task,
        "pixels": pixels,
        "steps_per_s": round(steps / elapsed, 1),
        "steps": steps,
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="agent steps per task")
    parser.add_argument("--no-pixels", action="store_true", help="state only, no rendering")
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    args = parser.parse_args()
    for task in args.tasks:
        print(json.dumps(bench(task, args.steps, not args.no_pixels)), flush=True)


if __name__ == "__main__":
    main()
