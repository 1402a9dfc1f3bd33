"""`make demo`: finetune a pretrained world model on the simulated xArm reach task.

What runs today (the ROS 2 node stack is still to come, see the README's status):

1. the offline dataset: scripted reach episodes of mixed quality (120, as in the paper);
2. the pretrained model: the shipped ``models/reach-state.safetensors``, or, where that file is
   missing, a short pretraining on that dataset;
3. evaluation before finetuning, then 20 online trials with uncertainty-regularised planning
   (lambda 1) and balanced offline/online sampling, with an update after each trial, then
   evaluation again;
4. a summary and a plot of success and weights version by trial, in ``runs/demo/``.

Each stage is the project's own command (``tdmpc_ros.sim.datasets``, ``tdmpc-ros``) in its own
process, with its progress shown as it runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "tdmpc_ros.sim:tdmpc_ros/XArmReach-v0"
STILL_TO_COME = """\
Still to come (see README, Status):
  - the ROS 2 node stack: camera, robot driver, planner, replay recorder, learner and trial
    supervisor as separate processes over DDS, started by `ros2 launch tdmpc_ros
    tdmpc.launch.py` or `python -m tdmpc_ros.launcher`; `make demo` will then run this same
    finetuning as that whole stack, with the learner training while the trials run;
  - the real xArm and RealSense backends, with the driver's safety limits."""


def _run(stage: str, command: list[str]) -> None:
    print(f"\n== {stage}\n$ {' '.join(command)}", flush=True)
    completed = subprocess.run(command, cwd=REPO, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"demo: {stage} failed (exit {completed.returncode})")


def _evaluate(checkpoint: Path, episodes: int) -> dict:
    command = [sys.executable, "-m", "tdmpc_ros.cli", "eval", "--checkpoint", str(checkpoint),
               "--env", ENV_ID, "--episodes", str(episodes), "--seed", "12345"]
    print(f"$ {' '.join(command)}", flush=True)
    output = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [record["episode"] for record in records]
    successes = [float(record["success"]) for record in records]
    rolling = [sum(successes[max(0, i - 4): i + 1]) / len(successes[max(0, i - 4): i + 1])
               for i in range(len(successes))]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.bar(trials, successes, color="#9ecae1", label="trial success")
    top.plot(trials, rolling, color="#08519c", marker="o", label="success, last 5 trials")
    top.set_ylabel("success")
    top.set_ylim(0, 1.05)
    top.legend(loc="upper left")
    top.set_title("Online finetuning on simulated reach (lambda 1, balanced sampling)")
    bottom.step(trials, [record["learner_step"] for record in records], where="post")
    bottom.set_ylabel("learner updates")
    bottom.set_xlabel("trial")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="online trials (episodes)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    data = out / "data" / "reach"
    _run("1. offline dataset (scripted reach episodes, mixed quality)",
         [sys.executable, "-m", "tdmpc_ros.sim.datasets", "--task", "reach", "--out", str(data),
          "--seed", "0", "--quiet"])

    checkpoint = REPO / "models" / "reach-state.safetensors"
    if checkpoint.exists():
        print(f"\n== 2. pretrained model: {checkpoint.relative_to(REPO)} (shipped)", flush=True)
    else:
        checkpoint = out / "pretrain" / "latest.safetensors"
        if not checkpoint.exists():
            _run("2. pretraining (the shipped model is missing: a short run instead)",
                 [sys.executable, "-m", "tdmpc_ros.cli", "pretrain", "--dataset", str(data),
                  "--env", ENV_ID, "--updates", "1500", "--set", "model.mlp_dim=256",
                  "--set", "run.log_every=250", "--out", str(out / "pretrain")])

    print("\n== 3a. evaluation before finetuning", flush=True)
    before = _evaluate(checkpoint, args.eval_episodes)
    finetune_dir = out / "finetune"
    if (finetune_dir / "metrics.jsonl").exists():
        (finetune_dir / "metrics.jsonl").unlink()
    _run(f"3b. online finetuning: {args.trials} trials",
         [sys.executable, "-m", "tdmpc_ros.cli", "finetune", "--checkpoint", str(checkpoint),
          "--env", ENV_ID, "--dataset", str(data), "--episodes", str(args.trials),
          "--out", str(finetune_dir)])
    print("\n== 3c. evaluation after finetuning", flush=True)
    after = _evaluate(finetune_dir / "latest.safetensors", args.eval_episodes)

    lines = (finetune_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    trials = [record for record in records if record.get("phase") == "finetune"
              and "episode" in record]
    plot = out / "demo.png"
    _plot(trials, plot)
    summary = {
        "success_before": before["success"],
        "success_after": after["success"],
        "trial_successes": sum(bool(record["success"]) for record in trials),
        "trials": len(trials),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n== Summary")
    print(f"  success before finetuning: {before['success_rate']:.0%} over "
          f"{args.eval_episodes} evaluation episodes")
    print(f"  successful trials:         {summary['trial_successes']} of {len(trials)}")
    print(f"  success after finetuning:  {after['success_rate']:.0%} over "
          f"{args.eval_episodes} evaluation episodes")
    print(f"  plot: {plot}   summary: {out / 'summary.json'}   ({summary['minutes']} min)\n")
    print(STILL_TO_COME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
