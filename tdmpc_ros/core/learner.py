"""FOWM's update step: model losses over a horizon-H latent rollout, AWR policy, target EMA.

One update on a batch of B sub-trajectories (time first):

- z_0 = enc(o_0), z_{t+1} = d(z_t, a_t) with the dataset actions only.
- consistency: || z_{t+1} - enc_target(o_{t+1}) ||^2, averaged over latent dimensions;
- reward: (R(z_t, a_t) - r_t)^2;
- Q: sum over heads of (Q_i(z_t, a_t) - (r_t + gamma * (1 - terminated_t) * V(enc(o_{t+1}))))^2,
  an in-sample target: only dataset transitions enter it, never a sampled or policy action;
- V: expectile regression of V(z_t) on min of two random target heads Q(z_t, a_t);
- each term weighted by rho^t, masked after the episode's end, summed over t, averaged over the
  batch (times importance weights) and its gradient scaled by 1/H;
- policy: advantage-weighted regression on the detached latents,
  w = min(exp(beta * (minQ_target(z, a) - V(z))), w_max),
  loss = -mean_t rho^t mean_b w log N(a; tanh(pi(z)), 1);
- every ``target_update_every`` updates the target encoder and Q heads move by ``target_tau``.

``learner.td_target: max_q`` swaps in standard TD-MPC for comparison: the Q target bootstraps
from min-of-2 target Q at the policy's action, and the policy ascends Q instead of AWR.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.memory import keep_freed_memory
from tdmpc_ros.core.planner import resolve_precision
from tdmpc_ros.core.replay import Batch
from tdmpc_ros.core.world_model import WorldModel, random_shift


def expectile_loss(diff: Tensor, tau: float) -> Tensor:
    """|tau - 1(diff < 0)| * diff^2 with diff = target - prediction (elementwise).

    With tau > 0.5, predictions below the target (diff > 0) cost more than those above,
    so the minimiser is an upper expectile of the target: V approaches max over in-sample Q.
    """
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.pow(2)


def td_target(reward: Tensor, terminated: Tensor, next_value: Tensor, discount: float) -> Tensor:
    """r + gamma * (1 - terminated) * V(next); a time limit is not a termination."""
    return reward + discount * (1.0 - terminated) * next_value


def gaussian_log_prob(action: Tensor, mean: Tensor) -> Tensor:
    """log N(action; mean, I), summed over the action dimensions."""
    return -0.5 * (action - mean).pow(2).sum(-1) - 0.5 * action.shape[-1] * math.log(2 * math.pi)


@dataclass
class UpdateResult:
    """What one update reports: scalar metrics and the new priorities of the batch's rows."""

    metrics: dict[str, float]
    priorities: np.ndarray


class Learner:
    """Owns the optimisers of a ``WorldModel`` and runs FOWM's update step."""

    METRICS = (
        "consistency_loss", "reward_loss", "q_loss", "v_loss", "model_loss", "pi_loss",
        "grad_norm", "pi_grad_norm", "q_mean", "v_mean", "advantage_mean", "awr_weight_mean",
    )

    def __init__(self, model: WorldModel, config: Config | None = None) -> None:
        keep_freed_memory()  # no page faults for each update's tensors (core/memory.py)
        self.model = model
        self.config = config or model.config
        lr = self.config.learner
        fused = model.device.type in ("cpu", "cuda")  # one kernel for all parameters
        self.model_optim = torch.optim.Adam(model.online_parameters(), lr=lr.lr, fused=fused)
        self.pi_optim = torch.optim.Adam(model.pi.parameters(), lr=lr.pi_lr, fused=fused)
        self.dtype = resolve_precision(lr.precision, model.device)
        self.generator = torch.Generator(device=model.device)
        self.generator.manual_seed(self.config.seed + 1)
        self.steps = 0
        horizon = self.config.horizon
        self._rho = torch.tensor([lr.rho**t for t in range(horizon)], device=model.device)[:, None]
        self._targets = list(model.target_encoder.parameters()) + list(model.target_q.parameters())
        self._sources = list(model.encoder.parameters()) + list(model.q.parameters())

    def update(self, batch: Batch) -> UpdateResult:
        """One gradient step of the model and one of the policy on ``batch``."""
        cfg, lr = self.config, self.config.learner
        model = self.model
        model.train()
        horizon, size = batch.horizon, batch.size
        if horizon != cfg.horizon:
            raise ValueError(f"batch horizon {horizon} differs from config horizon {cfg.horizon}")
        obs = self._augment(batch.obs)
        action, reward = batch.action, batch.reward
        rho = self._rho * batch.valid  # (H, B): rho^t inside the episode, 0 after it

        with self._autocast():
            first = {key: value[0] for key, value in obs.items()}
            following = {key: value[1:].flatten(0, 1) for key, value in obs.items()}
            with torch.no_grad():
                next_z, next_z_target = model.encode_online_and_target(following)
                next_value = self._bootstrap(next_z).float().view(horizon, size)
                q_target = td_target(reward, batch.terminated, next_value, cfg.discount)
                next_z_target = next_z_target.float().view(horizon, size, -1)

            z = model.encode(first)
            latents = [z]
            for t in range(horizon):
                z = model.next(z, action[t])
                latents.append(z)
            rollout = torch.stack(latents).float()  # (H + 1, B, L)
            z_flat = rollout[:-1].flatten(0, 1)  # z_0..z_{H-1}
            a_flat = action.flatten(0, 1)

            consistency = F.mse_loss(rollout[1:], next_z_target, reduction="none").mean(-1)
            reward_pred = model.predict_reward(z_flat, a_flat).float().view(horizon, size)
            reward_loss = (reward_pred - reward).pow(2)
            q_all = model.q_values(z_flat, a_flat).float().view(-1, horizon, size)  # (E, H, B)
            q_error = q_all - q_target
            q_loss = q_error.pow(2).sum(0)
            with torch.no_grad():
                heads = torch.randperm(model.q.heads, device=z.device,
                                       generator=self.generator)[:2]
                q_min = model.q_values(z_flat.detach(), a_flat, target=True, heads=heads)
                q_min = q_min.float().min(0).values.view(horizon, size)
            v_pred = model.value(z_flat).float().view(horizon, size)
            v_loss = expectile_loss(q_min - v_pred, lr.expectile)

            per_row = (rho * (
                lr.consistency_coef * consistency + lr.reward_coef * reward_loss
                + lr.q_coef * q_loss + lr.v_coef * v_loss
            )).sum(0)  # (B,)
            model_loss = (per_row * batch.weight).mean()
        self.model_optim.zero_grad(set_to_none=True)
        (model_loss / horizon).backward()  # the paper scales the gradient by 1/H
        grad_norm = torch.nn.utils.clip_grad_norm_(model.online_parameters(), lr.grad_clip_norm)
        self.model_optim.step()

        if lr.td_target == "max_q":
            pi_loss, pi_grad_norm, advantage, awr_weight = self._update_policy_max_q(
                rollout[:-1].detach(), rho
            )
        else:
            pi_loss, pi_grad_norm, advantage, awr_weight = self._update_policy(
                rollout[:-1].detach(), action, q_min, rho
            )

        self.steps += 1
        if self.steps % lr.target_update_every == 0:
            self.update_targets()
        model.mark_changed()
        with torch.no_grad():
            priority = (rho * q_error.abs().mean(0)).sum(0).clamp(max=1e4)
            values = torch.stack([
                (rho * consistency).sum(0).mean(), (rho * reward_loss).sum(0).mean(),
                (rho * q_loss).sum(0).mean(), (rho * v_loss).sum(0).mean(), model_loss,
                pi_loss, grad_norm, pi_grad_norm, q_all.mean(), v_pred.mean(),
                advantage.mean(), awr_weight.mean(),
            ]).tolist()
        return UpdateResult(dict(zip(self.METRICS, values, strict=True)), priority.cpu().numpy())

    def _update_policy(self, latents: Tensor, action: Tensor, q_min: Tensor,
                       rho: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lr = self.config.learner
        model = self.model
        with self._autocast():
            with torch.no_grad():  # V after the model step, as in the paper's code
                value = model.value(latents.flatten(0, 1)).float().view_as(q_min)
                advantage = q_min - value
                weight = torch.exp(lr.awr_temperature * advantage).clamp(max=lr.awr_max_weight)
            log_prob = gaussian_log_prob(action, model.policy(latents).float())  # (H, B)
            pi_loss = -(rho * weight * log_prob).mean(1).mean()
        self.pi_optim.zero_grad(set_to_none=True)
        pi_loss.backward()
        pi_grad_norm = torch.nn.utils.clip_grad_norm_(model.pi.parameters(), lr.grad_clip_norm)
        self.pi_optim.step()
        return pi_loss.detach(), pi_grad_norm, advantage, weight

    def _bootstrap(self, next_z: Tensor) -> Tensor:
        """The value the TD target bootstraps from: V(z') in-sample, or min-of-2 target Q at the
        policy's (noisy) action for max_q, as TD-MPC does."""
        model = self.model
        if self.config.learner.td_target != "max_q":
            return model.value(next_z)
        planner = self.config.planner
        action = model.policy(next_z)
        noise = torch.randn(action.shape, device=action.device, generator=self.generator)
        noise = (noise * planner.policy_noise_std).clamp(-planner.policy_noise_clip,
                                                         planner.policy_noise_clip)
        action = (action + noise.to(action.dtype)).clamp(-1.0, 1.0)
        heads = torch.randperm(model.q.heads, device=next_z.device, generator=self.generator)[:2]
        return model.q_values(next_z, action, target=True, heads=heads).min(0).values

    def _update_policy_max_q(self, latents: Tensor, rho: Tensor
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """TD-MPC's policy step: ascend min-of-2 Q(z, pi(z)); only the policy moves."""
        lr = self.config.learner
        model = self.model
        with self._autocast():
            flat = latents.flatten(0, 1)
            heads = torch.randperm(model.q.heads, device=flat.device, generator=self.generator)[:2]
            q = model.q_values(flat, model.policy(flat), heads=heads).float().min(0).values
            pi_loss = -(rho * q.view_as(rho)).mean(1).mean()
        self.pi_optim.zero_grad(set_to_none=True)
        pi_loss.backward(inputs=list(model.pi.parameters()))
        pi_grad_norm = torch.nn.utils.clip_grad_norm_(model.pi.parameters(), lr.grad_clip_norm)
        self.pi_optim.step()
        zero = torch.zeros((), device=flat.device)
        return pi_loss.detach(), pi_grad_norm, zero, zero

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.dtype)

    @torch.no_grad()
    def update_targets(self) -> None:
        """Move the target encoder and Q heads a step of ``target_tau`` towards the online ones."""
        torch._foreach_lerp_(self._targets, self._sources, self.config.learner.target_tau)

    def _augment(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        pad = self.config.model.shift_pad
        if "pixels" not in obs or pad == 0:
            return obs
        pixels = obs["pixels"]
        shifted = random_shift(pixels.flatten(0, 1), pad, self.generator).view_as(pixels)
        return {**obs, "pixels": shifted}

    # ---- state for checkpoints ------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        """Optimiser moments and step counts as named tensors (for ``checkpoint``)."""
        out = {"learner/steps": torch.tensor(self.steps, dtype=torch.int64)}
        for name, optim in (("model", self.model_optim), ("pi", self.pi_optim)):
            for index, state in optim.state_dict()["state"].items():
                for key, value in state.items():
                    out[f"optim/{name}/{index}/{key}"] = torch.as_tensor(value).detach().cpu()
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what ``state_tensors`` produced; unknown names raise ValueError."""
        if "learner/steps" in tensors:
            self.steps = int(tensors["learner/steps"])
        for name, optim in (("model", self.model_optim), ("pi", self.pi_optim)):
            state_dict = optim.state_dict()
            params = {i for group in state_dict["param_groups"] for i in group["params"]}
            state: dict[int, dict[str, Tensor]] = {}
            prefix = f"optim/{name}/"
            for key, value in tensors.items():
                if not key.startswith(prefix):
                    continue
                index_text, field = key[len(prefix):].split("/", 1)
                index = int(index_text)
                if index not in params:
                    raise ValueError(f"optimiser state {key} names no parameter")
                state.setdefault(index, {})[field] = value
            state_dict["state"] = state
            optim.load_state_dict(state_dict)
