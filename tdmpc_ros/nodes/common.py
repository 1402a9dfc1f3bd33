"""What every node shares: typed parameters, graph topics, diagnostics and a clean main().

Nodes stay thin: they translate messages, parameters and timing, and call the core.
"""

from __future__ import annotations

import dataclasses
import math
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


class Refusals:
    """Input a node refused, counted by kind and logged: the first of each kind at once, then
    repeats merged into one line per kind every ``every_s`` with their count, so that a flood
    cannot fill the log and no kind of problem goes unseen. Diagnostics show the counts."""

    def __init__(self, logger: Any, every_s: float = 5.0) -> None:
        self._logger = logger
        self._every_s = every_s
        self.counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (when, count) last logged

    def __call__(self, kind: str, reason: str, level: str = "error") -> None:
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        when, logged = self._logged.get(kind, (-math.inf, 0))
        if count == 1 or now - when >= self._every_s:
            repeats = f" ({count - logged} of this kind since the last line, {count} in all)" \
                if count > 1 else ""
            text = f"refused {kind}: {reason}{repeats}"
            if level == "warning":  # rclpy wants one severity per call site
                self._logger.warning(text)
            else:
                self._logger.error(text)
            self._logged[kind] = (now, count)

    def diagnostics(self) -> dict[str, int]:
        return {f"refused {kind}": count for kind, count in sorted(self.counts.items())}


def refusals(node: Node) -> Refusals:
    """The node's one Refusals (made on first use)."""
    if not hasattr(node, "_refusals"):
        node._refusals = Refusals(node.get_logger())  # type: ignore[attr-defined]
    return node._refusals  # type: ignore[attr-defined]


def subscribe(node: Node, name: str, callback: Callable[[Any], None],
              on_refused: Callable[[Any, Exception], None] | None = None,
              catch_up: bool = False, **kwargs: Any) -> Any:
    """A subscription whose messages pass interfaces.check_message before ``callback``.

    ``catch_up``: a reader that needs every message (the recorder, the learner) gets them all,
    reliably, with a deep queue for what arrives while it is busy, and on (re)joining what the
    writers kept from before (graph.CATCH_UP_S); a planner wants only the newest.
    """
    topic = graph.topic(name)
    profile = topic.reader_profile(catch_up)
    refuse = refusals(node)

    def refused(message: Any, error: Exception) -> None:
        where = str(error).split(":", 1)[0]  # the field at fault: the kind of problem
        refuse(f"{topic.name} ({where})", str(error))
        if on_refused is not None:
            on_refused(message, error)

    return node.create_subscription(
        topic.message_class(), topic.name, checked_callback(callback, refused), profile,
        **kwargs)


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
        values.update(refusals(self._node).diagnostics())  # what it refused, by kind
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
