"""The planner's mathematics on hand-made latent models whose best plans are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.planner import Planner, resolve_precision
from tdmpc_ros.core.world_model import ModelSpec, WorldModel

torch.set_num_threads(1)  # small models; also robust when the machine is shared

HEAD_OFFSETS = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])  # unbiased std: sqrt(2.5)


class HandModel:
    """z = [t, x, y]: a clock and a position that moves by the action.

    Reward -scale * ||a - target[t]||^2 (so the best sequence is ``targets``). The Q heads at every
    step are ``step_spread(a) * HEAD_OFFSETS``: only their spread matters there. The terminal
    heads are [b, b, b, b, b + terminal_spread * 5]: any two distinct heads have minimum b, so
    the terminal min does not depend on the spread but the std does.
    """

    action_dim, latent_dim, num_q = 2, 3, 5

    def __init__(self, targets: torch.Tensor, step_spread=0.0, terminal_spread: float = 0.0,
                 terminal_value: float = -1.0, scale: float = 1.0) -> None:
        self.targets = targets
        self.scale = scale
        self.step_spread = step_spread if callable(step_spread) else (lambda a: step_spread)
        self.terminal_spread = terminal_spread
        self.terminal_value = terminal_value
        self.steps_with_q = 0
        self.steps_without_q = 0

    def encode(self, obs):
        return torch.zeros(1, 3)

    def step(self, z, a, with_q=True):
        t = z[:, 0].long().clamp(max=len(self.targets) - 1)
        reward = -self.scale * ((a - self.targets[t]) ** 2).sum(-1)
        z_next = torch.cat([z[:, :1] + 1, z[:, 1:] + a], -1)
        if not with_q:
            self.steps_without_q += 1
            return z_next, reward, None
        self.steps_with_q += 1
        spread = self.step_spread(a)
        spread = spread if torch.is_tensor(spread) else torch.full((a.shape[0],), float(spread))
        return z_next, reward, HEAD_OFFSETS[:, None] * spread[None, :]

    def q(self, z, a):
        heads = torch.full((5, z.shape[0]), self.terminal_value)
        heads[4] += 5 * self.terminal_spread
        return heads

    def pi(self, z):
        return torch.zeros(z.shape[0], 2)


TARGETS = torch.tensor([[0.5, -0.5], [0.2, 0.8], [-0.7, 0.1], [0.0, -0.3], [0.9, 0.4]])


def config(**overrides) -> Config:
    base = {"device": "cpu", "seed": 3, "planner.precision": "float32"}
    base.update(overrides)
    return Config().replace(**base)


def test_score_is_the_uncertainty_penalised_return() -> None:
    gamma, lam = 0.9, 2.0
    model = HandModel(TARGETS, step_spread=0.3, terminal_spread=0.2, terminal_value=-1.5)
    planner = Planner(model, config(**{"planner.uncertainty_coef": lam, "discount": gamma}))
    actions = torch.rand(5, 64, 2) * 2 - 1
    score = planner.score(torch.zeros(3), actions, terminal_noise=torch.zeros(64, 2))
    rewards = -((actions - TARGETS[:, None]) ** 2).sum(-1)  # (H, N)
    discounts = gamma ** torch.arange(5.0)
    step_std = 0.3 * HEAD_OFFSETS.std()
    terminal_std = torch.tensor([0.0, 0, 0, 0, 1.0]).std()
    expected = ((discounts[:, None] * (rewards - lam * step_std)).sum(0)
                + gamma**5 * (-1.5 - lam * terminal_std))
    torch.testing.assert_close(score, expected)


@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_larger_spread_lowers_score_by_lambda_times_spread(lam: float) -> None:
    gamma = 0.9
    actions = torch.rand(5, 32, 2) * 2 - 1
    noise = torch.zeros(32, 2)

    def score(step_spread: float, terminal_spread: float) -> torch.Tensor:
        planner = Planner(HandModel(TARGETS, step_spread, terminal_spread),
                          config(**{"planner.uncertainty_coef": lam, "discount": gamma}))
        return planner.score(torch.zeros(3), actions, terminal_noise=noise)

    base = score(0.0, 0.0)
    # more spread at every step: each step's std grows by 0.4 * std(offsets)
    step_std = 0.4 * float(HEAD_OFFSETS.std())
    drop = sum(gamma**t for t in range(5)) * lam * step_std
    torch.testing.assert_close(base - score(0.4, 0.0), torch.full((32,), drop))
    # more spread at the terminal value only
    terminal_std = float(torch.tensor([0.0, 0, 0, 0, 5 * 0.7]).std())
    torch.testing.assert_close(base - score(0.0, 0.7),
                               torch.full((32,), gamma**5 * lam * terminal_std))


def test_lambda_zero_is_plain_mppi() -> None:
    gamma = 0.9
    actions = torch.rand(5, 16, 2) * 2 - 1
    cfg = config(**{"planner.uncertainty_coef": 0.0, "discount": gamma})
    calm, spread = HandModel(TARGETS), HandModel(TARGETS, step_spread=5.0, terminal_spread=3.0)
    noise = torch.zeros(16, 2)
    calm_score = Planner(calm, cfg).score(torch.zeros(3), actions, terminal_noise=noise)
    rewards = -((actions - TARGETS[:, None]) ** 2).sum(-1)
    plain = (gamma ** torch.arange(5.0)[:, None] * rewards).sum(0) + gamma**5 * -1.0
    torch.testing.assert_close(calm_score, plain)  # TD-MPC's value: no penalty anywhere
    torch.testing.assert_close(Planner(spread, cfg).score(torch.zeros(3), actions,
                                                          terminal_noise=noise), plain)
    # whole plans are identical whatever the ensemble's disagreement, and no step asks for Q
    first = Planner(calm, cfg).plan(z=torch.zeros(3))[1]
    second = Planner(spread, cfg).plan(z=torch.zeros(3))[1]
    np.testing.assert_array_equal(first.actions, second.actions)
    np.testing.assert_array_equal(first.mean, second.mean)
    assert calm.steps_with_q == 1 * 5  # only the summary's trace of the chosen sequence
    assert calm.steps_without_q > 0


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_planner_finds_the_best_sequence(lam: float) -> None:
    # the paper's settings without policy samples (this model's prior knows nothing)
    model = HandModel(TARGETS, step_spread=0.1)
    planner = Planner(model, config(**{"planner.uncertainty_coef": lam,
                                       "planner.policy_fraction": 0.0}))
    action, summary = planner.plan(z=torch.zeros(3))
    np.testing.assert_allclose(summary.mean, TARGETS.numpy(), atol=0.05)
    np.testing.assert_allclose(summary.actions, TARGETS.numpy(), atol=0.15)
    np.testing.assert_allclose(action, summary.actions[0])
    assert summary.std.max() < 0.3  # the distribution has narrowed on the optimum


def test_penalty_moves_the_plan_away_from_uncertain_actions() -> None:
    # spread grows with the first action coordinate where it is positive: with the penalty,
    # the best first a_x maximises -(a - 0.5)^2 - lam * std(offsets) * c * a,
    # so a = 0.5 - lam * std(offsets) * c / 2
    c, lam = 0.4, 1.0
    sigma = float(HEAD_OFFSETS.std())
    model = HandModel(TARGETS, step_spread=lambda a: c * a[:, 0].clamp(min=0))
    optimum = 0.5 - lam * sigma * c / 2
    settings = {"planner.policy_fraction": 0.0}
    summary = Planner(model, config(**settings, **{"planner.uncertainty_coef": lam})).plan(
        z=torch.zeros(3))[1]
    assert optimum < 0.25 and abs(summary.mean[0, 0] - optimum) < 0.05
    plain = Planner(model, config(**settings, **{"planner.uncertainty_coef": 0.0})).plan(
        z=torch.zeros(3))[1]
    assert abs(plain.mean[0, 0] - 0.5) < 0.05


def test_policy_trajectories_join_the_elites() -> None:
    class Expert(HandModel):
        def pi(self, z):
            t = z[:, 0].long().clamp(max=4)
            return self.targets[t]

    cfg = config(**{"planner.iterations": 1, "planner.num_samples": 64,
                    "planner.num_elites": 8, "planner.policy_noise_std": 0.0})
    summary = Planner(Expert(TARGETS), cfg).plan(z=torch.zeros(3))[1]
    assert summary.num_policy_trajectories == 6
    np.testing.assert_allclose(summary.actions, TARGETS.numpy(), atol=1e-6)  # the policy's
    assert summary.elite_values[0] == pytest.approx(-0.9**5, abs=1e-5)  # its perfect score


def test_warm_start_shifts_the_previous_mean_and_reset_forgets_it() -> None:
    cfg = config(**{"planner.iterations": 1, "planner.momentum": 0.9})
    planner = Planner(HandModel(TARGETS), cfg)
    first = planner.plan(z=torch.zeros(3))[1]
    second = planner.plan(z=torch.zeros(3))[1]
    # mean = 0.9 * start + 0.1 * elite mean: the start was first.mean shifted by one step
    new_part = second.mean - 0.9 * np.concatenate([first.mean[1:], np.zeros((1, 2))])
    assert np.abs(new_part).max() <= 0.1 + 1e-6
    planner.reset()
    third = planner.plan(z=torch.zeros(3))[1]
    assert np.abs(third.mean).max() <= 0.1 + 1e-6  # started from zero again


def test_summary_is_consistent() -> None:
    model = HandModel(TARGETS, step_spread=0.2, terminal_spread=0.1)
    planner = Planner(model, config())
    action, summary = planner.plan(z=torch.zeros(3))
    assert summary.actions.shape == (5, 2) and summary.latents.shape == (6, 3)
    assert summary.rewards.shape == (5,) and summary.q_std.shape == (6,)
    assert summary.score == pytest.approx(summary.expected_return - summary.uncertainty_penalty)
    discounts = 0.9 ** np.arange(6)
    assert summary.uncertainty_penalty == pytest.approx(float((discounts * summary.q_std).sum()),
                                                        rel=1e-5)
    assert summary.elite_weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert summary.device == "cpu" and summary.plan_ms > 0
    explored = planner.plan(z=torch.zeros(3), explore=True)[0]
    assert explored.shape == (2,) and np.abs(explored).max() <= 1.0
    assert set(summary.to_dict()) >= {"action", "actions", "q_std", "score", "latents"}


def test_the_plan_trace_is_the_rollout_that_ranked_the_chosen_sequence() -> None:
    """The chosen sequence's trace is read from its scoring, not rolled out again: the same
    latents, rewards and Q statistics as a fresh rollout, and the score that ranked it."""
    torch.manual_seed(0)
    cfg = config(**{"model.mlp_dim": 32, "planner.num_samples": 64, "planner.num_elites": 8,
                    "planner.precision": "float32"})
    world = WorldModel(cfg, ModelSpec({"state": (6,)}, 2))
    with torch.no_grad():
        for parameter in world.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    planner = Planner(world, cfg)
    obs = {"state": np.linspace(-1, 1, 6).astype(np.float32)}
    for _ in range(3):  # later plans start warm, and may choose a policy sequence
        summary = planner.plan(obs)[1]
        z0 = torch.as_tensor(summary.latents[0])[None]
        with torch.inference_mode():
            again = planner._trace(planner.model, z0, torch.as_tensor(summary.actions))
        for key in ("latents", "rewards"):
            np.testing.assert_allclose(getattr(summary, key), again[key], atol=1e-5)
        for key in ("q_mean", "q_std"):  # the terminal's action differs (its noise)
            np.testing.assert_allclose(getattr(summary, key)[:-1], again[key][:-1], atol=1e-5)
        assert np.abs(summary.elite_values - summary.score).min() < 1e-4


def test_planner_follows_world_model_weight_changes() -> None:
    cfg = config(**{"model.mlp_dim": 32, "planner.num_samples": 32, "planner.num_elites": 4})
    model = WorldModel(cfg, ModelSpec({"state": (6,)}, 2))
    planner = Planner(model, cfg)
    obs = {"state": np.zeros(6, np.float32)}
    action, summary = planner.plan(obs)
    assert np.abs(summary.q_std).max() == 0.0  # zero-initialised Q heads agree
    with torch.no_grad():
        for parameter in model.q.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    summary = planner.plan(obs)[1]
    assert np.abs(summary.q_std).max() > 0.0
    z, a = torch.rand(4, 50), torch.rand(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(planner.model.q(z, a), model.q_values(z, a), atol=1e-5,
                                   rtol=1e-4)


def test_precision_choice() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) == torch.float32
    assert resolve_precision("bfloat16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) in (torch.float32, torch.bfloat16)


def test_bfloat16_scores_agree_with_float32() -> None:
    torch.manual_seed(0)
    cfg = config(**{"model.mlp_dim": 64})
    world = WorldModel(cfg, ModelSpec({"state": (6,)}, 2))
    with torch.no_grad():
        for parameter in world.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    z, actions = torch.rand(50), torch.rand(5, 128, 2) * 2 - 1
    scores = {}
    for precision in ("float32", "bfloat16"):
        planner = Planner(world, cfg.replace(**{"planner.precision": precision}))
        scores[precision] = planner.score(z, actions, torch.zeros(128, 2), torch.tensor([0, 1]))
    difference = (scores["float32"] - scores["bfloat16"]).abs().max()
    assert float(difference) < 0.02 * float(scores["float32"].abs().max()) + 0.01
    assert float(scores["float32"].std()) > 10 * float(difference)  # the ranking survives


def test_planner_follows_learner_updates() -> None:
    from tdmpc_ros.core.learner import Learner
    from tdmpc_ros.core.replay import Batch

    cfg = config(**{"model.mlp_dim": 32, "planner.num_samples": 32, "planner.num_elites": 4,
                    "learner.batch_size": 8, "learner.target_update_every": 1000})
    model = WorldModel(cfg, ModelSpec({"state": (6,)}, 2))
    planner = Planner(model, cfg)
    planner.plan({"state": np.zeros(6, np.float32)})
    batch = Batch(obs={"state": torch.randn(6, 8, 6)}, action=torch.rand(5, 8, 2) * 2 - 1,
                  reward=torch.randn(5, 8), terminated=torch.zeros(5, 8), valid=torch.ones(5, 8),
                  weight=torch.ones(8), source=np.zeros(8, np.int64), index=np.arange(8))
    Learner(model, cfg).update(batch)  # a fused optimiser step, no target update
    z, a = torch.rand(4, 50), torch.rand(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(planner.model.q(z, a), model.q_values(z, a), atol=1e-5,
                                   rtol=1e-4)
        torch.testing.assert_close(planner.model.pi(z), model.policy(z), atol=1e-5, rtol=1e-4)


def test_plan_flops_count_the_papers_arithmetic() -> None:
    """Paper settings, state input: about 76 GFLOP a plan, the Q ensemble 2.9 of the 4.2
    MFLOP per sample and step (the figures of the speed issue); lambda 0 skips the ensemble at
    each step; the pixel encoder adds its convolutions once."""
    from tdmpc_ros.core.config import Config, fast_config
    from tdmpc_ros.core.planner import plan_flops

    paper = plan_flops(Config(), {"state": (16,)}, 4)
    assert 74e9 < paper < 78e9
    lam0 = plan_flops(Config().replace(**{"planner.uncertainty_coef": 0.0}), {"state": (16,)}, 4)
    per_row_step = (paper - lam0) / ((6 * 512 + 51) * 5)
    assert abs(per_row_step - 2.9e6) < 0.05e6  # the ensemble's share of a sample-step
    assert plan_flops(fast_config(), {"state": (16,)}, 4) < paper / 8
    pixels = plan_flops(Config().replace(**{"model.obs_type": "pixels+proprio"}),
                        {"pixels": (84, 84, 3), "proprio": (4,)}, 4)
    assert 25e6 < pixels - paper < 40e6  # four convolutions of one 84x84 frame, about 32 MFLOP
