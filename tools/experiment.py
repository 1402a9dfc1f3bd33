"""FOWM's offline-to-online experiment in simulation, on task variants the offline data missed.

    python tools/experiment.py --tasks reach push lift --seeds 0 1 2 3 4 --variant shifted \
        --sweep-task lift --out runs/experiment

Offline data comes from each task's training distribution (``tdmpc_ros.sim.datasets``); online
trials and every evaluation use ``--variant`` (``config/variants.yaml``), as the paper finetunes
on scenes its data did not cover. Per (task, seed):

1. ``pretrain``: in-sample pretraining (FOWM) until the value check passes
   (``tdmpc_ros.core.pretraining``), capped at ``--updates``; then ``pretrain_max_q``: standard
   TD-MPC pretraining (max-Q targets, policy ascends Q), as many updates as the in-sample model.
2. Evaluations of the pretrained models, and one finetuning run per method of ``--methods``:

   - ``fowm``: lambda 1, balanced batches (half offline, half online);
   - ``lambda0``: the same with lambda 0 (no uncertainty penalty when planning);
   - ``one_buffer``: lambda 1, online episodes join the offline buffer, sampled as one;
   - ``scratch``: TD-MPC (max-Q, lambda 0) from a fresh model, online data only;
   - ``pretrained``: the in-sample model, lambda 1, no updates (the trials without learning);
   - ``max_q``: the max-Q pretrained model, lambda 0, finetuned with balanced batches.
3. On ``--sweep-task``: lambda in ``--sweep-lambdas`` and the online share of each batch in
   ``--sweep-online-shares`` (the rest as ``fowm``).
4. ``calibration``: does the Q ensemble's spread grow with the model's real one-step error
   (reward and latent dynamics) on held-out state-actions, in and off the data's distribution?

Every result is a JSON file under ``<out>/<task>-<input>/seed<k>/``, written atomically and
skipped when present, so a stopped experiment resumes where it stopped; ``settings.json`` holds
the settings and the command. ``tools/report.py`` writes ``docs/results.{json,md}`` and plots.
Work runs in ``--workers`` processes, one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("fowm", "lambda0", "one_buffer", "scratch", "pretrained", "max_q")
EVAL_SEED = 10_000
"""Evaluation episode i uses env seed EVAL_SEED + i: the same set for every run."""
HELD_OUT_SEED = 7
"""Dataset seed of the held-out scripted episodes of the calibration check (training uses 0)."""


# ---- settings -------------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Dotted overrides of ``fast_config`` shared by every run (model and planner sizes)."""
    return {
        "model.obs_type": "state" if args.input == "state" else "pixels+proprio",
        "model.mlp_dim": args.mlp_dim,
        "learner.batch_size": args.batch_size,
        "planner.num_samples": args.num_samples,
        "planner.iterations": args.iterations,
        "planner.num_elites": args.num_elites,
        "run.action_repeat": 1,  # the sim env's step is one agent step (25 per episode)
        "run.offline_updates": args.updates,
        "run.convergence_check_every": args.check_every,
        "run.convergence_tolerance": args.tolerance,
        "run.convergence_min_updates": args.min_updates,
        "run.online_episodes": args.trials,
        "run.updates_per_step": args.updates_per_step,
        "run.eval_episodes": args.eval_episodes,
        "seed": seed,
        "device": "cpu",
        "threads": 1,
    }


def method_settings(method: str) -> dict[str, Any]:
    """What a method is: its pretraining, lambda, buffers and whether it learns online."""
    return {
        "fowm": {"pretraining": "in_sample", "lambda": 1.0, "buffers": "balanced"},
        "lambda0": {"pretraining": "in_sample", "lambda": 0.0, "buffers": "balanced"},
        "one_buffer": {"pretraining": "in_sample", "lambda": 1.0, "buffers": "one"},
        "scratch": {"pretraining": "none", "lambda": 0.0, "buffers": "online"},
        "pretrained": {"pretraining": "in_sample", "lambda": 1.0, "buffers": "no_updates"},
        "max_q": {"pretraining": "max_q", "lambda": 0.0, "buffers": "balanced"},
    }[method]


def sweep_runs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run name -> settings of the sweep (fowm with one setting changed)."""
    runs: dict[str, dict[str, Any]] = {}
    for lam in args.sweep_lambdas:
        runs[f"sweep_lambda{lam:g}"] = {**method_settings("fowm"), "lambda": float(lam)}
    for share in args.sweep_online_shares:
        runs[f"sweep_online{share:g}"] = {**method_settings("fowm"),
                                          "offline_fraction": round(1.0 - share, 6)}
    return runs


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tasks", "seeds", "input", "pretrained_from", "variant", "methods", "updates",
            "check_every", "tolerance", "min_updates", "trials", "updates_per_step",
            "eval_episodes", "mlp_dim", "batch_size", "num_samples", "iterations",
            "num_elites", "sweep_task", "sweep_lambdas", "sweep_online_shares",
            "calibration_episodes", "workers")
    return {key: getattr(args, key) for key in keys}


# ---- helpers --------------------------------------------------------------------------------


def _log(tag: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [{tag}] {message}", flush=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def dataset_dir(args: argparse.Namespace, task: str, variant: str = "", seed: int = 0) -> Path:
    name = (f"{task}-{args.input}" + (f"-{variant}" if variant else "")
            + (f"-seed{seed}" if seed else ""))
    return Path(args.data) / name


def ensure_datasets(args: argparse.Namespace, task: str) -> None:
    """The training data, and held-out scripted episodes on and off its distribution."""
    from tdmpc_ros.sim.datasets import generate_dataset

    pixels = args.input == "pixels"
    generate_dataset(task, dataset_dir(args, task), args.dataset_episodes or None, seed=0,
                     pixels=pixels)
    if "calibration" in args.stages:
        for variant in ("", args.variant):
            generate_dataset(task, dataset_dir(args, task, variant, HELD_OUT_SEED),
                             args.calibration_episodes, seed=HELD_OUT_SEED,
                             variant=variant or None, pixels=pixels)


class Group:
    """Everything of one (task, seed): its files, env, data and pretrained models."""

    def __init__(self, args: argparse.Namespace, task: str, seed: int) -> None:
        self.args, self.task, self.seed = args, task, seed
        self.tag = f"{task} seed {seed}"
        self.dir = Path(args.out) / f"{task}-{args.input}" / f"seed{seed}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base = base_overrides(args, seed)
        self._offline: list[Any] | None = None

    @property
    def offline(self) -> list[Any]:
        from tdmpc_ros.core.episodes import load_episodes

        if self._offline is None:
            self._offline = load_episodes(dataset_dir(self.args, self.task))
        return self._offline

    def env(self, variant: str) -> Any:
        from tdmpc_ros.sim.env import XArmTaskEnv

        return XArmTaskEnv(self.task, render_pixels=self.args.input == "pixels", seed=self.seed,
                           variant=variant or None)

    def new_agent(self, td_target: str, lam: float, **overrides: Any) -> Any:
        from tdmpc_ros.core.agent import Agent, spec_from_env
        from tdmpc_ros.core.config import fast_config

        config = fast_config(**{**self.base, "learner.td_target": td_target,
                                "planner.uncertainty_coef": lam, **overrides})
        env = self.env("")
        agent = Agent(config, spec_from_env(env))
        env.close()
        return agent

    def checkpoint(self, pretraining: str) -> Path:
        return self.dir / f"pretrained_{pretraining}.safetensors"

    def load(self, pretraining: str, **overrides: Any) -> Any:
        from tdmpc_ros.core.agent import Agent

        return Agent.from_checkpoint(self.checkpoint(pretraining),
                                     overrides={**self.base, **overrides})

    def evaluate(self, agent: Any, variant: str) -> dict[str, Any]:
        from tdmpc_ros.core.agent import evaluate

        env = self.env(variant)
        try:
            return evaluate(env, agent, self.args.eval_episodes, seed=EVAL_SEED, action_repeat=1)
        finally:
            env.close()

    # ---- stages -------------------------------------------------------------------------

    def pretrain(self, pretraining: str) -> dict[str, Any]:
        """Pretrain (in_sample to convergence; max_q for as many updates), evaluate, save."""
        from tdmpc_ros.core.pretraining import plot_pretraining, pretrain

        path = self.dir / f"pretrain_{pretraining}.json"
        if path.exists() and self.checkpoint(pretraining).exists():
            return json.loads(path.read_text())
        budget: dict[str, Any] = {}
        if pretraining == "max_q":  # the same budget as the in-sample model of this seed
            updates = self.pretrain("in_sample")["updates"]
            budget = {"run.offline_updates": updates, "run.convergence_patience": updates + 1}
        if pretraining == "in_sample" and self.args.pretrained_from:
            result = self._take_pretrained(self.pretrained_from)
        else:
            agent = self.new_agent(pretraining, 1.0, **budget)
            agent.replay.add_offline(self.offline)
            _log(self.tag, f"pretrain {pretraining}: {len(self.offline)} episodes, at most "
                 f"{agent.config.run.offline_updates} updates")
            result = pretrain(agent, self.offline, progress=lambda line: _log(self.tag, line))
            agent.save(self.checkpoint(pretraining))
        lam = 1.0 if pretraining == "in_sample" else 0.0  # as its finetuning plans
        agent = self.load(pretraining, **{"planner.uncertainty_coef": lam})
        record = {
            "task": self.task, "input": self.args.input, "seed": self.seed,
            "pretraining": pretraining,
            **result.to_dict(), "final_check": result.final,
            "eval_train": self.evaluate(agent, ""), "eval_lambda": lam,
            "dataset": {"dir": str(dataset_dir(self.args, self.task)),
                        "episodes": len(self.offline),
                        "transitions": int(sum(e.length for e in self.offline)),
                        "success_rate": float(sum(e.succeeded for e in self.offline))
                        / len(self.offline)},
            "config": agent.config.to_dict(),
            "pretrained_from": (str(self.pretrained_from) if pretraining == "in_sample"
                                and self.pretrained_from else None),
        }
        plot_pretraining(result.history, self.dir / f"pretrain_{pretraining}.png",
                         f"{self.task} seed {self.seed}, {pretraining}")
        _write_json(path, record)
        _log(self.tag, f"pretrained {pretraining}: {result.updates} updates "
             f"(converged {result.converged}, Q/return {result.final['value_ratio']:.2f}) in "
             f"{result.seconds:.0f} s; success on the training distribution "
             f"{record['eval_train']['success']:.2f}")
        return record

    @property
    def pretrained_from(self) -> Path | None:
        """``--pretrained-from`` for this task and seed (``{task}`` and ``{seed}`` in it), or
        None."""
        template = self.args.pretrained_from
        return Path(template.format(task=self.task, seed=self.seed)) if template else None

    def _take_pretrained(self, run_dir: Path) -> Any:
        """The in-sample model of a ``tdmpc-ros pretrain`` run (``--pretrained-from``): its
        latest checkpoint becomes this group's, and its value checks its history."""
        from tdmpc_ros.core.agent import Agent
        from tdmpc_ros.core.pretraining import PretrainResult

        source = run_dir / "latest.safetensors"
        agent = Agent.from_checkpoint(source, overrides=self.base)
        if agent.config.model.obs_type != self.base["model.obs_type"]:
            raise ValueError(f"{source} is a {agent.config.model.obs_type} model; "
                             f"--input {self.args.input} needs {self.base['model.obs_type']}")
        by_step = {}  # a run resumed from a checkpoint repeats the checks after it: the last
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            if (record := json.loads(line)).get("phase") == "pretrain":
                by_step[record["step"]] = record
        history = [by_step[step] for step in sorted(by_step) if step <= agent.learner.steps]
        last = history[-1]
        tolerance = agent.config.run.convergence_tolerance
        in_a_row = 0
        for record in history:
            in_a_row = in_a_row + 1 if record["value_ratio"] >= 1.0 - tolerance else 0
        agent.save(self.checkpoint("in_sample"))
        _log(self.tag, f"pretrained in_sample: taken from {source} "
             f"(update {agent.learner.steps})")
        return PretrainResult(agent.learner.steps,
                              in_a_row >= agent.config.run.convergence_patience,
                              float(last.get("seconds", float("nan"))), history)

    def before(self, pretraining: str, lam: float) -> dict[str, Any]:
        """The pretrained model on the variant with lambda ``lam`` (cached)."""
        path = self.dir / f"before_{pretraining}_lambda{lam:g}.json"
        if path.exists():
            return json.loads(path.read_text())
        self.pretrain(pretraining)
        agent = self.load(pretraining, **{"planner.uncertainty_coef": lam})
        record = {"pretraining": pretraining, "lambda": lam, "variant": self.args.variant,
                  **self.evaluate(agent, self.args.variant)}
        _write_json(path, record)
        return record

    def finetune(self, name: str, method: dict[str, Any]) -> None:
        """One online finetuning run on the variant, evaluated before and after."""
        from tdmpc_ros.core.agent import run_episode

        path = self.dir / f"{name}.json"
        if path.exists():
            return
        lam = method["lambda"]
        overrides: dict[str, Any] = {"planner.uncertainty_coef": lam}
        if "offline_fraction" in method:
            overrides["replay.offline_fraction"] = method["offline_fraction"]
        started = time.perf_counter()
        if method["pretraining"] == "none":
            agent = self.new_agent("max_q", lam)
            before: dict[str, Any] | None = None
        else:
            before = self.before(method["pretraining"], lam)
            agent = self.load(method["pretraining"], **overrides)
            agent.replay.add_offline(self.offline)
        env = self.env(self.args.variant)
        trials: list[dict[str, Any]] = []
        for index in range(self.args.trials):
            episode = run_episode(
                env, lambda obs, a=agent: a.act(obs, explore=True)[0], f"{name}_{index:03d}",
                seed=self.seed * 1000 + 100_000 + index, action_repeat=1, on_reset=agent.reset,
            )
            updates = 0
            if method["buffers"] != "no_updates":
                if method["buffers"] == "one":
                    agent.replay.add_offline(episode)  # one buffer: online data joins offline
                else:
                    agent.replay.add_online(episode)
                updates = int(round(episode.length * self.args.updates_per_step))
                for _ in range(updates):
                    agent.update()
            trials.append({"trial": index + 1, "success": bool(episode.succeeded),
                           "return": float(episode.episode_return), "updates": updates})
        env.close()
        after = before if method["buffers"] == "no_updates" else self.evaluate(
            agent, self.args.variant)
        record = {
            "task": self.task, "input": self.args.input, "seed": self.seed, "method": name,
            "variant": self.args.variant, "settings": method,
            "before": before, "after": after,
            "success_before": None if before is None else before["success"],
            "success_after": after["success"],
            "trial_successes": [t["success"] for t in trials], "trials": trials,
            "pretrain_updates": (0 if before is None
                                 else self.pretrain(method["pretraining"])["updates"]),
            "online_updates": int(sum(t["updates"] for t in trials)),
            "uncertainty_coef": agent.config.planner.uncertainty_coef,
            "offline_fraction": agent.config.replay.offline_fraction,
            "seconds": time.perf_counter() - started,
        }
        _write_json(path, record)
        rate = sum(record["trial_successes"]) / max(len(trials), 1)
        _log(self.tag, f"{name}: before {record['success_before']} after "
             f"{after['success']:.2f} (trials {rate:.2f}) in {record['seconds']:.0f} s")

    def calibration(self) -> None:
        """Rank correlation of the Q ensemble's spread with the model's one-step error."""
        from tdmpc_ros.core.calibration import calibration_record
        from tdmpc_ros.core.episodes import load_episodes

        path = self.dir / "calibration.json"
        if path.exists():
            return
        agent = self.load("in_sample")
        held_out = {
            "in_distribution": load_episodes(dataset_dir(self.args, self.task, "",
                                                         HELD_OUT_SEED)),
            "variant": load_episodes(dataset_dir(self.args, self.task, self.args.variant,
                                                 HELD_OUT_SEED)),
        }
        record = {"task": self.task, "seed": self.seed, "variant": self.args.variant,
                  **calibration_record(agent.model, held_out)}
        _write_json(path, record)
        _log(self.tag, "calibration: spearman " + ", ".join(
            f"{k} {v['spearman']:.2f}" for k, v in record["sets"].items()))


def export_model(args: argparse.Namespace, task: str) -> Path:
    """The ``--model-seed`` in-sample model of ``task`` into ``--models``, with its card."""
    group = Group(args, task, args.model_seed)
    record = group.pretrain("in_sample")
    before = group.before("in_sample", 1.0)
    agent = group.load("in_sample")
    models = Path(args.models)
    models.mkdir(parents=True, exist_ok=True)
    name = f"{task}-{args.input}"
    path = models / f"{name}.safetensors"
    data = agent.to_bytes(actor_only=True, task=task, input=args.input,
                          pretrain_updates=record["updates"],
                          value_converged=record["converged"])
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    c, ds, check = record["config"], record["dataset"], record["final_check"]
    train = record["eval_train"]
    pixels = args.input == "pixels"
    source = record.get("pretrained_from")
    made_by = (f"`tools/pretrain_pixels.sh` (its run directory `{source}`; its settings are "
               f"in its config.yaml), then `{args.command_line}`, which evaluated and "
               f"exported it" if source else
               f"`{args.command_line}` (seed {args.model_seed} of that experiment)")
    card = f"""# {name}: TD-MPC world model pretrained offline (FOWM), {args.input} input

- File: `models/{name}.safetensors` ({len(data) / 1e6:.2f} MB), actor-only checkpoint
  (`tdmpc_ros.core.checkpoint`, kind `actor`: model weights, no target network, no optimiser
  state; `Agent.from_checkpoint` restarts the target from the online weights).
- Task: simulated xArm `{task}` (`tdmpc_ros.sim`), observations
  `{c['model']['obs_type']}`{
  f" (the project's camera, {c['model']['image_size']}x{c['model']['image_size']} RGB, "
  "and the gripper's position and opening)" if pixels else ""}.
- Data: {ds['episodes']} scripted episodes of mixed skill ({ds['success_rate']:.0%} successful;
  {ds['transitions']} transitions) from the task's training distribution:
  `python -m tdmpc_ros.sim.datasets --task {task} --out {ds['dir']} --seed 0{
  ' --pixels' if pixels else ''}`.
- Pretraining: in-sample TD (expectile V, AWR policy), batch {c['learner']['batch_size']},
  seed {c['seed']}: {record['updates']} updates, stopped by the value check
  (`tdmpc_ros/core/pretraining.py`) or its cap: Q on the dataset's successful episodes
  {check['q_expert']:.2f} against their Monte-Carlo return {check['return_expert']:.2f}
  (ratio {check['value_ratio']:.2f}; converged: {record['converged']}). The paper: 25k updates
  at batch 256 and 512-wide heads.
- Config: latent {c['model']['latent_dim']}, heads {c['model']['mlp_dim']} wide,
  {c['model']['num_q']} Q heads, horizon {c['horizon']}, discount {c['discount']}; planner
  {c['planner']['num_samples']} samples, {c['planner']['iterations']} iterations,
  {c['planner']['num_elites']} elites, lambda 1 (the stack plans with config/planner.yaml's).
- Success before finetuning, {train['episodes']} evaluation episodes (env seeds
  {EVAL_SEED}.., no exploration): **{train['success']:.2f} on the training distribution**,
  {before['success']:.2f} on the variant `{args.variant}` (`config/variants.yaml`).
- Made by: {made_by}; the finetuning results from it are in `docs/results.md`.
"""
    (models / f"{name}.md").write_text(card)
    _log(name, f"exported {path} ({len(data) / 1e6:.2f} MB)")
    return path


def run_job(job: tuple[argparse.Namespace, str, str, int]) -> str:
    """One stage of one (task, seed): ``pretrain`` or ``rest`` (everything after it)."""
    args, stage, task, seed = job
    import torch

    torch.set_num_threads(1)
    group = Group(args, task, seed)
    if stage == "pretrain":
        group.pretrain("in_sample")
        return group.tag
    if "pretrain" in args.stages:
        group.pretrain("in_sample")
    if "finetune" in args.stages:
        for method in args.methods:
            settings_of = method_settings(method)
            if settings_of["pretraining"] == "max_q":
                group.pretrain("max_q")
            group.finetune(method, settings_of)
    if "sweep" in args.stages and task == args.sweep_task:
        for name, settings_of in sweep_runs(args).items():
            group.finetune(name, settings_of)
    if "calibration" in args.stages:
        group.calibration()
    return group.tag


# ---- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["reach", "push", "lift"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--input", choices=["state", "pixels"], default="state",
                        help="what the models see: the state vector, or the camera's 84x84 "
                             "frames and proprioception (pixels+proprio)")
    parser.add_argument("--pretrained-from", default="",
                        help="a `tdmpc-ros pretrain` run directory whose latest.safetensors "
                             "is the in-sample model (no pretraining here); {task} and {seed} "
                             "in it name the task and seed, e.g. "
                             "runs/pretrain-{task}-pixels-seed{seed} of tools/pretrain_pixels.sh")
    parser.add_argument("--variant", default="shifted",
                        help="task variant of the online trials and evaluations "
                             "(config/variants.yaml)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--stages", nargs="+", default=["pretrain", "finetune", "sweep",
                                                        "calibration"],
                        choices=["pretrain", "finetune", "sweep", "calibration"])
    parser.add_argument("--updates", type=int, default=10_000,
                        help="most offline updates (pretraining stops once values converge)")
    parser.add_argument("--check-every", type=int, default=500, help="updates between checks")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="converged once Q on expert state-actions is >= 1 - this of "
                             "their Monte-Carlo return")
    parser.add_argument("--min-updates", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=20, help="online finetuning episodes")
    parser.add_argument("--updates-per-step", type=float, default=1.0)
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--mlp-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--num-elites", type=int, default=16)
    parser.add_argument("--sweep-task", default="lift")
    parser.add_argument("--sweep-lambdas", nargs="*", type=float, default=[0.3, 3.0],
                        help="lambdas of the sweep besides fowm's 1 and lambda0's 0")
    parser.add_argument("--sweep-online-shares", nargs="*", type=float,
                        default=[0.1, 0.3, 0.7, 0.9],
                        help="online shares of each batch besides fowm's 0.5")
    parser.add_argument("--calibration-episodes", type=int, default=30,
                        help="held-out scripted episodes per distribution")
    parser.add_argument("--dataset-episodes", type=int, default=0,
                        help="episodes per dataset (0: the default size per task)")
    parser.add_argument("--data", default="runs/data", help="where the datasets are written")
    parser.add_argument("--out", default="runs/experiment")
    parser.add_argument("--models", default="",
                        help="export each task's --model-seed in-sample model here, with a "
                             "card (e.g. models)")
    parser.add_argument("--model-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel processes")
    args = parser.parse_args(argv)
    args.command_line = " ".join(
        ["python", "tools/experiment.py", *map(shlex.quote, sys.argv[1:] if argv is None
                                                 else argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "settings.json", {"command": args.command_line, **settings(args)})
    for task in args.tasks:
        started = time.perf_counter()
        ensure_datasets(args, task)
        _log("data", f"{task} ready ({time.perf_counter() - started:.0f} s)")
    by_seed = [(task, seed) for seed in args.seeds for task in args.tasks]  # seed 0 first
    stages = [[(args, "pretrain", task, seed) for task, seed in by_seed]]
    if set(args.stages) - {"pretrain"}:
        stages.append([(args, "rest", task, seed) for task, seed in by_seed])
    started = time.perf_counter()
    for jobs in stages:
        _log("experiment", f"{len(jobs)} jobs ({jobs[0][1]}), {args.workers} workers -> {out}")
        if args.workers <= 1:
            for job in jobs:
                run_job(job)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(args.workers, maxtasksperchild=1) as pool:
                for tag in pool.imap_unordered(run_job, jobs):
                    _log("experiment", f"{tag}: {jobs[0][1]} done")
    if args.models:
        for task in args.tasks:
            export_model(args, task)
    _log("experiment", f"done in {time.perf_counter() - started:.0f} s; "
         f"report: python tools/report.py --out {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
