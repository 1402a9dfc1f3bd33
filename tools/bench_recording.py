"""Recording under load: of the steps the robot executed, how many reach the episode store and
the learner, with CPU hogs keeping every core busy.

Runs the whole stack as a lab would (``python -m tdmpc_ros.launcher``, sim backend) next to one
busy loop per core (bounded: each stops by itself), and watches it from an independent node:
every robot state after a step is an executed step. At the end it reads the episode files, and
counts the transitions it saw and the learner's online steps. Prints

    {"bench": "recording", "executed": N, "recorded": N, "lost": 0, ...}

``StackRun`` is also what the load and kill tests (test/ros/test_recording.py) run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def hogs(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` busy loops at normal priority, each ending by itself after ``seconds``."""
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]


class StackRun:
    """The stack under the project's launcher, watched by a node of its own.

    ``executed``: (episode, step) of every step the driver executed (a robot state of step
    s + 1 follows step s); ``transitions``: every (episode, step) on replay/transitions, in
    order, repeats included; ``diagnostics``: the latest values of each node.
    """

    def __init__(self, run_dir: Path, arguments: list[str], environment: dict[str, str]):
        self.run_dir = run_dir
        self.arguments = arguments
        self.environment = environment
        self.log_path = run_dir / "launcher.log"
        self.executed: set[tuple[str, int]] = set()
        self.transitions: list[tuple[str, int]] = []
        self.diagnostics: dict[str, dict[str, str]] = {}

    def __enter__(self) -> StackRun:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from tdmpc_ros import graph

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.launcher = subprocess.Popen(
                [sys.executable, "-m", "tdmpc_ros.launcher", f"run_dir:={self.run_dir}",
                 *self.arguments], env=self.environment, stdout=log, stderr=subprocess.STDOUT)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(self.environment["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("stack_watch", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

        def on_state(message: Any) -> None:
            if message.episode_id and message.step >= 1:
                self.executed.add((message.episode_id, message.step - 1))

        def on_transition(message: Any) -> None:
            self.transitions.append((message.episode_id, message.step))

        def on_diagnostics(array: Any) -> None:
            for status in array.status:
                name = status.name.rsplit("/", 1)[-1]
                self.diagnostics.setdefault(name, {}).update(
                    {item.key: item.value for item in status.values})

        for name, callback in (("robot/state", on_state),
                               ("replay/transitions", on_transition)):
            topic = graph.topic(name)  # catch-up readers: this watcher must miss nothing
            self.node.create_subscription(topic.message_class(), name, callback,
                                          topic.reader_profile(catch_up=True))
        topic = graph.topic("/diagnostics")
        self.node.create_subscription(topic.message_class(), topic.name, on_diagnostics,
                                      topic.reader_profile())
        return self

    def __exit__(self, *_: object) -> None:
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGINT)
            try:
                self.launcher.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait(timeout=10)
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.try_shutdown(context=self.context)

    def log(self) -> str:
        return self.log_path.read_text()

    def pids(self) -> dict[str, list[int]]:
        """Every pid the launcher started, by node, in order (a respawned node has several)."""
        started: dict[str, list[int]] = {}
        for name, pid in re.findall(r"\[launcher\] started (\w+) \(pid (\d+)\)", self.log()):
            started.setdefault(name, []).append(int(pid))
        return started

    def spin_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                     f"launcher log:\n{self.log()[-6000:]}")
            if self.launcher.poll() is not None and not done():
                raise AssertionError(f"the launcher exited with {self.launcher.returncode} "
                                     f"while waiting for {what}:\n{self.log()[-6000:]}")
            self.executor.spin_once(timeout_sec=0.05)

    def at_step(self, trial: int, step: int) -> bool:
        return any(episode.endswith(f"trial{trial:03d}") and s >= step
                   for episode, s in self.executed)

    def wait_for_end(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.launcher.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the run did not end in {timeout:.0f} s:\n"
                                     f"{self.log()[-6000:]}")
            self.executor.spin_once(timeout_sec=0.05)
        for _ in range(20):  # what was still in flight
            self.executor.spin_once(timeout_sec=0.05)
        return self.launcher.returncode

    def recorded(self) -> list[tuple[str, int]]:
        """(episode, step) of every step in the episode files, finished and partial."""
        from tdmpc_ros.core.episodes import load_episodes

        store = self.run_dir / "episodes"
        episodes = load_episodes(store) + load_episodes(store / "partial")
        return [(episode.episode_id, int(episode.extras.get("first_step", 0)) + step)
                for episode in episodes for step in range(episode.length)]


def make_dataset(task: str, directory: Path) -> Path:
    from tdmpc_ros.sim import datasets

    if not directory.exists():  # its report goes to stderr: stdout is the figures'
        with contextlib.redirect_stdout(sys.stderr):
            datasets.main(["--task", task, "--episodes", "3", "--out", str(directory),
                           "--quiet"])
    return directory


def measure(trials: int, run_dir: Path, environment: dict[str, str], hog_count: int = 2,
            hog_seconds: float = 300.0, task: str = "reach") -> dict[str, Any]:
    """One loaded run of ``trials`` trials; the figures of the recording benchmark."""
    data = make_dataset(task, run_dir / "data")
    busy = hogs(hog_count, hog_seconds)
    try:
        with StackRun(run_dir / "run", [f"task:={task}", f"trials:={trials}",
                                        f"dataset:={data}", "device:=cpu"],
                      environment) as stack:
            code = stack.wait_for_end(60 + 120 * trials)
            recorded = stack.recorded()
            said = re.findall(r"learner\]: stopping: (\d+) online steps", stack.log())
            learner_steps = int(said[-1]) if said else -1
    finally:
        for hog in busy:
            hog.kill()
            hog.wait()
    executed = stack.executed
    summary = json.loads((run_dir / "run" / "summary.json").read_text())
    return {"bench": "recording", "task": task, "trials": summary["trials"],
            "executed": len(executed), "recorded": len(set(recorded) & executed),
            "lost": len(executed - set(recorded)),
            "recorded_twice": len(recorded) - len(set(recorded)),
            "transitions": len(set(stack.transitions) & executed),
            "transitions_repeated": len(stack.transitions) - len(set(stack.transitions)),
            "learner_online_steps": learner_steps, "launcher_exit": code,
            "summary_steps_not_recorded": summary["steps_not_recorded"],
            "load": f"{hog_count} busy loops at normal priority on {os.cpu_count()} cores"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    options = parser.parse_args()
    environment = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                       ROS_DOMAIN_ID=os.environ.get("TDMPC_BENCH_DOMAIN_ID", "91"),
                       PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="bench_recording_") as directory:
        os.chdir(REPO)
        figures = measure(options.trials, Path(directory), environment, options.hogs)
    print(json.dumps(figures), flush=True)
    return 0 if figures["lost"] == 0 and figures["recorded_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
