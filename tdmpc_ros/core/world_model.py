"""The TD-MPC world model of FOWM: encoders, latent dynamics, reward, Q ensemble, V and policy.

Shapes follow ``shared/notes/fowm-method.md``. Observations enter as a dict of tensors with a
leading batch dimension: ``state``/``proprio`` float (N, D), ``pixels`` uint8 (N, 84, 84, 3)
HWC; the pixel encoder converts to CHW float itself. The Q ensemble keeps its heads' weights
stacked, so all heads run as one batched matrix product.

``PlanningModel`` is a frozen, fused copy of the heads the planner calls (optionally in
bfloat16) so that a plan is a handful of large matrix products per step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdmpc_ros.core.config import Config

OBS_KEYS = {"state": ("state",), "pixels": ("pixels",), "pixels+proprio": ("pixels", "proprio")}


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs to know about its task: observation shapes and action size."""

    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int

    @classmethod
    def from_observation(cls, observation: Mapping[str, np.ndarray], action_dim: int) -> ModelSpec:
        """From one observation dict (no batch dimension) and the action size."""
        shapes = {key: tuple(int(s) for s in np.shape(value)) for key, value in observation.items()}
        return cls(obs_shapes=shapes, action_dim=int(action_dim))

    @classmethod
    def from_episode(cls, episode) -> ModelSpec:  # episodes.Episode; no import cycle needed
        shapes = {key: tuple(int(s) for s in value.shape[1:])
                  for key, value in episode.observations.items()}
        return cls(obs_shapes=shapes, action_dim=int(episode.actions.shape[1]))

    def to_dict(self) -> dict:
        return {"obs_shapes": {k: list(v) for k, v in self.obs_shapes.items()},
                "action_dim": self.action_dim}

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelSpec:
        return cls(obs_shapes={k: tuple(int(s) for s in v) for k, v in data["obs_shapes"].items()},
                   action_dim=int(data["action_dim"]))

    def check(self, obs_type: str, image_size: int) -> None:
        """Raise ValueError unless the observations the encoder needs are here and well shaped."""
        for key in OBS_KEYS[obs_type]:
            if key not in self.obs_shapes:
                raise ValueError(
                    f"model.obs_type {obs_type!r} needs observation {key!r}; "
                    f"the task has {sorted(self.obs_shapes)}"
                )
        if "pixels" in OBS_KEYS[obs_type]:
            expected = (image_size, image_size, 3)
            if self.obs_shapes["pixels"] != expected:
                raise ValueError(
                    f"pixels have shape {self.obs_shapes['pixels']}, expected {expected} (HWC)"
                )
        for key in ("state", "proprio"):
            if key in OBS_KEYS[obs_type] and len(self.obs_shapes[key]) != 1:
                raise ValueError(f"{key} must be a vector, has shape {self.obs_shapes[key]}")
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")


# ---- building blocks ------------------------------------------------------------------------


class OutputLinear(nn.Linear):
    """The last Linear of a head: always float32, also under bfloat16 autocast, so that
    values, rewards, latents and actions are never rounded to bfloat16's 3 digits."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight, self.bias)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear, LayerNorm, Mish, Linear, LayerNorm, Mish, Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Mish(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.Mish(),
        OutputLinear(hidden, out_dim),
    )


class EnsembleLinear(nn.Module):
    """E independent linear layers, weights stacked as (E, in, out), run as one batched product."""

    def __init__(self, heads: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(heads, 1, out_features))
        for head in range(heads):  # orthogonal per head, as for a plain Linear (out, in)
            nn.init.orthogonal_(self.weight.data[head].T)

    def forward(self, x: Tensor, heads: Tensor | None = None) -> Tensor:
        """x: (N, in) shared by every head, or (E, N, in); returns (E, N, out)."""
        weight, bias = self.weight, self.bias
        if heads is not None:
            weight, bias = weight[heads], bias[heads]
        if x.dim() == 2:
            return torch.matmul(x, weight) + bias
        return torch.baddbmm(bias, x, weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with one affine transform per head; input (E, N, D)."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(heads, 1, dim))
        self.bias = nn.Parameter(torch.zeros(heads, 1, dim))

    def forward(self, x: Tensor, heads: Tensor | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if heads is not None:
            weight, bias = weight[heads], bias[heads]
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:]), weight)


class QEnsemble(nn.Module):
    """E Q heads: Linear, LayerNorm, Tanh, Linear, ELU, Linear; all heads in one batched pass."""

    def __init__(self, heads: int, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.fc1 = EnsembleLinear(heads, in_dim, hidden)
        self.norm1 = EnsembleLayerNorm(heads, hidden)
        self.fc2 = EnsembleLinear(heads, hidden, hidden)
        self.fc3 = EnsembleLinear(heads, hidden, 1)

    def forward(self, x: Tensor, heads: Tensor | None = None) -> Tensor:
        """x (N, in) -> values (E, N), or (len(heads), N) for a subset of heads."""
        h = torch.tanh(self.norm1(self.fc1(x, heads), heads))
        h = F.elu(self.fc2(h, heads))
        with torch.autocast(h.device.type, enabled=False):  # values in float32 (OutputLinear)
            return self.fc3(h.float(), heads).squeeze(-1)


class StateEncoder(nn.Module):
    """Linear(obs, 256), ELU, Linear(256, latent), LayerNorm, Sigmoid."""

    def __init__(self, in_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ELU(), OutputLinear(hidden, latent_dim),
            nn.LayerNorm(latent_dim), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())


class PixelEncoder(nn.Module):
    """Four convolutions (k7 s2, k5 s2, k3 s2, k3 s2, ReLU), Linear, LayerNorm, Sigmoid.

    On a CPU with oneDNN the convolutions take a faster path with the same maths
    (``fused``, see ``_fused_convs``); ``fused = False`` runs the plain modules.
    """

    CHUNK = 128
    """Frames per pass of the fused path: a chunk's activations stay in the core's cache from
    one layer to the next (measured on 2 cores: 1280 frames' first layer 32 ms in chunks of
    128 against 120 ms in one pass, ReLU included)."""

    def __init__(self, image_size: int, channels: int, latent_dim: int) -> None:
        super().__init__()
        # in place: the first layer's activations of a batch are hundreds of MB on a CPU
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 7, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 5, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(inplace=True),
        )
        side = image_size
        for kernel in (7, 5, 3, 3):
            side = (side - kernel) // 2 + 1
        self.head = nn.Sequential(
            nn.Flatten(), OutputLinear(channels * side * side, latent_dim),
            nn.LayerNorm(latent_dim), nn.Sigmoid(),
        )
        self.fused = _FUSED_CONV_RELU is not None
        """Use ``_fused_convs`` on CPU tensors (where oneDNN is there)."""

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels: uint8 (N, H, W, 3). The NCHW view of HWC data is channels-last already."""
        return self.encode_with([self], pixels)[0]

    @staticmethod
    def encode_with(encoders: Sequence[PixelEncoder], pixels: Tensor) -> list[Tensor]:
        """The latents of ``pixels`` by each of ``encoders`` (same architecture; e.g. the
        online and the target encoder), each frame read and converted once for all of them."""
        device = pixels.device.type
        # Straight to the dtype the convolutions run in: under bfloat16 autocast, a float32
        # copy would only be cast again (uint8 values are exact in bfloat16).
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else torch.float32)
        frames = pixels.permute(0, 3, 1, 2)
        if all(encoder.fused for encoder in encoders) and device == "cpu":
            features = PixelEncoder._fused_convs(encoders, frames, dtype)
        else:
            x = frames.to(dtype).mul_(1.0 / 255.0)
            features = [encoder.convs(x) for encoder in encoders]
        return [encoder.head(f) for encoder, f in zip(encoders, features, strict=True)]

    @staticmethod
    def _fused_convs(encoders: Sequence[PixelEncoder], frames: Tensor,
                     dtype: torch.dtype) -> list[Tensor]:
        """Each encoder's four convolutions with each ReLU fused into its convolution
        (oneDNN's post-op: no extra pass over the activations), ``CHUNK`` frames at a time,
        and the 1/255 scaling folded into the first layer's weights (uint8 frames enter as
        they are). Same maths as ``convs``; the test suite holds the two paths together."""
        stacks = []
        for encoder in encoders:
            layers = [encoder.convs[i] for i in range(0, len(encoder.convs), 2)]
            stacks.append([
                ((layer.weight * (1.0 / 255.0) if i == 0 else layer.weight).to(dtype)
                 .contiguous(memory_format=torch.channels_last), layer.bias.to(dtype),
                 layer.stride)
                for i, layer in enumerate(layers)])
        chunks: list[list[Tensor]] = [[] for _ in encoders]
        size = encoders[0].CHUNK
        for start in range(0, frames.shape[0], size):
            chunk = frames[start : start + size].to(dtype)
            for stack, outputs in zip(stacks, chunks, strict=True):
                x = chunk
                for weight, bias, stride in stack:
                    x = _ConvReLU.apply(x, weight, bias, stride)
                outputs.append(x)
        return [out[0] if len(out) == 1 else torch.cat(out) for out in chunks]


_FUSED_CONV_RELU = (getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
                    if torch.backends.mkldnn.is_available() else None)
"""oneDNN's convolution with a fused element-wise post-op, where this build of torch has it."""


class _ConvReLU(torch.autograd.Function):
    """relu(conv2d(x, weight, bias, stride)) in one oneDNN call; the backward masks the
    gradient by the output's sign, then runs the convolution's own backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: tuple[int, int]) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        out = _FUSED_CONV_RELU(x, weight, bias, [0, 0], list(stride), [1, 1], 1, "relu", [], "")
        ctx.stride = list(stride)
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor, Tensor, None]:
        x, weight, out = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(
            grad_out.contiguous(memory_format=torch.channels_last), out, 0)
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]], ctx.stride, [0, 0], [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], True, True],
        )
        return grad_x, grad_weight, grad_bias, None


class Encoder(nn.Module):
    """The encoder of ``obs_type``; with two inputs, the average of their latents."""

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        super().__init__()
        m = config.model
        self.keys = OBS_KEYS[m.obs_type]
        nets = {}
        for key in self.keys:
            if key == "pixels":
                nets[key] = PixelEncoder(m.image_size, m.num_channels, m.latent_dim)
            else:
                nets[key] = StateEncoder(spec.obs_shapes[key][0], m.enc_dim, m.latent_dim)
        self.nets = nn.ModuleDict(nets)

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        latents = [self.nets[key](obs[key]) for key in self.keys]
        return latents[0] if len(latents) == 1 else torch.stack(latents).mean(0)

    def forward_pair(self, obs: Mapping[str, Tensor], other: Encoder) -> tuple[Tensor, Tensor]:
        """``self(obs)`` and ``other(obs)`` (an encoder of the same architecture), images read
        once for both."""
        mine, theirs = [], []
        for key in self.keys:
            net, other_net = self.nets[key], other.nets[key]
            if isinstance(net, PixelEncoder):
                a, b = PixelEncoder.encode_with([net, other_net], obs[key])
            else:
                a, b = net(obs[key]), other_net(obs[key])
            mine.append(a)
            theirs.append(b)
        if len(mine) == 1:
            return mine[0], theirs[0]
        return torch.stack(mine).mean(0), torch.stack(theirs).mean(0)


def random_shift(pixels: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to ``pad`` pixels, edges replicated (DrQ's augmentation).

    Works on uint8 HWC images (N, H, W, C): replicate-pad by ``pad`` and crop each image at a
    random integer offset in [0, 2 * pad].
    """
    if pad <= 0:
        return pixels
    offsets = torch.randint(0, 2 * pad + 1, (pixels.shape[0], 2), device=pixels.device,
                            generator=generator)
    return shift_images(pixels, offsets, pad)


def shift_images(pixels: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Crop image i of the replicate-padded batch at (row, column) ``offsets[i]``.

    On CPU the crops are N slices of the padded batch (memory copies, several times faster
    than a gather); elsewhere one gather of clamped indices does the same.
    """
    if pixels.device.type != "cpu":
        return gather_shift(pixels, offsets, pad)
    n, height, width, channels = pixels.shape
    # padded by slice assignments (5x faster here than concatenating expanded edges)
    padded = pixels.new_empty(n, height + 2 * pad, width + 2 * pad, channels)
    padded[:, pad : pad + height, pad : pad + width] = pixels
    padded[:, :pad, pad : pad + width] = pixels[:, :1]
    padded[:, pad + height :, pad : pad + width] = pixels[:, -1:]
    padded[:, :, :pad] = padded[:, :, pad : pad + 1]
    padded[:, :, pad + width :] = padded[:, :, pad + width - 1 : pad + width]
    return torch.stack([padded[i, dy : dy + height, dx : dx + width]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def gather_shift(pixels: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """``shift_images`` as one gather of clamped row and column indices (for GPUs)."""
    n, height, width = pixels.shape[:3]
    device = pixels.device
    row_index = (torch.arange(height, device=device) + offsets[:, :1] - pad).clamp_(0, height - 1)
    col_index = (torch.arange(width, device=device) + offsets[:, 1:] - pad).clamp_(0, width - 1)
    batch = torch.arange(n, device=device)[:, None, None]
    return pixels[batch, row_index[:, :, None], col_index[:, None, :]]


# ---- the world model ------------------------------------------------------------------------


class WorldModel(nn.Module):
    """Encoder, dynamics, reward, Q ensemble, V, policy prior, and the target encoder and Q.

    The target copies live here too (frozen, updated by ``Learner``) so one state dict holds
    everything a run needs to continue.
    """

    def __init__(self, config: Config, spec: ModelSpec) -> None:
        super().__init__()
        config.validate()
        spec.check(config.model.obs_type, config.model.image_size)
        self.config, self.spec = config, spec
        m = config.model
        latent, act, hidden = m.latent_dim, spec.action_dim, m.mlp_dim
        self.encoder = Encoder(config, spec)
        self.dynamics = nn.Sequential(
            *mlp(latent + act, hidden, latent), nn.LayerNorm(latent), nn.Sigmoid()
        )
        self.reward = mlp(latent + act, hidden, 1)
        self.pi = mlp(latent, hidden, act)
        self.q = QEnsemble(m.num_q, latent + act, hidden)
        self.v = QEnsemble(1, latent, hidden)
        self.apply(_orthogonal_init)
        with torch.no_grad():  # zero last layers: reward and Q start at 0
            self.reward[-1].weight.zero_()
            self.reward[-1].bias.zero_()
            self.q.fc3.weight.zero_()
            self.q.fc3.bias.zero_()
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.weights_version = 0
        """Set by whoever publishes weights; reported in plan summaries and episodes."""
        self.revision = 0
        """Counts changes of the weights (learner updates, loaded checkpoints); a planner
        refreshes its copy when it changes. Call ``mark_changed`` after editing weights."""

    def mark_changed(self) -> None:
        """Tell planners of this model that its weights changed."""
        self.revision += 1

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    @property
    def latent_dim(self) -> int:
        return self.config.model.latent_dim

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return OBS_KEYS[self.config.model.obs_type]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters of the model loss (all but the policy and the targets)."""
        modules = (self.encoder, self.dynamics, self.reward, self.q, self.v)
        return [p for module in modules for p in module.parameters()]

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self.encoder(obs)

    def encode_target(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self.target_encoder(obs)

    def encode_online_and_target(self, obs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``encode(obs)`` and ``encode_target(obs)``, each image read once for both."""
        return self.encoder.forward_pair(obs, self.target_encoder)

    def next(self, z: Tensor, a: Tensor) -> Tensor:
        return self.dynamics(torch.cat([z, a], -1))

    def predict_reward(self, z: Tensor, a: Tensor) -> Tensor:
        """(N, L), (N, A) -> (N,)."""
        return self.reward(torch.cat([z, a], -1)).squeeze(-1)

    def q_values(self, z: Tensor, a: Tensor, target: bool = False,
                 heads: Tensor | None = None) -> Tensor:
        """Every head's Q (E, N), or those in ``heads``; ``target`` uses the target heads."""
        net = self.target_q if target else self.q
        return net(torch.cat([z, a], -1), heads)

    def value(self, z: Tensor) -> Tensor:
        """V(z), (N,)."""
        return self.v(z)[0]

    def policy(self, z: Tensor) -> Tensor:
        """The policy prior's mean action tanh(pi(z)), (N, A)."""
        return torch.tanh(self.pi(z))

    def planning_model(self, dtype: torch.dtype = torch.float32) -> PlanningModel:
        return PlanningModel(self, dtype)


def _orthogonal_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
        nn.init.zeros_(module.bias)


def obs_to_tensors(obs: Mapping[str, np.ndarray | Tensor], keys: tuple[str, ...],
                   device: torch.device, batched: bool = False) -> dict[str, Tensor]:
    """Observation arrays to tensors on ``device``; adds a batch dimension unless ``batched``."""
    out = {}
    for key in keys:
        if key not in obs:
            raise KeyError(f"observation {key!r} is missing (have {sorted(obs)})")
        value = torch.as_tensor(obs[key])
        if value.dtype == torch.float64:
            value = value.float()
        out[key] = (value if batched else value.unsqueeze(0)).to(device, non_blocking=True)
    return out


# ---- the planner's view of the model --------------------------------------------------------


def fast_elu(x: Tensor) -> Tensor:
    """ELU as max(e^min(x, 0) - 1, x) (e^x - 1 >= x everywhere): up to twice as fast as
    F.elu on CPU, whose expm1 is slow; same value to float32 rounding."""
    t = torch.clamp(x, max=0.0).exp_().sub_(1.0)
    return torch.maximum(t, x, out=t)


def fast_mish(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Mish x * tanh(softplus(x)) as x - 2x / ((1 + e^x)^2 + 1): about 3x faster than F.mish
    on CPU, same value to float32 rounding, and finite for every x (e^x = inf gives x).
    ``out`` may have a lower precision; the arithmetic stays in x's."""
    t = torch.exp(x)
    t.add_(1.0).square_().add_(1.0).reciprocal_()
    return torch.addcmul(x, x, t, value=-2.0, out=out)


def _mish_(x: Tensor, temp: Tensor) -> Tensor:
    """``fast_mish`` in place, with ``temp`` (x's shape) as scratch."""
    t = torch.exp(x, out=temp)
    t.add_(1.0).square_().add_(1.0).reciprocal_()
    return x.addcmul_(x, t, value=-2.0)


def _elu_(x: Tensor, temp: Tensor) -> Tensor:
    """``fast_elu`` in place, with ``temp`` (x's shape) as scratch."""
    t = torch.clamp(x, max=0.0, out=temp).exp_().sub_(1.0)
    return torch.maximum(x, t, out=x)


class PlanningModel:
    """A frozen copy of dynamics, reward, Q ensemble and policy, rearranged for fast rollouts.

    Implements the ``planner.LatentModel`` protocol. These things make it fast:

    - dynamics, reward and the E Q heads all read (z, a), so their layers are stacked and each
      runs as one batched product for all 2 + E heads;
    - the first LayerNorm is folded into the first product: with x = [z, a, 1] and the layer's
      weights W centred over output units (W~), h - mean(h) = x W~ and var(h) = x C x^T with
      C = W~ W~^T / width, so LN(h) * g + c = (x / std(h)) (W~ * g) + c: one small quadratic
      form per row instead of two passes over every hidden unit;
    - hidden layers may run in bfloat16 (``dtype``); activations and every output (latent,
      reward, Q, action) are computed in float32;
    - Mish and ELU are computed from exp (``fast_mish``, ``fast_elu``), faster than torch's;
    - on the CPU (eager, not compiled) the elementwise work runs one head at a time in a
      float32 scratch that stays in the core's cache, and the big activations live in buffers
      kept between calls (``_blocked_step`` and friends; same maths, see ``_Workspace``).

    ``refresh`` copies new weights in place, so compiled code and CUDA graphs stay valid.
    """

    def __init__(self, model: WorldModel, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.action_dim = model.action_dim
        self.latent_dim = model.latent_dim
        self.num_q = model.config.model.num_q
        self._encoder = model.encoder
        for name, value in self._collect(model).items():
            setattr(self, name, value)
        self.blocked = self.w1.device.type == "cpu"
        """Use the cache-blocked CPU path (``_blocked_*``); False runs the batched reference
        path, which is also what torch.compile and CUDA graphs trace."""
        self._workspaces: dict[int, _Workspace] = {}

    def refresh(self, model: WorldModel) -> None:
        """Copy ``model``'s current weights into this copy's tensors."""
        self._encoder = model.encoder
        for name, value in self._collect(model).items():
            getattr(self, name).copy_(value)

    @torch.no_grad()
    def _collect(self, model: WorldModel) -> dict[str, Tensor]:
        dyn, rew, q, pi = model.dynamics, model.reward, model.q, model.pi
        low = self.dtype

        def t(layer: nn.Linear) -> Tensor:  # (in, out)
            return layer.weight.detach().T

        # heads of the (z, a) input: 0 dynamics, 1 reward, 2.. Q heads
        w1 = torch.stack([t(dyn[0]), t(rew[0]), *q.fc1.weight])  # (K, L + A, M)
        b1 = torch.stack([dyn[0].bias, rew[0].bias, *q.fc1.bias[:, 0]])[:, None]  # (K, 1, M)
        g1 = torch.stack([dyn[1].weight, rew[1].weight, *q.norm1.weight[:, 0]])[:, None]
        c1 = torch.stack([dyn[1].bias, rew[1].bias, *q.norm1.bias[:, 0]])[:, None]
        first = _fold_layer_norm(w1, b1, g1, c1)
        w2 = torch.stack([t(dyn[3]), t(rew[3]), *q.fc2.weight])
        b2 = torch.stack([dyn[3].bias, rew[3].bias, *q.fc2.bias[:, 0]])[:, None]
        pi_first = _fold_layer_norm(t(pi[0])[None], pi[0].bias[None, None],
                                    pi[1].weight[None, None], pi[1].bias[None, None])
        return {
            # the LayerNorm shift c rides in the product as one more input row (input 1)
            "w1": torch.cat([first["weight"], first["bias"]], 1).to(low).contiguous(),
            "cov1": first["cov"].float().contiguous(),
            "w2": w2.to(low).contiguous(), "b2": b2.to(low),
            # the second LayerNorm of dynamics and reward (the Q heads have none)
            "g2": torch.stack([dyn[4].weight, rew[4].weight]).float(),
            "c2": torch.stack([dyn[4].bias, rew[4].bias]).float(),
            "w_dyn": t(dyn[6]).float().contiguous(), "b_dyn": dyn[6].bias.float().clone(),
            "g_dyn": dyn[7].weight.float().clone(), "c_dyn": dyn[7].bias.float().clone(),
            "w_rew": t(rew[6]).float().contiguous(), "b_rew": rew[6].bias.float().clone(),
            "w_q": q.fc3.weight.float().clone(), "b_q": q.fc3.bias.float().clone(),
            "pi_w1": pi_first["weight"][0].to(low).contiguous(),
            "pi_c1": pi_first["bias"][0, 0].to(low),
            "pi_cov1": pi_first["cov"][0].float().contiguous(),
            "pi_w2": t(pi[3]).to(low).contiguous(), "pi_b2": pi[3].bias.to(low).clone(),
            "pi_g2": pi[4].weight.float().clone(), "pi_c2": pi[4].bias.float().clone(),
            "pi_w3": t(pi[6]).float().contiguous(), "pi_b3": pi[6].bias.float().clone(),
        }

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        return self._encoder(obs)

    def step(self, z: Tensor, a: Tensor, with_q: bool = True
             ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(z_t, a_t) -> (z_{t+1}, reward_t (N,), Q heads at (z_t, a_t) (E, N) or None)."""
        if self._use_blocked():
            return self._blocked_step(z, a, with_q)
        heads = self.w1.shape[0] if with_q else 2
        hidden = self._first_hidden(z, a, heads)  # (K, N, M) in self.dtype
        h = torch.baddbmm(self.b2[:heads], hidden, self.w2[:heads]).float()
        features = [
            fast_mish(F.layer_norm(h[i], h.shape[-1:], self.g2[i], self.c2[i])) for i in range(2)
        ]
        z_next = torch.addmm(self.b_dyn, features[0], self.w_dyn)
        z_next = torch.sigmoid(F.layer_norm(z_next, z_next.shape[-1:], self.g_dyn, self.c_dyn))
        reward = torch.addmm(self.b_rew, features[1], self.w_rew).squeeze(-1)
        q = torch.baddbmm(self.b_q, fast_elu(h[2:]), self.w_q).squeeze(-1) if with_q else None
        return z_next, reward, q

    def q(self, z: Tensor, a: Tensor) -> Tensor:
        """Every Q head at (z, a), (E, N)."""
        if self._use_blocked():
            return self._blocked_q(z, a)
        hidden = self._first_hidden(z, a, self.w1.shape[0], first=2)
        h = torch.baddbmm(self.b2[2:], hidden, self.w2[2:]).float()
        return torch.baddbmm(self.b_q, fast_elu(h), self.w_q).squeeze(-1)

    def pi(self, z: Tensor) -> Tensor:
        """The policy prior's mean action, (N, A)."""
        if self._use_blocked():
            return self._blocked_pi(z)
        x = _with_ones(z)
        scale = _inverse_std(x, self.pi_cov1[None])[0]  # (N,)
        h = torch.addmm(self.pi_c1, (x * scale[:, None]).to(self.dtype), self.pi_w1).float()
        h = torch.addmm(self.pi_b2, fast_mish(h).to(self.dtype), self.pi_w2).float()
        h = fast_mish(F.layer_norm(h, h.shape[-1:], self.pi_g2, self.pi_c2))
        return torch.tanh(torch.addmm(self.pi_b3, h, self.pi_w3))

    def _first_hidden(self, z: Tensor, a: Tensor, heads: int, first: int = 0) -> Tensor:
        """Activations of the first layer of heads ``first``..``heads - 1``, (K, N, M) in
        ``self.dtype``: Mish for dynamics (0) and reward (1), tanh for the Q heads (2..)."""
        x = _with_ones(torch.cat([z, a], -1))
        scale = _inverse_std(x, self.cov1[first:heads])  # (K, N)
        ones = x[None, :, -1:].expand(len(scale), -1, -1)
        scaled = torch.cat([x[None] * scale[:, :, None], ones], -1).to(self.dtype)  # [x/std, 1]
        pre = torch.bmm(scaled, self.w1[first:heads]).float()
        hidden = torch.empty(pre.shape, dtype=self.dtype, device=pre.device)
        mish_heads = max(0, 2 - first)
        if mish_heads:
            fast_mish(pre[:mish_heads], out=hidden[:mish_heads])
        torch.tanh(pre[mish_heads:], out=hidden[mish_heads:])
        return hidden

    # ---- the cache-blocked CPU path -----------------------------------------------------

    def _use_blocked(self) -> bool:
        return self.blocked and not torch.compiler.is_compiling()

    def _workspace(self, rows: int) -> _Workspace:
        workspace = self._workspaces.pop(rows, None)
        if workspace is None:
            workspace = _Workspace(self.w1.shape[0], rows, self.w2.shape[-1], self.dtype,
                                   self.latent_dim, self.action_dim)
            while len(self._workspaces) >= 6:  # a plan uses 4 row counts; drop the oldest
                self._workspaces.pop(next(iter(self._workspaces)))
        self._workspaces[rows] = workspace  # most recent last
        return workspace

    def _blocked_hidden(self, x: Tensor, first: int, heads: int, work: _Workspace) -> Tensor:
        """``_first_hidden`` into ``work.hidden[:heads - first]``, activations head by head."""
        count = heads - first
        scale = _inverse_std(x, self.cov1[first:heads])  # (K, N)
        scaled = work.scaled[:count]  # [x / std, 1] in the rollout dtype; the 1s are there
        torch.mul(x, scale[:, :, None], out=scaled[:, :, :-1])
        hidden = work.hidden[:count]
        torch.bmm(scaled, self.w1[first:heads], out=hidden)
        mish_heads = max(0, 2 - first)  # dynamics and reward: Mish; Q heads: tanh
        for start, stop in work.groups(0, mish_heads) + work.groups(mish_heads, count):
            f = work.load(hidden[start:stop])
            if start < mish_heads:
                _mish_(f, work.temp[: stop - start])
            else:
                f.tanh_()
            work.store(f, hidden[start:stop])
        return hidden

    def _blocked_second(self, hidden: Tensor, first: int, heads: int, work: _Workspace) -> Tensor:
        out = work.second[: heads - first]
        return torch.baddbmm(self.b2[first:heads], hidden, self.w2[first:heads], out=out)

    def _blocked_q_heads(self, h: Tensor, work: _Workspace) -> Tensor:
        """The Q heads' ELU and output layer on their second-layer products h (E, N, M)."""
        q = torch.empty(h.shape[0], h.shape[1], 1, device=h.device)
        for start, stop in work.groups(0, h.shape[0]):
            f = _elu_(work.load(h[start:stop]), work.temp[: stop - start])
            torch.baddbmm(self.b_q[start:stop], f, self.w_q[start:stop], out=q[start:stop])
        return q.squeeze(-1)

    def _blocked_step(self, z: Tensor, a: Tensor, with_q: bool
                      ) -> tuple[Tensor, Tensor, Tensor | None]:
        heads = self.w1.shape[0] if with_q else 2
        work = self._workspace(z.shape[0])
        x = work.inputs(z, a)
        h = self._blocked_second(self._blocked_hidden(x, 0, heads, work), 0, heads, work)
        f = _layer_norm(work.load(h[0]), self.g2[0], self.c2[0])
        z_next = torch.addmm(self.b_dyn, _mish_(f, work.temp[0]), self.w_dyn)
        z_next = torch.sigmoid(F.layer_norm(z_next, z_next.shape[-1:], self.g_dyn, self.c_dyn))
        f = _layer_norm(work.load(h[1]), self.g2[1], self.c2[1])
        reward = torch.addmm(self.b_rew, _mish_(f, work.temp[0]), self.w_rew).squeeze(-1)
        q = self._blocked_q_heads(h[2:], work) if with_q else None
        return z_next, reward, q

    def _blocked_q(self, z: Tensor, a: Tensor) -> Tensor:
        heads = self.w1.shape[0]
        work = self._workspace(z.shape[0])
        x = work.inputs(z, a)
        h = self._blocked_second(self._blocked_hidden(x, 2, heads, work), 2, heads, work)
        return self._blocked_q_heads(h, work)

    def _blocked_pi(self, z: Tensor) -> Tensor:
        work = self._workspace(z.shape[0])
        x = _with_ones(z)
        scale = _inverse_std(x, self.pi_cov1[None])[0]  # (N,)
        hidden = work.hidden[0]
        torch.addmm(self.pi_c1, (x * scale[:, None]).to(self.dtype), self.pi_w1, out=hidden)
        work.store(_mish_(work.load(hidden), work.temp[0]), hidden)
        h = torch.addmm(self.pi_b2, hidden, self.pi_w2, out=work.second[0])
        f = _mish_(_layer_norm(work.load(h), self.pi_g2, self.pi_c2), work.temp[0])
        return torch.tanh(torch.addmm(self.pi_b3, f, self.pi_w3))


class _Workspace:
    """Buffers of ``PlanningModel``'s blocked path for one row count N, kept between calls.

    ``hidden`` and ``second`` (K, N, M) in the rollout dtype hold the first layer's
    activations and the second layer's outputs of all K heads (fresh tensors of this size cost
    a page fault per 4 KiB on every call); ``scratch`` and ``temp`` (G, N, M) float32 are where
    the activations of a group of G heads are computed, G chosen so that the group stays in
    the cache between its passes (G = 1 at paper size; more heads at once when they are small,
    as fewer operations then cost less than the cache misses they save).
    """

    CACHE_BYTES = 1 << 20
    """float32 bytes of one group: half a core's L2 here (scratch and temp together fill it)."""

    def __init__(self, heads: int, rows: int, width: int, dtype: torch.dtype, latent: int,
                 action: int) -> None:
        self.latent = latent
        self._inputs = torch.ones(rows, latent + action + 1)  # [z, a, 1]
        self.scaled = torch.ones(heads, rows, latent + action + 2, dtype=dtype)  # [x / std, 1]
        self.hidden = torch.empty(heads, rows, width, dtype=dtype)
        self.second = torch.empty(heads, rows, width, dtype=dtype)
        self.group = max(1, min(heads, self.CACHE_BYTES // (4 * rows * width)))
        self.scratch = torch.empty(self.group, rows, width)
        self.temp = torch.empty(self.group, rows, width)

    def inputs(self, z: Tensor, a: Tensor) -> Tensor:
        """[z, a, 1] (N, L + A + 1) float32, in a buffer."""
        x = self._inputs
        x[:, : self.latent].copy_(z)
        x[:, self.latent : -1].copy_(a)
        return x

    def groups(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Heads start..stop - 1 as (first, end) ranges of at most ``group`` heads."""
        return [(k, min(k + self.group, stop)) for k in range(start, stop, self.group)]

    def load(self, source: Tensor) -> Tensor:
        """``source`` ((G,) N, M) in float32: itself when it is float32 already, else a copy in
        the scratch."""
        if source.dtype == torch.float32:
            return source
        if source.dim() == 2:
            return self.scratch[0].copy_(source)
        return self.scratch[: source.shape[0]].copy_(source)

    def store(self, value: Tensor, target: Tensor) -> None:
        if value.data_ptr() != target.data_ptr():
            target.copy_(value)


def _layer_norm(x: Tensor, gain: Tensor, shift: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], gain, shift)


def _with_ones(x: Tensor) -> Tensor:
    return torch.cat([x.float(), x.new_ones(x.shape[0], 1, dtype=torch.float32)], -1)


def _inverse_std(x: Tensor, cov: Tensor, eps: float = 1e-5) -> Tensor:
    """1 / sqrt(x C_k x^T + eps) for every head k: x (N, D), cov (K, D, D) -> (K, N)."""
    quad = torch.matmul(x, cov)  # (K, N, D)
    return quad.mul_(x).sum(-1).clamp_(min=0.0).add_(eps).rsqrt_()


def _fold_layer_norm(weight: Tensor, bias: Tensor, gain: Tensor, shift: Tensor
                     ) -> dict[str, Tensor]:
    """Rewrite LN(x W + b) * g + c as (x' / std) W' + c with x' = [x, 1] (see PlanningModel).

    weight (K, D, M), bias/gain/shift (K, 1, M) -> weight (K, D + 1, M), bias (K, 1, M) and
    the per-head covariance (K, D + 1, D + 1) that gives var(h) = x' C x'^T.
    """
    full = torch.cat([weight, bias], 1).double()  # (K, D + 1, M)
    centred = full - full.mean(-1, keepdim=True)
    cov = centred @ centred.transpose(1, 2) / full.shape[-1]
    return {"weight": (centred * gain.double()).float(), "bias": shift.float().clone(),
            "cov": cov.float()}


def parameter_fingerprint(model: WorldModel) -> tuple[int, int, int]:
    """Changes when the weights change: the model's revision (bumped by the learner and by
    loading weights) and torch's in-place write counters (which fused optimisers skip)."""
    total = 0
    for parameter in model.parameters():
        total += parameter._version
    return id(model), model.revision, total
