"""MPPI over the latent model with FOWM's uncertainty penalty.

The score of an action sequence a_0..a_{H-1} from latent z_0 is

    sum_{t<H} gamma^t (R(z_t, a_t) - lambda * std_i Q_i(z_t, a_t))
      + gamma^H (min_{2 random heads} Q(z_H, pi(z_H)) - lambda * std_i Q_i(z_H, pi(z_H)))

with the unbiased std over all Q heads; lambda = 0 gives TD-MPC's plain MPPI. Each plan starts
from the previous plan's mean shifted by one step (warm start), mixes in trajectories of the
policy prior, refits a Gaussian to the elites ``iterations`` times and returns the first action
of one elite drawn by its weight, with a ``PlanSummary`` for logging and the latent-plan message.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.world_model import (
    PlanningModel,
    WorldModel,
    obs_to_tensors,
    parameter_fingerprint,
)


class LatentModel(Protocol):
    """What the planner needs from a model (``PlanningModel`` and hand-made test models)."""

    action_dim: int
    latent_dim: int
    num_q: int

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """A batch of observations (N, ...) -> latents (N, L)."""

    def step(self, z: Tensor, a: Tensor, with_q: bool = True
             ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(z_t, a_t) -> (z_{t+1}, reward_t (N,) float32, Q heads at (z_t, a_t) (E, N) or None)."""

    def q(self, z: Tensor, a: Tensor) -> Tensor:
        """All Q heads at (z, a): (E, N) float32."""

    def pi(self, z: Tensor) -> Tensor:
        """The policy prior's mean action in [-1, 1]: (N, A)."""


@dataclass
class PlanSummary:
    """One plan, with everything the LatentPlan message carries (numpy, on the CPU).

    H is the horizon, A the action size, L the latent size, K the elites. ``score``,
    ``expected_return`` and ``uncertainty_penalty`` are recomputed along the chosen sequence
    (terminal action pi(z_H) without noise), so score = expected_return - uncertainty_penalty.
    """

    action: np.ndarray
    """(A,) the action to execute: first action of the chosen elite (+ exploration noise)."""
    actions: np.ndarray
    """(H, A) the chosen elite sequence; row 0 is executed."""
    mean: np.ndarray
    """(H, A) mean of the final sampling distribution (the next plan's warm start)."""
    std: np.ndarray
    """(H, A) std of the final sampling distribution."""
    latents: np.ndarray
    """(H + 1, L) z_0 = enc(o), then the latent rollout of the chosen sequence."""
    rewards: np.ndarray
    """(H,) predicted rewards R(z_t, a_t) along the chosen sequence."""
    q_mean: np.ndarray
    """(H + 1,) Q-ensemble mean at (z_t, a_t), and at (z_H, pi(z_H)) last."""
    q_std: np.ndarray
    """(H + 1,) Q-ensemble std at the same points: the model's uncertainty."""
    score: float
    """expected_return - uncertainty_penalty."""
    expected_return: float
    """sum_t gamma^t r_t + gamma^H min-of-2 Q(z_H, pi(z_H))."""
    uncertainty_penalty: float
    """lambda * sum_{t <= H} gamma^t q_std[t]."""
    elite_values: np.ndarray
    """(K,) MPPI scores of the last iteration's elites, best first."""
    elite_weights: np.ndarray
    """(K,) their normalised weights."""
    uncertainty_coef: float
    """lambda (0: plain MPPI)."""
    discount: float
    iterations: int
    num_samples: int
    num_policy_trajectories: int
    explored: bool
    """Whether exploration noise was added to ``action``."""
    weights_version: int
    """The version of the weights that made this plan (-1: unknown)."""
    plan_ms: float
    """Wall time of the plan in milliseconds."""
    device: str
    """Where it ran, e.g. "cpu" or "cuda:0"."""

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, e.g. for JSON logs."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


def cpu_bf16_native() -> str:
    """What makes this CPU multiply bfloat16 natively: "amx", "avx512_bf16", or "" (none)."""
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return ""


def cpu_summary() -> dict[str, Any]:
    """This CPU's model name and the instruction sets that decide planning speed."""
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 - read to the end
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx2", "fma")
    return {"model": model, "flags": [flag for flag in wanted if flag in flags],
            "bf16_native": cpu_bf16_native() or "none"}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the planning rollouts and learner updates for a ``precision`` setting.

    ``auto``: bfloat16 where the hardware multiplies it natively (CUDA from compute capability
    8.0; a CPU with AMX or AVX512-BF16), float32 elsewhere. Measured on an AMD EPYC with
    AVX512-BF16 and no AMX (2 threads, 2026-12-02): a paper-setting plan 464 ms in bfloat16 vs
    687 ms in float32, state updates 6.0 vs 4.4 per s, pixel updates 1.25 vs 0.79 per s.
    """
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float32
    if device.type == "cpu" and cpu_bf16_native():
        return torch.bfloat16
    return torch.float32


def plan_flops(config: Config, obs_shapes: Mapping[str, tuple[int, ...]],
               action_dim: int) -> float:
    """Floating-point operations (2 per multiply-add) of one plan's arithmetic, the paper's
    maths counted as written: the encoder once; then every rollout row, each step, dynamics and
    reward (and the Q ensemble where lambda > 0, for its spread), and at the horizon the policy
    and the Q ensemble; the policy trajectories also run the policy at each step. Elementwise
    work is left out. Paper settings, state input: about 76 GFLOP, of which the Q ensemble is
    2.9 of the 4.2 MFLOP per sample and step."""
    m, p = config.model, config.planner
    latent, hidden, heads = m.latent_dim, m.mlp_dim, m.num_q

    def mlp(inputs: int, outputs: int) -> int:  # Linear, (LN), Linear, (LN), Linear
        return 2 * (inputs * hidden + hidden * hidden + hidden * outputs)

    dynamics, reward = mlp(latent + action_dim, latent), mlp(latent + action_dim, 1)
    policy = mlp(latent, action_dim)
    q = heads * mlp(latent + action_dim, 1)
    step = dynamics + reward + (q if p.uncertainty_coef > 0 else 0)
    policy_rows = config.num_policy_trajectories
    rows = p.iterations * p.num_samples + policy_rows
    rollout = rows * (config.horizon * step + policy + q) + policy_rows * config.horizon * policy
    return float(rollout + _encoder_flops(config, obs_shapes))


def _encoder_flops(config: Config, obs_shapes: Mapping[str, tuple[int, ...]]) -> int:
    m = config.model
    flops = 0
    for key, shape in obs_shapes.items():
        if key == "pixels" and "pixels" in m.obs_type:
            side, channels_in = m.image_size, 3
            for kernel in (7, 5, 3, 3):
                side = (side - kernel) // 2 + 1
                flops += 2 * side * side * m.num_channels * channels_in * kernel * kernel
                channels_in = m.num_channels
            flops += 2 * side * side * m.num_channels * m.latent_dim
        elif key in ("state", "proprio") and (key in m.obs_type or m.obs_type == key):
            flops += 2 * (shape[0] * m.enc_dim + m.enc_dim * m.latent_dim)
    return flops


class Planner:
    """MPPI with warm start, policy-prior samples and the uncertainty-penalised score.

    ``model`` is a ``WorldModel`` (the planner keeps a fused copy of it and rebuilds that copy
    whenever the model's weights change) or any object with the ``LatentModel`` methods.
    """

    def __init__(self, model: WorldModel | LatentModel, config: Config,
                 device: torch.device | str | None = None) -> None:
        config.validate()
        self.config = config
        self.source = model
        if isinstance(model, WorldModel):
            self.device = model.device
        else:
            self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = resolve_precision(config.planner.precision, self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self._model: LatentModel | None = None if isinstance(model, WorldModel) else model
        self._fingerprint: tuple[int, int, int] | None = None
        self._prev_mean: Tensor | None = None
        self._graph: Any = None
        p = config.planner
        horizon, samples = config.horizon, p.num_samples
        self.num_pi = config.num_policy_trajectories
        action_dim = model.action_dim
        self._actions = torch.empty(horizon, samples + self.num_pi, action_dim, device=self.device)
        self._values = torch.empty(samples + self.num_pi, device=self.device)
        self._gamma = torch.tensor(
            [config.discount**t for t in range(horizon + 1)], device=self.device
        )
        # Each sequence's rollout as it was scored (latents, rewards, Q-ensemble mean and std,
        # terminal value), so that the chosen one's trace is read, not rolled out again.
        rows = samples + self.num_pi
        self._record = {
            "z": torch.empty(horizon + 1, rows, model.latent_dim, device=self.device),
            "reward": torch.empty(horizon, rows, device=self.device),
            "q_mean": torch.empty(horizon + 1, rows, device=self.device),
            "q_std": torch.empty(horizon + 1, rows, device=self.device),
            "terminal": torch.empty(rows, device=self.device),
        }
        self._score_fn = self._score
        if p.compile:
            self._score_fn = torch.compile(self._score, dynamic=False)

    # ---- public -------------------------------------------------------------------------

    @property
    def model(self) -> LatentModel:
        """The model rollouts use; for a WorldModel, a fused copy of its current weights."""
        if isinstance(self.source, WorldModel):
            fingerprint = parameter_fingerprint(self.source)
            with torch.inference_mode():  # its tensors are inference tensors, always
                if self._model is None:
                    self._model = PlanningModel(self.source, self.dtype)
                elif fingerprint != self._fingerprint:
                    self._model.refresh(self.source)  # in place: compiled code stays valid
            self._fingerprint = fingerprint
        return self._model

    def reset(self) -> None:
        """Forget the warm start: call at the start of every episode."""
        self._prev_mean = None

    @torch.inference_mode()
    def plan(self, obs: Mapping[str, Any] | None = None, *, z: Tensor | None = None,
             explore: bool = False) -> tuple[np.ndarray, PlanSummary]:
        """Plan from one observation dict (no batch dimension) or a latent ``z`` (L,) / (1, L).

        Returns the action (A,) float32 in [-1, 1] and the plan's summary. ``explore`` adds
        the final std of the first step times Gaussian noise to the action.
        """
        start = time.perf_counter()
        model = self.model
        p, horizon = self.config.planner, self.config.horizon
        if z is None:
            if obs is None:
                raise ValueError("plan() needs an observation or a latent")
            keys = getattr(self.source, "obs_keys", tuple(obs))
            z = model.encode(obs_to_tensors(obs, keys, self.device))
        z0 = z.reshape(1, -1).to(self.device, torch.float32)
        gen = self.generator
        samples, num_pi = p.num_samples, self.num_pi
        actions, values = self._actions, self._values

        action_dim = actions.shape[-1]
        mean = torch.zeros(horizon, action_dim, device=self.device)
        std = torch.full((horizon, action_dim), p.max_std, device=self.device)
        if p.warm_start and self._prev_mean is not None:
            mean[:-1] = self._prev_mean[1:]

        # Recording is for the eager path; compiled or graph-captured scoring, and lam 0 (no Q
        # at each step), trace the chosen sequence again afterwards.
        record = self._record if (p.uncertainty_coef > 0 and not p.compile
                                  and not (p.cuda_graphs and self.device.type == "cuda")
                                  ) else None
        for iteration in range(p.iterations):
            noise = torch.randn(horizon, samples, action_dim, device=self.device, generator=gen)
            torch.addcmul(mean[:, None], std[:, None], noise, out=actions[:, :samples])
            actions[:, :samples].clamp_(-1.0, 1.0)
            if iteration == 0 and num_pi > 0:
                # the policy trajectories join the first batch: their actions are drawn from
                # the noisy policy prior during the rollout, their scores kept for the rest
                policy_noise = self._policy_noise(horizon * num_pi, action_dim)
                values[:] = self._score(
                    model, z0, actions, self._policy_noise(samples + num_pi, action_dim),
                    self._head_pair(model.num_q), policy_noise.view(horizon, num_pi, -1),
                    record)
            else:
                values[:samples] = self._score_gaussian(model, z0, actions[:, :samples],
                                                        record)
            elite_values, elite_idx = torch.topk(values, p.num_elites, sorted=True)
            elite_actions = actions[:, elite_idx]  # (H, K, A)
            weights = torch.exp(p.temperature * (elite_values - elite_values[0]))
            weights = weights / weights.sum()
            new_mean = torch.einsum("k,hka->ha", weights, elite_actions)
            new_var = torch.einsum("k,hka->ha", weights, (elite_actions - new_mean[:, None]) ** 2)
            mean = p.momentum * mean + (1.0 - p.momentum) * new_mean
            std = new_var.sqrt().clamp_(p.min_std, p.max_std)

        choice = torch.multinomial(weights, 1, generator=gen)[0]
        chosen = elite_actions[:, choice]  # (H, A)
        row = int(elite_idx[choice])
        self._prev_mean = mean
        action = chosen[0]
        if explore:
            action = action + std[0] * torch.randn(action_dim, device=self.device, generator=gen)
        action = action.clamp(-1.0, 1.0)
        trace = (self._recorded_trace(row) if record is not None
                 else self._trace(model, z0, chosen))
        summary = PlanSummary(
            action=_np(action),
            actions=_np(chosen),
            mean=_np(mean),
            std=_np(std),
            elite_values=_np(elite_values),
            elite_weights=_np(weights),
            uncertainty_coef=p.uncertainty_coef,
            discount=self.config.discount,
            iterations=p.iterations,
            num_samples=samples,
            num_policy_trajectories=num_pi,
            explored=explore,
            weights_version=int(getattr(self.source, "weights_version", -1)),
            plan_ms=(time.perf_counter() - start) * 1e3,
            device=str(self.device),
            **trace,
        )
        return summary.action, summary

    @torch.inference_mode()
    def score(self, z0: Tensor, actions: Tensor, terminal_noise: Tensor | None = None,
              head_pair: Tensor | None = None) -> Tensor:
        """Scores (N,) of action sequences (H, N, A) from one latent z0 (L,) or (1, L).

        ``terminal_noise`` (N, A) perturbs the terminal policy action and ``head_pair`` (2,)
        picks the heads of the terminal min; both are drawn at random when not given.
        """
        model = self.model
        z0 = z0.reshape(1, -1).to(self.device, torch.float32)
        n, action_dim = actions.shape[1], actions.shape[2]
        if terminal_noise is None:
            terminal_noise = self._policy_noise(n, action_dim)
        if head_pair is None:
            head_pair = self._head_pair(model.num_q)
        return self._score_fn(model, z0, actions.to(self.device), terminal_noise, head_pair)

    # ---- internals ------------------------------------------------------------------------

    def _score(self, model: LatentModel, z0: Tensor, actions: Tensor, terminal_noise: Tensor,
               head_pair: Tensor, policy_noise: Tensor | None = None,
               record: dict[str, Tensor] | None = None) -> Tensor:
        """Scores of ``actions`` (H, N, A); deterministic given its inputs, so it can be compiled
        or captured in a CUDA graph. With ``policy_noise`` (H, P, A), the last P sequences are
        the policy prior's: their actions are written into ``actions`` during the rollout.
        ``record`` (only with lambda > 0) receives each sequence's rollout in its first N rows."""
        lam = self.config.planner.uncertainty_coef
        horizon, n = actions.shape[0], actions.shape[1]
        policy_rows = 0 if policy_noise is None else policy_noise.shape[1]
        z = z0.expand(n, -1)
        if record is not None:
            record["z"][0, :n] = z0
        total = torch.zeros(n, device=actions.device)
        for t in range(horizon):
            if policy_rows:
                prior = model.pi(z[n - policy_rows:]) + policy_noise[t]
                actions[t, n - policy_rows:] = prior.clamp(-1.0, 1.0)
            z, reward, q = model.step(z, actions[t], with_q=lam > 0)
            if lam > 0:
                mean, spread = _ensemble_mean_std(q)
                if record is not None:
                    record["z"][t + 1, :n] = z
                    record["reward"][t, :n] = reward
                    record["q_mean"][t, :n] = mean
                    record["q_std"][t, :n] = spread
                reward = reward - lam * spread
            total = total + self._gamma[t] * reward
        terminal_action = (model.pi(z) + terminal_noise).clamp(-1.0, 1.0)
        q = model.q(z, terminal_action)
        terminal = q[head_pair].min(0).values
        if lam > 0:
            mean, spread = _ensemble_mean_std(q)
            if record is not None:
                record["q_mean"][horizon, :n] = mean
                record["q_std"][horizon, :n] = spread
                record["terminal"][:n] = terminal
            terminal = terminal - lam * spread
        total = total + self._gamma[horizon] * terminal
        return torch.nan_to_num(total, nan=0.0)

    def _score_gaussian(self, model: LatentModel, z0: Tensor, actions: Tensor,
                        record: dict[str, Tensor] | None = None) -> Tensor:
        n, action_dim = actions.shape[1], actions.shape[2]
        noise = self._policy_noise(n, action_dim)
        pair = self._head_pair(model.num_q)
        if self.config.planner.cuda_graphs and self.device.type == "cuda":
            return self._graph_score(model, z0, actions, noise, pair)
        if record is not None:
            return self._score(model, z0, actions, noise, pair, record=record)
        return self._score_fn(model, z0, actions, noise, pair)

    def _graph_score(self, model: LatentModel, z0: Tensor, actions: Tensor, noise: Tensor,
                     pair: Tensor) -> Tensor:
        """Replay a CUDA graph of ``_score`` captured on static buffers (built on first use)."""
        if self._graph is None:
            static = {"z0": z0.clone(), "actions": actions.clone(), "noise": noise.clone(),
                      "pair": pair.clone()}
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm-up outside the graph, as CUDA graphs need
                for _ in range(2):
                    self._score(model, static["z0"], static["actions"], static["noise"],
                                static["pair"])
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static["out"] = self._score(
                    model, static["z0"], static["actions"], static["noise"], static["pair"]
                )
            self._graph = (graph, static)
        graph, static = self._graph
        static["z0"].copy_(z0)
        static["actions"].copy_(actions)
        static["noise"].copy_(noise)
        static["pair"].copy_(pair)
        graph.replay()
        return static["out"].clone()

    def _policy_noise(self, n: int, action_dim: int) -> Tensor:
        p = self.config.planner
        noise = torch.randn(n, action_dim, device=self.device, generator=self.generator)
        return (noise * p.policy_noise_std).clamp_(-p.policy_noise_clip, p.policy_noise_clip)

    def _head_pair(self, num_q: int) -> Tensor:
        return torch.randperm(num_q, device=self.device, generator=self.generator)[:2]

    def _recorded_trace(self, row: int) -> dict[str, Any]:
        """The trace of sequence ``row`` as it was scored: the same numbers that ranked it."""
        record, horizon = self._record, self.config.horizon
        lam = self.config.planner.uncertainty_coef
        rewards, q_std = record["reward"][:, row], record["q_std"][:, row]
        expected = float((self._gamma[:horizon] * rewards).sum()
                         + self._gamma[horizon] * record["terminal"][row])
        penalty = float(lam * (self._gamma * q_std).sum())
        return {
            "latents": _np(record["z"][:, row]),
            "rewards": _np(rewards),
            "q_mean": _np(record["q_mean"][:, row]),
            "q_std": _np(q_std),
            "score": expected - penalty,
            "expected_return": expected,
            "uncertainty_penalty": penalty,
        }

    def _trace(self, model: LatentModel, z0: Tensor, actions: Tensor) -> dict[str, Any]:
        """Latents, rewards, Q statistics and the score's parts along one sequence (H, A)."""
        lam, horizon = self.config.planner.uncertainty_coef, actions.shape[0]
        z = z0
        latents, rewards, q_heads = [z0.float()], [], []
        for t in range(horizon):
            z, reward, q = model.step(z, actions[t : t + 1], with_q=True)
            latents.append(z.float())
            rewards.append(reward)
            q_heads.append(q)
        q_heads.append(model.q(z, model.pi(z)))
        q_all = torch.cat(q_heads, 1)  # (E, H + 1)
        q_std = _ensemble_std(q_all)
        terminal = q_all[self._head_pair(model.num_q), -1].min()
        rewards_t = torch.cat(rewards)
        expected = (self._gamma[:horizon] * rewards_t).sum() + self._gamma[horizon] * terminal
        penalty = lam * (self._gamma * q_std).sum()
        expected, penalty = float(expected), float(penalty)
        return {
            "latents": _np(torch.cat(latents)),
            "rewards": _np(rewards_t),
            "q_mean": _np(q_all.mean(0)),
            "q_std": _np(q_std),
            "score": expected - penalty,
            "expected_return": expected,
            "uncertainty_penalty": penalty,
        }


def _ensemble_std(q: Tensor) -> Tensor:
    """The unbiased std over heads of q (E, N): q.std(0), written out because torch's std over
    a short leading dimension is several times slower on the CPU than these four small ops."""
    return _ensemble_mean_std(q)[1]


def _ensemble_mean_std(q: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and unbiased std over heads of q (E, N)."""
    mean = q.mean(0)
    deviation = q - mean
    return mean, deviation.square_().sum(0).div_(q.shape[0] - 1).sqrt_()


def _np(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
