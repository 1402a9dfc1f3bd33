"""The calibration check of the uncertainty penalty: rank correlation and its inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmpc_ros.core.calibration import calibration_record, one_step_errors, rank, spearman
from tdmpc_ros.core.config import Config
from tdmpc_ros.core.toy import noisy_expert_dataset
from tdmpc_ros.core.world_model import ModelSpec, WorldModel


def test_rank_and_spearman() -> None:
    np.testing.assert_allclose(rank(np.array([3.0, 1.0, 2.0, 1.0])), [3.0, 0.5, 2.0, 0.5])
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(10)))
    noise = np.random.default_rng(0).standard_normal(2000)
    assert abs(spearman(noise, np.random.default_rng(1).standard_normal(2000))) < 0.1
    with pytest.raises(ValueError):
        spearman(x, x[:3])


def test_calibration_record_covers_each_set_and_the_pool() -> None:
    torch.manual_seed(0)
    config = Config().replace(**{"model.mlp_dim": 32, "model.enc_dim": 16, "device": "cpu"})
    calm = noisy_expert_dataset(3, noise=0.3, seed=0)
    windy = noisy_expert_dataset(3, noise=0.3, seed=1, wind=(0.05, 0.0))
    model = WorldModel(config, ModelSpec.from_episode(calm[0]))
    with torch.no_grad():
        for parameter in model.q.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    errors = one_step_errors(model, calm)
    steps = sum(e.length for e in calm)
    assert all(len(values) == steps for values in errors.values())
    assert (errors["spread"] > 0).all() and (errors["dynamics_error"] >= 0).all()
    record = calibration_record(model, {"in_distribution": calm, "variant": windy})
    assert set(record["sets"]) == {"in_distribution", "variant", "pooled"}
    pooled = record["sets"]["pooled"]
    assert pooled["transitions"] == steps + sum(e.length for e in windy)
    assert -1.0 <= pooled["spearman"] <= 1.0
