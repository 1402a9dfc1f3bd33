"""Pretraining until the values have propagated: the value check and the stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmpc_ros.core.agent import Agent
from tdmpc_ros.core.config import Config
from tdmpc_ros.core.pretraining import (
    discounted_returns,
    expert_episodes,
    plot_pretraining,
    pretrain,
    value_check,
)
from tdmpc_ros.core.toy import noisy_expert_dataset
from tdmpc_ros.core.world_model import ModelSpec

torch.set_num_threads(1)


def test_discounted_returns_with_and_without_the_time_limit_tail() -> None:
    rewards = np.array([1.0, 0.0, 2.0])
    np.testing.assert_allclose(discounted_returns(rewards, 0.5, time_limited=False),
                               [1.0 + 0.0 + 0.25 * 2.0, 0.0 + 0.5 * 2.0, 2.0])
    # cut by a time limit: the last reward goes on, 2 / (1 - 0.5) = 4 from the step after
    np.testing.assert_allclose(discounted_returns(rewards, 0.5),
                               [1.0 + 0.25 * 2.0 + 0.125 * 4.0, 0.5 * 2.0 + 0.25 * 4.0,
                                2.0 + 0.5 * 4.0])


def _agent(episodes, **overrides) -> Agent:
    config = Config().replace(**{"model.mlp_dim": 64, "model.enc_dim": 32, "device": "cpu",
                                 "seed": 0, "learner.batch_size": 32,
                                 "learner.precision": "float32", **overrides})
    agent = Agent(config, ModelSpec.from_episode(episodes[0]))
    agent.replay.add_offline(episodes)
    return agent


def test_an_untrained_model_is_far_from_the_returns_and_pretraining_closes_the_gap() -> None:
    episodes = noisy_expert_dataset(40, noise=0.3, seed=0)
    experts = expert_episodes(episodes)
    assert experts and all(e.succeeded for e in experts)
    agent = _agent(episodes, **{"run.offline_updates": 3000, "run.convergence_check_every": 100,
                                "run.convergence_tolerance": 0.1})
    start = value_check(agent.model, experts, agent.config.discount)
    assert start["q_expert"] == pytest.approx(0.0, abs=1e-6)  # Q's last layer starts at zero
    assert start["return_expert"] < 0 and start["value_ratio"] == pytest.approx(0.0, abs=1e-6)
    lines: list[str] = []
    result = pretrain(agent, episodes, progress=lines.append)
    assert result.converged, lines[-3:]
    assert result.updates < 3000  # it stopped at the check, not at the cap
    assert result.updates % 100 == 0 and len(result.history) == result.updates // 100
    assert result.final["value_ratio"] >= 0.9
    assert [r["value_ratio"] >= 0.9 for r in result.history[-2:]] == [True, True]
    assert {"step", "q_loss", "v_loss", "q_expert", "return_expert"} <= set(result.final)
    assert "Q/return on experts" in lines[-1] and "2/2" in lines[-1]


def test_without_convergence_it_runs_to_the_cap_and_says_so(tmp_path) -> None:
    episodes = noisy_expert_dataset(10, noise=0.3, seed=1)
    agent = _agent(episodes, **{"run.offline_updates": 30, "run.convergence_check_every": 10})
    result = pretrain(agent, episodes, progress=None)
    assert not result.converged and result.updates == 30 and len(result.history) == 3
    assert plot_pretraining(result.history, tmp_path / "p.png").stat().st_size > 1000


def test_min_updates_hold_pretraining_past_an_early_pass() -> None:
    episodes = noisy_expert_dataset(10, noise=0.3, seed=2)
    agent = _agent(episodes, **{"run.offline_updates": 40, "run.convergence_check_every": 10,
                                "run.convergence_tolerance": 1.0,  # every check passes
                                "run.convergence_min_updates": 30})
    result = pretrain(agent, episodes, progress=None)
    assert result.converged and result.updates == 30
