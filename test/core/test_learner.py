"""The learner's mathematics: expectile, in-sample TD targets, masks, AWR, target network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.learner import Learner, expectile_loss, gaussian_log_prob, td_target
from tdmpc_ros.core.replay import Batch
from tdmpc_ros.core.world_model import ModelSpec, WorldModel

torch.set_num_threads(1)  # small models; also robust when the machine is shared
SPEC = ModelSpec({"state": (6,)}, 2)


def small_config(**overrides) -> Config:
    base = {"model.mlp_dim": 32, "model.enc_dim": 16, "device": "cpu", "seed": 0,
            "learner.batch_size": 16, "learner.precision": "float32"}  # exact arithmetic
    base.update(overrides)
    return Config().replace(**base)


def random_batch(seed: int = 0, size: int = 16, horizon: int = 5) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(horizon, size)
    terminated[2, :4] = 1.0  # some rows end by termination at step 2 ...
    valid = torch.ones(horizon, size)
    valid[3:, :4] = 0.0  # ... and are padding after it
    return Batch(
        obs={"state": torch.randn(horizon + 1, size, 6, generator=generator)},
        action=torch.rand(horizon, size, 2, generator=generator) * 2 - 1,
        reward=torch.randn(horizon, size, generator=generator), terminated=terminated,
        valid=valid, weight=torch.ones(size), source=np.zeros(size, np.int64),
        index=np.arange(size),
    )


def perturbed_model(config: Config) -> WorldModel:
    torch.manual_seed(1)
    model = WorldModel(config, SPEC)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_expectile_loss_is_asymmetric() -> None:
    diff = torch.tensor([2.0, -2.0, 0.5, -0.5])
    loss = expectile_loss(diff, 0.9)
    torch.testing.assert_close(loss, torch.tensor([0.9 * 4, 0.1 * 4, 0.9 * 0.25, 0.1 * 0.25]))
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff**2)
    # the minimiser over a constant is the tau-expectile: above the mean for tau > 0.5
    samples = torch.tensor([0.0, 0.0, 0.0, 1.0])
    for tau, expected in ((0.5, 0.25), (0.9, 0.75)):
        value = torch.zeros((), requires_grad=True)
        optim = torch.optim.SGD([value], lr=0.5)
        for _ in range(500):
            optim.zero_grad()
            expectile_loss(samples - value, tau).mean().backward()
            optim.step()
        # the tau-expectile e solves tau * sum_{y>e}(y - e) = (1 - tau) * sum_{y<e}(e - y)
        assert value.item() == pytest.approx(expected, abs=1e-3)


def test_td_target_masks_only_terminations() -> None:
    reward, value = torch.tensor([1.0, 1.0]), torch.tensor([5.0, 5.0])
    torch.testing.assert_close(td_target(reward, torch.tensor([0.0, 1.0]), value, 0.9),
                               torch.tensor([5.5, 1.0]))
    log_prob = gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2))
    assert float(log_prob) == pytest.approx(-np.log(2 * np.pi))


def test_q_targets_use_only_dataset_actions() -> None:
    config = small_config()
    model = perturbed_model(config)
    batch = random_batch()
    before = copy.deepcopy(model)
    seen_actions = []
    original = model.q_values

    def spy(z, a, target=False, heads=None):
        seen_actions.append(a.detach().clone())
        return original(z, a, target=target, heads=heads)

    model.q_values = spy
    result = Learner(model, config).update(batch)
    dataset_actions = batch.action.flatten(0, 1)
    assert len(seen_actions) == 2  # online heads for the Q loss, target heads for V and AWR
    for actions in seen_actions:
        assert torch.equal(actions, dataset_actions)

    # rebuild the Q loss by hand from the model before the update: r + gamma V(enc(o'))
    with torch.no_grad():
        z = before.encode({"state": batch.obs["state"][0]})
        latents = []
        for t in range(5):
            latents.append(z)
            z = before.next(z, batch.action[t])
        next_value = before.value(before.encode({"state": batch.obs["state"][1:].flatten(0, 1)}))
        target = td_target(batch.reward, batch.terminated, next_value.view(5, 16), 0.9)
        q = torch.stack([before.q_values(latents[t], batch.action[t]) for t in range(5)], 1)
        rho = (0.5 ** torch.arange(5.0))[:, None] * batch.valid
        expected = (rho * ((q - target) ** 2).sum(0)).sum(0).mean()
    assert result.metrics["q_loss"] == pytest.approx(float(expected), rel=1e-4)


def test_policy_never_enters_a_target() -> None:
    config = small_config()
    batch = random_batch()
    results = []
    for scale in (0.0, 5.0):
        model = perturbed_model(config)
        with torch.no_grad():
            for parameter in model.pi.parameters():
                parameter.mul_(scale)  # a wildly different policy
        results.append(Learner(model, config).update(batch).metrics)
    for key in ("consistency_loss", "reward_loss", "q_loss", "v_loss", "model_loss"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-6), key
    assert results[0]["pi_loss"] != pytest.approx(results[1]["pi_loss"])


def test_padding_after_an_episode_end_does_not_count() -> None:
    config = small_config()
    batch = random_batch()
    changed = copy.deepcopy(batch)
    changed.reward[3:, :4] = 1000.0  # values under valid == 0
    changed.action[3:, :4] = -changed.action[3:, :4]
    changed.obs["state"][4:, :4] = 1000.0
    first = Learner(perturbed_model(config), config).update(batch).metrics
    second = Learner(perturbed_model(config), config).update(changed).metrics
    for key in ("model_loss", "q_loss", "v_loss", "pi_loss", "consistency_loss"):
        assert first[key] == pytest.approx(second[key], rel=1e-5), key


def test_awr_weights_are_clipped() -> None:
    config = small_config(**{"learner.awr_max_weight": 3.0, "learner.awr_temperature": 50.0})
    metrics = Learner(perturbed_model(config), config).update(random_batch()).metrics
    assert 0.0 < metrics["awr_weight_mean"] <= 3.0


def test_target_network_moves_slowly_every_second_update() -> None:
    config = small_config()
    model = perturbed_model(config)
    learner = Learner(model, config)
    target_before = model.target_q.fc2.weight.clone()
    learner.update(random_batch(0))
    assert torch.equal(model.target_q.fc2.weight, target_before)  # not on odd updates
    online = model.q.fc2.weight.detach().clone()
    learner.update(random_batch(1))
    expected = target_before + 0.01 * (model.q.fc2.weight.detach() - target_before)
    torch.testing.assert_close(model.target_q.fc2.weight, expected)
    assert not torch.equal(model.q.fc2.weight, online)
    assert not model.target_q.fc2.weight.requires_grad


def test_repeated_updates_fit_a_batch() -> None:
    config = small_config(**{"learner.lr": 3e-3})
    learner = Learner(perturbed_model(config), config)
    batch = random_batch()
    first = learner.update(batch).metrics
    for _ in range(100):
        last = learner.update(batch).metrics
    assert last["reward_loss"] < 0.5 * first["reward_loss"]
    assert last["consistency_loss"] < first["consistency_loss"]
    assert all(np.isfinite(value) for value in last.values())


def test_pixel_update_augments_and_learns() -> None:
    config = small_config(**{"model.obs_type": "pixels"})
    model = WorldModel(config, ModelSpec({"pixels": (84, 84, 3)}, 2))
    generator = torch.Generator().manual_seed(0)
    batch = random_batch(size=4)
    batch.obs = {"pixels": torch.randint(0, 256, (6, 4, 84, 84, 3), dtype=torch.uint8,
                                         generator=generator)}
    learner = Learner(model, config)
    shifted = learner._augment(batch.obs)["pixels"]
    assert shifted.dtype == torch.uint8 and not torch.equal(shifted, batch.obs["pixels"])
    result = learner.update(batch)
    assert np.isfinite(result.metrics["model_loss"]) and result.priorities.shape == (4,)


def test_bfloat16_updates_track_float32() -> None:
    batch = random_batch()
    results = {}
    for precision in ("float32", "bfloat16"):
        config = small_config(**{"learner.precision": precision})
        learner = Learner(perturbed_model(config), config)
        assert learner.dtype == getattr(torch, precision)
        results[precision] = learner.update(batch).metrics
    for key in ("q_loss", "reward_loss", "v_loss", "consistency_loss", "pi_loss"):
        assert results["bfloat16"][key] == pytest.approx(results["float32"][key], rel=0.05,
                                                         abs=1e-3), key


def test_max_q_targets_bootstrap_from_q_at_the_policys_action_and_in_sample_from_v() -> None:
    base = {"model.num_q": 2, "planner.policy_noise_std": 0.0}  # both heads, no noise
    z = torch.rand(7, 50)
    in_sample = Learner(perturbed_model(small_config(**base)))
    torch.testing.assert_close(in_sample._bootstrap(z), in_sample.model.value(z))
    max_q = Learner(perturbed_model(small_config(**base, **{"learner.td_target": "max_q"})))
    model = max_q.model
    expected = model.q_values(z, model.policy(z), target=True).min(0).values
    torch.testing.assert_close(max_q._bootstrap(z), expected)


def test_max_q_policy_ascends_q_and_moves_only_the_policy() -> None:
    config = small_config(**{"learner.td_target": "max_q", "learner.lr": 1e-12})
    learner = Learner(perturbed_model(config))
    model = learner.model
    latents = torch.rand(5, 16, 50)
    flat = latents.flatten(0, 1)
    q_before = model.q_values(flat, model.policy(flat)).min(0).values.mean()
    others = {name: p.detach().clone() for name, p in model.named_parameters()
              if not name.startswith("pi.")}
    rho = learner._rho.expand(5, 16)
    for _ in range(30):
        learner._update_policy_max_q(latents, rho)
    q_after = model.q_values(flat, model.policy(flat)).min(0).values.mean()
    assert q_after > q_before
    for name, parameter in model.named_parameters():
        if name in others:
            torch.testing.assert_close(parameter, others[name], rtol=0, atol=0)
    result = learner.update(random_batch())  # a whole update runs, finite
    assert all(np.isfinite(v) for v in result.metrics.values())
