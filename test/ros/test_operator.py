"""The operator's word over the trials: the console's commands reach the supervisor over DDS,
which ends a trial so marked, holds the robot on pause, and aborts the run with a summary."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest

from tdmpc_ros import graph
from tdmpc_ros.core.episodes import load_episodes
from tdmpc_ros.launcher import parse_arguments
from tdmpc_ros.msg import EpisodeEvent, OperatorCommand, RobotState
from tdmpc_ros.nodes.operator_console import parse_command

from rostest import NodeGroup, graph_publisher, listen, node_command, ros_node, spin_until


def test_command_words_and_keys() -> None:
    assert parse_command("success") == parse_command("s") == OperatorCommand.SUCCESS
    assert parse_command(" Failure ") == OperatorCommand.FAILURE
    assert parse_command("p") == OperatorCommand.PAUSE
    assert parse_command("resume") == OperatorCommand.RESUME
    assert parse_command("abort") == OperatorCommand.ABORT
    with pytest.raises(ValueError, match="unknown command 'stop'"):
        parse_command("stop")


def _spin_for(executor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)


def _console(ros_env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdmpc_ros.nodes.operator_console", *arguments],
                          env=ros_env, capture_output=True, text=True, timeout=60)


def test_console_without_a_supervisor_says_so(ros_env) -> None:
    started = time.monotonic()
    result = _console(ros_env, "--send", "pause", "--wait", "1")
    assert result.returncode == 1
    assert "no trial supervisor listening" in result.stderr
    assert time.monotonic() - started < 30


def test_operator_marks_pauses_and_aborts_the_trials(tmp_path, ros_env) -> None:
    from tdmpc_ros.sim import datasets

    data = tmp_path / "data"
    assert datasets.main(["--task", "reach", "--episodes", "4", "--out", str(data),
                          "--quiet"]) == 0
    run_dir = tmp_path / "run"
    arguments = parse_arguments(["task:=reach", "trials:=5", f"run_dir:={run_dir}",
                                 f"dataset:={data}", "device:=cpu"])
    commands = {node.name: node_command(node.name, arguments) for node in graph.NODES}
    group = NodeGroup(commands, ros_env, tmp_path)
    with group, ros_node("operator_test", ros_env) as (node, executor):
        events: list[EpisodeEvent] = []
        states: list[RobotState] = []
        listen(node, "trial/events", events)
        listen(node, "robot/state", states)
        operator = graph_publisher(node, "trial/operator")

        def at(trial: int, step: int) -> bool:
            return any(s.episode_id.endswith(f"trial{trial:03d}") and s.step >= step
                       for s in states)

        def event(kind: int, trial: int) -> EpisodeEvent | None:
            return next((e for e in events if e.event == kind and e.trial == trial), None)

        def send(command: int) -> None:  # straight from this node: no start-up delay
            operator.publish(OperatorCommand(command=command))

        # A failure marked during trial 1 ends it at once, so marked. (The console process
        # takes a second or two to come up under load: a pause holds the trial meanwhile.)
        spin_until(executor, lambda: at(1, 3), 180, "trial 1, step 3")
        send(OperatorCommand.PAUSE)
        result = _console(ros_env, "--send", "failure", "--detail", "cube slipped")
        assert result.returncode == 0, result.stderr
        spin_until(executor, lambda: event(EpisodeEvent.END, 1), 30, "the end of trial 1")
        end = event(EpisodeEvent.END, 1)
        assert end.reason == EpisodeEvent.REASON_OPERATOR and not end.success
        assert "cube slipped" in end.detail and end.length < 25

        # Pause holds the robot: no step while paused; resume carries on.
        spin_until(executor, lambda: at(2, 3), 60, "trial 2, step 3")
        send(OperatorCommand.PAUSE)
        spin_until(executor, lambda: event(EpisodeEvent.PAUSE, 2), 30, "the pause event")
        _spin_for(executor, 1.0)  # the step under way when the pause came may still finish

        def trial2_step() -> int:
            return max(s.step for s in states if s.episode_id.endswith("trial002"))

        held = trial2_step()
        _spin_for(executor, 2.0)
        assert trial2_step() == held, "the robot stepped while paused"
        send(OperatorCommand.RESUME)
        spin_until(executor, lambda: at(2, held + 2), 30, "steps after resume")
        assert event(EpisodeEvent.END, 2) is None or event(EpisodeEvent.END, 2).reason != \
            EpisodeEvent.REASON_STALE_INPUT

        # Abort ends the running trial and the run; the summary says so.
        spin_until(executor, lambda: at(3, 2), 60, "trial 3, step 2")
        send(OperatorCommand.PAUSE)
        assert _console(ros_env, "--send", "abort").returncode == 0
        spin_until(executor, lambda: group.processes["trial_supervisor"].poll() is not None,
                   60, "the supervisor to finish")
    assert group.processes["trial_supervisor"].returncode == 0, group.log("trial_supervisor")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["aborted"] and summary["trials"] == 3
    reasons = [result["reason"] for result in summary["results"]]
    assert reasons[0] == EpisodeEvent.REASON_OPERATOR and not summary["results"][0]["success"]
    assert reasons[1] == EpisodeEvent.REASON_TIME_LIMIT
    assert reasons[2] == EpisodeEvent.REASON_ABORTED
    # The verdict travels with the recorded episode.
    first = next(e for e in load_episodes(run_dir / "episodes")
                 if e.episode_id == summary["results"][0]["episode_id"])
    assert first.extras["reason"] == EpisodeEvent.REASON_OPERATOR
    assert first.extras["success"] is False and "cube slipped" in first.extras["detail"]


class _Terminal:
    """The operator console on a pseudo-terminal, as an operator runs it."""

    def __init__(self, ros_env: dict[str, str], executor) -> None:
        import pty

        self.executor, self.output = executor, b""
        self.process_id, self.terminal = pty.fork()
        if self.process_id == 0:  # the child: the console on the pseudo-terminal
            os.execve(sys.executable, [sys.executable, "-m", "tdmpc_ros.nodes.operator_console"],
                      ros_env)

    def press(self, keys: bytes) -> None:
        os.write(self.terminal, keys)

    def read_until(self, text: bytes, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in {self.output!r}"
            self.executor.spin_once(timeout_sec=0.02)
            ready, _, _ = select.select([self.terminal], [], [], 0.05)
            if ready:
                self.output += os.read(self.terminal, 4096)

    def close(self) -> int:
        """Stop the console if it still runs; its exit code."""
        finished, status = os.waitpid(self.process_id, os.WNOHANG)
        if not finished:
            os.kill(self.process_id, 15)
            _, status = os.waitpid(self.process_id, 0)
        os.close(self.terminal)
        return os.waitstatus_to_exitcode(status)


def test_the_console_takes_single_keys_on_a_terminal(ros_env) -> None:
    """On a terminal the console reads keys without Enter; abort needs a second press."""
    with ros_node("fake_supervisor", ros_env) as (node, executor):
        received: list[OperatorCommand] = []
        listen(node, "trial/operator", received)
        console = _Terminal(ros_env, executor)
        try:
            console.read_until(b"keys:")
            console.press(b"p")
            console.read_until(b"sent pause")
            console.press(b"a")
            console.read_until(b"press a again")
            console.press(b"x")
            console.read_until(b"not aborted")
            console.press(b"aa")
            console.read_until(b"sent abort")
            console.press(b"q")
            _, status = os.waitpid(console.process_id, 0)
            spin_until(executor, lambda: len(received) >= 2, 10, "the commands")
        finally:
            os.close(console.terminal)
    assert os.waitstatus_to_exitcode(status) == 0, console.output
    assert [message.command for message in received] == [OperatorCommand.PAUSE,
                                                          OperatorCommand.ABORT]


def test_a_key_pressed_before_the_console_is_ready_is_not_lost(ros_env) -> None:
    """A key typed while the console starts (before it reads keys singly) still counts: it is
    neither thrown away by the terminal mode change nor left waiting for Enter."""
    with ros_node("fake_supervisor", ros_env) as (node, executor):
        received: list[OperatorCommand] = []
        listen(node, "trial/operator", received)
        console = _Terminal(ros_env, executor)
        try:
            console.press(b"p")  # at once, while the console is still starting
            console.read_until(b"sent pause", seconds=60)
            spin_until(executor, lambda: len(received) == 1, 10, "the pause command")
            assert received[0].command == OperatorCommand.PAUSE
        finally:
            console.close()
