"""The experiment pipeline end to end at tiny size, its report, and the shipped models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"reach-state": ("reach", False), "push-state": ("push", False),
          "lift-state": ("lift", False), "reach-pixels": ("reach", True),
          "lift-pixels": ("lift", True)}


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_experiment_pipeline_tiny(tmp_path: Path) -> None:
    experiment, report = _load_tool("experiment"), _load_tool("report")
    out, docs = tmp_path / "out", tmp_path / "docs"
    argv = ["--tasks", "lift", "--seeds", "0", "1", "--variant", "shifted", "--updates", "6",
            "--check-every", "3", "--min-updates", "0", "--trials", "2", "--eval-episodes", "1",
            "--dataset-episodes", "3", "--calibration-episodes", "2", "--mlp-dim", "16",
            "--batch-size", "4", "--num-samples", "8", "--iterations", "1", "--num-elites", "2",
            "--sweep-task", "lift", "--sweep-lambdas", "3", "--sweep-online-shares", "0.9",
            "--workers", "1", "--data", str(tmp_path / "data"), "--out", str(out)]
    assert experiment.main(argv) == 0
    group = out / "lift-state" / "seed0"
    pretrain = json.loads((group / "pretrain_in_sample.json").read_text())
    assert 3 <= pretrain["updates"] <= 6 and len(pretrain["history"]) == pretrain["updates"] // 3
    assert {"q_expert", "return_expert", "value_ratio", "q_loss"} <= set(pretrain["history"][0])
    max_q = json.loads((group / "pretrain_max_q.json").read_text())
    assert max_q["updates"] == pretrain["updates"]  # the same budget
    assert max_q["config"]["learner"]["td_target"] == "max_q"
    assert (group / "pretrain_in_sample.png").stat().st_size > 1000
    for method in experiment.METHODS:
        result = json.loads((group / f"{method}.json").read_text())
        assert result["method"] == method and result["variant"] == "shifted"
        assert len(result["trial_successes"]) == 2
        assert (result["success_before"] is None) == (method == "scratch")
        assert result["online_updates"] == (0 if method == "pretrained" else 2 * 25)
        assert result["uncertainty_coef"] == experiment.method_settings(method)["lambda"]
    assert json.loads((group / "sweep_lambda3.json").read_text())["uncertainty_coef"] == 3.0
    assert json.loads((group / "sweep_online0.9.json").read_text())["offline_fraction"] == \
        pytest.approx(0.1)
    calibration = json.loads((group / "calibration.json").read_text())
    assert set(calibration["sets"]) == {"in_distribution", "variant", "pooled"}
    # resumable: a second call finds every result and redoes nothing
    stamp = (group / "fowm.json").stat().st_mtime_ns
    assert experiment.main(argv) == 0
    assert (group / "fowm.json").stat().st_mtime_ns == stamp

    report.write_report(out, docs)
    document = json.loads((docs / "results.json").read_text())
    assert "python tools/experiment.py" in document["command"]
    fowm = next(r for r in document["results"] if r["method"] == "fowm")
    assert fowm["task"] == "lift" and fowm["distribution"] == "shifted"
    assert fowm["input"] == "state" and fowm["seeds"] == [0, 1] and fowm["eval_episodes"] == 1
    for field in ("success_before", "success_after"):
        assert set(fowm[field]) == {"mean", "std", "per_seed"}
        assert len(fowm[field]["per_seed"]) == 2
        assert fowm[field]["mean"] == pytest.approx(np.mean(fowm[field]["per_seed"]))
    assert len(fowm["trial_successes"]) == 2 and len(fowm["trial_successes"][0]) == 2
    assert fowm["command"] == document["command"]
    scratch = next(r for r in document["results"] if r["method"] == "scratch")
    assert scratch["success_before"] is None
    assert {p["pretraining"] for p in document["pretraining"]} == {"in_sample", "max_q"}
    assert document["calibration"][0]["sets"]["pooled"]["spearman"]["per_seed"]
    text = (docs / "results.md").read_text()
    assert "| lift | shifted | state | FOWM (lambda 1, balanced) |" in text
    assert "python tools/experiment.py" in text and "Sweep on lift" in text
    assert (docs / "success_by_trial_lift.png").stat().st_size > 1000
    assert (docs / "sweep_lift.png").stat().st_size > 1000
    assert (docs / "pretraining_lift.png").stat().st_size > 1000


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


def test_pixel_experiment_on_distractors_from_a_pretraining_run(tmp_path: Path) -> None:
    """--input pixels finetunes the model of a `tdmpc-ros pretrain` run (--pretrained-from,
    {task} and {seed} in it) on the distractors variant, from camera frames, and the report
    keeps the pixel rows apart from the state ones."""
    from tdmpc_ros import cli
    from tdmpc_ros.sim.datasets import generate_dataset

    experiment, report = _load_tool("experiment"), _load_tool("report")
    data, out = tmp_path / "data", tmp_path / "out"
    generate_dataset("lift", data / "lift-pixels", 2, seed=0, pixels=True)
    run = tmp_path / "pretrain-lift-pixels-seed0"
    assert cli.main(["pretrain", "--dataset", str(data / "lift-pixels"), "--out", str(run),
                     "--updates", "4", "--threads", "1", "--device", "cpu",
                     "--set", "model.obs_type=pixels+proprio", "--set", "model.mlp_dim=16",
                     "--set", "learner.batch_size=4", "--set", "run.convergence_check_every=2",
                     "--set", "run.convergence_min_updates=0"]) == 0
    argv = ["--tasks", "lift", "--seeds", "0", "--input", "pixels", "--variant", "distractors",
            "--pretrained-from", str(tmp_path / "pretrain-{task}-pixels-seed{seed}"),
            "--methods", "fowm", "pretrained", "--stages", "pretrain", "finetune",
            "--trials", "1", "--eval-episodes", "1", "--dataset-episodes", "2",
            "--mlp-dim", "16", "--batch-size", "4", "--num-samples", "8", "--iterations", "1",
            "--num-elites", "2", "--workers", "1", "--data", str(data), "--out", str(out)]
    assert experiment.main(argv) == 0
    group = out / "lift-pixels" / "seed0"
    pretrain = json.loads((group / "pretrain_in_sample.json").read_text())
    assert pretrain["input"] == "pixels" and pretrain["updates"] == 4
    assert pretrain["pretrained_from"] == str(run)
    assert pretrain["config"]["model"]["obs_type"] == "pixels+proprio"
    fowm = json.loads((group / "fowm.json").read_text())
    assert fowm["input"] == "pixels" and fowm["variant"] == "distractors"
    assert fowm["online_updates"] == 25 and fowm["pretrain_updates"] == 4
    docs = tmp_path / "docs"
    report.write_report([out], docs)
    text = (docs / "results.md").read_text()
    assert "| lift | distractors | pixels | FOWM (lambda 1, balanced) |" in text
    assert (docs / "success_by_trial_lift-pixels.png").exists()
