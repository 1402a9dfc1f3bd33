"""A separate ROS 2 process for the DDS tests: it checks every message it receives with the
project's rules, echoes good ones back unchanged, and reports refused ones, without stopping.

    python echo_peer.py TYPE [TYPE ...]      (types from tdmpc_ros.msg)

Topics: /tdmpc_test/<Type> in, /tdmpc_test/<Type>/echo out, /tdmpc_test/refused reports.
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

import tdmpc_ros.msg
from tdmpc_ros.interfaces import checked_callback

RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("echo_peer")
    refused = node.create_publisher(String, "/tdmpc_test/refused", LATCHED)

    def report(message: object, error: Exception) -> None:
        node.get_logger().warning(f"refused a {type(message).__name__}: {error}")
        refused.publish(String(data=f"{type(message).__name__}: {error}"))

    for type_name in sys.argv[1:]:
        message_type = getattr(tdmpc_ros.msg, type_name)
        echo = node.create_publisher(message_type, f"/tdmpc_test/{type_name}/echo", LATCHED)
        node.create_subscription(message_type, f"/tdmpc_test/{type_name}",
                                 checked_callback(echo.publish, report),
                                 RELIABLE)
    print("READY", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
