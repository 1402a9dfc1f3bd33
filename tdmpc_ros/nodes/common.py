"""What every node shares: typed parameters, graph topics, diagnostics and a clean main().

Nodes stay thin: they translate messages, parameters and timing, and call the core.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from tdmpc_ros import graph
from tdmpc_ros.interfaces import checked_callback

Params = TypeVar("Params")


class ConfigError(ValueError):
    """A parameter has a wrong value; the node stops at start-up and says which."""


def param(description: str) -> Any:
    """A parameter field: no default here, the value comes from the node's YAML file."""
    return dataclasses.field(metadata={"description": description})


def read_parameters(node: Node, cls: type[Params]) -> Params:
    """Declare every field of ``cls`` as a ROS parameter (typed, described) and read it.

    Values come from config/<node>.yaml and the launch overrides; a missing one is a
    ConfigError naming it. ``cls.__post_init__`` checks the values.
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        descriptor = ParameterDescriptor(description=field.metadata.get("description", ""))
        kind = _PARAMETER_TYPES[hints[field.name]]
        try:
            node.declare_parameter(field.name, kind, descriptor)
        except InvalidParameterTypeException as error:
            hint = " (quote it: name:=\"'0'\")" if hints[field.name] is str else ""
            raise ConfigError(f"parameter {field.name!r} must be a {hints[field.name].__name__}"
                              f"{hint}: {error}") from error
        value = node.get_parameter(field.name).value
        if value is None:
            raise ConfigError(f"parameter {field.name!r} is not set (config YAML or launch)")
        values[field.name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error


_PARAMETER_TYPES = {
    str: rclpy.Parameter.Type.STRING,
    int: rclpy.Parameter.Type.INTEGER,
    float: rclpy.Parameter.Type.DOUBLE,
    bool: rclpy.Parameter.Type.BOOL,
    list[str]: rclpy.Parameter.Type.STRING_ARRAY,
    list[float]: rclpy.Parameter.Type.DOUBLE_ARRAY,
}


def publisher(node: Node, name: str) -> Any:
    topic = graph.topic(name)
    return node.create_publisher(topic.message_class(), topic.name, topic.profile())


def subscribe(node: Node, name: str, callback: Callable[[Any], None],
              on_refused: Callable[[Any, Exception], None] | None = None,
              queue: int | None = None, **kwargs: Any) -> Any:
    """A subscription whose messages pass interfaces.check_message before ``callback``.

    ``queue`` deepens this reader's queue beyond the topic's depth: a reader that needs every
    message (the recorder) keeps what arrives while it is busy, where a planner wants the newest.
    """
    topic = graph.topic(name)
    profile = topic.profile()
    if queue is not None:
        profile.depth = max(profile.depth, queue)
    return node.create_subscription(
        topic.message_class(), topic.name,
        checked_callback(callback, node.get_logger(), on_refused), profile, **kwargs)


class Diagnostics:
    """Publishes the node's health on /diagnostics twice a second (rqt_robot_monitor shows it;
    the trial supervisor reads the recorder's as a heartbeat)."""

    def __init__(self, node: Node, report: Callable[[], tuple[int, str, dict[str, Any]]]):
        self._node = node
        self._report = report
        self._publisher = publisher(node, "/diagnostics")
        node.create_timer(0.5, self._publish)

    def _publish(self) -> None:
        level, message, values = self._report()
        # Writer-side matches of every stream this node publishes: the trial supervisor starts
        # a trial only once each stream reaches all its readers (DDS drops what a writer sends
        # before it has matched a reader).
        for topic_publisher in self._node.publishers:
            name = topic_publisher.topic_name
            if name not in ("/rosout", "/parameter_events", "/diagnostics"):
                values[f"readers {name}"] = topic_publisher.get_subscription_count()
        status = DiagnosticStatus(level=bytes([level]), name=self._node.get_fully_qualified_name(),
                                  message=message, hardware_id=graph.PACKAGE)
        status.values = [KeyValue(key=str(key), value=str(value)) for key, value in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        array.status = [status]
        self._publisher.publish(array)


OK, WARN, ERROR = DiagnosticStatus.OK[0], DiagnosticStatus.WARN[0], DiagnosticStatus.ERROR[0]


def stamp_seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_key(stamp: Any) -> tuple[int, int]:
    return (stamp.sec, stamp.nanosec)


def repo_or_share(relative: str) -> Path:
    """A shipped file (models/..., config/...): from the installed share directory, else from
    the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(graph.PACKAGE)) / relative
        if installed.exists():
            return installed
    except (ImportError, LookupError, ValueError):
        pass
    return Path(__file__).resolve().parents[2] / relative


def run(node_class: Callable[[], Node], threads: int = 1) -> None:
    """The main() of every node: build it, spin until Ctrl-C / SIGTERM / shutdown, clean up.

    Exits with 2 on a ConfigError (a wrong parameter), so the launcher stops the graph and the
    operator sees why.
    """
    rclpy.init()
    node = None
    code = 0
    try:
        node = node_class()
        start = getattr(node, "start", None)  # work that must not begin half-built
        if start is not None:
            start()
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else None
        if executor is None:
            rclpy.spin(node)
        else:
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr, flush=True)
        code = 2
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
        time.sleep(0)  # let rclpy's threads notice the shutdown
    sys.exit(code)
