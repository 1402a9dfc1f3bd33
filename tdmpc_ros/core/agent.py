"""The pieces together: model, planner, learner and replay for one task, and episode rollouts.

The ROS nodes and the command line use this::

    agent = Agent(config, spec)                     # or Agent.from_checkpoint(path_or_bytes)
    agent.replay.add_offline(load_episodes(dir))
    metrics = agent.update()                        # one learner update on a balanced batch
    action, summary = agent.act(observation_dict)   # one plan; agent.reset() at episode start
    agent.replay.add_online(episode)                # or begin_episode/add_transition
    data = agent.to_bytes(actor_only=True)          # weights for the robot, with version+sha256
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from tdmpc_ros.core import checkpoint
from tdmpc_ros.core.config import Config
from tdmpc_ros.core.episodes import Episode
from tdmpc_ros.core.learner import Learner
from tdmpc_ros.core.planner import Planner, PlanSummary
from tdmpc_ros.core.replay import Replay
from tdmpc_ros.core.world_model import ModelSpec, WorldModel


def configure_torch(config: Config) -> None:
    """Seed Python, numpy and torch, and set torch's CPU threads when the config asks."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads > 0:
        torch.set_num_threads(config.threads)


class Agent:
    """A world model with its planner, and (unless ``acting_only``) its learner and replay."""

    def __init__(self, config: Config, spec: ModelSpec, model: WorldModel | None = None,
                 acting_only: bool = False) -> None:
        config.validate()
        configure_torch(config)
        self.config = config
        self.device = config.torch_device()
        if model is not None:
            if model.config.model != config.model:
                raise ValueError("the model was built with other model.* settings")
            model.config = config  # checkpoints written from now on carry the new settings
        self.model = (model if model is not None else WorldModel(config, spec)).to(self.device)
        self.planner = Planner(self.model, config)
        self.learner: Learner | None = None
        self.replay: Replay | None = None
        if not acting_only:
            self.learner = Learner(self.model, config)
            self.replay = Replay(config, self.model.obs_keys, self.device)

    @classmethod
    def from_checkpoint(cls, source: str | os.PathLike[str] | bytes, acting_only: bool = False,
                        overrides: Mapping[str, Any] | None = None) -> Agent:
        """Load a checkpoint (path or bytes); ``overrides`` may change anything but the model."""
        loaded = (checkpoint.from_bytes(source) if isinstance(source, (bytes, bytearray))
                  else checkpoint.load(source))
        config = loaded.config
        if overrides:
            config = config.replace(**dict(overrides))
            if config.model != loaded.config.model:
                raise ValueError("overrides may not change the model architecture (model.*)")
        agent = cls(config, loaded.spec, model=loaded.model, acting_only=acting_only)
        if agent.learner is not None and loaded.learner_state:
            agent.learner.load_state_tensors(loaded.learner_state)
        return agent

    # ---- acting ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Call at the start of every episode (drops the planner's warm start)."""
        self.planner.reset()

    def act(self, observation: Mapping[str, np.ndarray], explore: bool = False
            ) -> tuple[np.ndarray, PlanSummary]:
        """Plan one step from an observation dict; returns the action in [-1, 1] and a summary."""
        return self.planner.plan(observation, explore=explore)

    # ---- learning -------------------------------------------------------------------------

    def update(self) -> dict[str, float]:
        """One learner update on a balanced batch; priorities are written back."""
        if self.learner is None or self.replay is None:
            raise RuntimeError("this agent was built acting_only")
        batch = self.replay.sample()
        result = self.learner.update(batch)
        self.replay.update_priorities(batch, result.priorities)
        return result.metrics

    # ---- weights --------------------------------------------------------------------------

    def to_bytes(self, actor_only: bool = False, **extra: Any) -> bytes:
        return checkpoint.to_bytes(self.model, learner=None if actor_only else self.learner,
                                   actor_only=actor_only, extra=extra)

    def save(self, path: str | os.PathLike[str], **extra: Any) -> Path:
        return checkpoint.save(path, self.model, learner=self.learner, extra=extra)

    def load_weights(self, data: bytes) -> dict[str, Any]:
        """Replace the weights in place from checkpoint bytes (the planner follows)."""
        return checkpoint.load_weights_into(self.model, data)


# ---- environments ---------------------------------------------------------------------------


def spec_from_env(env: gym.Env) -> ModelSpec:
    """Observation shapes and action size of a gymnasium env (Box or the project's Dict)."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict):
        shapes = {key: tuple(sub.shape) for key, sub in space.spaces.items()}
    elif isinstance(space, gym.spaces.Box):
        shapes = {"state": (int(np.prod(space.shape)),)}
    else:
        raise ValueError(f"observation space {space} is neither Box nor Dict")
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"action space {env.action_space} is not continuous (Box)")
    return ModelSpec(shapes, int(np.prod(env.action_space.shape)))


def to_env_action(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Map an action in [-1, 1] to the env's bounds (unchanged where a bound is infinite)."""
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    scaled = low + (action.astype(np.float64) + 1.0) * 0.5 * (high - low)
    finite = np.isfinite(low) & np.isfinite(high)
    out = np.where(finite, scaled, action)
    return out.reshape(space.shape).astype(space.dtype)


def observation_dict(observation: Any) -> dict[str, np.ndarray]:
    """The project's observation dict: dict observations pass through, a Box observation
    becomes a flat float32 ``state``."""
    if isinstance(observation, dict):
        out = {key: np.asarray(value) for key, value in observation.items()}
    else:
        out = {"state": np.asarray(observation, np.float32)}
    if "state" in out and out["state"].ndim != 1:
        out["state"] = out["state"].reshape(-1).astype(np.float32)
    return out


def run_episode(env: gym.Env, act: Callable[[dict[str, np.ndarray]], np.ndarray],
                episode_id: str, *, seed: int | None = None, action_repeat: int = 1,
                max_steps: int = 0, task: str = "gym", source: str = "sim",
                weights_version: int = -1, on_reset: Callable[[], None] | None = None,
                ) -> Episode:
    """Run one episode with ``act`` (observation dict -> action in [-1, 1]) as an Episode.

    Each action is repeated ``action_repeat`` times (rewards summed); ``max_steps`` > 0
    truncates after that many agent steps.
    """
    if on_reset is not None:
        on_reset()
    observation, info = env.reset(seed=seed)
    observation = observation_dict(observation)
    observations = {key: [value] for key, value in observation.items()}
    actions, rewards, successes = [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = np.clip(np.asarray(act(observation), np.float32), -1.0, 1.0)
        env_action = to_env_action(action, env.action_space)
        reward = 0.0
        for _ in range(action_repeat):
            observation, step_reward, terminated, truncated, info = env.step(env_action)
            reward += float(step_reward)
            if terminated or truncated:
                break
        observation = observation_dict(observation)
        if max_steps and len(actions) + 1 >= max_steps:
            truncated = truncated or not terminated
        for key, value in observation.items():
            observations[key].append(value)
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info.get("success", info.get("is_success", False))))
    end = np.zeros(len(actions), bool)
    end[-1] = True
    return Episode(
        observations={key: np.stack(values) for key, values in observations.items()},
        actions=np.stack(actions), rewards=np.asarray(rewards, np.float32),
        terminated=end & bool(terminated), truncated=end & (not terminated),
        success=np.asarray(successes), episode_id=episode_id, task=task, source=source,
        weights_version=np.full(len(actions), weights_version, np.int64),
    )


def evaluate(env: gym.Env, agent: Agent, episodes: int, seed: int = 10_000,
             action_repeat: int = 1, max_steps: int = 0) -> dict[str, float]:
    """Mean return, success rate and plan time of ``episodes`` episodes without exploration."""
    returns, successes, lengths, plan_ms = [], [], [], []

    def act(observation: dict[str, np.ndarray]) -> np.ndarray:
        action, summary = agent.act(observation, explore=False)
        plan_ms.append(summary.plan_ms)
        return action

    for index in range(episodes):
        episode = run_episode(env, act, f"eval_{index:04d}", seed=seed + index,
                              action_repeat=action_repeat, max_steps=max_steps,
                              on_reset=agent.reset)
        returns.append(episode.episode_return)
        successes.append(float(episode.succeeded))
        lengths.append(episode.length)
    return {
        "return": float(np.mean(returns)), "success": float(np.mean(successes)),
        "length": float(np.mean(lengths)), "plan_ms": float(np.median(plan_ms)),
        "episodes": episodes,
    }
