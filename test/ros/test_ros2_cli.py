"""The stack through ROS 2's own tools, as a lab runs it: `ros2 launch tdmpc_ros tdmpc.launch.py`
for real (arguments, refusals, a namespace, trials to the end), the graph as `ros2 node list` and
`ros2 topic list` see it against ``tdmpc_ros.graph``, and the README's `ros2` commands (the
operator's `ros2 topic pub`, `ros2 pkg executables`, `ros2 interface show`)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ros2_cli import MISSING, ros2_environment

from tdmpc_ros import graph

pytestmark = pytest.mark.ros
LAUNCH = ["ros2", "launch", "tdmpc_ros", "tdmpc.launch.py"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ros2_env(ros_env) -> dict[str, str]:
    environment = ros2_environment(ros_env)
    if environment is None:
        pytest.skip(MISSING)
    return environment


def _ros2(environment: dict[str, str], *arguments: str, timeout: float = 60
          ) -> subprocess.CompletedProcess:
    return subprocess.run(list(arguments), env=environment, capture_output=True, text=True,
                          timeout=timeout)


def _dataset(tmp_path: Path) -> Path:
    from tdmpc_ros.sim import datasets

    data = tmp_path / "data"
    assert datasets.main(["--task", "reach", "--episodes", "4", "--out", str(data),
                          "--quiet"]) == 0
    return data


def _names(output: str) -> set[str]:
    return {line.strip() for line in output.splitlines() if line.strip()}


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def test_show_args_lists_every_argument_with_its_description(ros2_env) -> None:
    result = _ros2(ros2_env, *LAUNCH, "--show-args")
    assert result.returncode == 0, result.stderr
    for argument in graph.LAUNCH_ARGUMENTS:
        assert f"'{argument.name}':" in result.stdout
        assert argument.description[:40] in result.stdout.replace("\n", " ")


@pytest.mark.parametrize(("argument", "message"), [
    ("task:=fly", "fly"),  # launch's own check of the declared choices
    ("trials:=0", "trials:=0 must be a positive whole number"),  # the graph's check
])
def test_ros2_launch_refuses_a_wrong_argument_and_starts_nothing(ros2_env, argument,
                                                                 message) -> None:
    result = _ros2(ros2_env, *LAUNCH, argument)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "process started" not in result.stdout + result.stderr


def _launch(environment: dict[str, str], *arguments: str) -> subprocess.Popen:
    return subprocess.Popen([*LAUNCH, "task:=reach", "device:=cpu", *arguments],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _listed(environment: dict[str, str], kind: str) -> set[str]:
    """`ros2 <kind> list`, without a daemon (none is left behind), given time to discover."""
    result = _ros2(environment, "ros2", kind, "list", "--no-daemon", "--spin-time", "3")
    return _names(result.stdout)


def test_ros2_launch_runs_a_few_trials_to_the_end(ros2_env, tmp_path) -> None:
    data, run_dir = _dataset(tmp_path), tmp_path / "run"
    launch = _launch(ros2_env, "trials:=3", f"run_dir:={run_dir}", f"dataset:={data}")
    output = ""
    try:
        output, _ = launch.communicate(timeout=240)
    finally:
        output = _stop(launch) if launch.poll() is None else output
    assert launch.returncode == 0, output[-3000:]
    assert "was required: shutting down launched system" in output  # the supervisor ended it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["trials"] == 3 and summary["ended"] == "finished"
    assert summary["steps_not_recorded"] == 0
    assert len(list((run_dir / "episodes").glob("*.npz"))) == 3


def test_the_graph_in_a_namespace_as_ros2_sees_it_and_the_operators_abort(
        ros2_env, tmp_path) -> None:
    """Under namespace:=arm1, `ros2 node list` shows exactly graph.NODES and `ros2 topic list`
    every topic they publish, all in the namespace (/diagnostics stays global); then the
    README's operator command over the real `ros2 topic pub`, ABORT (4), ends the trial and the
    run with the summary written, and the launch exits cleanly."""
    data, run_dir = _dataset(tmp_path), tmp_path / "run"
    launch = _launch(ros2_env, "trials:=50", "namespace:=arm1", f"run_dir:={run_dir}",
                     f"dataset:={data}")
    output = ""
    try:
        expected_nodes = {f"/arm1/{node.name}" for node in graph.NODES}
        nodes: set[str] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and launch.poll() is None:
            nodes = _listed(ros2_env, "node")
            if expected_nodes <= nodes:
                break
        assert nodes == expected_nodes, (nodes, expected_nodes)
        published = {name for node in graph.NODES for name in node.publishes
                     if name != "camera/depth/image_raw"}  # only with a RealSense's depth
        expected_topics = {name if name.startswith("/") else f"/arm1/{name}"
                           for name in published}
        topics: set[str] = set()
        while time.monotonic() < deadline and launch.poll() is None:
            topics = _listed(ros2_env, "topic")
            if expected_topics <= topics:
                break
        assert expected_topics <= topics, expected_topics - topics
        known = {f"/arm1/{name}" for name in graph.TOPICS} | {"/diagnostics"}
        ours = {t for t in topics if t.startswith("/arm1/") or t == "/diagnostics"}
        assert ours <= known, ours - known  # nothing outside graph.py
        while time.monotonic() < deadline and not (run_dir / "summary.json").exists():
            time.sleep(0.5)  # the first trial's summary: trials are running
        sent = _ros2(ros2_env, "ros2", "topic", "pub", "--once", "-w", "1",
                     "/arm1/trial/operator", "tdmpc_ros/msg/OperatorCommand",
                     "{command: 4, detail: 'ros2 topic pub'}")
        assert sent.returncode == 0, sent.stderr
        output, _ = launch.communicate(timeout=120)
    finally:
        output = _stop(launch) if launch.poll() is None else output
    assert launch.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["aborted"] and summary["complete"], summary
    assert 1 <= summary["trials"] < 50


def test_the_readmes_package_commands(ros2_env) -> None:
    """`ros2 pkg executables tdmpc_ros` lists each node's executable (what `ros2 run` starts),
    `ros2 interface package` the project's messages, and `ros2 run` starts the console."""
    result = _ros2(ros2_env, "ros2", "pkg", "executables", "tdmpc_ros")
    assert result.returncode == 0, result.stderr
    listed = _names(result.stdout)
    for node in (*graph.NODES, graph.OPERATOR_CONSOLE):
        assert f"tdmpc_ros {node.executable}" in listed
    interfaces = _ros2(ros2_env, "ros2", "interface", "package", "tdmpc_ros")
    assert interfaces.returncode == 0, interfaces.stderr
    messages = {f"tdmpc_ros/msg/{path.stem}" for path in (REPO / "msg").glob("*.msg")}
    assert messages and messages <= _names(interfaces.stdout)
    help_text = _ros2(ros2_env, "ros2", "run", "tdmpc_ros", "operator_console", "--help")
    assert help_text.returncode == 0 and "--send" in help_text.stdout
