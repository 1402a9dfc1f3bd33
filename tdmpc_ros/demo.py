"""`make demo`: the whole stack in simulation, finetuning a shipped model where it starts weak.

1. The offline dataset the learner mixes into every batch: scripted lift episodes of mixed
   quality (200), from the task's training distribution, in ``data/lift`` (made once).
2. The node graph, each node its own process over DDS, from the same definition as
   ``ros2 launch tdmpc_ros tdmpc.launch.py``, on the task variant ``far``
   (``config/variants.yaml``: the cube where the offline data never had it): the simulated
   camera and xArm, the planner with ``models/lift-state.safetensors`` and
   uncertainty-regularised MPPI, the replay recorder, the learner finetuning with balanced
   offline/online batches while the trials run, and the trial supervisor, for 20 trials. A
   progress line per trial; the planner picks up new weights between two control steps.
3. An evaluation on the variant, without exploration, of the shipped model and of the learner's
   last weights (in this process, no ROS), then the summary and a plot in ``runs/demo/``.
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
from typing import Any

from tdmpc_ros.launcher import node_processes, parse_arguments, run

REPO = Path(__file__).resolve().parents[1]


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="lift", choices=("reach", "push", "lift"))
    parser.add_argument("--variant", default="far",
                        help="task variant of the trials (config/variants.yaml; '' for none)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--eval-episodes", type=int, default=20,
                        help="evaluation episodes before and after (0: no evaluation)")
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
                                 f"run_dir:={args.run_dir}", "backend:=sim",
                                 f"variant:={args.variant}"])
    where = f" on its variant '{args.variant}'" if args.variant else ""
    _say(f"2. the node graph: {args.trials} trials of {args.task}{where} in simulation, "
         f"finetuning models/{args.task}-state.safetensors while they run (ROS_DOMAIN_ID "
         f"{os.environ.get('ROS_DOMAIN_ID', '0')}, discovery on this machine only)")
    code = run(node_processes(arguments))
    if code != 0:
        print(f"demo: the node graph stopped with {code}; see the output above", flush=True)
        return code

    summary_path = args.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    if args.eval_episodes:
        _say(f"3. evaluation on {args.variant or 'the training distribution'}: "
             f"{args.eval_episodes} episodes each, no exploration")
        summary["evaluation"] = evaluate_before_after(args)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    _say("4. summary")
    print(f"  {summary['successes']}/{summary['trials']} trials succeeded: "
          f"{summary['first_half_success']:.0%} in the first half, "
          f"{summary['second_half_success']:.0%} in the second")
    recorded = sum(r.get("recorded_steps", 0) for r in summary["results"])
    executed = sum(r["steps"] for r in summary["results"])
    print(f"  steps recorded: {recorded} of {executed} executed")
    if "evaluation" in summary:
        evaluation = summary["evaluation"]
        print(f"  evaluation: {evaluation['before']['success']:.0%} before finetuning, "
              f"{evaluation['after']['success']:.0%} after")
    print(f"  weights versions the planner used: {summary['weights_versions_used']}")
    print(f"  episodes: {args.run_dir / 'episodes'}   plot: {args.run_dir / 'trials.png'}")
    print(f"  {time.perf_counter() - started:.0f} s in all")
    return 0


def evaluate_before_after(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped model and the learner's last checkpoint on the trials' variant, planning
    with the planner node's settings (config/planner.yaml)."""
    import torch
    import yaml

    from tdmpc_ros.core.agent import Agent, evaluate
    from tdmpc_ros.nodes.planner import planning_overrides
    from tdmpc_ros.sim.env import XArmTaskEnv

    torch.set_num_threads(2)
    planner = yaml.safe_load(Path("config/planner.yaml").read_text())["/**"]["ros__parameters"]
    overrides = planning_overrides(planner["num_samples"], planner["iterations"],
                                   planner["uncertainty_coef"], "cpu")
    out: dict[str, Any] = {"variant": args.variant, "episodes": args.eval_episodes,
                           "env_seeds": f"10000..{10000 + args.eval_episodes - 1}"}
    for name, path in (("before", Path(f"models/{args.task}-state.safetensors")),
                       ("after", args.run_dir / "checkpoints" / "latest.safetensors")):
        agent = Agent.from_checkpoint(path, acting_only=True, overrides=overrides)
        env = XArmTaskEnv(args.task, render_pixels=False, variant=args.variant or None)
        try:
            out[name] = {"checkpoint": str(path), **evaluate(env, agent, args.eval_episodes)}
        finally:
            env.close()
        print(f"  {name}: {out[name]['success']:.0%} success ({path})", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
