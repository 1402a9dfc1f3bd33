"""Is the planner's uncertainty penalty calibrated? The Q ensemble's spread against real errors.

FOWM's planner subtracts lambda times the std of the Q ensemble, on the premise that the spread
is large where the model is wrong. This checks that premise on held-out state-action pairs (not
trained on), in the data's distribution and off it (a task variant):

- spread: std over the Q heads at (enc(o_t), a_t) (unbiased, as the planner computes it);
- the model's real one-step errors on the same pair: reward |R(z_t, a_t) - r_t| and latent
  dynamics ||d(z_t, a_t) - enc(o_{t+1})|| / sqrt(latent size);
- Spearman's rank correlation of the spread with each error, per set and over both pooled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tdmpc_ros.core.episodes import Episode
from tdmpc_ros.core.world_model import WorldModel, obs_to_tensors


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (nan when either side is constant or too short)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return float("nan")
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


@torch.no_grad()
def one_step_errors(model: WorldModel, episodes: Sequence[Episode]) -> dict[str, np.ndarray]:
    """Per held-out transition: the ensemble's spread and the reward and dynamics errors."""
    was_training = model.training
    model.eval()
    spread, reward_error, dynamics_error = [], [], []
    for episode in episodes:
        steps = episode.length
        obs = obs_to_tensors(episode.observations, model.obs_keys, model.device, batched=True)
        actions = torch.as_tensor(np.clip(episode.actions, -1, 1), dtype=torch.float32,
                                  device=model.device)
        z_all = model.encode(obs).float()
        z, z_next = z_all[:steps], z_all[1:steps + 1]
        spread.append(model.q_values(z, actions).float().std(0).cpu().numpy())
        reward = torch.as_tensor(episode.rewards, dtype=torch.float32, device=model.device)
        reward_error.append((model.predict_reward(z, actions).float() - reward).abs().cpu()
                            .numpy())
        predicted = model.next(z, actions).float()
        dynamics_error.append(((predicted - z_next).pow(2).mean(-1)).sqrt().cpu().numpy())
    model.train(was_training)
    return {"spread": np.concatenate(spread), "reward_error": np.concatenate(reward_error),
            "dynamics_error": np.concatenate(dynamics_error)}


def summarise(errors: Mapping[str, np.ndarray]) -> dict[str, float]:
    spread = errors["spread"]
    return {
        "transitions": int(len(spread)),
        "spread_mean": float(spread.mean()),
        "reward_error_mean": float(errors["reward_error"].mean()),
        "dynamics_error_mean": float(errors["dynamics_error"].mean()),
        "spearman_reward": spearman(spread, errors["reward_error"]),
        "spearman_dynamics": spearman(spread, errors["dynamics_error"]),
        "spearman": spearman(spread, errors["reward_error"] + errors["dynamics_error"]),
    }


def calibration_record(model: WorldModel, held_out: Mapping[str, Sequence[Episode]]
                       ) -> dict[str, Any]:
    """``summarise`` of each named set of held-out episodes and of all of them pooled.

    ``spearman`` correlates the spread with the sum of both errors; the per-error
    correlations are there too.
    """
    per_set = {name: one_step_errors(model, episodes) for name, episodes in held_out.items()}
    pooled = {key: np.concatenate([errors[key] for errors in per_set.values()])
              for key in ("spread", "reward_error", "dynamics_error")}
    sets = {name: summarise(errors) for name, errors in per_set.items()}
    sets["pooled"] = summarise(pooled)
    return {"sets": sets}
