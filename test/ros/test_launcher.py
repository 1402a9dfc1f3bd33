"""The project's launcher: every node its own process, output prefixed, and all stopped (none
left behind) on Ctrl-C, on a failure, or when the required node finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tdmpc_ros import graph
from tdmpc_ros.launcher import Process, node_processes, parse_arguments, run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as gone: it has exited and only waits for its parent to reap it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


def _sleeper(pid_file: Path, ignore_signals: bool = False) -> tuple[str, ...]:
    """A node stand-in that starts a grandchild and records both pids."""
    code = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        if {ignore_signals}:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        print("up", flush=True)
        time.sleep(120)
    """)
    return (sys.executable, "-c", code)


def _wait_for(path: Path, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return [int(pid) for pid in path.read_text().split()]


def test_required_process_finishing_stops_the_rest(tmp_path, capfd) -> None:
    pids = tmp_path / "pids"
    finisher = f"import os, time\nwhile not os.path.exists({str(pids)!r}): time.sleep(0.05)\n" \
               "time.sleep(0.5); print('done')"
    code = run([Process("sleeper", _sleeper(pids)),
                Process("supervisor", (sys.executable, "-c", finisher), required=True)])
    assert code == 0
    assert not any(_alive(pid) for pid in _wait_for(pids))
    output = capfd.readouterr().out
    assert "[sleeper   ] up" in output and "[supervisor] done" in output


def test_a_failing_process_stops_the_rest_and_its_code_is_returned(tmp_path) -> None:
    pids = tmp_path / "pids"
    failer = f"import os, sys, time\nwhile not os.path.exists({str(pids)!r}): time.sleep(0.05)\n" \
             "sys.exit(3)"
    assert run([Process("sleeper", _sleeper(pids)),
                Process("failer", (sys.executable, "-c", failer))]) == 3
    assert not any(_alive(pid) for pid in _wait_for(pids))


@pytest.mark.parametrize("ignore_signals", [False, True])
def test_ctrl_c_stops_every_process_and_grandchild(tmp_path, ignore_signals) -> None:
    pids = tmp_path / "pids"
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from tdmpc_ros.launcher import Process, run
        sys.exit(run([Process("a", {_sleeper(pids)!r}),
                      Process("b", {_sleeper(tmp_path / "pids_b", ignore_signals)!r})]))
    """))
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    started = _wait_for(pids) + _wait_for(tmp_path / "pids_b")
    launcher.send_signal(signal.SIGINT)
    output, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, output
    assert not any(_alive(pid) for pid in started), output
    if ignore_signals:
        assert "still running after SIGTERM: b" in output


def test_kill_9_of_the_launcher_leaves_no_node_behind(tmp_path) -> None:
    script = tmp_path / "launch.py"
    node = ("import os, sys, time\n"
            "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "time.sleep(120)")
    script.write_text(textwrap.dedent(f"""
        import sys
        from tdmpc_ros.launcher import Process, run
        sys.exit(run([Process(name, (sys.executable, "-c", {node!r}, path))
                      for name, path in (("a", {str(tmp_path / "a")!r}),
                                         ("b", {str(tmp_path / "b")!r}))]))
    """))
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    nodes = _wait_for(tmp_path / "a") + _wait_for(tmp_path / "b")
    assert all(_alive(pid) for pid in nodes)
    launcher.kill()  # kill -9: no handler of the launcher's runs
    launcher.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in nodes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in nodes)


def test_node_processes_follow_the_graph_and_the_arguments() -> None:
    arguments = parse_arguments(["task:=lift", "backend:=real", "namespace:=arm1",
                                 "trials:=5"])
    processes = node_processes(arguments)
    assert [process.name for process in processes] == [node.name for node in graph.NODES]
    by_name = {process.name: process.command for process in processes}
    assert "backend:=real" in by_name["robot_driver"]
    assert "source:=realsense" in by_name["camera"]
    assert "trials:=5" in by_name["trial_supervisor"]
    assert all("__ns:=/arm1" in command for command in by_name.values())
    assert all("task:=lift" in command for command in by_name.values())
    assert [process.required for process in processes].count(True) == 1


def test_bad_launch_arguments_are_refused_with_the_usage() -> None:
    for bad, message in ((["backend:=moon"], "backend:=moon is not one of sim|gazebo|real"),
                         (["trials:=-2"], "trials:=-2 must be a positive whole number"),
                         (["speed:=9"], "unknown launch arguments ['speed']"),
                         (["task=reach"], "expected name:=value")):
        with pytest.raises(SystemExit) as error:
            parse_arguments(bad)
        assert message in str(error.value) and "usage:" in str(error.value)
