"""The planner's fast CPU paths compute what the straightforward code computes.

``PlanningModel`` has a batched reference path (``blocked = False``, also what torch.compile
and CUDA graphs trace) and a cache-blocked CPU path with buffers kept between calls; both must
agree with each other and with the world model's own modules. No timings here: speed is
reported by ``tools/bench_core.py`` only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.planner import Planner, _ensemble_std
from tdmpc_ros.core.world_model import ModelSpec, PlanningModel, WorldModel

torch.set_num_threads(1)

SPEC = ModelSpec({"state": (6,)}, 3)


def small_model(width: int = 64, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    config = Config().replace(**{"model.mlp_dim": width, "model.enc_dim": 32, "device": "cpu"})
    model = WorldModel(config, SPEC)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero everywhere: the zero-initialised heads would hide mistakes
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def outputs(fused: PlanningModel, z: torch.Tensor, a: torch.Tensor) -> list[torch.Tensor]:
    z_next, reward, q = fused.step(z, a)
    z_only, reward_only, none = fused.step(z, a, with_q=False)
    assert none is None
    return [z_next, reward, q, z_only, reward_only, fused.q(z, a), fused.pi(z)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 70])
def test_blocked_path_equals_the_batched_path(dtype: torch.dtype, rows: int) -> None:
    fused = PlanningModel(small_model(), dtype)
    assert fused.blocked  # on by default on the CPU
    z, a = torch.rand(rows, 50), torch.rand(rows, 3) * 2 - 1
    with torch.inference_mode():
        blocked = outputs(fused, z, a)
        fused.blocked = False
        reference = outputs(fused, z, a)
    for fast, slow in zip(blocked, reference, strict=True):
        assert fast.shape == slow.shape and fast.dtype == torch.float32
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_blocked_path_equals_the_modules_in_float32() -> None:
    model = small_model()
    fused = PlanningModel(model, torch.float32)
    z, a = torch.rand(40, 50), torch.rand(40, 3) * 2 - 1
    with torch.inference_mode():
        z_next, reward, q = fused.step(z, a)
        torch.testing.assert_close(z_next, model.next(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reward, model.predict_reward(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(q, model.q_values(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fused.q(z, a), model.q_values(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fused.pi(z), model.policy(z), atol=1e-5, rtol=1e-4)


def test_blocked_path_in_bfloat16_stays_close_to_the_modules() -> None:
    model = small_model(width=512)
    fused = PlanningModel(model, torch.bfloat16)
    z, a = torch.rand(64, 50), torch.rand(64, 3) * 2 - 1
    with torch.inference_mode():
        z_next, reward, q = fused.step(z, a)
        exact_q = model.q_values(z, a)
        assert float((z_next - model.next(z, a)).abs().max()) < 0.02
        assert float((reward - model.predict_reward(z, a)).abs().max()) < 0.02
        assert float((q - exact_q).abs().max()) < 0.03 * float(exact_q.abs().max()) + 0.01
        assert float((fused.pi(z) - model.policy(z)).abs().max()) < 0.02


def test_results_do_not_alias_the_reused_buffers() -> None:
    """A rollout keeps every step's outputs (the plan trace does): later calls on the same
    row count must not overwrite them."""
    fused = PlanningModel(small_model(), torch.bfloat16)
    z, a = torch.rand(9, 50), torch.rand(9, 3) * 2 - 1
    with torch.inference_mode():
        first = outputs(fused, z, a)
        kept = [t.clone() for t in first]
        outputs(fused, torch.rand(9, 50), torch.rand(9, 3))
    for value, copy in zip(first, kept, strict=True):
        assert torch.equal(value, copy)


def test_refresh_reaches_the_blocked_path() -> None:
    model = small_model()
    fused = PlanningModel(model, torch.float32)
    z, a = torch.rand(5, 50), torch.rand(5, 3)
    with torch.inference_mode():
        fused.q(z, a)  # buffers exist before the weights change
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.1)
    with torch.inference_mode():
        fused.refresh(model)
        torch.testing.assert_close(fused.q(z, a), model.q_values(z, a), atol=1e-5, rtol=1e-4)


def test_ensemble_std_is_torch_std() -> None:
    q = torch.randn(5, 300) * 3 + 1
    torch.testing.assert_close(_ensemble_std(q), q.std(0), atol=1e-6, rtol=1e-5)
    same = torch.ones(2, 4)
    assert torch.equal(_ensemble_std(same), torch.zeros(4))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_plans_agree_between_the_paths(precision: str) -> None:
    config = Config().replace(**{
        "model.mlp_dim": 64, "model.enc_dim": 32, "device": "cpu",
        "planner.precision": precision, "planner.num_samples": 64, "planner.num_elites": 8,
        "planner.iterations": 3,
    })
    model = small_model()
    model.config = config
    z, actions = torch.rand(50), torch.rand(5, 64, 3) * 2 - 1
    results = {}
    for blocked in (True, False):
        planner = Planner(model, config)
        planner.model.blocked = blocked
        scores = planner.score(z, actions, torch.zeros(64, 3), torch.tensor([0, 1]))
        _, summary = planner.plan({"state": np.linspace(-1, 1, 6).astype(np.float32)})
        results[blocked] = scores, summary
    (fast, fast_plan), (slow, slow_plan) = results[True], results[False]
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fast_plan.elite_values, slow_plan.elite_values, atol=1e-3,
                               rtol=1e-3)
    np.testing.assert_allclose(fast_plan.q_std, slow_plan.q_std, atol=1e-4, rtol=1e-4)
