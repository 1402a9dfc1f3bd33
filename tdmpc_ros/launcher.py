"""Start the node graph without launch_ros: ``python -m tdmpc_ros.launcher task:=reach ...``.

It reads the same graph and arguments as ``launch/tdmpc.launch.py`` (``tdmpc_ros.graph``),
starts each node as its own process, prefixes every output line with the node's name, and stops
them all (SIGINT, then SIGTERM, then SIGKILL) on Ctrl-C, when a node fails, or when a required
node (the trial supervisor) finishes. A node marked ``respawn`` in the graph (the recorder, the
learner) is started again when it dies, after a delay that doubles at each restart; one that
dies too often stops the graph, with the reason. No process is left behind: each node runs in
its own process group, the whole group is signalled, and each node gets SIGTERM if the launcher
itself dies (kill -9 included).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tdmpc_ros import graph

STOP_SIGNALS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))


@dataclass(frozen=True)
class Process:
    name: str
    command: tuple[str, ...]
    required: bool = False  # when it exits, everything stops (launch's on_exit=Shutdown)
    respawn: bool = False  # when it dies, it is started again (launch_ros's respawn)


class Respawns:
    """When a dying node is started again: after RESPAWN_DELAY_S, doubling with each restart in
    a row, never after a configuration error, and never more than RESPAWN_MAX times within
    RESPAWN_WINDOW_S."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}

    def delay(self, name: str, code: int, now: float) -> float | str:
        """Seconds until the restart, or why there is none."""
        if code == graph.CONFIG_ERROR_EXIT:
            return "a configuration error, which a restart cannot mend"
        recent = [t for t in self.history.get(name, []) if now - t < graph.RESPAWN_WINDOW_S]
        if len(recent) >= graph.RESPAWN_MAX:
            return (f"it died {len(recent) + 1} times within {graph.RESPAWN_WINDOW_S:.0f} s "
                    f"(at most {graph.RESPAWN_MAX} restarts)")
        self.history[name] = [*recent, now]
        return min(graph.RESPAWN_DELAY_S * 2 ** len(recent), graph.RESPAWN_MAX_DELAY_S)


def config_directory() -> Path:
    """config/ of the installed package, or of the source tree when run from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(graph.PACKAGE)) / "config"
        if installed.is_dir():
            return installed
    except (ImportError, LookupError, ValueError):
        pass
    return Path(__file__).resolve().parents[1] / "config"


def node_processes(arguments: dict[str, str]) -> list[Process]:
    """One process per node of the graph, with the parameters the launch file would give it."""
    config = config_directory()
    processes = []
    selected = graph.selected_nodes(arguments)
    for node in graph.NODES:
        if node.name not in selected:
            continue
        command = [sys.executable, "-m", node.module, "--ros-args", "-r", f"__node:={node.name}"]
        if arguments["namespace"]:
            command += ["-r", f"__ns:=/{arguments['namespace'].strip('/')}"]
        command += ["--params-file", str(config / node.parameters)]
        for name, value in graph.node_parameters(node, arguments).items():
            command += ["-p", f"{name}:={graph.parameter_yaml(name, value)}"]
        processes.append(Process(node.name, tuple(command), required=node.required,
                                 respawn=node.respawn))
    return processes


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: the child gets SIGTERM (its clean shutdown) when the launcher
    dies, however it dies; kill -9 of the launcher would otherwise leave every node running,
    each in a session of its own. Linux only; elsewhere nothing is set."""

    def set_death_signal() -> None:
        if not sys.platform.startswith("linux"):
            return
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before the signal was set
            os._exit(1)

    return set_death_signal


def _forward(name: str, stream: TextIO, width: int, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"[{name:<{width}}] {line}")
            sys.stdout.flush()


def _stop(running: dict[str, subprocess.Popen]) -> None:
    """Signal every process group still alive, escalating until all are gone."""
    for stop_signal, grace in STOP_SIGNALS:
        alive = {name: p for name, p in running.items() if p.poll() is None}
        if not alive:
            return
        for process in alive.values():
            try:
                os.killpg(process.pid, stop_signal)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in alive.values()):
            time.sleep(0.05)
        if stop_signal != signal.SIGKILL:
            late = [name for name, p in alive.items() if p.poll() is None]
            if late:
                print(f"[launcher] still running after {signal.Signals(stop_signal).name}: "
                      f"{', '.join(late)}", flush=True)


def run(processes: Sequence[Process], environment: dict[str, str] | None = None) -> int:
    """Run the processes until one fails (for good), a required one exits, or SIGINT/SIGTERM
    arrives.

    Returns 0 when a required process finished with 0 (or the launcher was interrupted), the
    failing process's exit code otherwise.
    """
    stop_requested = threading.Event()
    environment = dict(os.environ if environment is None else environment)
    # Every line out as it is written, so nothing is lost if a node is killed.
    environment.setdefault("PYTHONUNBUFFERED", "1")
    environment.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    width = max(len(process.name) for process in processes)
    lock = threading.Lock()
    running: dict[str, subprocess.Popen] = {}
    readers = []
    respawns = Respawns()
    restart_at: dict[str, float] = {}  # process name -> when to start it again

    def start(process: Process) -> None:
        popen = subprocess.Popen(process.command, env=environment, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 start_new_session=True, preexec_fn=_dies_with(os.getpid()))
        running[process.name] = popen
        reader = threading.Thread(target=_forward, args=(process.name, popen.stdout, width,
                                                         lock), daemon=True)
        reader.start()
        readers.append(reader)
        print(f"[launcher] started {process.name} (pid {popen.pid})", flush=True)

    result = 0
    try:
        for process in processes:
            start(process)
        while not stop_requested.is_set():
            now = time.monotonic()
            for process in processes:
                if process.name in restart_at:
                    if now >= restart_at[process.name]:
                        del restart_at[process.name]
                        start(process)
                    continue
                code = running[process.name].poll()
                if code is None:
                    continue
                if process.required and code == 0:
                    print(f"[launcher] {process.name} finished; stopping the rest", flush=True)
                    stop_requested.set()
                elif process.respawn:
                    delay = respawns.delay(process.name, code, now)
                    if isinstance(delay, str):
                        print(f"[launcher] {process.name} exited with {code} and is not "
                              f"restarted: {delay}; stopping the rest", flush=True)
                        result = code or 1
                        stop_requested.set()
                    else:
                        print(f"[launcher] {process.name} exited with {code}; restarting it "
                              f"in {delay:.0f} s", flush=True)
                        restart_at[process.name] = now + delay
                elif code != 0:
                    print(f"[launcher] {process.name} exited with {code}; stopping the rest",
                          flush=True)
                    result = code
                    stop_requested.set()
            time.sleep(0.1)
    finally:
        _stop(running)
        for reader in readers:
            reader.join(timeout=2)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return result


def parse_arguments(argv: Sequence[str]) -> dict[str, str]:
    """``name:=value`` pairs, as ros2 launch takes them."""
    values = {}
    for item in argv:
        if item in ("-h", "--help"):
            raise SystemExit(usage())
        name, separator, value = item.partition(":=")
        if not separator:
            raise SystemExit(f"expected name:=value, got {item!r}\n\n{usage()}")
        values[name] = value
    try:
        return graph.check_launch_arguments(values)
    except ValueError as error:
        raise SystemExit(f"{error}\n\n{usage()}") from None


def usage() -> str:
    lines = ["usage: python -m tdmpc_ros.launcher [name:=value ...]", "", "arguments:"]
    for argument in graph.LAUNCH_ARGUMENTS:
        choices = f" ({'|'.join(argument.choices)})" if argument.choices else ""
        lines.append(f"  {argument.name}:={argument.default!s:<8}{choices} {argument.description}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    if arguments["rviz"] == "true":
        print("[launcher] rviz:=true: rviz2 is started by `ros2 launch` only; run "
              "`rviz2 -d config/tdmpc.rviz` beside this launcher where ROS 2 is installed",
              flush=True)
    return run(node_processes(arguments))


if __name__ == "__main__":
    sys.exit(main())
