"""`make demo`: the whole stack in simulation, finetuning a shipped pretrained model.

1. The offline dataset the learner mixes into every batch: scripted reach episodes of mixed
   quality (120, as in the paper), in ``data/reach`` (made once).
2. The node graph, each node its own process over DDS, from the same definition as
   ``ros2 launch tdmpc_ros tdmpc.launch.py``: the simulated camera and xArm, the planner with
   ``models/reach-state.safetensors`` and uncertainty-regularised MPPI, the replay recorder, the
   learner finetuning with balanced offline/online batches while the trials run, and the trial
   supervisor, for 20 trials. A progress line per trial; the planner picks up new weights
   between two control steps.
3. The summary and a plot (success and weights version by trial) in ``runs/demo/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tdmpc_ros.launcher import node_processes, parse_arguments, run

REPO = Path(__file__).resolve().parents[1]


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="reach", choices=("reach", "push", "lift"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--keep", action="store_true",
                        help="continue the run in --run-dir instead of starting afresh")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    started = time.perf_counter()

    data = Path("data") / args.task
    _say(f"1. offline dataset: {data} (scripted {args.task} episodes, mixed quality)")
    subprocess.run([sys.executable, "-m", "tdmpc_ros.sim.datasets", "--task", args.task,
                    "--out", str(data), "--seed", "0", "--quiet"], check=True)

    if args.run_dir.exists() and not args.keep:
        shutil.rmtree(args.run_dir)
    arguments = parse_arguments([f"task:={args.task}", f"trials:={args.trials}",
                                 f"run_dir:={args.run_dir}", "backend:=sim"])
    _say(f"2. the node graph: {args.trials} trials of {args.task} in simulation, finetuning "
         f"models/{args.task}-state.safetensors while they run (ROS_DOMAIN_ID "
         f"{os.environ.get('ROS_DOMAIN_ID', '0')}, discovery on this machine only)")
    code = run(node_processes(arguments))
    if code != 0:
        print(f"demo: the node graph stopped with {code}; see the output above", flush=True)
        return code

    summary = json.loads((args.run_dir / "summary.json").read_text())
    _say("3. summary")
    print(f"  {summary['successes']}/{summary['trials']} trials succeeded: "
          f"{summary['first_half_success']:.0%} in the first half, "
          f"{summary['second_half_success']:.0%} in the second")
    print(f"  weights versions the planner used: {summary['weights_versions_used']}")
    print(f"  episodes: {args.run_dir / 'episodes'}   plot: {args.run_dir / 'trials.png'}")
    print(f"  {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
