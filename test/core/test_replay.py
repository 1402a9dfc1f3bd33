"""Replay: sub-trajectories inside one episode, balanced batches, images stored once, PER."""

from __future__ import annotations

import numpy as np
import pytest

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.episodes import Episode
from tdmpc_ros.core.replay import EpisodeBuffer, Replay


def make_episode(index: int, steps: int, pixels: bool = False, terminated: bool = False,
                 action_dim: int = 2) -> Episode:
    """state[:, 0] = episode index, state[:, 1] = time step: every row says where it is from."""
    time = np.arange(steps + 1, dtype=np.float32)
    observations = {"state": np.stack([np.full(steps + 1, index, np.float32), time], 1)}
    if pixels:
        images = np.zeros((steps + 1, 84, 84, 3), np.uint8)
        images[:, 0, 0, 0] = index
        images[:, 0, 0, 1] = np.arange(steps + 1)
        observations["pixels"] = images
    end = np.zeros(steps, bool)
    end[-1] = True
    return Episode(
        observations=observations,
        actions=np.tile(np.linspace(-1, 1, steps, dtype=np.float32)[:, None], (1, action_dim)),
        rewards=index * 100.0 + np.arange(steps, dtype=np.float32),
        terminated=end & terminated, truncated=end & (not terminated),
        success=np.zeros(steps, bool), episode_id=f"ep{index}", task="test",
    )


def config(**overrides) -> Config:
    base = {"device": "cpu", "seed": 0, "replay.prioritized": False}
    base.update(overrides)
    return Config().replace(**base)


def test_sub_trajectories_never_cross_an_episode_boundary() -> None:
    replay = Replay(config(), ["state"])
    lengths = [3, 7, 1, 12, 5]
    replay.add_offline([make_episode(i, n, terminated=i % 2 == 0) for i, n in enumerate(lengths)])
    batch = replay.sample(2000)
    state = batch.obs["state"].numpy()  # (H + 1, B, 2)
    valid = batch.valid.numpy()
    episode = state[0, :, 0].astype(int)
    start = state[0, :, 1].astype(int)
    assert set(episode) == set(range(5))  # every episode is sampled, the 1-step one too
    for t in range(6):
        assert np.array_equal(state[t, :, 0], state[0, :, 0])  # the same episode all along
        remaining = np.asarray(lengths)[episode] - start  # transitions left from the start
        expected_time = start + np.minimum(t, remaining)  # padding repeats the last observation
        assert np.array_equal(state[t, :, 1], expected_time)
    for t in range(5):
        inside = t < np.asarray(lengths)[episode] - start
        assert np.array_equal(valid[t] == 1.0, inside)
        rewards = batch.reward.numpy()[t]
        assert np.array_equal(rewards[inside], episode[inside] * 100.0 + start[inside] + t)
        assert np.all(rewards[~inside] == 0.0)
    # terminated only on the last step of terminated episodes, and only where valid
    terminated = batch.terminated.numpy()
    last = (start + np.arange(5)[:, None]) == np.asarray(lengths)[episode] - 1
    assert np.array_equal(terminated == 1.0, last & (episode % 2 == 0))


def test_balanced_sampling_shares() -> None:
    replay = Replay(config(), ["state"])
    replay.add_offline([make_episode(i, 20) for i in range(10)])
    assert replay.split(256) == (256, 0)  # no online data yet: all offline
    replay.add_online(make_episode(100, 5))
    batch = replay.sample(256)
    assert (batch.source == 0).sum() == 128 and (batch.source == 1).sum() == 128
    online_rows = batch.obs["state"].numpy()[0, batch.source == 1, 0]
    assert np.all(online_rows == 100)  # the online half is only the online episode
    quarter = Replay(config(**{"replay.offline_fraction": 0.25}), ["state"])
    quarter.add_offline(make_episode(0, 10))
    quarter.add_online(make_episode(1, 10))
    assert np.sum(quarter.sample(200).source == 0) == 50
    only_online = Replay(config(), ["state"])
    only_online.add_online(make_episode(2, 10))
    assert np.all(only_online.sample(64).source == 1)


def test_images_are_stored_once_as_uint8() -> None:
    buffer = EpisodeBuffer(["state", "pixels"], horizon=5, name="test")
    for i in range(4):
        buffer.add_episode(make_episode(i, 30, pixels=True))
    rows = 4 * 31
    assert buffer.observation("pixels").dtype == np.uint8
    assert buffer.storage_bytes()["pixels"] == rows * 84 * 84 * 3  # once per time step
    index, _ = buffer.sample_indices(64, np.random.default_rng(0))
    out = buffer.gather(index)
    assert out["obs/pixels"].dtype == np.uint8 and out["obs/pixels"].shape == (6, 64, 84, 84, 3)
    np.testing.assert_array_equal(out["obs/pixels"][:, :, 0, 0, 0], out["obs/state"][:, :, 0])
    np.testing.assert_array_equal(out["obs/pixels"][:, :, 0, 0, 1], out["obs/state"][:, :, 1])


def test_transitions_appended_online_are_sampleable_at_once() -> None:
    replay = Replay(config(), ["state"])
    episode = make_episode(7, 4, terminated=True)
    replay.online.begin_episode({"state": episode.observations["state"][0]})
    for t in range(4):
        replay.online.add_transition(episode.actions[t], float(episode.rewards[t]),
                                     {"state": episode.observations["state"][t + 1]},
                                     terminated=bool(episode.terminated[t]))
        assert len(replay.online) == t + 1
        batch = replay.sample(32)
        valid_steps = batch.valid.numpy().sum(0)
        starts = batch.obs["state"].numpy()[0, :, 1]
        assert np.all(valid_steps == (t + 1) - starts)  # only what has arrived is valid
    assert replay.online.episodes_added == 1
    whole = Replay(config(), ["state"])
    whole.add_online(episode)
    assert np.array_equal(whole.online.observation("state"), replay.online.observation("state"))


def test_actions_are_clipped_and_wrong_data_refused() -> None:
    buffer = EpisodeBuffer(["state"], horizon=5, action_clip_eps=1e-5)
    buffer.add_episode(make_episode(0, 6))
    out = buffer.gather(np.arange(6))
    assert np.abs(out["action"]).max() == pytest.approx(1 - 1e-5)
    with pytest.raises(ValueError, match="lacks observation 'pixels'"):
        EpisodeBuffer(["pixels"], horizon=5).add_episode(make_episode(0, 3))
    with pytest.raises(ValueError, match="actions have 3 dimensions"):
        buffer.add_episode(make_episode(1, 3, action_dim=3))


def test_online_capacity_drops_the_oldest_episodes() -> None:
    buffer = EpisodeBuffer(["state"], horizon=5, capacity=50)
    for i in range(12):
        buffer.add_episode(make_episode(i, 10))
    assert len(buffer) <= 50 and buffer.num_episodes == len(buffer) // 10
    out = buffer.gather(np.arange(len(buffer)))
    kept = np.unique(out["obs/state"][0, :, 0])
    assert kept.min() > 0 and kept.max() == 11  # the newest are kept, the oldest went
    for t in range(6):  # the compaction kept every window inside its episode
        assert np.array_equal(out["obs/state"][t, :, 0], out["obs/state"][0, :, 0])


def test_prioritised_replay_prefers_high_priorities() -> None:
    replay = Replay(config(**{"replay.prioritized": True}), ["state"])
    replay.add_offline([make_episode(i, 10) for i in range(10)])  # 100 transitions
    replay.add_online(make_episode(50, 10))
    batch = replay.sample(256)
    assert np.allclose(batch.weight.numpy(), 1.0)  # all priorities start equal
    # Replay.update_priorities routes each row to the buffer it came from
    priorities = np.where(batch.source == 1, 7.0, 0.5)
    replay.update_priorities(batch, priorities)
    online_index = np.unique(batch.index[batch.source == 1])
    assert np.allclose(replay.online._priority[online_index], 7.0 + 1e-4)
    replay.offline.update_priorities(np.arange(100), np.full(100, 0.01))
    replay.offline.update_priorities(np.array([42]), np.array([50.0]))
    batch = replay.sample(2000)
    offline = batch.source == 0
    share = np.mean(batch.index[offline] == 42)
    expected = 50.0001**0.6 / (50.0001**0.6 + 99 * 0.0101**0.6)
    assert share == pytest.approx(expected, abs=0.05)
    weights = batch.weight.numpy()
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    hot = offline & (batch.index == 42)
    assert np.all(weights[hot] < weights[offline & ~hot].min())  # importance sampling
