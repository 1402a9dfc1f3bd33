"""The experiment pipeline end to end at tiny size, and the shipped pretrained models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"reach-state": ("reach", False), "push-state": ("push", False),
          "lift-state": ("lift", False), "reach-pixels": ("reach", True)}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_experiment_pipeline_tiny(tmp_path: Path) -> None:
    experiment, report = _load_tool("experiment"), _load_tool("report")
    out, docs, models = tmp_path / "out", tmp_path / "docs", tmp_path / "models"
    argv = ["--tasks", "reach", "--pixels-tasks", "--seeds", "0", "--updates", "4",
            "--trials", "2", "--eval-episodes", "1", "--dataset-episodes", "3",
            "--mlp-dim", "32", "--batch-size", "8", "--num-samples", "16", "--iterations", "1",
            "--num-elites", "4", "--workers", "1", "--data", str(tmp_path / "data"),
            "--out", str(out), "--models", str(models)]
    assert experiment.main(argv) == 0
    group = out / "reach-state" / "seed0"
    pretrain = json.loads((group / "pretrain.json").read_text())
    assert pretrain["updates"] == 4 and 0.0 <= pretrain["eval"]["success"] <= 1.0
    assert (group / "pretrained.safetensors").exists()
    for variant in experiment.VARIANTS:
        result = json.loads((group / f"{variant}.json").read_text())
        assert result["variant"] == variant and result["task"] == "reach"
        assert len(result["trial_success"]) == 2
        assert 0.0 <= result["success_after"] <= 1.0
        assert (result["success_before"] is None) == (variant == "scratch")
        assert result["online_updates"] == 2 * 25
        assert result["uncertainty_coef"] == (0.0 if variant in ("lambda0", "scratch") else 1.0)
    assert (models / "reach-state.safetensors").exists() and (models / "reach-state.md").exists()
    # resumable: a second call finds every result and redoes nothing
    stamp = (group / "fowm.json").stat().st_mtime_ns
    assert experiment.main(argv) == 0
    assert (group / "fowm.json").stat().st_mtime_ns == stamp

    report.write_report(out, docs)
    text = (docs / "results.md").read_text()
    assert "| reach | state | FOWM (lambda 1, balanced) |" in text
    assert "python tools/experiment.py" in text
    assert (docs / "success_by_trial_reach.png").stat().st_size > 1000


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_loads_and_acts(name: str) -> None:
    from tdmpc_ros.core import checkpoint
    from tdmpc_ros.core.agent import Agent, observation_dict
    from tdmpc_ros.sim.env import XArmTaskEnv

    path = ROOT / "models" / f"{name}.safetensors"
    assert path.exists(), f"{path} is missing"
    assert path.stat().st_size < 5_000_000
    card = ROOT / "models" / f"{name}.md"
    assert card.exists() and "Success before finetuning" in card.read_text()
    loaded = checkpoint.load(path)
    task, pixels = MODELS[name]
    assert ("pixels" in loaded.config.model.obs_type) == pixels
    agent = Agent.from_checkpoint(path, acting_only=True)
    env = XArmTaskEnv(task, render_pixels=pixels, seed=0)
    try:
        observation, _ = env.reset(seed=0)
        agent.reset()
        action, _ = agent.act(observation_dict(observation))
    finally:
        env.close()
    assert action.shape == env.action_space.shape
    assert np.isfinite(action).all() and np.all(np.abs(action) <= 1.0)
