"""The tdmpc-ros command: pretrain, finetune and eval end to end at a tiny size."""

from __future__ import annotations

import json

import torch

from tdmpc_ros import cli
from tdmpc_ros.core import checkpoint
from tdmpc_ros.core.episodes import load_episodes, save_episode
from tdmpc_ros.core.toy import noisy_expert_dataset

torch.set_num_threads(1)  # small models; also robust when the machine is shared

TINY = ["--set", "model.mlp_dim=16", "--set", "model.enc_dim=16", "--set", "model.latent_dim=8",
        "--set", "learner.batch_size=8", "--set", "planner.num_samples=16",
        "--set", "planner.num_elites=4", "--set", "planner.iterations=2",
        "--set", "run.action_repeat=1", "--set", "run.log_every=5", "--device", "cpu"]
ENV = ["--env", "tdmpc_ros/PointMass-v0", "--env-kwargs", '{"max_steps": 8}']


def test_pretrain_finetune_eval(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    for episode in noisy_expert_dataset(4, noise=0.5, seed=0, max_steps=8):
        save_episode(episode, data)
    run = tmp_path / "pretrain"
    assert cli.main(["pretrain", "--dataset", str(data), *ENV, "--updates", "10",
                     "--eval-episodes", "1", "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "[pretrain] 5/10 (50.0%) | model" in out and "upd/s | ETA" in out
    assert "[pretrain] eval {" in out
    loaded = checkpoint.load(run / "latest.safetensors")
    assert loaded.step == 10 and loaded.config.model.mlp_dim == 16
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "pretrain"] == [5, 10]
    assert (run / "config.yaml").exists()

    tuned = tmp_path / "finetune"
    assert cli.main(["finetune", "--checkpoint", str(run / "latest.safetensors"), *ENV,
                     "--dataset", str(data), "--episodes", "2", "--out", str(tuned),
                     "--set", "planner.uncertainty_coef=3"]) == 0
    out = capsys.readouterr().out
    assert "[finetune] episode 2/2 | return" in out
    online = load_episodes(tuned / "episodes")
    assert len(online) == 2 and all(e.weights_version.min() >= 1 for e in online)
    final = checkpoint.load(tuned / "latest.safetensors")
    assert final.step == 10 + sum(e.length for e in online)
    assert final.config.planner.uncertainty_coef == 3.0

    assert cli.main(["eval", "--checkpoint", str(tuned / "latest.safetensors"), *ENV,
                     "--episodes", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 2 and -100 < result["return"] <= 0


def test_pretrain_from_random_episodes_of_any_env(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert cli.main(["pretrain", *ENV, "--random-episodes", "2", "--updates", "5",
                     "--out", str(run), *TINY]) == 0
    assert len(load_episodes(run / "dataset")) == 2
    assert (run / "latest.safetensors").exists()


def test_errors_name_the_problem(tmp_path, capsys) -> None:
    assert cli.main(["pretrain", "--dataset", str(tmp_path / "none"), "--updates", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["pretrain", *ENV, "--random-episodes", "1",
                     "--set", "planner.uncertainty_coef=-1"]) == 2
    assert "planner.uncertainty_coef must be >= 0" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert cli.main(["eval", "--checkpoint", str(bad), *ENV]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
