"""One definition of the graph: every node's YAML, launch overrides, executables and the ros2
launch file agree with tdmpc_ros.graph and with each node's typed parameters."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from tdmpc_ros import graph

REPO = Path(__file__).resolve().parents[2]


def _params_class(node: graph.NodeSpec) -> type:
    module = importlib.import_module(node.module)
    classes = [value for name, value in vars(module).items()
               if name.endswith("Params") and dataclasses.is_dataclass(value)
               and value.__module__ == module.__name__]
    assert len(classes) == 1, f"{node.module}: one *Params dataclass expected"
    return classes[0]


@pytest.mark.parametrize("node", graph.NODES, ids=lambda node: node.name)
def test_yaml_plus_launch_overrides_set_exactly_the_node_parameters(node) -> None:
    document = yaml.safe_load((REPO / "config" / node.parameters).read_text())
    from_yaml = set(document["/**"]["ros__parameters"])
    from_launch = set(graph.node_parameters(node, graph.launch_argument_defaults()))
    fields = {field.name for field in dataclasses.fields(_params_class(node))}
    assert not from_yaml & from_launch, "a parameter is set in two places"
    assert (from_yaml | from_launch) - {"use_sim_time"} == fields
    assert all(field.metadata.get("description")
               for field in dataclasses.fields(_params_class(node)))


@pytest.mark.parametrize("node", graph.NODES, ids=lambda node: node.name)
def test_every_node_has_its_executable(node) -> None:
    script = REPO / "scripts" / node.executable
    assert script.exists() and os.access(script, os.X_OK)
    assert f"from {node.module} import main" in script.read_text()
    assert callable(importlib.import_module(node.module).main)


def test_every_graph_topic_has_a_known_type_and_qos() -> None:
    for topic in graph.TOPICS.values():
        assert topic.qos in graph.QOS
        assert topic.message_class().__name__ == topic.type.rsplit("/", 1)[1]


class _Recorder:
    """Stands in for a launch / launch_ros class: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _stub_launch_modules(share: Path) -> dict[str, types.ModuleType]:
    """launch, launch_ros and ament_index_python cannot be installed here: minimal stand-ins
    that record what the launch file builds (a lab's install runs the real ones)."""
    modules = {}
    for name in ("launch", "launch.actions", "launch.substitutions", "launch.event_handlers",
                 "launch_ros", "launch_ros.actions", "ament_index_python",
                 "ament_index_python.packages"):
        modules[name] = types.ModuleType(name)
    modules["launch"].LaunchDescription = _Recorder
    for name in ("DeclareLaunchArgument", "OpaqueFunction", "Shutdown", "RegisterEventHandler"):
        setattr(modules["launch.actions"], name, type(name, (_Recorder,), {}))
    modules["launch.event_handlers"].OnProcessExit = type("OnProcessExit", (_Recorder,), {})
    modules["launch_ros.actions"].Node = type("Node", (_Recorder,), {})

    class LaunchConfiguration(_Recorder):
        def perform(self, context: dict[str, str]) -> str:
            return context[self.args[0]]

    modules["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    modules["ament_index_python.packages"].get_package_share_directory = lambda _: str(share)
    return modules


def test_the_ros2_launch_file_builds_the_graph(monkeypatch) -> None:
    share = REPO
    for name, module in _stub_launch_modules(share).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("tdmpc_launch", REPO / "launch" /
                                                  "tdmpc.launch.py")
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)

    description = launch_file.generate_launch_description()
    actions = description.args[0]
    declared = {action.args[0]: action.kwargs for action in actions[:-1]}
    assert list(declared) == [argument.name for argument in graph.LAUNCH_ARGUMENTS]
    assert all(kwargs["description"] for kwargs in declared.values())

    context = {**graph.launch_argument_defaults(), "trials": "7", "rviz": "true",
               "camera_serial": "825312070233"}
    entities = actions[-1].kwargs["function"](context)
    assert entities[0].kwargs["executable"] == "rviz2"
    nodes, handlers = entities[1::2], entities[2::2]
    by_name = {node.kwargs["name"]: node.kwargs for node in nodes}
    assert list(by_name) == [node.name for node in graph.NODES]
    for node, handler in zip(graph.NODES, handlers, strict=True):
        kwargs = by_name[node.name]
        assert kwargs["executable"] == node.executable
        yaml_file, overrides = kwargs["parameters"]
        assert Path(yaml_file).exists()
        assert set(overrides) == set(graph.node_parameters(node, context))
        assert kwargs["respawn"] == node.respawn
        if node.respawn:
            assert kwargs["respawn_max_retries"] == graph.RESPAWN_MAX
        # the exit policy: what a process exit with each code leads to
        [on_exit] = handler.args
        assert on_exit.kwargs["target_action"].kwargs is kwargs
        decide = on_exit.kwargs["on_exit"]
        event = types.SimpleNamespace(returncode=-9)
        if node.required:
            assert type(decide(types.SimpleNamespace(returncode=0), None)[0]).__name__ \
                == "Shutdown"
        elif node.respawn:  # launch_ros restarts it RESPAWN_MAX times, then the graph stops
            assert all(decide(event, None) == [] for _ in range(graph.RESPAWN_MAX))
            [stop] = decide(event, None)
            assert f"failed {graph.RESPAWN_MAX + 1} times" in stop.kwargs["reason"]
        else:  # a failure stops the graph at once
            [stop] = decide(event, None)
            assert stop.kwargs["reason"] == f"{node.name} failed (exit code -9)"
    assert by_name["trial_supervisor"]["parameters"][1]["trials"] == 7  # typed, as with -p
    assert by_name["planner"]["parameters"][1]["checkpoint"] == ""
    # A RealSense serial is all digits, and stays text (YAML would make it a number).
    assert by_name["camera"]["parameters"][1]["serial"] == "825312070233"


def test_a_speed_limit_from_the_launch_line_reaches_the_driver_as_a_float() -> None:
    driver = next(node for node in graph.NODES if node.name == "robot_driver")
    arguments = graph.check_launch_arguments({"backend": "real", "max_speed_mm_s": "50"})
    # "50.0": ROS reads "50" as an integer, which a float parameter refuses.
    assert graph.node_parameters(driver, arguments)["xarm_max_speed_mm_s"] == "50.0"
    defaults = graph.node_parameters(driver, graph.check_launch_arguments({}))
    assert "xarm_max_speed_mm_s" not in defaults  # config/robot_driver.yaml's value holds
    for bad in ("fast", "0", "5000", "-3"):
        with pytest.raises(ValueError, match="max_speed_mm_s"):
            graph.check_launch_arguments({"max_speed_mm_s": bad})


def test_text_parameters_stay_text_on_the_launchers_command_line(ros_env) -> None:
    """A camera serial of digits and an address reach a node as the strings they are."""
    from tdmpc_ros.launcher import node_processes

    arguments = graph.check_launch_arguments({"backend": "real", "camera_serial": "0123",
                                              "robot_ip": "10.0.0.2", "run_dir": "2026"})
    command = next(p.command for p in node_processes(arguments) if p.name == "camera")
    script = ("import sys, rclpy; from rclpy.node import Node; rclpy.init(args=sys.argv); "
              "node = Node('camera', automatically_declare_parameters_from_overrides=True); "
              "print(repr(node.get_parameter('serial').value))")
    ros_arguments = command[command.index("--ros-args"):]
    result = subprocess.run([sys.executable, "-c", script, *ros_arguments], env=ros_env,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "'0123'", result.stderr
    driver = next(p.command for p in node_processes(arguments) if p.name == "robot_driver")
    assert 'robot_ip:="10.0.0.2"' in driver


def test_the_sros2_policy_lets_each_node_use_only_its_own_topics() -> None:
    from xml.etree import ElementTree

    from tdmpc_ros import security

    root = ElementTree.fromstring(security.policy(namespace="arm1"))
    rules: dict[str, dict[str, set[str]]] = {}
    for enclave in root.iter("enclave"):
        [profile] = enclave.iter("profile")
        assert enclave.get("path") == f"/arm1/{profile.get('node')}"
        rules[profile.get("node")] = {
            rule: {topic.text for block in profile.iter("topics") if block.get(rule)
                   for topic in block.iter("topic")} for rule in ("publish", "subscribe")}
    assert set(rules) == {node.name for node in graph.NODES} | {"operator_console"}

    def writers(topic: str) -> set[str]:
        return {name for name, rule in rules.items() if topic in rule["publish"]}

    # The streams that move the arm or change the model have one writer each.
    assert writers("/arm1/robot/action") == {"planner"}
    assert writers("/arm1/learner/weights") == {"learner"}
    assert writers("/arm1/trial/events") == {"trial_supervisor"}
    assert writers("/arm1/trial/operator") == {"operator_console"}
    assert "/arm1/robot/action" in rules["robot_driver"]["subscribe"]
    assert "/diagnostics" in rules["trial_supervisor"]["subscribe"]  # absolute, not namespaced
    for node in graph.NODES:  # every topic a node names is in the graph
        assert set(node.subscribes) | set(node.publishes) <= set(graph.TOPICS), node.name


def test_nodes_argument_starts_a_part_of_the_graph_on_this_host() -> None:
    """nodes:= picks which nodes this host starts (the learner on a GPU server), in both
    launchers; a name that is not a node is refused, naming the known ones."""
    from tdmpc_ros.launcher import node_processes

    assert [p.name for p in node_processes(graph.check_launch_arguments({}))] == \
        [node.name for node in graph.NODES]
    chosen = graph.check_launch_arguments({"nodes": "learner, planner"})
    assert [p.name for p in node_processes(chosen)] == ["planner", "learner"]  # graph order
    with pytest.raises(ValueError, match="names no node \\['learnr'\\]"):
        graph.check_launch_arguments({"nodes": "learnr"})
