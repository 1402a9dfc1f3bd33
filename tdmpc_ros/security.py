"""SROS2 access control for the graph, from ``tdmpc_ros.graph``: each node may publish and
subscribe exactly its own topics, so that on a locked-down network no other participant can
send actions to the arm or weights to the planner.

    python -m tdmpc_ros.security policy [--namespace NS] > tdmpc_policy.xml
    ros2 security generate_artifacts -k KEYSTORE -p tdmpc_policy.xml

The README's "Locking the graph down (SROS2)" says how to use it. The Fast DDS of the PyPI
wheels on the development machine is built without DDS Security, so it is generated and checked
here, but enforced only in a lab's ROS 2 install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from xml.etree import ElementTree

from tdmpc_ros import graph

# What every rclpy node uses besides its own topics: logging, parameter events and the
# parameter services.
COMMON_PUBLISH = ("/rosout", "/parameter_events")
COMMON_SUBSCRIBE = ("/parameter_events",)
PARAMETER_SERVICES = ("describe_parameters", "get_parameter_types", "get_parameters",
                      "list_parameters", "set_parameters", "set_parameters_atomically",
                      "get_type_description")


def enclave(node: graph.NodeSpec, namespace: str = "") -> str:
    """The enclave a node runs in: its fully qualified name (``--ros-args --enclave``)."""
    prefix = f"/{namespace.strip('/')}" if namespace.strip("/") else ""
    return f"{prefix}/{node.name}"


def _qualified(topic: str, namespace: str) -> str:
    if topic.startswith("/"):
        return topic
    prefix = f"/{namespace.strip('/')}" if namespace.strip("/") else ""
    return f"{prefix}/{topic}"


def policy(namespace: str = "", nodes: Sequence[graph.NodeSpec] | None = None) -> str:
    """The SROS2 policy (format 0.2.0) of the graph's nodes and the operator console."""
    nodes = tuple(nodes) if nodes is not None else (*graph.NODES, graph.OPERATOR_CONSOLE)
    root = ElementTree.Element("policy", version="0.2.0")
    enclaves = ElementTree.SubElement(root, "enclaves")
    for node in nodes:
        element = ElementTree.SubElement(enclaves, "enclave", path=enclave(node, namespace))
        profiles = ElementTree.SubElement(element, "profiles")
        ns = f"/{namespace.strip('/')}" if namespace.strip("/") else "/"
        profile = ElementTree.SubElement(profiles, "profile", ns=ns, node=node.name)
        for rule, topics in (("publish", (*node.publishes, *COMMON_PUBLISH)),
                             ("subscribe", (*node.subscribes, *COMMON_SUBSCRIBE))):
            block = ElementTree.SubElement(profile, "topics", {rule: "ALLOW"})
            for topic in dict.fromkeys(_qualified(t, namespace) for t in topics):
                ElementTree.SubElement(block, "topic").text = topic
        services = [_qualified(s, namespace) for s in node.services]
        services += [f"{enclave(node, namespace)}/{name}" for name in PARAMETER_SERVICES]
        block = ElementTree.SubElement(profile, "services", reply="ALLOW")
        for service in services:
            ElementTree.SubElement(block, "service").text = service
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(
        root, encoding="unicode") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdmpc_ros.security",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("policy", help="print the SROS2 policy of the graph")
    make.add_argument("--namespace", default="", help="the launch's namespace argument")
    options = parser.parse_args(argv)
    sys.stdout.write(policy(options.namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
