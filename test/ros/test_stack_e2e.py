"""The whole node graph, each node its own process, for a few short simulated trials."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tdmpc_ros import graph
from tdmpc_ros.core.episodes import load_episodes
from tdmpc_ros.launcher import Process, node_processes, parse_arguments, run
from tdmpc_ros.tasks import get_task

from rostest import ros_node, spinning

REPO = Path(__file__).resolve().parents[2]


def with_overrides(processes: list[Process], overrides: dict[str, dict[str, object]]
                   ) -> list[Process]:
    """The launcher's processes with extra ``-p name:=value`` for some nodes."""
    changed = []
    for process in processes:
        extra = [item for name, value in overrides.get(process.name, {}).items()
                 for item in ("-p", f"{name}:={value}")]
        changed.append(Process(process.name, process.command + tuple(extra), process.required))
    return changed


def domain_processes(domain: str) -> list[int]:
    """Processes (other than this one) running on the test's ROS domain."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ROS_DOMAIN_ID={domain}".encode() in environment:
            found.append(int(entry.name))
    return found


def test_the_stack_runs_trials_records_every_step_once_and_swaps_weights(ros_env, tmp_path,
                                                                         monkeypatch):
    for name, value in ros_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)  # data/ and models/ as `make demo` leaves them
    data = tmp_path / "data"
    from tdmpc_ros.sim import datasets

    assert datasets.main(["--task", "reach", "--episodes", "10", "--out", str(data),
                          "--quiet"]) == 0
    run_dir = tmp_path / "run"
    arguments = parse_arguments(["task:=reach", "trials:=3", f"run_dir:={run_dir}",
                                 f"dataset:={data}", "device:=cpu", "variant:=shifted"])
    processes = with_overrides(node_processes(arguments), {
        "trial_supervisor": {"max_steps": 6},
        "learner": {"publish_every_updates": 4, "publish_every_s": 2.0},
    })

    executed, transitions, weights = set(), [], []
    with ros_node("e2e_observer", ros_env) as (node, executor):
        node.create_subscription(graph.topic("robot/state").message_class(), "robot/state",
                                 lambda m: executed.add((m.episode_id, m.step)),
                                 graph.topic("robot/state").profile())
        node.create_subscription(graph.topic("replay/transitions").message_class(),
                                 "replay/transitions",
                                 lambda m: transitions.append((m.episode_id, m.step)),
                                 graph.topic("replay/transitions").profile())
        node.create_subscription(graph.topic("learner/weights").message_class(),
                                 "learner/weights", lambda m: weights.append(m.version),
                                 graph.topic("learner/weights").profile())
        with spinning(executor):
            code = run(processes, environment=ros_env)
    assert code == 0

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trials"] == 3 and [r["steps"] for r in summary["results"]] == [6, 6, 6]
    assert summary["complete"] and summary["ended"] == "finished"
    # the supervisor's own count: every executed step of every trial reached the recorder
    assert [r["recorded_steps"] for r in summary["results"]] == [6, 6, 6], summary
    assert summary["steps_not_recorded"] == 0
    assert (run_dir / "trials.png").stat().st_size > 10_000
    # Each trial's mean uncertainty about the actions taken, from the planner's plans.
    assert all(r["q_std"] is not None and r["q_std"] >= 0 for r in summary["results"])

    # Every executed step was recorded once and only once, on disk and on the topic.
    executed_steps = {(episode, step - 1) for episode, step in executed if step > 0}
    assert len(executed_steps) == 18
    episodes = load_episodes(run_dir / "episodes")
    recorded = [(e.episode_id, e.extras["first_step"] + t) for e in episodes
                for t in range(e.length)]
    assert sorted(recorded) == sorted(executed_steps)
    assert sorted(transitions) == sorted(executed_steps)
    assert all(e.length == 6 and "pixels" in e.observations for e in episodes)
    assert not list((run_dir / "episodes" / "partial").glob("*.npz"))
    # The trials ran on the variant: each target where variant:=shifted places it.
    assert summary["variant"] == "shifted"
    region = get_task("reach", "shifted").target_region
    assert all(region.contains(e.observations["state"][0, 4:7], tolerance=1e-4)
               for e in episodes)

    # The learner published new weights during the run, and the planner acted with them.
    assert len(weights) >= 2
    used = {int(v) for e in episodes for v in e.weights_version}
    assert max(used) > min(weights), (used, weights)

    # Nothing is left behind.
    assert domain_processes(ros_env["ROS_DOMAIN_ID"]) == []


def test_a_pixel_model_runs_a_trial_from_the_camera(ros_env, tmp_path, monkeypatch):
    """input:=pixels: the shipped pixel model plans from the simulated camera's frames (and
    proprioception), its learner trains on a pixel dataset, and the trial is recorded with its
    frames."""
    for name, value in ros_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    from tdmpc_ros.sim import datasets

    assert datasets.main(["--task", "reach", "--episodes", "2", "--pixels", "--out", str(data),
                          "--quiet"]) == 0
    run_dir = tmp_path / "run"
    arguments = parse_arguments(["task:=reach", "input:=pixels", "trials:=1",
                                 f"run_dir:={run_dir}", f"dataset:={data}", "device:=cpu"])
    processes = with_overrides(node_processes(arguments), {"trial_supervisor": {"max_steps": 4}})
    plans = []
    with ros_node("pixel_observer", ros_env) as (node, executor):
        node.create_subscription(graph.topic("planner/plan").message_class(), "planner/plan",
                                 plans.append, graph.topic("planner/plan").profile())
        with spinning(executor):
            code = run(processes, environment=ros_env)
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trials"] == 1 and summary["results"][0]["recorded_steps"] == 4, summary
    [episode] = load_episodes(run_dir / "episodes")
    assert episode.observations["pixels"].shape == (5, 84, 84, 3)
    assert episode.observations["pixels"].std() > 5  # real frames of the scene, not blanks
    assert {plan.episode_id for plan in plans} == {episode.episode_id}
    assert len(plans) >= 4
