"""Start the whole stack: ``ros2 launch tdmpc_ros tdmpc.launch.py backend:=sim task:=reach``.

Every launch argument, node, executable and parameter file comes from ``tdmpc_ros.graph``, which
the project's own launcher (``python -m tdmpc_ros.launcher``) reads too. `ros2 launch
tdmpc_ros tdmpc.launch.py --show-args` lists the arguments with their descriptions.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from tdmpc_ros import graph


def _typed(name: str, value: str) -> object:
    """Launch arguments are strings; parameters get the type YAML gives them (as with -p), text
    parameters (a camera's serial number) stay text."""
    return yaml.safe_load(graph.parameter_yaml(name, value))


def _when_it_exits(node: graph.NodeSpec, action: Node) -> RegisterEventHandler:
    """The graph's exit policy, as the project's launcher keeps it: a node that fails stops the
    graph; a respawning one (launch_ros restarts it) only once it has failed more than
    RESPAWN_MAX times; the required one (the trial supervisor) stops it when it ends."""
    exits = []

    def on_exit(event, _context) -> list[Shutdown]:
        exits.append(event.returncode)
        if node.required:
            return [Shutdown(reason=f"{node.name} finished")]
        if node.respawn and len(exits) <= graph.RESPAWN_MAX:
            return []
        if event.returncode != 0:
            times = f" {len(exits)} times" if node.respawn else ""
            return [Shutdown(reason=f"{node.name} failed{times} (exit code {event.returncode})")]
        return []

    return RegisterEventHandler(OnProcessExit(target_action=action, on_exit=on_exit))


def _nodes(context, *_, **__) -> list:
    arguments = graph.check_launch_arguments({
        argument.name: LaunchConfiguration(argument.name).perform(context)
        for argument in graph.LAUNCH_ARGUMENTS
    })
    config = Path(get_package_share_directory(graph.PACKAGE)) / "config"
    rviz = [Node(package="rviz2", executable="rviz2", name="rviz2",
                 namespace=arguments["namespace"], arguments=["-d", str(config / "tdmpc.rviz")],
                 output="log")] if arguments["rviz"] == "true" else []
    actions: list = list(rviz)
    selected = graph.selected_nodes(arguments)
    for node in (node for node in graph.NODES if node.name in selected):
        action = Node(
            package=graph.PACKAGE,
            executable=node.executable,
            name=node.name,
            namespace=arguments["namespace"],
            parameters=[str(config / node.parameters),
                        {name: _typed(name, value)
                         for name, value in graph.node_parameters(node, arguments).items()}],
            output="screen",
            emulate_tty=True,
            respawn=node.respawn,
            respawn_delay=graph.RESPAWN_DELAY_S if node.respawn else None,
            respawn_max_retries=graph.RESPAWN_MAX if node.respawn else -1,
        )
        actions += [action, _when_it_exits(node, action)]
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(argument.name, default_value=argument.default,
                              description=argument.description,
                              choices=list(argument.choices) or None)
        for argument in graph.LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
