"""``tdmpc-ros``: pretrain offline, finetune online, evaluate. No ROS needed.

    tdmpc-ros pretrain --dataset DIR [--env ID] [--updates N] [--out DIR]
    tdmpc-ros finetune --checkpoint CKPT --env ID [--variant NAME] [--dataset DIR] [--episodes N]
    tdmpc-ros eval     --checkpoint CKPT --env ID [--variant NAME] [--episodes N]

``--env`` takes any gymnasium id with Box actions: Box observations become the ``state`` input,
Dict observations (keys ``state``, ``proprio``, ``pixels``) are the project's own sim tasks
(``tdmpc_ros/XArmReach-v0`` and the others of ``tdmpc_ros.sim``; ``tdmpc_ros/PointMass-v0`` is a
fast toy task); an id of the form ``module:Env-v0`` imports ``module`` first. ``--dataset``
reads directories of episode files (``tdmpc_ros.core.episodes``). Settings come from the
defaults, then ``--config FILE.yaml``, then ``--set section.field=value`` (repeatable). Each run
writes its config, checkpoints and ``metrics.jsonl`` under ``--out``. Pretraining runs until the
value check passes (``tdmpc_ros.core.pretraining``: Q on the dataset's successful episodes
against their Monte-Carlo return), at most ``--updates``; it prints a progress line at every
check and plots losses and the check in ``pretraining.png``. ``--variant NAME`` finetunes and
evaluates on a task variant (``config/variants.yaml``) of the project's sim tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

from tdmpc_ros.core import checkpoint, toy
from tdmpc_ros.core.agent import Agent, evaluate, run_episode, spec_from_env
from tdmpc_ros.core.config import Config, set_dotted
from tdmpc_ros.core.episodes import Episode, load_episodes, save_episode
from tdmpc_ros.core.pretraining import plot_pretraining
from tdmpc_ros.core.pretraining import pretrain as pretrain_until_converged
from tdmpc_ros.core.world_model import ModelSpec

_ = toy  # registers tdmpc_ros/PointMass-v0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, checkpoint.CheckpointError, FileNotFoundError) as error:
        print(f"tdmpc-ros {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdmpc-ros {args.command}: interrupted", file=sys.stderr)
        return 130


# ---- commands -------------------------------------------------------------------------------


def pretrain(args: argparse.Namespace) -> int:
    """Offline updates on episode datasets (or random episodes of --env), then a checkpoint."""
    config = _config(args)
    out = _out_dir(args, "pretrain")
    env = _make_env(args.env, args.env_kwargs, args.variant) if args.env else None
    episodes = _datasets(args.dataset)
    if not episodes:
        if env is None or args.random_episodes <= 0:
            raise ValueError("pretrain needs --dataset DIR, or --env with --random-episodes N")
        episodes = _random_episodes(env, args.random_episodes, config, out / "dataset")
    spec = ModelSpec.from_episode(episodes[0])
    if env is not None:
        _check_compatible(spec_from_env(env), spec)
    saved = sorted((out / "checkpoints").glob("step_*.safetensors")) if args.resume else []
    history: list[dict[str, Any]] = []
    if saved:  # carry on from the run's newest checkpoint, optimiser state and all
        agent = Agent.from_checkpoint(saved[-1], overrides=_overrides(args))
        config = agent.config
        if (out / "metrics.jsonl").exists():
            history = [record for line in (out / "metrics.jsonl").read_text().splitlines()
                       if (record := json.loads(line)).get("phase") == "pretrain"
                       and record["step"] <= agent.learner.steps]
        print(f"[pretrain] resuming {out} from {saved[-1].name} "
              f"(update {agent.learner.steps})", flush=True)
    else:
        agent = Agent(config, spec)
    agent.replay.add_offline(episodes)
    _save_config(out, config, spec)
    print(f"[pretrain] {len(episodes)} episodes, {len(agent.replay.offline)} transitions, "
          f"obs {spec.obs_shapes}, action {spec.action_dim}, device {agent.device}", flush=True)
    if args.updates is not None:
        config.run.offline_updates = args.updates
    log = _Log(out / "metrics.jsonl")
    every = config.run.checkpoint_every

    def on_check(record: dict[str, float]) -> None:
        log.write({"phase": "pretrain", **record})
        step = int(record["step"])
        if every and step % every < config.run.convergence_check_every:
            agent.save(out / "checkpoints" / f"step_{step:07d}.safetensors")

    result = pretrain_until_converged(agent, episodes, progress=print, on_check=on_check,
                                      history=history)
    updates = result.updates
    final = agent.save(out / "latest.safetensors", pretrain_updates=updates,
                       value_converged=result.converged)
    plot = plot_pretraining(result.history, out / "pretraining.png")
    verdict = ("values converged" if result.converged else
               "values NOT converged at the cap: raise run.offline_updates")
    print(f"[pretrain] {updates} updates, {verdict} (Q/return on experts "
          f"{result.final.get('value_ratio', float('nan')):.2f}); wrote {final} and {plot}",
          flush=True)
    if env is not None and args.eval_episodes:
        result = evaluate(env, agent, args.eval_episodes, action_repeat=config.run.action_repeat,
                          max_steps=config.run.max_episode_steps)
        log.write({"phase": "eval", "step": updates, **result})
        print(f"[pretrain] eval {json.dumps(result)}", flush=True)
    return 0


def finetune(args: argparse.Namespace) -> int:
    """Online finetuning: plan an episode, store it, update as many times as it had steps."""
    overrides = _overrides(args)
    agent = Agent.from_checkpoint(args.checkpoint, overrides=overrides)
    config = agent.config
    out = _out_dir(args, "finetune")
    env = _make_env(args.env, args.env_kwargs, args.variant)
    _check_compatible(spec_from_env(env), agent.model.spec)
    offline = _datasets(args.dataset)
    if offline:
        agent.replay.add_offline(offline)
    _save_config(out, config, agent.model.spec)
    episodes = args.episodes if args.episodes is not None else config.run.online_episodes
    print(f"[finetune] from {args.checkpoint} (step {agent.learner.steps}), "
          f"{len(agent.replay.offline)} offline transitions, {episodes} episodes, "
          f"device {agent.device}", flush=True)
    log = _Log(out / "metrics.jsonl")
    started = time.perf_counter()
    saved_at = agent.learner.steps
    for index in range(episodes):
        agent.model.weights_version += 1
        episode = run_episode(
            env, lambda obs: agent.act(obs, explore=True)[0], f"online_{index:05d}",
            seed=config.seed + 100_000 + index, action_repeat=config.run.action_repeat,
            max_steps=config.run.max_episode_steps, on_reset=agent.reset,
            weights_version=agent.model.weights_version,
        )
        agent.replay.add_online(episode)
        save_episode(episode, out / "episodes")
        metrics: dict[str, float] = {}
        updates = int(round(episode.length * config.run.updates_per_step))
        update_start = time.perf_counter()
        for _ in range(updates):
            metrics = agent.update()
        rate = updates / max(time.perf_counter() - update_start, 1e-9)
        elapsed = time.perf_counter() - started
        eta = elapsed / (index + 1) * (episodes - index - 1)
        record = {"phase": "finetune", "episode": index + 1, "return": episode.episode_return,
                  "success": episode.succeeded, "length": episode.length, "updates": updates,
                  "updates_per_s": rate, "learner_step": agent.learner.steps, **metrics}
        log.write(record)
        print(f"[finetune] episode {index + 1}/{episodes} | return {episode.episode_return:.3f} "
              f"success {int(episode.succeeded)} | {updates} updates at {rate:.1f}/s | "
              f"ETA {_duration(eta)}", flush=True)
        every = config.run.checkpoint_every
        if every and agent.learner.steps - saved_at >= every:
            agent.save(out / "checkpoints" / f"step_{agent.learner.steps:07d}.safetensors")
            saved_at = agent.learner.steps
    final = agent.save(out / "latest.safetensors")
    print(f"[finetune] wrote {final}", flush=True)
    if args.eval_episodes:
        result = evaluate(env, agent, args.eval_episodes, action_repeat=config.run.action_repeat,
                          max_steps=config.run.max_episode_steps)
        log.write({"phase": "eval", **result})
        print(f"[finetune] eval {json.dumps(result)}", flush=True)
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """Episodes without exploration; prints one JSON object with the results."""
    agent = Agent.from_checkpoint(args.checkpoint, acting_only=True, overrides=_overrides(args))
    env = _make_env(args.env, args.env_kwargs, args.variant)
    _check_compatible(spec_from_env(env), agent.model.spec)
    config = agent.config
    episodes = args.episodes if args.episodes is not None else config.run.eval_episodes
    result = evaluate(env, agent, episodes, seed=args.seed,
                      action_repeat=config.run.action_repeat,
                      max_steps=config.run.max_episode_steps)
    print(json.dumps({"checkpoint": str(args.checkpoint), "env": args.env, **result}), flush=True)
    return 0


# ---- helpers --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdmpc-ros", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, help="YAML file of settings (nested sections)")
        sub.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="override one setting, e.g. learner.lr=1e-4")
        sub.add_argument("--device", help="cpu, cuda, cuda:N or auto (config: device)")
        sub.add_argument("--threads", type=int, help="torch CPU threads (config: threads)")
        sub.add_argument("--seed", type=int, default=None, help="seed (config: seed)")
        sub.add_argument("--env-kwargs", type=json.loads, default={},
                         help="JSON keyword arguments for gymnasium.make")
        sub.add_argument("--variant", default="",
                         help="the project's sim tasks: place cube and target as this variant "
                              "does (config/variants.yaml, or FILE.yaml:NAME); offline data "
                              "stays what --dataset holds")

    sub = commands.add_parser("pretrain", help="offline pretraining on episode datasets")
    common(sub)
    sub.add_argument("--dataset", type=Path, nargs="*", default=[], help="episode directories")
    sub.add_argument("--env", help="gymnasium id: checks the data fits it and evaluates on it")
    sub.add_argument("--random-episodes", type=int, default=0,
                     help="without --dataset: collect this many random episodes of --env")
    sub.add_argument("--updates", type=int,
                     help="most gradient updates (config: run.offline_updates); pretraining "
                          "stops earlier once the value check passes (run.convergence_*)")
    sub.add_argument("--eval-episodes", type=int, default=0, help="evaluate on --env at the end")
    sub.add_argument("--out", type=Path, help="run directory (default runs/pretrain-<time>)")
    sub.add_argument("--resume", action="store_true",
                     help="carry on from the newest checkpoint in --out (a stopped run)")
    sub.set_defaults(handler=pretrain)

    sub = commands.add_parser("finetune", help="online finetuning in a gymnasium env")
    common(sub)
    sub.add_argument("--checkpoint", type=Path, required=True)
    sub.add_argument("--env", required=True, help="gymnasium id")
    sub.add_argument("--dataset", type=Path, nargs="*", default=[],
                     help="offline episodes for balanced sampling (usually the pretraining data)")
    sub.add_argument("--episodes", type=int, help="online episodes (config: run.online_episodes)")
    sub.add_argument("--eval-episodes", type=int, default=0, help="evaluate at the end")
    sub.add_argument("--out", type=Path, help="run directory (default runs/finetune-<time>)")
    sub.set_defaults(handler=finetune)

    sub = commands.add_parser("eval", help="evaluate a checkpoint without exploration")
    common(sub)
    sub.add_argument("--checkpoint", type=Path, required=True)
    sub.add_argument("--env", required=True, help="gymnasium id")
    sub.add_argument("--episodes", type=int, help="episodes (config: run.eval_episodes)")
    sub.set_defaults(handler=evaluate_command, seed=10_000)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set key=value pairs (values parsed as YAML) plus --device/--threads/--seed."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    if args.device:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    if getattr(args, "seed", None) is not None and args.command != "eval":
        overrides["seed"] = args.seed
    return overrides


def _config(args: argparse.Namespace) -> Config:
    data: dict[str, Any] = {}
    if args.config:
        data = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings")
    for key, value in _overrides(args).items():
        set_dotted(data, key, value)
    return Config.from_dict(data)


def _out_dir(args: argparse.Namespace, command: str) -> Path:
    out = args.out or Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_config(out: Path, config: Config, spec: ModelSpec) -> None:
    text = yaml.safe_dump({**config.to_dict(), "spec": spec.to_dict()}, sort_keys=False)
    (out / "config.yaml").write_text(text)


def _make_env(env_id: str, kwargs: dict[str, Any], variant: str = "") -> gym.Env:
    if env_id.startswith("tdmpc_ros/") and env_id not in gym.registry:
        import tdmpc_ros.sim  # noqa: F401  registers the project's simulated tasks (MuJoCo)
    if variant:
        if not env_id.startswith("tdmpc_ros/XArm"):
            raise ValueError(f"--variant applies to the project's xArm tasks, not {env_id!r}")
        kwargs = {**kwargs, "variant": variant}
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as error:
        raise ValueError(f"cannot make gymnasium env {env_id!r}: {error}") from error


def _datasets(directories: Sequence[Path]) -> list[Episode]:
    episodes: list[Episode] = []
    for directory in directories:
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"dataset directory {directory} does not exist")
        found = load_episodes(directory)
        if not found:
            raise ValueError(f"dataset directory {directory} holds no episode files")
        episodes.extend(found)
    return episodes


def _random_episodes(env: gym.Env, count: int, config: Config, directory: Path) -> list[Episode]:
    rng = np.random.default_rng(config.seed)
    action_dim = spec_from_env(env).action_dim
    episodes = []
    for index in range(count):
        episode = run_episode(env, lambda obs: rng.uniform(-1, 1, action_dim),
                              f"random_{index:05d}", seed=config.seed + index,
                              action_repeat=config.run.action_repeat,
                              max_steps=config.run.max_episode_steps, source="sim")
        save_episode(episode, directory)
        episodes.append(episode)
    return episodes


def _check_compatible(env_spec: ModelSpec, data_spec: ModelSpec) -> None:
    if env_spec.action_dim != data_spec.action_dim:
        raise ValueError(f"the env has {env_spec.action_dim}-d actions, the model/data "
                         f"{data_spec.action_dim}-d")
    for key, shape in data_spec.obs_shapes.items():
        if key in env_spec.obs_shapes and env_spec.obs_shapes[key] != shape:
            raise ValueError(f"observation {key!r}: env {env_spec.obs_shapes[key]}, "
                             f"model/data {shape}")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class _Log:
    """Every record of a run, one JSON object a line (``metrics.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
