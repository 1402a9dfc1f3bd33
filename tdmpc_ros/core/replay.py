"""Replay: an offline and an online buffer of whole episodes, and the balanced sampler.

Each buffer keeps its episodes in a few contiguous arrays: observations once per time step
(images as uint8, never copied per sub-trajectory), actions, rewards and flags once per
transition. A sampled sub-trajectory starts at any transition and reads ``horizon`` steps of
the same episode; steps past the episode's end are padded by repeating its last observation
and carry ``valid == 0`` so no loss ever sees them, and nothing from another episode is read.

``Replay.sample`` draws half of every batch (``replay.offline_fraction``) from each buffer,
each half by its own priorities when prioritised replay is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.episodes import Episode


@dataclass
class Batch:
    """B sub-trajectories of H steps, time first, as tensors on the learner's device."""

    obs: dict[str, Tensor]
    """Observations o_t..o_{t+H}: (H + 1, B, ...) in their stored dtype (pixels uint8 HWC)."""
    action: Tensor
    """(H, B, A) float32."""
    reward: Tensor
    """(H, B) float32."""
    terminated: Tensor
    """(H, B) float32: 1 where the step ended the episode by a true termination."""
    valid: Tensor
    """(H, B) float32: 1 for steps inside the episode, 0 for padding after its end."""
    weight: Tensor
    """(B,) importance-sampling weights (all 1 without prioritised replay)."""
    source: np.ndarray
    """(B,) 0 where the row came from the offline buffer, 1 from the online one."""
    index: np.ndarray
    """(B,) the start transition's index in its buffer (for priority updates)."""

    @property
    def horizon(self) -> int:
        return int(self.action.shape[0])

    @property
    def size(self) -> int:
        return int(self.action.shape[1])


class EpisodeBuffer:
    """Episodes in contiguous, growing arrays; appendable by episode or by transition."""

    def __init__(self, obs_keys: Sequence[str], horizon: int, capacity: int | None = None,
                 prioritized: bool = False, alpha: float = 0.6, priority_eps: float = 1e-4,
                 action_clip_eps: float = 1e-5, name: str = "buffer") -> None:
        self.obs_keys = tuple(obs_keys)
        self.horizon = horizon
        self.capacity = capacity
        self.prioritized = prioritized
        self.alpha = alpha
        self.priority_eps = priority_eps
        self.action_limit = 1.0 - action_clip_eps
        self.name = name
        self._obs: dict[str, np.ndarray] = {}
        self._rows = 0  # observation rows in use
        self._steps = 0  # transitions in use
        self._action = np.zeros((0, 0), np.float32)
        self._reward = np.zeros(0, np.float32)
        self._terminated = np.zeros(0, bool)
        self._obs_row = np.zeros(0, np.int64)  # row of o_t for transition t
        self._episode = np.zeros(0, np.int64)  # episode number of transition t
        self._priority = np.zeros(0, np.float64)
        self._episode_end: list[int] = []  # one past the last transition of each episode
        self._episode_first_row: list[int] = []
        self._open = False  # an episode is being appended transition by transition
        self._max_priority = 1.0
        self.episodes_added = 0

    # ---- sizes ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Transitions stored."""
        return self._steps

    @property
    def num_episodes(self) -> int:
        return len(self._episode_end)

    def storage_bytes(self) -> dict[str, int]:
        """Bytes of the stored observations per key (in use, not reserved)."""
        return {key: int(array[: self._rows].nbytes) for key, array in self._obs.items()}

    def observation(self, key: str) -> np.ndarray:
        """The stored observation rows of ``key`` (a view, not a copy)."""
        return self._obs[key][: self._rows]

    # ---- adding ---------------------------------------------------------------------------

    def add_episode(self, episode: Episode) -> None:
        """Append a whole episode (validated by ``episodes.Episode``)."""
        if self._open:
            raise RuntimeError(f"{self.name}: finish the open episode before adding another")
        observations = self._pick(episode.observations, episode.episode_id)
        steps = episode.length
        self._make_room(steps, steps + 1, observations, episode.actions.shape[1])
        row, step = self._rows, self._steps
        for key, value in observations.items():
            self._obs[key][row : row + steps + 1] = value
        self._action[step : step + steps] = np.clip(
            episode.actions, -self.action_limit, self.action_limit
        )
        self._reward[step : step + steps] = episode.rewards
        self._terminated[step : step + steps] = episode.terminated
        self._obs_row[step : step + steps] = row + np.arange(steps)
        self._episode[step : step + steps] = len(self._episode_end)
        self._priority[step : step + steps] = self._max_priority
        self._episode_end.append(step + steps)
        self._episode_first_row.append(row)
        self._rows += steps + 1
        self._steps += steps
        self.episodes_added += 1

    def begin_episode(self, observation: Mapping[str, np.ndarray]) -> None:
        """Start an episode from its first observation; then ``add_transition`` per step."""
        if self._open:
            raise RuntimeError(f"{self.name}: an episode is already open")
        observations = self._pick({k: np.asarray(v)[None] for k, v in observation.items()}, "new")
        self._make_room(0, 1, observations, None)
        for key, value in observations.items():
            self._obs[key][self._rows] = value[0]
        self._episode_first_row.append(self._rows)
        self._episode_end.append(self._steps)
        self._rows += 1
        self._open = True

    def add_transition(self, action: np.ndarray, reward: float,
                       next_observation: Mapping[str, np.ndarray],
                       terminated: bool = False, truncated: bool = False) -> None:
        """Append one step of the open episode; it is sampleable at once."""
        if not self._open:
            raise RuntimeError(f"{self.name}: call begin_episode first")
        action = np.asarray(action, np.float32).reshape(-1)
        if not np.isfinite(action).all() or not np.isfinite(reward):
            raise ValueError(f"{self.name}: action or reward is not finite")
        observations = self._pick(
            {k: np.asarray(v)[None] for k, v in next_observation.items()}, "transition"
        )
        self._make_room(1, 1, observations, action.shape[0])
        step = self._steps
        for key, value in observations.items():
            self._obs[key][self._rows] = value[0]
        self._action[step] = np.clip(action, -self.action_limit, self.action_limit)
        self._reward[step] = reward
        self._terminated[step] = terminated
        self._obs_row[step] = self._rows - 1
        self._episode[step] = len(self._episode_end) - 1
        self._priority[step] = self._max_priority
        self._episode_end[-1] = step + 1
        self._rows += 1
        self._steps += 1
        if terminated or truncated:
            self._open = False
            self.episodes_added += 1

    def end_episode(self) -> None:
        """Close the open episode without a final flag (e.g. the robot was stopped)."""
        if self._open:
            self._open = False
            self.episodes_added += 1

    # ---- sampling -------------------------------------------------------------------------

    def sample_indices(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Start transitions and their sampling probabilities."""
        if self._steps == 0:
            raise RuntimeError(f"{self.name} is empty")
        if not self.prioritized:
            index = rng.integers(0, self._steps, size=count)
            return index, np.full(count, 1.0 / self._steps)
        weights = self._priority[: self._steps] ** self.alpha
        cumulative = np.cumsum(weights)
        total = cumulative[-1]
        index = np.searchsorted(cumulative, rng.random(count) * total, side="right")
        index = np.minimum(index, self._steps - 1)
        return index, weights[index] / total

    def gather(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Sub-trajectories starting at transitions ``index``, time first, as numpy arrays."""
        horizon = self.horizon
        steps = np.arange(horizon)
        end = np.asarray(self._episode_end, np.int64)[self._episode[index]]
        length = end - index  # transitions left in the episode from the start, >= 1
        valid = steps[:, None] < length[None, :]  # (H, B)
        offset = np.minimum(np.arange(horizon + 1)[:, None], length[None, :])  # (H + 1, B)
        rows = self._obs_row[index][None, :] + offset
        step_index = index[None, :] + np.minimum(steps[:, None], length[None, :] - 1)
        out = {f"obs/{key}": self._obs[key][rows] for key in self.obs_keys}
        out["action"] = self._action[step_index]
        out["reward"] = np.where(valid, self._reward[step_index], 0.0).astype(np.float32)
        out["terminated"] = (valid & self._terminated[step_index]).astype(np.float32)
        out["valid"] = valid.astype(np.float32)
        return out

    def update_priorities(self, index: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.asarray(priorities, np.float64) + self.priority_eps
        self._priority[index] = priorities
        self._max_priority = max(self._max_priority, float(priorities.max(initial=0.0)))

    # ---- storage --------------------------------------------------------------------------

    def _pick(self, observations: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        missing = [key for key in self.obs_keys if key not in observations]
        if missing:
            raise ValueError(
                f"{self.name}: {what} lacks observation {missing[0]!r} "
                f"(has {sorted(observations)}, the model reads {list(self.obs_keys)})"
            )
        picked = {key: np.asarray(observations[key]) for key in self.obs_keys}
        for key, value in picked.items():
            if key in self._obs and value.shape[1:] != self._obs[key].shape[1:]:
                raise ValueError(
                    f"{self.name}: observation {key!r} has shape {value.shape[1:]}, "
                    f"the buffer holds {self._obs[key].shape[1:]}"
                )
        return picked

    def _make_room(self, new_steps: int, new_rows: int, observations: Mapping[str, np.ndarray],
                   action_dim: int | None) -> None:
        if not self._obs:  # first data: allocate with this data's shapes and dtypes
            for key, value in observations.items():
                dtype = np.uint8 if value.dtype == np.uint8 else np.float32
                self._obs[key] = np.empty((0, *value.shape[1:]), dtype)
        if action_dim is not None and self._action.shape[1] != action_dim:
            if self._steps:
                raise ValueError(
                    f"{self.name}: actions have {action_dim} dimensions, "
                    f"the buffer holds {self._action.shape[1]}"
                )
            self._action = np.zeros((0, action_dim), np.float32)
        if self.capacity is not None and not self._open:
            while self._episode_end and self._steps + new_steps > self.capacity:
                self._evict_oldest(max(new_steps, self.capacity // 10))
        self._grow_steps(self._steps + new_steps)
        self._grow_rows(self._rows + new_rows)

    def _grow_steps(self, needed: int) -> None:
        if needed <= self._reward.shape[0]:
            return
        size = max(needed, 2 * self._reward.shape[0], 1024)
        self._action = _resized(self._action, size)
        self._reward = _resized(self._reward, size)
        self._terminated = _resized(self._terminated, size)
        self._obs_row = _resized(self._obs_row, size)
        self._episode = _resized(self._episode, size)
        self._priority = _resized(self._priority, size)

    def _grow_rows(self, needed: int) -> None:
        for key, array in self._obs.items():
            if needed > array.shape[0]:
                self._obs[key] = _resized(array, max(needed, 2 * array.shape[0], 1024))

    def _evict_oldest(self, at_least: int) -> None:
        """Drop whole episodes from the front until ``at_least`` transitions are free."""
        ends = np.asarray(self._episode_end)
        drop = int(np.searchsorted(ends, min(at_least, self._steps), side="left")) + 1
        drop = min(drop, len(ends))
        step_cut = int(ends[drop - 1])
        row_cut = self._episode_first_row[drop] if drop < len(ends) else self._rows
        keep_steps, keep_rows = self._steps - step_cut, self._rows - row_cut
        for array in self._obs.values():
            array[:keep_rows] = array[row_cut : self._rows]
        for name in ("_action", "_reward", "_terminated", "_obs_row", "_episode", "_priority"):
            array = getattr(self, name)
            array[:keep_steps] = array[step_cut : self._steps]
        self._obs_row[:keep_steps] -= row_cut
        self._episode[:keep_steps] -= drop
        self._episode_end = [end - step_cut for end in self._episode_end[drop:]]
        self._episode_first_row = [row - row_cut for row in self._episode_first_row[drop:]]
        self._steps, self._rows = keep_steps, keep_rows


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, *array.shape[1:]), array.dtype)
    out[: array.shape[0]] = array
    return out


class Replay:
    """The offline and the online buffer, and balanced (optionally prioritised) batches."""

    def __init__(self, config: Config, obs_keys: Sequence[str],
                 device: torch.device | str = "cpu") -> None:
        r = config.replay
        self.config = config
        self.device = torch.device(device)
        self.rng = np.random.default_rng(config.seed)
        common = {
            "obs_keys": obs_keys, "horizon": config.horizon, "prioritized": r.prioritized,
            "alpha": r.alpha, "priority_eps": r.priority_eps,
            "action_clip_eps": config.learner.action_clip_eps,
        }
        self.offline = EpisodeBuffer(capacity=None, name="offline buffer", **common)
        self.online = EpisodeBuffer(capacity=r.online_capacity, name="online buffer", **common)

    def __len__(self) -> int:
        return len(self.offline) + len(self.online)

    def add_offline(self, episodes: Episode | Sequence[Episode]) -> None:
        for episode in [episodes] if isinstance(episodes, Episode) else episodes:
            self.offline.add_episode(episode)

    def add_online(self, episodes: Episode | Sequence[Episode]) -> None:
        for episode in [episodes] if isinstance(episodes, Episode) else episodes:
            self.online.add_episode(episode)

    def split(self, batch_size: int) -> tuple[int, int]:
        """Rows of a batch from (offline, online): the configured share once both have data."""
        if len(self.offline) == 0:
            return 0, batch_size
        if len(self.online) == 0:
            return batch_size, 0
        offline = int(round(batch_size * self.config.replay.offline_fraction))
        return offline, batch_size - offline

    def sample(self, batch_size: int | None = None) -> Batch:
        """A balanced batch of sub-trajectories of ``horizon`` steps."""
        batch_size = batch_size or self.config.learner.batch_size
        if len(self) == 0:
            raise RuntimeError("replay is empty: add offline or online episodes first")
        parts, probabilities, sources, indices = [], [], [], []
        buffers = (self.offline, self.online)
        for source, (buffer, count) in enumerate(zip(buffers, self.split(batch_size),
                                                     strict=True)):
            if count == 0:
                continue
            index, probability = buffer.sample_indices(count, self.rng)
            parts.append(buffer.gather(index))
            # N * P(i): 1 for uniform sampling, so weights are 1 without priorities
            probabilities.append(probability * len(buffer))
            sources.append(np.full(count, source, np.int64))
            indices.append(index)
        arrays = {key: np.concatenate([p[key] for p in parts], axis=1) for key in parts[0]}
        scaled = np.concatenate(probabilities)
        if self.config.replay.prioritized:
            weight = scaled ** -self.config.replay.beta
            weight = (weight / weight.max()).astype(np.float32)
        else:
            weight = np.ones(batch_size, np.float32)
        return Batch(
            obs={key[4:]: self._tensor(value) for key, value in arrays.items()
                 if key.startswith("obs/")},
            action=self._tensor(arrays["action"]),
            reward=self._tensor(arrays["reward"]),
            terminated=self._tensor(arrays["terminated"]),
            valid=self._tensor(arrays["valid"]),
            weight=self._tensor(weight),
            source=np.concatenate(sources),
            index=np.concatenate(indices),
        )

    def update_priorities(self, batch: Batch, priorities: np.ndarray) -> None:
        """New priorities (B,) for the rows of ``batch`` (from ``Learner.update``)."""
        if not self.config.replay.prioritized:
            return
        for source, buffer in enumerate((self.offline, self.online)):
            rows = batch.source == source
            if rows.any():
                buffer.update_priorities(batch.index[rows], priorities[rows])

    def _tensor(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor
