"""The offline-to-online experiment of FOWM in simulation, by one command.

    python tools/experiment.py --tasks reach push lift --seeds 0 1 2 \
        --variants fowm lambda0 no_balance scratch --pixels-tasks reach --out runs/experiment

Per (task, input, seed): pretrain once offline on the scripted dataset, evaluate, save the
checkpoint; then finetune each variant from it for ``--trials`` online episodes (one update per
environment step) and evaluate again. Variants:

- ``fowm``: the method, lambda 1 (uncertainty penalty in planning), balanced sampling (half of
  every batch offline, half online).
- ``lambda0``: the same with lambda 0.
- ``no_balance``: lambda 1, online episodes added to the offline buffer (one buffer, sampled as
  one; no balancing).
- ``scratch``: plain TD-MPC (lambda 0) from a fresh model, no offline data, online only for
  the same trials and updates per step.

Each run writes ``<out>/<task>-<input>/seed<k>/<variant>.json`` and is skipped when that file
exists, so an interrupted experiment continues where it stopped (the pretrained checkpoint and
its ``pretrain.json`` are reused likewise). ``tools/report.py`` turns the results into
``docs/results.md`` and plots. Work runs in ``--workers`` processes, one torch thread each.
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

VARIANTS = ("fowm", "lambda0", "no_balance", "scratch")
PRETRAINED_VARIANTS = ("fowm", "lambda0", "no_balance")
EVAL_SEED = 10_000
"""Evaluation episode i uses env seed EVAL_SEED + i: the same set for every run."""


# ---- settings -------------------------------------------------------------------------------


def config_overrides(args: argparse.Namespace, pixels: bool, seed: int) -> dict[str, Any]:
    """Dotted overrides of ``fast_config`` for one run (the model and planner sizes)."""
    return {
        "model.obs_type": "pixels+proprio" if pixels else "state",
        "model.mlp_dim": args.mlp_dim,
        "learner.batch_size": args.pixel_batch_size if pixels else args.batch_size,
        "planner.num_samples": args.num_samples,
        "planner.iterations": args.iterations,
        "planner.num_elites": args.num_elites,
        "run.action_repeat": 1,  # the sim env's step is one agent step (25 per episode)
        "run.offline_updates": args.pixel_updates if pixels else args.updates,
        "run.online_episodes": args.trials,
        "run.updates_per_step": updates_per_step(args, pixels),
        "run.eval_episodes": eval_episodes(args, pixels),
        "seed": seed,
        "device": "cpu",
        "threads": 1,
    }


def updates_per_step(args: argparse.Namespace, pixels: bool) -> float:
    return args.pixel_updates_per_step if pixels else args.updates_per_step


def eval_episodes(args: argparse.Namespace, pixels: bool) -> int:
    return args.pixel_eval_episodes if pixels else args.eval_episodes


def variant_overrides(variant: str) -> dict[str, Any]:
    lam = 0.0 if variant in ("lambda0", "scratch") else 1.0
    return {"planner.uncertainty_coef": lam}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tasks", "pixels_tasks", "seeds", "pixel_seeds", "variants", "updates",
            "pixel_updates", "trials", "updates_per_step", "eval_episodes", "pixel_variants",
            "pixel_updates_per_step", "pixel_eval_episodes", "mlp_dim",
            "batch_size", "pixel_batch_size", "num_samples", "iterations", "num_elites",
            "workers")
    return {key: getattr(args, key) for key in keys}


# ---- one group of runs ----------------------------------------------------------------------


def _log(tag: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] [{tag}] {message}", flush=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def dataset_dir(args: argparse.Namespace, task: str, pixels: bool) -> Path:
    return Path(args.data) / f"{task}-{'pixels' if pixels else 'state'}"


def ensure_dataset(args: argparse.Namespace, task: str, pixels: bool) -> Path:
    """Write the scripted dataset once (the generator skips episodes already written)."""
    from tdmpc_ros.sim.datasets import generate_dataset

    directory = dataset_dir(args, task, pixels)
    generate_dataset(task, directory, args.dataset_episodes or None, seed=0, pixels=pixels)
    return directory


def run_group(job: tuple[argparse.Namespace, str, bool, int]) -> list[str]:
    """Pretrain (once) and run every variant for one (task, input, seed)."""
    args, task, pixels, seed = job
    import numpy as np
    import torch

    from tdmpc_ros.core.agent import Agent, evaluate, run_episode, spec_from_env
    from tdmpc_ros.core.config import fast_config
    from tdmpc_ros.core.episodes import load_episodes
    from tdmpc_ros.sim.env import XArmTaskEnv

    torch.set_num_threads(1)
    kind = "pixels" if pixels else "state"
    tag = f"{task}-{kind} seed {seed}"
    group_dir = Path(args.out) / f"{task}-{kind}" / f"seed{seed}"
    group_dir.mkdir(parents=True, exist_ok=True)
    base = config_overrides(args, pixels, seed)
    done: list[str] = []

    def make_env() -> XArmTaskEnv:
        return XArmTaskEnv(task, render_pixels=pixels, seed=seed)

    def evaluate_agent(agent: Agent) -> dict[str, Any]:
        env = make_env()
        result = evaluate(env, agent, eval_episodes(args, pixels), seed=EVAL_SEED,
                          action_repeat=1)
        env.close()
        return result

    variants = args.pixel_variants if pixels else args.variants
    todo = [v for v in variants if not (group_dir / f"{v}.json").exists()]
    if not todo:
        _log(tag, "all variants done, skipped")
        return done

    offline = None
    checkpoint_path = group_dir / "pretrained.safetensors"
    pretrain_json = group_dir / "pretrain.json"
    if any(v in PRETRAINED_VARIANTS for v in todo) or not pretrain_json.exists():
        offline = load_episodes(dataset_dir(args, task, pixels))
    if not pretrain_json.exists() or not checkpoint_path.exists():
        config = fast_config(**base, **variant_overrides("fowm"))
        env = make_env()
        agent = Agent(config, spec_from_env(env))
        env.close()
        agent.replay.add_offline(offline)
        updates = config.run.offline_updates
        _log(tag, f"pretrain: {len(offline)} episodes, {updates} updates")
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        for step in range(1, updates + 1):
            metrics = agent.update()
            if step % max(1, updates // 4) == 0 or step == updates:
                rate = step / (time.perf_counter() - started)
                _log(tag, f"pretrain {step}/{updates} ({rate:.1f} updates/s) "
                     f"loss {metrics.get('model_loss', float('nan')):.4g}")
        seconds = time.perf_counter() - started
        before = evaluate_agent(agent)
        agent.save(checkpoint_path)
        successes = [float(e.succeeded) for e in offline]
        record = {
            "task": task, "input": kind, "seed": seed, "updates": updates,
            "pretrain_seconds": seconds, "eval": before,
            "dataset": {"dir": str(dataset_dir(args, task, pixels)), "episodes": len(offline),
                        "transitions": int(sum(e.length for e in offline)),
                        "success_rate": float(np.mean(successes))},
            "config": config.to_dict(), "final_metrics": metrics,
        }
        _write_json(pretrain_json, record)
        _log(tag, f"pretrained in {seconds:.0f} s, success before finetuning "
             f"{before['success']:.2f}")
        if seed == args.model_seed and args.models:
            export_model(args, task, kind, agent, record)
    pretrain = json.loads(pretrain_json.read_text())

    for variant in todo:
        started = time.perf_counter()
        overrides = {**base, **variant_overrides(variant)}
        if variant == "scratch":
            config = fast_config(**overrides)
            env = make_env()
            agent = Agent(config, spec_from_env(env))
            env.close()
            before: dict[str, Any] | None = None
        else:
            agent = Agent.from_checkpoint(checkpoint_path, overrides=overrides)
            agent.replay.add_offline(offline)
            config = agent.config
            before = pretrain["eval"] if variant != "lambda0" else evaluate_agent(agent)
        env = make_env()
        trials: list[dict[str, Any]] = []
        for index in range(args.trials):
            episode = run_episode(
                env, lambda obs, a=agent: a.act(obs, explore=True)[0], f"{variant}_{index:03d}",
                seed=seed * 1000 + 100_000 + index, action_repeat=1, on_reset=agent.reset,
            )
            if variant == "no_balance":
                agent.replay.add_offline(episode)  # one buffer: online data joins offline
            else:
                agent.replay.add_online(episode)
            updates = int(round(episode.length * updates_per_step(args, pixels)))
            for _ in range(updates):
                agent.update()
            trials.append({"trial": index + 1, "success": bool(episode.succeeded),
                           "return": float(episode.episode_return), "updates": updates})
        env.close()
        after = evaluate_agent(agent)
        seconds = time.perf_counter() - started
        record = {
            "task": task, "input": kind, "seed": seed, "variant": variant,
            "before": before, "after": after,
            "success_before": None if before is None else before["success"],
            "success_after": after["success"],
            "trial_success": [t["success"] for t in trials], "trials": trials,
            "pretrain_updates": 0 if variant == "scratch" else pretrain["updates"],
            "online_updates": int(sum(t["updates"] for t in trials)),
            "uncertainty_coef": config.planner.uncertainty_coef,
            "offline_fraction": config.replay.offline_fraction,
            "balanced": variant in ("fowm", "lambda0"),
            "seconds": seconds,
        }
        _write_json(group_dir / f"{variant}.json", record)
        done.append(variant)
        trial_rate = np.mean(record["trial_success"]) if trials else float("nan")
        _log(tag, f"{variant}: before {record['success_before']} after {after['success']:.2f} "
             f"(trials {trial_rate:.2f}) in {seconds:.0f} s")
    return done


def export_model(args: argparse.Namespace, task: str, kind: str, agent: Any,
                 record: dict[str, Any]) -> None:
    """The seed's pretrained weights, actor only, into ``--models`` with a model card."""
    models = Path(args.models)
    models.mkdir(parents=True, exist_ok=True)
    name = f"{task}-{kind}"
    path = models / f"{name}.safetensors"
    data = agent.to_bytes(actor_only=True, task=task, input=kind,
                          pretrain_updates=record["updates"])
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    c = record["config"]
    ds = record["dataset"]
    ev = record["eval"]
    flag = " --pixels" if kind == "pixels" else ""
    card = f"""# {name}: TD-MPC world model pretrained offline (FOWM), {kind} input

- File: `models/{name}.safetensors` ({len(data) / 1e6:.2f} MB), actor-only checkpoint
  (`tdmpc_ros.core.checkpoint`, kind `actor`: model weights, no target network, no optimiser
  state; `Agent.from_checkpoint` restarts the target from the online weights).
- Task: simulated xArm `{task}` (`tdmpc_ros.sim`), observations `{c['model']['obs_type']}`.
- Data: {ds['episodes']} scripted-expert episodes of mixed skill ({ds['success_rate']:.0%} of
  the episodes successful; {ds['transitions']} transitions), from
  `python -m tdmpc_ros.sim.datasets --task {task} --out {ds['dir']} --seed 0{flag}`.
- Pretraining: {record['updates']} gradient updates, batch {c['learner']['batch_size']},
  seed {record['seed']} ({record['pretrain_seconds']:.0f} s on one CPU thread). The paper uses
  25k updates with batch 256; this model is far smaller and shorter-trained, sized for 2 CPUs.
- Config highlights: latent {c['model']['latent_dim']}, heads {c['model']['mlp_dim']} wide,
  {c['model']['num_q']} Q heads, horizon {c['horizon']}, discount {c['discount']}; planner
  {c['planner']['num_samples']} samples, {c['planner']['iterations']} iterations,
  {c['planner']['num_elites']} elites, lambda {c['planner']['uncertainty_coef']};
  action repeat {c['run']['action_repeat']} (the sim env's step is one agent step).
- Success before finetuning: {ev['success']:.2f} over {ev['episodes']} evaluation episodes
  (env seeds {EVAL_SEED}..{EVAL_SEED + ev['episodes'] - 1}, no exploration), mean return
  {ev['return']:.2f}.
- Made by: `{args.command_line}` (seed {record['seed']} of that experiment).
"""
    (models / f"{name}.md").write_text(card)
    _log(f"{name}", f"exported {path} ({len(data) / 1e6:.2f} MB)")


# ---- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["reach", "push", "lift"])
    parser.add_argument("--pixels-tasks", nargs="*", default=["reach"],
                        help="tasks that also get a pixel-based (pixels+proprio) run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pixel-seeds", nargs="*", type=int, default=[0],
                        help="seeds of the pixel runs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--updates", type=int, default=800, help="offline updates (state)")
    parser.add_argument("--pixel-updates", type=int, default=200, help="offline updates (pixels)")
    parser.add_argument("--pixel-variants", nargs="+", default=["fowm", "scratch"],
                        choices=VARIANTS, help="variants of the pixel runs")
    parser.add_argument("--pixel-updates-per-step", type=float, default=0.2,
                        help="online updates per step of the pixel runs (slow on CPU)")
    parser.add_argument("--pixel-eval-episodes", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20, help="online finetuning episodes")
    parser.add_argument("--updates-per-step", type=float, default=1.0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--mlp-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pixel-batch-size", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--num-elites", type=int, default=16)
    parser.add_argument("--dataset-episodes", type=int, default=0,
                        help="episodes per dataset (0: the default size per task)")
    parser.add_argument("--data", default="runs/data", help="where the datasets are written")
    parser.add_argument("--out", default="runs/experiment")
    parser.add_argument("--models", default="",
                        help="export the --model-seed pretrained models here (e.g. models)")
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
    groups = [(task, False, seed) for task in args.tasks for seed in args.seeds]
    groups += [(task, True, seed) for task in args.pixels_tasks for seed in args.pixel_seeds]
    groups.sort(key=lambda g: (g[2], not g[1]))  # seed 0 first (models), pixels early
    for task, pixels in sorted({(t, p) for t, p, _ in groups}):
        started = time.perf_counter()
        ensure_dataset(args, task, pixels)
        _log("data", f"{task}-{'pixels' if pixels else 'state'} ready "
             f"({time.perf_counter() - started:.0f} s)")
    jobs = [(args, task, pixels, seed) for task, pixels, seed in groups]
    _log("experiment", f"{len(jobs)} groups x {len(args.variants)} variants, "
         f"{args.workers} workers -> {out}")
    started = time.perf_counter()
    if args.workers <= 1:
        for job in jobs:
            run_group(job)
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers, maxtasksperchild=1) as pool:
            for _ in pool.imap_unordered(run_group, jobs):
                pass
    _log("experiment", f"done in {time.perf_counter() - started:.0f} s; "
         f"report: python tools/report.py --out {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
