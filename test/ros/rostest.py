"""Helpers for tests that run ROS 2 nodes: a private context, spinning with a deadline, and
peer processes that are always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


@contextmanager
def ros_node(name: str,
             environment: dict[str, str]) -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    """A node in its own rclpy context, on the test's domain; shut down afterwards."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(environment["ROS_DOMAIN_ID"]))
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def listen(node: Node, name: str, sink: list) -> None:
    """Append every message of graph topic ``name`` to ``sink`` (the graph's own QoS)."""
    from tdmpc_ros import graph

    topic = graph.topic(name)
    node.create_subscription(topic.message_class(), name, sink.append, topic.profile())


def diagnostics_of(node: Node, of: str) -> dict[str, str]:
    """The latest diagnostics values of the node whose name ends with ``of`` (kept updated)."""
    from tdmpc_ros import graph

    values: dict[str, str] = {}

    def receive(array) -> None:
        for status in array.status:
            if status.name.endswith(of):
                values.update({item.key: item.value for item in status.values})

    topic = graph.topic("/diagnostics")
    node.create_subscription(topic.message_class(), topic.name, receive, topic.profile())
    return values


def graph_publisher(node: Node, name: str):
    """A publisher on graph topic ``name`` with the graph's own QoS."""
    from tdmpc_ros import graph

    topic = graph.topic(name)
    return node.create_publisher(topic.message_class(), name, topic.profile())


def spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool], timeout: float,
               what: str) -> None:
    """Spin until ``done()``; fail the test with ``what`` if it takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


@contextmanager
def spinning(executor: SingleThreadedExecutor) -> Iterator[None]:
    """Spin ``executor`` in a thread while the body runs (e.g. an observer beside a launcher
    that blocks), and stop it afterwards."""
    import threading

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@contextmanager
def peer_process(arguments: list[str], environment: dict[str, str], log_path: Path,
                 ready_line: str = "READY", timeout: float = 60.0) -> Iterator[subprocess.Popen]:
    """Start ``python ARGUMENTS`` as a separate process, wait for its ready line, and make sure
    it is gone afterwards (terminate, then kill)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, *arguments], env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while ready_line not in log_path.read_text():
            if process.poll() is not None:
                raise AssertionError(f"peer exited with {process.returncode}:\n"
                                     f"{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"peer not ready after {timeout:.0f} s:\n"
                                     f"{log_path.read_text()}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def node_command(name: str, arguments: dict[str, str],
                 overrides: dict[str, object] | None = None) -> tuple[str, ...]:
    """The launcher's command for one node of the graph, with extra parameter overrides."""
    from tdmpc_ros.launcher import node_processes

    command = next(p.command for p in node_processes(arguments) if p.name == name)
    extra = [item for key, value in (overrides or {}).items() for item in ("-p", f"{key}:={value}")]
    return command + tuple(extra)



class NodeGroup:
    """Graph nodes as separate processes (each its own process group), for fault tests that
    kill and restart single nodes; ``stop()`` leaves none behind."""

    def __init__(self, commands: dict[str, tuple[str, ...]], environment: dict[str, str],
                 log_dir: Path) -> None:
        self.commands, self.environment, self.log_dir = commands, environment, log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "a") as log:
            self.processes[name] = subprocess.Popen(
                self.commands[name], env=self.environment, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        return self.processes[name]

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def __enter__(self) -> NodeGroup:
        for name in self.commands:
            self.start(name)
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
