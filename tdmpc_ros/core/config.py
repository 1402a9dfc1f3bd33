"""One typed configuration for the whole core, with the paper's defaults.

Every number here comes from FOWM (Feng et al., CoRL 2023) and its TD-MPC backbone unless a
comment says otherwise; ``shared/notes/fowm-method.md`` lists them. A config is plain data:
``Config.from_dict`` / ``Config.to_dict`` convert to and from nested dicts of built-in types
(for YAML files and checkpoint headers), and ``Config.validate`` raises ``ValueError`` naming
the first wrong field, e.g. ``planner.uncertainty_coef must be >= 0, got -1.0``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

OBS_TYPES = ("state", "pixels", "pixels+proprio")
PRECISIONS = ("auto", "float32", "bfloat16")
TD_TARGETS = ("in_sample", "max_q")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass
class ModelConfig:
    """The world model's architecture."""

    obs_type: str = "state"
    """Which observations the encoder reads: "state" (low-dim ``state``), "pixels" (84x84 RGB
    ``pixels``) or "pixels+proprio" (one latent from ``pixels``, one from ``proprio``, averaged)."""
    latent_dim: int = 50
    """Size of the latent state z."""
    mlp_dim: int = 512
    """Width of the hidden layers of dynamics, reward, Q, V and policy heads."""
    enc_dim: int = 256
    """Width of the hidden layer of the low-dimensional (state / proprio) encoder."""
    num_channels: int = 32
    """Channels of each of the four convolutions of the pixel encoder."""
    image_size: int = 84
    """Height and width of ``pixels`` observations (square, RGB, uint8, HWC)."""
    num_q: int = 5
    """Heads of the Q ensemble (evaluated as one batched operation)."""
    shift_pad: int = 4
    """Random-shift augmentation of pixels during learning: up to this many pixels (0: off)."""


@dataclass
class LearnerConfig:
    """The update step: losses, optimiser and target network."""

    batch_size: int = 256
    """Sub-trajectories per update."""
    rho: float = 0.5
    """Weight rho^t of the loss terms at rollout step t."""
    lr: float = 3e-4
    """Adam learning rate of the world model (encoder, dynamics, reward, Q, V)."""
    pi_lr: float = 3e-4
    """Adam learning rate of the policy prior."""
    grad_clip_norm: float = 10.0
    """Gradient norm clip, applied to the model and the policy separately."""
    consistency_coef: float = 20.0
    """Weight of the latent consistency loss (dynamics vs target encoder)."""
    reward_coef: float = 0.5
    """Weight of the reward prediction loss."""
    q_coef: float = 0.1
    """Weight of the Q loss (summed over the ensemble heads)."""
    v_coef: float = 0.1
    """Weight of the expectile V loss."""
    expectile: float = 0.9
    """Expectile tau of the V loss (0.9 for the xArm manipulation tasks, 0.7 elsewhere)."""
    awr_temperature: float = 3.0
    """Inverse temperature beta of advantage-weighted regression: w = exp(beta * A)."""
    awr_max_weight: float = 100.0
    """Upper clip of the advantage weights."""
    target_tau: float = 0.01
    """Moving-average rate of the target encoder and target Q heads."""
    target_update_every: int = 2
    """Updates between two moving-average steps of the target network."""
    action_clip_eps: float = 1e-5
    """Dataset actions are clipped to [-1 + eps, 1 - eps] when they enter a buffer."""
    td_target: str = "in_sample"
    """How Q and the policy learn: "in_sample" (FOWM: Q's target bootstraps from the expectile
    V, so only dataset actions enter it, and the policy is fitted by advantage-weighted
    regression) or "max_q" (standard TD-MPC: the target bootstraps from min-of-2 target Q at the
    policy's action, r + gamma * minQ'(z', pi(z')), and the policy ascends min-of-2 Q). "max_q" is
    the baseline that shows what in-sample learning adds offline."""
    precision: str = "auto"
    """Matrix products of the update: "float32" (the paper's arithmetic), "bfloat16" (autocast:
    hidden-layer products in bfloat16; weights, optimiser state, losses, LayerNorm and every
    output layer in float32; about 1.7x faster on CPUs with AMX), or "auto" (bfloat16 where the
    hardware multiplies it natively: CPUs with AMX, CUDA GPUs of compute capability >= 8.0)."""


@dataclass
class PlannerConfig:
    """MPPI over the latent model with an uncertainty penalty (FOWM's test-time regulariser)."""

    iterations: int = 6
    """MPPI iterations per plan (6 for xArm)."""
    num_samples: int = 512
    """Gaussian action sequences sampled per iteration."""
    num_elites: int = 50
    """Best sequences that refit the sampling distribution."""
    policy_fraction: float = 0.1
    """Policy-prior trajectories per plan, as a share of num_samples (0.1 -> 51 of 512);
    rolled out once per plan and scored with the Gaussian samples."""
    temperature: float = 0.5
    """Elite weights are exp(temperature * (score - best score))."""
    momentum: float = 0.1
    """Share of the previous iteration's mean kept in the new mean."""
    min_std: float = 0.05
    """Lower clamp of the sampling std; also the std of the exploration noise."""
    max_std: float = 2.0
    """Upper clamp of the sampling std, and the std each plan starts from."""
    uncertainty_coef: float = 1.0
    """lambda: the score subtracts lambda * std of the Q ensemble at every step (0 turns it off;
    1 for xArm, 20 for hopper, 3 for antmaze)."""
    policy_noise_std: float = 0.05
    """Std of the noise on policy-prior actions (policy trajectories and terminal action)."""
    policy_noise_clip: float = 0.3
    """Clip of that noise."""
    warm_start: bool = True
    """Start each plan from the previous plan's mean shifted by one step."""
    precision: str = "auto"
    """Arithmetic of the planning rollouts: "float32", "bfloat16", or "auto" (bfloat16 where the
    hardware multiplies it natively: CPUs with AMX, CUDA GPUs of compute capability >= 8.0;
    float32 elsewhere). Learning is always float32."""
    compile: bool = False
    """Wrap the rollout in torch.compile (slow start; off by default)."""
    cuda_graphs: bool = False
    """On CUDA, capture the rollout in a CUDA graph and replay it (ignored on CPU)."""


@dataclass
class ReplayConfig:
    """Offline and online buffers and how batches are drawn from them."""

    offline_fraction: float = 0.5
    """Share of every batch drawn from the offline buffer once the online one has data."""
    online_capacity: int = 1_000_000
    """Most transitions the online buffer keeps; the oldest episodes go first."""
    prioritized: bool = True
    """Prioritised replay (the paper's code has it on); each buffer has its own priorities."""
    alpha: float = 0.6
    """Priority exponent."""
    beta: float = 0.4
    """Importance-sampling exponent."""
    priority_eps: float = 1e-4
    """Added to priorities so no transition is starved."""


@dataclass
class RunConfig:
    """Schedules of the command-line runs (pretrain, finetune, eval)."""

    offline_updates: int = 25_000
    """Gradient updates of offline pretraining (25k for xArm)."""
    online_episodes: int = 20
    """Episodes of online finetuning."""
    updates_per_step: float = 1.0
    """Online updates per environment step collected (after each episode)."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    action_repeat: int = 1
    """Environment steps per agent action, for gymnasium envs that do not repeat actions
    themselves. 1 for the project's xArm tasks: one of their steps already runs the paper's
    action repeat of 2 (``tasks.TaskSpec.action_repeat``), 25 agent steps an episode."""
    max_episode_steps: int = 0
    """Agent steps before an episode is truncated (0: the environment's own limit)."""
    log_every: int = 100
    """Updates between two progress lines."""
    convergence_check_every: int = 500
    """Pretraining: updates between two value checks (``core.pretraining``: Q on the dataset's
    successful episodes against their Monte-Carlo return)."""
    convergence_tolerance: float = 0.1
    """Pretraining stops once Q has reached at least (1 - this) of that return ..."""
    convergence_patience: int = 2
    """... at this many checks in a row; otherwise it runs to ``offline_updates``."""
    convergence_min_updates: int = 0
    """Pretraining runs at least this many updates, whatever the checks say."""
    checkpoint_every: int = 5_000
    """Updates between two checkpoints (0: only at the end)."""


@dataclass
class Config:
    """Everything the core needs. Sub-sections group the settings; see each class."""

    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    run: RunConfig = field(default_factory=RunConfig)
    horizon: int = 5
    """Steps of the latent rollout, in learning and in planning."""
    discount: float = 0.9
    """gamma, in TD targets and plan scores (0.9 for xArm's 25-step episodes)."""
    seed: int = 1
    """Seed of every random generator the core creates."""
    device: str = "auto"
    """"cpu", "cuda", "cuda:N", or "auto" (cuda when available)."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default, one per core). Where processes share few
    cores (planner and learner nodes on a 2-core computer) give each fewer: oversubscribed
    thread pools spin and stall, which slowed small models here by 10x or more."""

    # ---- conversion -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of built-in types (JSON and YAML safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        """Build and validate a config from a (possibly partial) nested dict.

        Missing fields keep their defaults; an unknown field or a value of the wrong type
        raises ValueError naming it.
        """
        config = _build(cls, data or {}, prefix="")
        config.validate()
        return config

    def replace(self, **overrides: Any) -> Config:
        """A copy with dotted-path overrides, e.g. ``replace(**{"learner.batch_size": 64})``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            set_dotted(data, dotted, value)
        return Config.from_dict(data)

    # ---- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the first field with a wrong value."""
        m, lr, p, r, run = self.model, self.learner, self.planner, self.replay, self.run
        _choice("model.obs_type", m.obs_type, OBS_TYPES)
        for name in ("latent_dim", "mlp_dim", "enc_dim", "num_channels"):
            _at_least(f"model.{name}", getattr(m, name), 1)
        _at_least("model.num_q", m.num_q, 2)  # min-of-2 targets and a std need two heads
        _at_least("model.image_size", m.image_size, 64)  # four stride-2 convolutions
        _at_least("model.shift_pad", m.shift_pad, 0)

        _at_least("learner.batch_size", lr.batch_size, 1)
        _in_range("learner.rho", lr.rho, 0.0, 1.0, low_open=True)
        for name in ("lr", "pi_lr", "grad_clip_norm", "awr_max_weight"):
            _positive(f"learner.{name}", getattr(lr, name))
        for name in ("consistency_coef", "reward_coef", "q_coef", "v_coef", "awr_temperature"):
            _at_least(f"learner.{name}", getattr(lr, name), 0.0)
        _in_range("learner.expectile", lr.expectile, 0.0, 1.0, low_open=True, high_open=True)
        _in_range("learner.target_tau", lr.target_tau, 0.0, 1.0, low_open=True)
        _at_least("learner.target_update_every", lr.target_update_every, 1)
        _in_range("learner.action_clip_eps", lr.action_clip_eps, 0.0, 0.1)
        _choice("learner.precision", lr.precision, PRECISIONS)
        _choice("learner.td_target", lr.td_target, TD_TARGETS)

        _at_least("planner.iterations", p.iterations, 1)
        _at_least("planner.num_samples", p.num_samples, 1)
        _at_least("planner.num_elites", p.num_elites, 1)
        if p.num_elites > p.num_samples + int(p.policy_fraction * p.num_samples):
            raise ValueError(
                f"planner.num_elites ({p.num_elites}) must not exceed the sequences scored per "
                f"iteration ({p.num_samples} samples + policy trajectories)"
            )
        _in_range("planner.policy_fraction", p.policy_fraction, 0.0, 1.0)
        _at_least("planner.temperature", p.temperature, 0.0)
        _in_range("planner.momentum", p.momentum, 0.0, 1.0, high_open=True)
        _positive("planner.min_std", p.min_std)
        if p.max_std < p.min_std:
            raise ValueError(f"planner.max_std ({p.max_std}) must be >= min_std ({p.min_std})")
        _at_least("planner.uncertainty_coef", p.uncertainty_coef, 0.0)
        _at_least("planner.policy_noise_std", p.policy_noise_std, 0.0)
        _at_least("planner.policy_noise_clip", p.policy_noise_clip, 0.0)
        _choice("planner.precision", p.precision, PRECISIONS)

        _in_range("replay.offline_fraction", r.offline_fraction, 0.0, 1.0)
        _at_least("replay.online_capacity", r.online_capacity, 1)
        _at_least("replay.alpha", r.alpha, 0.0)
        _in_range("replay.beta", r.beta, 0.0, 1.0)
        _positive("replay.priority_eps", r.priority_eps)

        _at_least("run.offline_updates", run.offline_updates, 0)
        _at_least("run.online_episodes", run.online_episodes, 0)
        _at_least("run.updates_per_step", run.updates_per_step, 0.0)
        _at_least("run.eval_episodes", run.eval_episodes, 0)
        _at_least("run.action_repeat", run.action_repeat, 1)
        _at_least("run.max_episode_steps", run.max_episode_steps, 0)
        _at_least("run.log_every", run.log_every, 1)
        _at_least("run.checkpoint_every", run.checkpoint_every, 0)
        _at_least("run.convergence_check_every", run.convergence_check_every, 1)
        _in_range("run.convergence_tolerance", run.convergence_tolerance, 0.0, 1.0)
        _at_least("run.convergence_patience", run.convergence_patience, 1)
        _at_least("run.convergence_min_updates", run.convergence_min_updates, 0)

        _at_least("horizon", self.horizon, 1)
        _in_range("discount", self.discount, 0.0, 1.0, low_open=True)
        _at_least("seed", self.seed, 0)
        if not _DEVICE_PATTERN.match(self.device):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        _at_least("threads", self.threads, 0)

    # ---- derived values ---------------------------------------------------------------------

    @property
    def num_policy_trajectories(self) -> int:
        return int(self.planner.policy_fraction * self.planner.num_samples)

    def torch_device(self) -> torch.device:
        """The device this config asks for; "auto" picks CUDA when it is available."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device is {self.device!r} but CUDA is not available here")
        return device


def paper_config(**overrides: Any) -> Config:
    """The paper's settings for the xArm tasks (the defaults), with dotted overrides."""
    return Config().replace(**overrides)


def fast_config(**overrides: Any) -> Config:
    """A lighter setting for slow computers: 256-wide heads, 256 samples, 4 iterations.

    Not from the paper; it trades plan quality for a plan several times faster.
    """
    fast = {
        "model.mlp_dim": 256,
        "planner.num_samples": 256,
        "planner.iterations": 4,
        "planner.num_elites": 32,
    }
    fast.update(overrides)
    return Config().replace(**fast)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating sub-dicts."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted}: {key!r} is not a section")
    node[keys[-1]] = value


# ---- helpers --------------------------------------------------------------------------------


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config field {prefix}{unknown[0]} (known: {sorted(known)})")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, prefix=f"{path}.")
        else:
            values[name] = _coerce(path, hint, value)
    return cls(**values)


def _coerce(path: str, hint: Any, value: Any) -> Any:
    """Check (and widen int to float) one scalar against its annotation."""
    if isinstance(hint, types.UnionType):
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{path} must be a string, got {value!r}")
        return value
    return value


def _choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{path} must be one of {list(choices)}, got {value!r}")


def _at_least(path: str, value: float, low: float) -> None:
    if not value >= low:
        raise ValueError(f"{path} must be >= {low}, got {value!r}")


def _positive(path: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{path} must be > 0, got {value!r}")


def _in_range(
    path: str,
    value: float,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{path} must be in {left}{low}, {high}{right}, got {value!r}")
