"""The world model: architecture, batched Q ensemble, augmentation, the planner's fused copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.world_model import (
    ModelSpec,
    PlanningModel,
    WorldModel,
    fast_elu,
    fast_mish,
    gather_shift,
    obs_to_tensors,
    random_shift,
    shift_images,
)

torch.set_num_threads(1)  # small models; also robust when the machine is shared

SPECS = {
    "state": ModelSpec({"state": (10,)}, 4),
    "pixels": ModelSpec({"pixels": (84, 84, 3)}, 4),
    "pixels+proprio": ModelSpec({"pixels": (84, 84, 3), "proprio": (7,)}, 4),
}


def small_config(**overrides) -> Config:
    base = {"model.mlp_dim": 64, "model.enc_dim": 32, "device": "cpu"}
    base.update(overrides)
    return Config().replace(**base)


def batch_of(spec: ModelSpec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for key, shape in spec.obs_shapes.items():
        if key == "pixels":
            out[key] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        else:
            out[key] = rng.standard_normal((n, *shape)).astype(np.float32)
    return out


def perturbed(model: WorldModel, scale: float = 0.05, seed: int = 0) -> WorldModel:
    """Random non-zero weights everywhere (the zero-initialised heads would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("obs_type", list(SPECS))
def test_shapes_and_normalised_latents(obs_type: str) -> None:
    torch.manual_seed(0)
    config = small_config(**{"model.obs_type": obs_type})
    model = WorldModel(config, SPECS[obs_type])
    obs = obs_to_tensors(batch_of(SPECS[obs_type], 6, np.random.default_rng(0)),
                         model.obs_keys, torch.device("cpu"), batched=True)
    z = model.encode(obs)
    assert z.shape == (6, 50)
    assert bool(((z > 0) & (z < 1)).all())  # LayerNorm then sigmoid
    a = torch.rand(6, 4) * 2 - 1
    z_next = model.next(z, a)
    assert z_next.shape == (6, 50) and bool(((z_next > 0) & (z_next < 1)).all())
    assert model.predict_reward(z, a).shape == (6,)
    assert model.q_values(z, a).shape == (5, 6)
    assert model.value(z).shape == (6,)
    policy = model.policy(z)
    assert policy.shape == (6, 4) and bool((policy.abs() <= 1).all())


def test_multimodal_encoder_averages_pixel_and_proprio_latents() -> None:
    spec = SPECS["pixels+proprio"]
    model = WorldModel(small_config(**{"model.obs_type": "pixels+proprio"}), spec)
    obs = obs_to_tensors(batch_of(spec, 3, np.random.default_rng(1)), model.obs_keys,
                         torch.device("cpu"), batched=True)
    expected = (model.encoder.nets["pixels"](obs["pixels"])
                + model.encoder.nets["proprio"](obs["proprio"])) / 2
    torch.testing.assert_close(model.encode(obs), expected)


def test_pixel_encoder_architecture() -> None:
    model = WorldModel(small_config(**{"model.obs_type": "pixels"}), SPECS["pixels"])
    convs = [m for m in model.encoder.nets["pixels"].convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (32, 7, 2), (32, 5, 2), (32, 3, 2), (32, 3, 2)]
    assert model.encoder.nets["pixels"].head[1].in_features == 32 * 3 * 3


def test_init_zeroes_reward_and_q_outputs() -> None:
    model = WorldModel(small_config(), SPECS["state"])
    z, a = torch.rand(8, 50), torch.rand(8, 4)
    with torch.no_grad():
        assert float(model.predict_reward(z, a).abs().max()) == 0.0
        assert float(model.q_values(z, a).abs().max()) == 0.0
    weight = model.dynamics[0].weight.detach()  # (64, 54): orthonormal columns
    torch.testing.assert_close(weight.T @ weight, torch.eye(54), atol=1e-5, rtol=0)
    assert float(model.dynamics[0].bias.detach().abs().max()) == 0.0


def test_q_ensemble_is_one_batched_operation_equal_to_each_head() -> None:
    model = perturbed(WorldModel(small_config(), SPECS["state"]))
    q = model.q
    z, a = torch.rand(7, 50), torch.rand(7, 4) * 2 - 1
    x = torch.cat([z, a], -1)
    batched = model.q_values(z, a)
    for head in range(5):
        h = x @ q.fc1.weight[head] + q.fc1.bias[head]
        h = torch.tanh(F.layer_norm(h, (64,)) * q.norm1.weight[head] + q.norm1.bias[head])
        h = F.elu(h @ q.fc2.weight[head] + q.fc2.bias[head])
        torch.testing.assert_close(batched[head], (h @ q.fc3.weight[head] + q.fc3.bias[head])[:, 0])
    two = torch.tensor([3, 1])
    torch.testing.assert_close(model.q_values(z, a, heads=two), batched[two])


def test_random_shift_is_replicate_pad_and_crop() -> None:
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (16, 84, 84, 3), dtype=np.uint8))
    generator = torch.Generator().manual_seed(3)
    shifted = random_shift(pixels, 4, generator)
    assert shifted.dtype == torch.uint8 and shifted.shape == pixels.shape
    padded = F.pad(pixels.permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode="replicate")
    moved = 0
    for i in range(16):
        crops = [padded[i, :, dy : dy + 84, dx : dx + 84] for dy in range(9) for dx in range(9)]
        target = shifted[i].permute(2, 0, 1).float()
        matches = [bool(torch.equal(crop, target)) for crop in crops]
        assert any(matches), f"image {i} is not a crop of the replicate-padded image"
        moved += not matches[40]  # index 40: no shift
    assert moved >= 10  # shifts really happen (81 offsets, 1 of them is identity)
    assert torch.equal(random_shift(pixels, 0), pixels)


def test_gather_and_slice_shifts_agree() -> None:
    pixels = torch.randint(0, 256, (9, 84, 84, 3), dtype=torch.uint8)
    offsets = torch.tensor([[dy, dx] for dy in (0, 4, 8) for dx in (0, 4, 7)])
    sliced = shift_images(pixels, offsets, 4)  # the CPU path
    assert torch.equal(sliced, gather_shift(pixels, offsets, 4))  # the GPU path
    assert torch.equal(sliced[4], pixels[4])  # offset (4, 4) is no shift
    assert torch.equal(sliced[0, 4:, 4:], pixels[0, :-4, :-4])  # moved down and right


def test_fast_mish_matches_mish() -> None:
    x = torch.linspace(-100, 100, 20001)
    torch.testing.assert_close(fast_mish(x), F.mish(x), atol=2e-6, rtol=1e-5)
    assert bool(torch.isfinite(fast_mish(torch.tensor([1e4, -1e4, 88.0, 89.0]))).all())


def test_planning_model_equals_the_modules_in_float32() -> None:
    torch.manual_seed(0)
    model = perturbed(WorldModel(small_config(), SPECS["state"]))
    fused = PlanningModel(model, torch.float32)
    z, a = torch.rand(33, 50), torch.rand(33, 4) * 2 - 1
    with torch.no_grad():
        z_next, reward, q = fused.step(z, a, with_q=True)
        torch.testing.assert_close(z_next, model.next(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reward, model.predict_reward(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(q, model.q_values(z, a), atol=1e-5, rtol=1e-4)
        assert fused.step(z, a, with_q=False)[2] is None
        torch.testing.assert_close(fused.q(z, a), model.q_values(z, a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(fused.pi(z), model.policy(z), atol=1e-5, rtol=1e-4)


def test_planning_model_in_bfloat16_stays_close() -> None:
    model = perturbed(WorldModel(small_config(**{"model.mlp_dim": 512}), SPECS["state"]))
    fused = PlanningModel(model, torch.bfloat16)
    z, a = torch.rand(64, 50), torch.rand(64, 4) * 2 - 1
    with torch.no_grad():
        z_next, reward, q = fused.step(z, a)
        exact_q = model.q_values(z, a)
        assert float((z_next - model.next(z, a)).abs().max()) < 0.02
        assert float((q - exact_q).abs().max()) < 0.03 * float(exact_q.abs().max()) + 0.01
        assert float((reward - model.predict_reward(z, a)).abs().max()) < 0.02


def test_planning_model_refresh_copies_new_weights_in_place() -> None:
    model = perturbed(WorldModel(small_config(), SPECS["state"]))
    fused = PlanningModel(model)
    before = fused.w2
    perturbed(model, seed=1)
    fused.refresh(model)
    assert fused.w2 is before
    z, a = torch.rand(5, 50), torch.rand(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(fused.q(z, a), model.q_values(z, a), atol=1e-5, rtol=1e-4)


def test_spec_checks_the_observations() -> None:
    with pytest.raises(ValueError, match="needs observation 'pixels'"):
        WorldModel(small_config(**{"model.obs_type": "pixels"}), SPECS["state"])
    with pytest.raises(ValueError, match="expected \\(84, 84, 3\\)"):
        WorldModel(small_config(**{"model.obs_type": "pixels"}),
                   ModelSpec({"pixels": (64, 64, 3)}, 2))
    spec = SPECS["pixels+proprio"]
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_fast_elu_matches_elu() -> None:
    x = torch.linspace(-50, 50, 10001)
    torch.testing.assert_close(fast_elu(x.clone()), F.elu(x), atol=1e-6, rtol=1e-6)


def test_the_pixel_encoders_bfloat16_path_matches_float32_to_a_stated_tolerance() -> None:
    """Under bfloat16 autocast the encoder casts uint8 frames straight to bfloat16 (exact for
    0..255) rather than through float32: the latents stay within 0.01 of the float32 path's
    (sigmoid outputs in [0, 1]; measured 0.0012)."""
    import torch

    from tdmpc_ros.core.world_model import PixelEncoder

    torch.manual_seed(0)
    encoder = PixelEncoder(84, 32, 50)
    pixels = torch.randint(0, 256, (16, 84, 84, 3), dtype=torch.uint8)
    plain = encoder(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = encoder(pixels).float()
    assert fast.shape == plain.shape == (16, 50)
    assert (fast - plain).abs().max().item() < 0.01


def test_the_pixel_encoders_fused_cpu_path_matches_the_plain_modules() -> None:
    """The fused path (oneDNN convolution+ReLU, chunks of frames, 1/255 folded into the first
    layer) is the same maths as the plain modules: in float32 the latents agree to 1e-5 and
    every gradient to 1e-3 relative (measured 2e-7 and 2e-4; the folding rounds differently).
    In bfloat16 both paths are as far from float32 as each other, within 1.5x (measured: the
    first layer's gradient 1.7% off in either)."""
    from tdmpc_ros.core.world_model import PixelEncoder

    encoder = PixelEncoder(84, 32, 50)
    if not encoder.fused:
        pytest.skip("this build of torch has no oneDNN fused convolution")
    encoder.CHUNK = 7  # several chunks and a short last one
    torch.manual_seed(0)
    for module in encoder.modules():  # init as the world model does
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.orthogonal_(module.weight)
    pixels = torch.randint(0, 256, (23, 84, 84, 3), dtype=torch.uint8)
    weights = torch.linspace(0, 1, 50)

    def run(fused: bool, bfloat16: bool) -> tuple[Tensor, list[Tensor]]:
        encoder.fused = fused
        encoder.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            latent = encoder(pixels).float()
        (latent * weights).sum().backward()
        return latent.detach(), [p.grad.clone() for p in encoder.parameters()]

    reference, reference_grads = run(False, False)
    latent, grads = run(True, False)
    assert (latent - reference).abs().max().item() < 1e-5
    for plain, fused in zip(reference_grads, grads, strict=True):
        assert ((plain - fused).norm() / plain.norm()).item() < 1e-3
    _, plain_bf16 = run(False, True)
    latent_bf16, fused_bf16 = run(True, True)
    assert (latent_bf16 - reference).abs().max().item() < 0.01
    for exact, plain, fused in zip(reference_grads, plain_bf16, fused_bf16, strict=True):
        plain_error = ((plain - exact).norm() / exact.norm()).item()
        fused_error = ((fused - exact).norm() / exact.norm()).item()
        assert fused_error < max(1.5 * plain_error, 1e-3), (fused_error, plain_error)


def test_online_and_target_latents_in_one_pass_equal_two_separate_encodes() -> None:
    """``encode_online_and_target`` reads each image once for both encoders: the same latents
    as ``encode`` and ``encode_target`` called apart, on the fused and the plain path."""
    spec = ModelSpec({"pixels": (84, 84, 3), "proprio": (4,)}, 4)
    model = WorldModel(Config().replace(**{"model.obs_type": "pixels+proprio"}), spec)
    with torch.no_grad():  # a target that differs from the online encoder
        for parameter in model.target_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    obs = {"pixels": torch.randint(0, 256, (9, 84, 84, 3), dtype=torch.uint8),
           "proprio": torch.randn(9, 4)}
    for fused in (True, False):
        for module in model.modules():
            if hasattr(module, "fused"):
                module.fused = fused
        with torch.no_grad():
            online, target = model.encode_online_and_target(obs)
            torch.testing.assert_close(online, model.encode(obs))
            torch.testing.assert_close(target, model.encode_target(obs))
            assert not torch.allclose(online, target)
