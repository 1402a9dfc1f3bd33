"""A point mass that must reach a goal: a fast gymnasium task for tests and experiments.

State (8,): position (2), velocity (2), goal (2) and wind (2), all in [-1, 1]. Action (2,) in
[-1, 1] accelerates the mass; velocity is damped; the wind moves the mass by a constant offset
every step; position is clipped to the arena. Reward is the negative distance to the goal
after the step; reaching within ``goal_radius`` terminates the episode with success, otherwise
it is truncated after ``max_steps``. Goals are drawn from the box ``goal_low``..``goal_high``.

A dataset made without wind and a finetuning phase with wind is a small version of the paper's
setting: the wind is seen in the state but its effect was never in the data, so a pretrained
model cannot know it and must learn it online. With ``observation="dict"`` the observation is
the project's dict: ``state`` (8,), ``proprio`` (position and velocity, 4,) and ``pixels``
(84, 84, 3) uint8, a top view.

``expert_action`` is a scripted controller for making offline datasets (add noise to it).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from tdmpc_ros.core.episodes import Episode

ENV_ID = "tdmpc_ros/PointMass-v0"


class PointMassEnv(gym.Env):
    """A damped 2-D point mass reaching a random goal."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, observation: str = "state", max_steps: int = 25, goal_radius: float = 0.1,
                 damping: float = 0.5, step_size: float = 0.15, image_size: int = 84,
                 goal_low: tuple[float, float] = (-0.8, -0.8),
                 goal_high: tuple[float, float] = (0.8, 0.8),
                 wind: tuple[float, float] = (0.0, 0.0),
                 render_mode: str | None = "rgb_array") -> None:
        if observation not in ("state", "dict"):
            raise ValueError(f"observation must be 'state' or 'dict', got {observation!r}")
        self.observation_kind = observation
        self.max_steps = max_steps
        self.goal_radius = goal_radius
        self.damping = damping
        self.step_size = step_size
        self.image_size = image_size
        self.goal_low = np.asarray(goal_low, np.float32)
        self.goal_high = np.asarray(goal_high, np.float32)
        self.wind = np.asarray(wind, np.float32)
        self.render_mode = render_mode
        state_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
        if observation == "state":
            self.observation_space = state_space
        else:
            self.observation_space = gym.spaces.Dict({
                "state": state_space,
                "proprio": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
                "pixels": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        grid = (np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0
        self._grid_x, self._grid_y = np.meshgrid(grid, -grid)  # image rows go down, y goes up
        self.position = np.zeros(2, np.float32)
        self.velocity = np.zeros(2, np.float32)
        self.goal = np.zeros(2, np.float32)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-0.9, 0.9, 2).astype(np.float32)
        self.goal = self.np_random.uniform(self.goal_low, self.goal_high).astype(np.float32)
        while np.linalg.norm(self.goal - self.position) < 0.4:
            self.goal = self.np_random.uniform(self.goal_low, self.goal_high).astype(np.float32)
        self.velocity[:] = 0.0
        self.steps = 0
        return self._observation(), {"success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32).reshape(2), -1.0, 1.0)
        self.velocity = np.clip(self.damping * self.velocity + action, -1.0, 1.0).astype(np.float32)
        moved = self.position + self.step_size * self.velocity + self.wind
        self.position = np.clip(moved, -1.0, 1.0)
        self.position = self.position.astype(np.float32)
        self.steps += 1
        distance = float(np.linalg.norm(self.goal - self.position))
        success = distance < self.goal_radius
        truncated = not success and self.steps >= self.max_steps
        return self._observation(), -distance, success, truncated, {"success": success}

    def state(self) -> np.ndarray:
        parts = [self.position, self.velocity, self.goal, self.wind]
        return np.concatenate(parts).astype(np.float32)

    def render(self) -> np.ndarray:
        image = np.full((self.image_size, self.image_size, 3), 40, np.uint8)
        for centre, colour, radius in ((self.goal, (40, 200, 60), 0.12),
                                       (self.position, (230, 60, 40), 0.08)):
            mask = (self._grid_x - centre[0]) ** 2 + (self._grid_y - centre[1]) ** 2 < radius**2
            image[mask] = colour
        return image

    def _observation(self):
        state = self.state()
        if self.observation_kind == "state":
            return state
        return {"state": state, "proprio": state[:4].copy(), "pixels": self.render()}


def expert_action(state: np.ndarray, max_action: float = 1.0, damping: float = 0.5,
                  step_size: float = 0.15) -> np.ndarray:
    """A controller towards the goal with actions limited to ``max_action`` per axis."""
    position, velocity, goal, wind = state[:2], state[2:4], state[4:6], state[6:8]
    wanted = (goal - position - wind) / step_size - damping * velocity  # lands on the goal
    return np.clip(wanted, -max_action, max_action).astype(np.float32)


def collect_episode(env: gym.Env, policy: Callable[[dict[str, np.ndarray]], np.ndarray],
                    episode_id: str, seed: int | None = None, task: str = "point_mass",
                    source: str = "scripted") -> Episode:
    """Run one episode of ``policy`` (observation dict -> action) in ``env``."""
    from tdmpc_ros.core.agent import run_episode  # the agent's own loop; it imports torch

    return run_episode(env, policy, episode_id, seed=seed, task=task, source=source)


def noisy_expert_dataset(num_episodes: int, noise: float, seed: int = 0,
                         observation: str = "state", random_share: float = 0.0,
                         max_action: float = 1.0, **env_kwargs) -> list[Episode]:
    """Episodes of the expert (actions up to ``max_action``) with Gaussian action noise;
    ``random_share`` of them with uniformly random actions instead."""
    env = PointMassEnv(observation=observation, **env_kwargs)
    rng = np.random.default_rng(seed)
    episodes = []
    for index in range(num_episodes):
        if rng.random() < random_share:
            def policy(obs):
                return rng.uniform(-1.0, 1.0, 2)
        else:
            def policy(obs):
                action = expert_action(obs["state"], max_action, env.damping, env.step_size)
                return action + noise * rng.standard_normal(2)
        episodes.append(collect_episode(env, policy, f"pm_{seed}_{index:05d}", seed=seed + index))
    return episodes


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=PointMassEnv)
