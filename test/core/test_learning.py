"""Learning end to end on the point mass: offline pretraining, then online finetuning.

The offline dataset is a noisy expert whose goals all lie in the upper half of the arena. The
pretrained agent must control the point mass there (a working controller) but has never seen
a goal in the lower half, like the paper's robot facing an unseen scene. Online finetuning in
the lower half, with balanced batches (half offline, half online), must then improve it there.
Small model and planner settings keep this to tens of seconds on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import torch

from tdmpc_ros.core.agent import Agent, evaluate, run_episode
from tdmpc_ros.core.config import Config
from tdmpc_ros.core.toy import PointMassEnv, noisy_expert_dataset
from tdmpc_ros.core.world_model import ModelSpec

SEEN = {"goal_low": (-0.8, 0.2), "goal_high": (0.8, 0.8)}
UNSEEN = {"goal_low": (-0.8, -0.8), "goal_high": (0.8, -0.2)}


def test_offline_pretraining_then_online_finetuning_improves() -> None:
    torch.set_num_threads(1)
    config = Config.from_dict({
        "device": "cpu", "seed": 0,
        "model": {"mlp_dim": 64, "latent_dim": 32, "enc_dim": 64},
        "learner": {"batch_size": 64, "lr": 1e-3, "pi_lr": 1e-3},
        "planner": {"num_samples": 64, "num_elites": 8, "iterations": 4},
    })
    dataset = noisy_expert_dataset(150, noise=0.5, seed=0, **SEEN)
    agent = Agent(config, ModelSpec.from_episode(dataset[0]))
    agent.replay.add_offline(dataset)
    seen, unseen = PointMassEnv(**SEEN), PointMassEnv(**UNSEEN)
    rng = np.random.default_rng(0)
    random_returns = [run_episode(seen, lambda obs: rng.uniform(-1, 1, 2), f"r{i}",
                                  seed=5000 + i).episode_return for i in range(12)]

    for _ in range(1500):
        agent.update()
    offline_seen = evaluate(seen, agent, 12, seed=5000)
    offline_unseen = evaluate(unseen, agent, 12, seed=6000)
    # a working controller where the data was: it reaches most goals, far better than chance
    assert offline_seen["success"] >= 0.8, offline_seen
    assert offline_seen["return"] > np.mean(random_returns) + 10.0, (offline_seen, random_returns)

    for index in range(15):
        episode = run_episode(unseen, lambda obs: agent.act(obs, explore=True)[0],
                              f"online_{index}", seed=20_000 + index, on_reset=agent.reset)
        agent.replay.add_online(episode)
        assert agent.replay.split(64) == (32, 32)  # balanced batches from the first episode on
        for _ in range(episode.length):
            agent.update()
    online_unseen = evaluate(unseen, agent, 12, seed=6000)
    online_seen = evaluate(seen, agent, 12, seed=5000)
    assert online_unseen["return"] > offline_unseen["return"] + 2.0, (offline_unseen,
                                                                      online_unseen)
    assert online_unseen["success"] >= offline_unseen["success"] + 0.3, (offline_unseen,
                                                                         online_unseen)
    assert online_unseen["success"] >= 0.75, online_unseen
    assert online_seen["success"] >= 0.6, online_seen  # the offline skill is mostly kept
