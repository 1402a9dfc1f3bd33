"""Offline datasets: files written and read back, determinism, resuming, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdmpc_ros.core.episodes import episode_paths, load_episodes
from tdmpc_ros.sim import datasets
from tdmpc_ros.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


def arrays(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every array of every episode file of ``directory``, by file name."""
    result = {}
    for path in episode_paths(directory):
        with np.load(path, allow_pickle=False) as archive:
            result[path.name] = {name: archive[name] for name in archive.files}
    return result


def test_small_pixel_dataset_written_and_read_back(tmp_path: Path) -> None:
    summary = datasets.generate_dataset("lift", tmp_path / "lift", episodes=3, seed=5, pixels=True)
    assert summary["written"] == 3 and summary["skipped"] == 0
    episodes = load_episodes(tmp_path / "lift")
    assert [episode.episode_id for episode in episodes] == [
        "lift-seed5-00000", "lift-seed5-00001", "lift-seed5-00002",
    ]
    spec = get_task("lift")
    for episode in episodes:
        assert episode.task == "lift" and episode.source == "scripted"
        assert episode.length == 25
        assert episode.observations["pixels"].shape == (26, 84, 84, 3)
        assert episode.observations["pixels"].dtype == np.uint8
        assert episode.observations["state"].shape == (26, spec.state_dim)
        assert episode.observations["proprio"].shape == (26, 4)
        assert episode.actions.shape == (25, 4) and np.abs(episode.actions).max() <= 1.0
        assert not episode.terminated.any() and episode.truncated.tolist() == [False] * 24 + [True]
        assert episode.extras["skill"] in {"expert", "sloppy", "poor", "random"}
        # consecutive states follow the actions: the TCP moves at most a step per axis
        moves = np.abs(np.diff(episode.observations["state"][:, :3], axis=0))
        assert moves.max() <= spec.max_step_m + 0.005
    assert not list((tmp_path / "lift").glob(".*"))  # no temporary files left behind


def test_same_seed_same_arrays_and_resume(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    datasets.generate_dataset("push", first, episodes=3, seed=1)
    datasets.generate_dataset("push", second, episodes=3, seed=1)
    a, b = arrays(first), arrays(second)
    assert sorted(a) == sorted(b) and len(a) == 3
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])
    datasets.generate_dataset("push", tmp_path / "c", episodes=1, seed=2)
    other = arrays(tmp_path / "c")["push-seed2-00000.npz"]
    assert not np.array_equal(other["obs/state"], a["push-seed1-00000.npz"]["obs/state"])

    # interrupted run: one file missing; the rerun writes only it, identical to before
    missing = sorted(first.glob("*.npz"))[1]
    missing.unlink()
    kept = {path: path.stat().st_mtime_ns for path in first.glob("*.npz")}
    summary = datasets.generate_dataset("push", first, episodes=3, seed=1)
    assert summary["written"] == 1 and summary["skipped"] == 2
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())
    again = arrays(first)
    for key in a[missing.name]:
        np.testing.assert_array_equal(again[missing.name][key], a[missing.name][key])


def test_command_line_and_reading_without_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "reach"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "tdmpc_ros.sim.datasets", "--task", "reach", "--episodes", "2",
         "--out", str(out), "--seed", "3"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=True,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["task"] == "reach"
    assert "[2/2] reach-seed3-00001" in result.stderr
    # a consumer where MuJoCo cannot even be imported reads the files
    reader = (
        "import sys; sys.modules['mujoco'] = None\n"
        "from tdmpc_ros.core.episodes import load_episodes\n"
        f"episodes = load_episodes({str(out)!r})\n"
        "print(len(episodes), episodes[0].observations['state'].shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True,
                            env=env, timeout=60, check=True)
    assert result.stdout.split() == ["2", "(26,", "7)"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        datasets.generate_dataset("pick", "unused", episodes=1)
    with pytest.raises(ValueError, match="at least 1"):
        datasets.generate_dataset("reach", "unused", episodes=0)
    assert datasets.DEFAULT_EPISODES == {"reach": 120, "push": 200, "lift": 200}
