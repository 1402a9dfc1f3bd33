"""Offline datasets from the scripted experts, one episode file per episode.

    python -m tdmpc_ros.sim.datasets --task reach --out data/reach --seed 0 \
        [--episodes 120] [--pixels] [--quiet]

Episode ``i`` of a dataset depends only on (task, seed, i, pixels): its environment seed and
its expert's random numbers come from ``numpy.random.SeedSequence([seed, i])``. So the same
command writes the same arrays, and a run that was interrupted resumes by skipping the episode
files already there (files are written atomically, so a file that exists is whole).
Default sizes follow the paper: reach 120 trajectories, lift 200, and push 200 like lift.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tdmpc_ros.core.episodes import Episode, EpisodeFormatError, load_episode, save_episode
from tdmpc_ros.sim.env import IMAGE_SIZE, XArmTaskEnv
from tdmpc_ros.sim.experts import draw_skill, make_expert
from tdmpc_ros.tasks import TASKS

DEFAULT_EPISODES = {"reach": 120, "push": 200, "lift": 200}
"""Trajectories per dataset when --episodes is not given."""


def episode_id(task: str, seed: int, index: int) -> str:
    return f"{task}-seed{seed}-{index:05d}"


def record_episode(env: XArmTaskEnv, seed: int, index: int) -> Episode:
    """Play one scripted episode of ``env``'s task and return it (source ``scripted``)."""
    spec = env.task_spec
    sequence = np.random.SeedSequence([seed, index])
    env_seed = int(sequence.generate_state(1)[0])
    rng = np.random.default_rng(sequence.spawn(1)[0])
    skill = draw_skill(spec.name, rng)
    expert = make_expert(spec, skill, rng)
    observation, _ = env.reset(seed=env_seed)
    observations = {key: [value] for key, value in observation.items()}
    actions, rewards, successes = [], [], []
    for _ in range(spec.episode_length):
        action = expert.act(**env.positions())
        observation, reward, terminated, truncated, info = env.step(action)
        for key, value in observation.items():
            observations[key].append(value)
        actions.append(action)
        rewards.append(reward)
        successes.append(info["success"])
        if terminated or truncated:
            break
    steps = len(actions)
    truncated_flags = np.zeros(steps, dtype=bool)
    truncated_flags[-1] = True  # every episode ends by the time limit
    return Episode(
        observations={key: np.stack(values) for key, values in observations.items()},
        actions=np.stack(actions),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminated=np.zeros(steps, dtype=bool),
        truncated=truncated_flags,
        success=np.asarray(successes, dtype=bool),
        episode_id=episode_id(spec.name, seed, index),
        task=spec.name,
        source="scripted",
        extras={
            "dataset_seed": seed,
            "index": index,
            "env_seed": env_seed,
            "skill": skill.name,
            "expert": type(expert).__name__,
        },
    )


def generate_dataset(
    task: str,
    out: str | Path,
    episodes: int | None = None,
    seed: int = 0,
    pixels: bool = False,
    progress: Callable[[str], None] | None = None,
    variant: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> dict[str, object]:
    """Write episodes 0..episodes-1 of ``task`` to ``out``, skipping those already written.

    ``variant`` (``tasks.with_variant``) places the cube and target as that variant does; the
    offline data for pretraining comes from the training distribution (no variant), a variant's
    scripted episodes serve as held-out data off that distribution. ``image_size``: the side of
    the square camera frames when ``pixels`` (the model's ``model.image_size``).

    Returns a summary: counts written and skipped, and the success rate over all episodes.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    episodes = DEFAULT_EPISODES[task] if episodes is None else episodes
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    out = Path(out)
    env: XArmTaskEnv | None = None
    written = skipped = successes = 0
    by_skill: dict[str, list[int]] = {}
    started = time.monotonic()
    try:
        for index in range(episodes):
            path = out / f"{episode_id(task, seed, index)}.npz"
            episode = None
            if path.exists():
                try:
                    episode = load_episode(path)
                    skipped += 1
                except EpisodeFormatError:
                    episode = None  # unreadable: write it again
            if episode is None:
                if env is None:
                    env = XArmTaskEnv(task, render_pixels=pixels, variant=variant,
                                      image_size=image_size)
                episode = record_episode(env, seed, index)
                save_episode(episode, out)
                written += 1
            successes += episode.succeeded
            counts = by_skill.setdefault(str(episode.extras.get("skill")), [0, 0])
            counts[0] += episode.succeeded
            counts[1] += 1
            if progress is not None:
                progress(
                    f"[{index + 1}/{episodes}] {episode.episode_id} "
                    f"skill={episode.extras.get('skill')} success={episode.succeeded} "
                    f"return={episode.episode_return:.2f}"
                )
    finally:
        if env is not None:
            env.close()
    return {
        "task": task,
        "out": str(out),
        "episodes": episodes,
        "written": written,
        "skipped": skipped,
        "success_rate": successes / episodes,
        "success_by_skill": {name: f"{won}/{total}" for name, (won, total) in by_skill.items()},
        "pixels": pixels,
        "variant": variant or "",
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate an offline dataset of scripted xArm episodes (mixed quality)."
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument(
        "--episodes", type=int, default=None,
        help=f"number of episodes (default per task: {DEFAULT_EPISODES})",
    )
    parser.add_argument("--out", required=True, help="directory for the episode files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixels", action="store_true", help="also record RGB camera frames")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                        help=f"side of the square frames with --pixels (default {IMAGE_SIZE}, "
                             "as in the paper; the model's model.image_size)")
    parser.add_argument("--quiet", action="store_true", help="no per-episode progress lines")
    parser.add_argument("--variant", default="",
                        help="place cube and target as this variant does (config/variants.yaml); "
                             "default: the training distribution")
    args = parser.parse_args(argv)

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    summary = generate_dataset(
        args.task, args.out, args.episodes, args.seed, args.pixels,
        progress=None if args.quiet else report, variant=args.variant or None,
        image_size=args.image_size,
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
