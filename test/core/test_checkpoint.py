"""Checkpoints: exact round trips without pickle, and clear refusals of bad ones."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from tdmpc_ros.core import checkpoint
from tdmpc_ros.core.agent import Agent
from tdmpc_ros.core.checkpoint import CheckpointError
from tdmpc_ros.core.config import Config
from tdmpc_ros.core.replay import Batch
from tdmpc_ros.core.world_model import ModelSpec, WorldModel

torch.set_num_threads(1)  # small models; also robust when the machine is shared
SPEC = ModelSpec({"state": (6,)}, 2)


def small_config(**overrides) -> Config:
    base = {"model.mlp_dim": 32, "model.enc_dim": 16, "device": "cpu",
            "learner.batch_size": 8}
    base.update(overrides)
    return Config().replace(**base)


def trained_agent() -> Agent:
    """An agent after two updates, so that targets and optimiser moments are not trivial."""
    agent = Agent(small_config(), SPEC)
    generator = torch.Generator().manual_seed(0)
    batch = Batch(
        obs={"state": torch.randn(6, 8, 6, generator=generator)},
        action=torch.rand(5, 8, 2, generator=generator) * 2 - 1,
        reward=torch.randn(5, 8, generator=generator), terminated=torch.zeros(5, 8),
        valid=torch.ones(5, 8), weight=torch.ones(8), source=np.zeros(8, np.int64),
        index=np.arange(8),
    )
    agent.learner.update(batch)
    agent.learner.update(batch)
    agent.model.weights_version = 7
    return agent


def assert_same_weights(a: WorldModel, b: WorldModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_round_trip_through_bytes_and_files(tmp_path) -> None:
    agent = trained_agent()
    data = agent.to_bytes()
    loaded = checkpoint.from_bytes(data)
    assert_same_weights(agent.model, loaded.model)
    assert loaded.config == agent.config and loaded.spec == SPEC
    assert loaded.step == 2 and loaded.weights_version == 7 and loaded.kind == "full"
    assert loaded.model.weights_version == 7
    path = checkpoint.save(tmp_path / "ckpt" / "a.safetensors", agent.model,
                           learner=agent.learner, extra={"note": "test"})
    from_file = checkpoint.load(path)
    assert_same_weights(agent.model, from_file.model)
    assert from_file.extra == {"note": "test"} and len(from_file.sha256) == 64
    assert not list((tmp_path / "ckpt").glob(".*"))  # no temporary file left behind
    # the optimiser state comes back too: a resumed learner continues identically
    resumed = Agent.from_checkpoint(path)
    assert resumed.learner.steps == 2
    for name, optim in (("model", agent.learner.model_optim), ("pi", agent.learner.pi_optim)):
        original = optim.state_dict()["state"]
        restored = getattr(resumed.learner, f"{name}_optim").state_dict()["state"]
        assert original.keys() == restored.keys()
        for index in original:
            for key in original[index]:
                assert torch.equal(torch.as_tensor(original[index][key]),
                                   torch.as_tensor(restored[index][key]))


def test_actor_checkpoints_carry_only_what_planning_needs() -> None:
    agent = trained_agent()
    actor = agent.to_bytes(actor_only=True)
    assert len(actor) < len(agent.to_bytes())
    header = checkpoint.read_header(actor)
    assert header["kind"] == "actor" and header["weights_version"] == 7
    loaded = checkpoint.from_bytes(actor)
    online = {k: v for k, v in agent.model.state_dict().items() if not k.startswith("target")}
    for name, value in online.items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    assert loaded.learner_state == {}
    # on a running planner the weights are swapped in place
    robot = Agent(small_config(), SPEC, acting_only=True)
    robot.load_weights(actor)
    assert robot.model.weights_version == 7
    assert torch.equal(robot.model.q.fc2.weight, agent.model.q.fc2.weight)


def test_no_pickle_anywhere() -> None:
    data = trained_agent().to_bytes()
    assert b"\x80\x04" not in data[:16] and data[8:9] == b"{"  # a JSON header, then raw tensors
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    assert header["__metadata__"]["format"] == "tdmpc_ros.checkpoint"
    config = json.loads(header["__metadata__"]["config"])
    assert config["model"]["mlp_dim"] == 32


def test_refuses_damaged_data() -> None:
    data = bytearray(trained_agent().to_bytes())
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF  # one byte of one tensor
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        checkpoint.from_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="truncated|damaged"):
        checkpoint.from_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="too short"):
        checkpoint.from_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    plain = safetensors_save({"w": torch.zeros(2)}, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a tdmpc_ros.checkpoint"):
        checkpoint.from_bytes(plain)


def test_refuses_other_versions_and_bad_configs() -> None:
    agent = trained_agent()
    tensors = {f"model/{k}": v.contiguous() for k, v in agent.model.state_dict().items()}
    good = {
        "format": "tdmpc_ros.checkpoint", "format_version": "1", "kind": "full",
        "config": json.dumps(agent.config.to_dict()), "spec": json.dumps(SPEC.to_dict()),
        "step": "0", "weights_version": "0", "sha256": checkpoint.tensors_sha256(tensors),
    }
    assert checkpoint.from_bytes(safetensors_save(tensors, metadata=good)).kind == "full"
    with pytest.raises(CheckpointError, match="format version '99'"):
        checkpoint.from_bytes(safetensors_save(tensors, metadata={**good, "format_version": "99"}))
    bad_config = agent.config.to_dict()
    bad_config["planner"]["uncertainty_coef"] = -1.0
    with pytest.raises(CheckpointError, match="planner.uncertainty_coef"):
        checkpoint.from_bytes(safetensors_save(
            tensors, metadata={**good, "config": json.dumps(bad_config)}))


def test_refuses_wrong_shapes_with_a_clear_message() -> None:
    wide = trained_agent().to_bytes(actor_only=True)
    narrow = Agent(small_config(**{"model.mlp_dim": 16}), SPEC, acting_only=True)
    before = narrow.model.q.fc2.weight.clone()
    with pytest.raises(CheckpointError, match=r"shapes do not fit the model \(41 tensors\): "
                                            r"dynamics.0.bias: checkpoint \(32,\).*model \(16,\)"):
        narrow.load_weights(wide)
    assert torch.equal(narrow.model.q.fc2.weight, before)  # nothing changed
    other_action = Agent(small_config(), ModelSpec({"state": (6,)}, 3), acting_only=True)
    with pytest.raises(CheckpointError, match="shapes do not fit"):
        other_action.load_weights(wide)
    pixels = Agent(small_config(**{"model.obs_type": "pixels"}),
                   ModelSpec({"pixels": (84, 84, 3)}, 2), acting_only=True)
    with pytest.raises(CheckpointError, match="missing .*encoder.nets.pixels"):
        pixels.load_weights(wide)


def test_refuses_nan_weights() -> None:
    agent = trained_agent()
    with torch.no_grad():
        agent.model.reward[0].weight[0, 0] = float("nan")
        agent.model.q.fc1.bias[1, 0, 3] = float("inf")
    data = agent.to_bytes()  # a correct sha256 of bad values: only the finite check catches it
    with pytest.raises(CheckpointError, match="NaN or inf in 2 tensors: .*q.fc1.bias.*reward"):
        checkpoint.from_bytes(data)
    robot = Agent(small_config(), SPEC, acting_only=True)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        robot.load_weights(data)
    assert bool(torch.isfinite(robot.model.reward[0].weight).all())


def test_missing_file_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint.load(tmp_path / "absent.safetensors")
