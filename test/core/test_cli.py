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
        "--set", "run.action_repeat=1", "--set", "run.convergence_check_every=5",
        "--device", "cpu"]
ENV = ["--env", "tdmpc_ros/PointMass-v0", "--env-kwargs", '{"max_steps": 8}']


def test_pretrain_finetune_eval(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    for episode in noisy_expert_dataset(4, noise=0.5, seed=0, max_steps=8):
        save_episode(episode, data)
    run = tmp_path / "pretrain"
    assert cli.main(["pretrain", "--dataset", str(data), *ENV, "--updates", "10",
                     "--eval-episodes", "1", "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "[pretrain] 5/10 | model" in out and "Q/return on experts" in out
    assert "values NOT converged at the cap" in out  # 10 updates are far too few
    assert "[pretrain] eval {" in out
    assert (run / "pretraining.png").stat().st_size > 1000
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


def test_a_stopped_pretraining_resumes_from_its_newest_checkpoint(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    for episode in noisy_expert_dataset(4, noise=0.5, seed=0, max_steps=8):
        save_episode(episode, data)
    run = tmp_path / "pretrain"
    every = ["--set", "run.checkpoint_every=5"]
    assert cli.main(["pretrain", "--dataset", str(data), *ENV, "--updates", "5",
                     "--out", str(run), *TINY, *every]) == 0
    assert (run / "checkpoints" / "step_0000005.safetensors").exists()
    capsys.readouterr()
    assert cli.main(["pretrain", "--dataset", str(data), *ENV, "--updates", "10", "--resume",
                     "--out", str(run), *TINY, *every]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "from step_0000005.safetensors (update 5)" in out
    assert "[pretrain] 10/10" in out and "[pretrain] 5/10" not in out
    assert checkpoint.load(run / "latest.safetensors").step == 10
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "pretrain"] == [5, 10]


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


def test_finetune_on_a_variant_of_a_sim_task(tmp_path, capsys) -> None:
    from tdmpc_ros.sim.datasets import generate_dataset
    from tdmpc_ros.tasks import get_task

    data = tmp_path / "lift"
    generate_dataset("lift", data, episodes=2, seed=0)
    run = tmp_path / "pretrain"
    lift = ["--env", "tdmpc_ros/XArmLift-v0"]
    assert cli.main(["pretrain", "--dataset", str(data), *lift, "--updates", "2",
                     "--out", str(run), *TINY]) == 0
    tuned = tmp_path / "finetune"
    assert cli.main(["finetune", "--checkpoint", str(run / "latest.safetensors"), *lift,
                     "--variant", "shifted", "--dataset", str(data), "--episodes", "2",
                     "--out", str(tuned)]) == 0
    region = get_task("lift", "shifted").object_region
    for episode in load_episodes(tuned / "episodes"):
        cube = episode.observations["state"][0, 4:7]  # where the variant placed it
        assert region.low[1] - 0.005 <= cube[1] <= region.high[1] + 0.005
    for episode in load_episodes(data):  # the offline data: the training distribution
        assert abs(episode.observations["state"][0, 5]) <= 0.125
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(run / "latest.safetensors"), *ENV,
                     "--variant", "shifted"]) == 2
    assert "applies to the project's xArm tasks" in capsys.readouterr().err
