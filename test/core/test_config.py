"""The typed config: paper defaults, dict/YAML round trips, and errors that name the field."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import yaml

from tdmpc_ros.core.config import Config, fast_config, paper_config


def test_defaults_are_the_papers() -> None:
    config = Config()
    config.validate()
    assert config.model.latent_dim == 50 and config.model.mlp_dim == 512
    assert config.model.num_q == 5 and config.model.shift_pad == 4
    assert config.horizon == 5 and config.learner.rho == 0.5 and config.learner.batch_size == 256
    assert config.learner.expectile == 0.9 and config.learner.lr == 3e-4
    assert (config.planner.iterations, config.planner.num_samples, config.planner.num_elites) == (
        6, 512, 50)
    assert config.num_policy_trajectories == 51
    assert config.planner.temperature == 0.5 and config.planner.momentum == 0.1
    assert (config.planner.min_std, config.planner.max_std) == (0.05, 2.0)
    assert config.planner.uncertainty_coef == 1.0
    assert config.replay.offline_fraction == 0.5
    assert paper_config() == config


def test_every_field_is_documented() -> None:
    default = Config()
    sections = [Config] + [type(getattr(default, f.name)) for f in dataclasses.fields(Config)
                           if dataclasses.is_dataclass(getattr(default, f.name))]
    assert len(sections) == 6
    for section in sections:
        lines = inspect.getsource(section).splitlines()
        instance = section()
        for field in dataclasses.fields(section):
            if dataclasses.is_dataclass(getattr(instance, field.name)):
                continue  # a sub-section, documented by its class
            index = next(i for i, line in enumerate(lines)
                         if line.startswith(f"    {field.name}: "))
            assert lines[index + 1].strip().startswith('"""'), (
                f"{section.__name__}.{field.name} has no docstring")


def test_round_trip_through_dict_and_yaml() -> None:
    config = fast_config(**{"learner.batch_size": 64, "planner.uncertainty_coef": 3.0})
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert Config.from_dict(data) == config
    partial = Config.from_dict({"planner": {"num_samples": 128}})
    assert partial.planner.num_samples == 128 and partial.model == Config().model
    assert Config.from_dict({"discount": 1}).discount == 1.0  # ints widen to floats


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"planner": {"uncertainty_coef": -1.0}}, "planner.uncertainty_coef"),
        ({"learner": {"batch_size": 0}}, "learner.batch_size"),
        ({"device": "tpu"}, "device"),
        ({"model": {"obs_type": "lidar"}}, "model.obs_type"),
        ({"learner": {"expectile": 1.0}}, "learner.expectile"),
        ({"planner": {"num_elites": 10_000}}, "planner.num_elites"),
        ({"planner": {"min_std": 3.0}}, "planner.max_std"),
        ({"planner": {"precision": "float8"}}, "planner.precision"),
        ({"replay": {"offline_fraction": 1.5}}, "replay.offline_fraction"),
        ({"horizon": 0}, "horizon"),
        ({"learner": {"batch_size": 2.5}}, "learner.batch_size"),
        ({"learner": {"batch_size": True}}, "learner.batch_size"),
        ({"planner": {"warm_start": "yes"}}, "planner.warm_start"),
        ({"planner": {"sampels": 3}}, "planner.sampels"),
        ({"learner": 3}, "learner"),
    ],
)
def test_wrong_values_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Config.from_dict(data)


def test_replace_validates_and_device_auto() -> None:
    with pytest.raises(ValueError, match="planner.uncertainty_coef"):
        Config().replace(**{"planner.uncertainty_coef": -0.5})
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Config().torch_device().type == expected
    assert Config(device="cpu").torch_device() == torch.device("cpu")
