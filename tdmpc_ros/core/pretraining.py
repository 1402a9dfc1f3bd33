"""Offline pretraining until the values have propagated, and the check that says they have.

A fixed small update count leaves TD values far short of the returns they estimate: after 800
updates Q on the experts' own state-actions was about a third of their Monte-Carlo return. So
pretraining checks, every ``run.convergence_check_every`` updates, how far Q has come:

- ``value_check``: on the dataset's successful (expert) episodes (``expert_episodes``), the
  mean over every step of the Q ensemble's mean at (o_t, a_t), against the mean discounted
  Monte-Carlo return from that step. The episodes end by a time limit, which the TD target
  bootstraps through, so the return carries a tail: the expert is taken to keep its last
  reward, gamma^(T-t) * r_{T-1} / (1 - gamma). ``value_ratio`` = mean Q / mean return; 1 means
  the values have reached the experts' returns.
- ``pretrain``: updates until ``value_ratio`` has been at least ``1 - run.convergence_tolerance`` at
  ``run.convergence_patience`` checks in a row (after ``run.convergence_min_updates``), or until
  ``run.offline_updates``, the cap. Each check is one record of the returned history (losses
  averaged since the last check, Q, return, ratio), for progress lines and a plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdmpc_ros.core.episodes import Episode
from tdmpc_ros.core.world_model import WorldModel, obs_to_tensors


def discounted_returns(rewards: np.ndarray, discount: float, time_limited: bool = True
                       ) -> np.ndarray:
    """Discounted return from every step; an episode cut by a time limit (not a termination)
    keeps its last reward forever after, as the TD target bootstraps through the cut."""
    rewards = np.asarray(rewards, np.float64)
    tail = rewards[-1] / (1.0 - discount) if time_limited else 0.0
    out = np.empty_like(rewards)
    running = tail
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + discount * running
        out[t] = running
    return out


def expert_episodes(episodes: Sequence[Episode], limit: int = 64) -> list[Episode]:
    """The reference of the check: the successful episodes (at most ``limit``, evenly spread),
    or where none succeeded (a small or poor dataset) the best-returning quarter."""
    successful = [episode for episode in episodes if episode.succeeded]
    if not successful:
        ranked = sorted(episodes, key=lambda episode: episode.episode_return, reverse=True)
        successful = ranked[: max(1, len(ranked) // 4)]
    if len(successful) > limit:
        picks = np.linspace(0, len(successful) - 1, limit).round().astype(int)
        successful = [successful[i] for i in picks]
    return successful


@torch.no_grad()
def value_check(model: WorldModel, episodes: Sequence[Episode], discount: float
                ) -> dict[str, float]:
    """Q of the experts' state-actions against their Monte-Carlo return (see the module)."""
    if not episodes:
        raise ValueError("the value check needs successful episodes, and the dataset has none")
    was_training = model.training
    model.eval()
    q_values, returns = [], []
    for episode in episodes:
        steps = episode.length
        obs = {key: value[:steps] for key, value in episode.observations.items()}
        tensors = obs_to_tensors(obs, model.obs_keys, model.device, batched=True)
        actions = torch.as_tensor(np.clip(episode.actions, -1, 1), dtype=torch.float32,
                                  device=model.device)
        z = model.encode(tensors)
        q_values.append(model.q_values(z, actions).float().mean(0).cpu().numpy())
        returns.append(discounted_returns(episode.rewards, discount,
                                          time_limited=not bool(episode.terminated[-1])))
    model.train(was_training)
    q = float(np.mean(np.concatenate(q_values)))
    mc = float(np.mean(np.concatenate(returns)))
    ratio = q / mc if abs(mc) > 1e-9 else float("nan")  # negative returns work alike
    return {"q_expert": q, "return_expert": mc, "value_ratio": ratio}


@dataclass
class PretrainResult:
    """What ``pretrain`` did: updates run, whether the check passed, and one record per check."""

    updates: int
    converged: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def to_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "converged": self.converged, "seconds": self.seconds,
                "history": self.history}


def pretrain(agent: Any, offline: Sequence[Episode],
             progress: Callable[[str], None] | None = print,
             on_check: Callable[[dict[str, float]], None] | None = None,
             history: Sequence[dict[str, float]] = ()) -> PretrainResult:
    """Offline updates on ``agent``'s replay until the value check passes (see the module).

    ``agent`` is a ``core.agent.Agent`` whose replay already holds ``offline``; ``progress``
    receives one line per check, ``on_check`` each record as it is made. A resumed run starts
    at the agent's own update count, with the ``history`` of its earlier checks.
    """
    run = agent.config.run
    experts = expert_episodes(offline)
    cap, every = run.offline_updates, run.convergence_check_every
    needed = 1.0 - run.convergence_tolerance
    history = list(history)
    sums: dict[str, float] = {}
    passed_in_a_row, step = 0, agent.learner.steps
    first = step
    started = last = time.perf_counter()
    while step < cap:
        metrics = agent.update()
        step += 1
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value
        if step % every and step != cap:
            continue
        count = step - (int(history[-1]["step"]) if history else 0)
        check = value_check(agent.model, experts, agent.config.discount)
        now = time.perf_counter()
        record = {"step": step, **{k: v / count for k, v in sums.items()}, **check,
                  "updates_per_s": count / max(now - last, 1e-9), "seconds": now - started}
        history.append(record)
        sums, last = {}, now
        passed_in_a_row = passed_in_a_row + 1 if check["value_ratio"] >= needed else 0
        if progress is not None:
            eta = (cap - step) / max((step - first) / (now - started), 1e-9)
            progress(f"[pretrain] {step}/{cap} | model {record.get('model_loss', 0):.4g} "
                     f"q {record.get('q_loss', 0):.4g} v {record.get('v_loss', 0):.4g} "
                     f"pi {record.get('pi_loss', 0):.4g} | Q/return on experts "
                     f"{check['q_expert']:.3f}/{check['return_expert']:.3f} = "
                     f"{check['value_ratio']:.2f} (need {needed:.2f}, "
                     f"{passed_in_a_row}/{run.convergence_patience}) | "
                     f"{record['updates_per_s']:.0f} upd/s | at most {eta:.0f} s left")
        if on_check is not None:
            on_check(record)
        if passed_in_a_row >= run.convergence_patience and step >= run.convergence_min_updates:
            break
    converged = passed_in_a_row >= run.convergence_patience
    return PretrainResult(step, converged, time.perf_counter() - started, history)


def plot_pretraining(history: Sequence[dict[str, float]], path: str | Path,
                     title: str = "pretraining") -> Path:
    """Losses and the value check against updates, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [record["step"] for record in history]
    figure, (losses, values) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("consistency_loss", "reward_loss", "q_loss", "v_loss"):
        if history and key in history[0]:
            losses.plot(steps, [record[key] for record in history], label=key)
    losses.set_yscale("log")
    losses.set_xlabel("updates")
    losses.set_title("losses (mean since the last check)")
    losses.legend(fontsize=8)
    values.plot(steps, [record["q_expert"] for record in history], label="Q on expert (o, a)")
    values.plot(steps, [record["return_expert"] for record in history], "--",
                label="their Monte-Carlo return")
    values.set_xlabel("updates")
    values.set_title("value check")
    values.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
