"""The robot driver node with backend:=real, driving the controller stand-in through the real
SDK over DDS: the watchdog, an emergency stop and a controller error each stop the arm."""

from __future__ import annotations

import os

import numpy as np
import pytest
from std_msgs.msg import Bool

from tdmpc_ros import graph
from tdmpc_ros.hardware.xarm_standin import control
from tdmpc_ros.launcher import parse_arguments
from tdmpc_ros.msg import ActionCommand, EpisodeEvent, RobotState

from rostest import NodeGroup, node_command, peer_process, ros_node, spin_until

pytestmark = pytest.mark.ros


@pytest.fixture
def standin(tmp_path):
    host = f"127.{20 + os.getpid() % 200}.250.{1 + os.getpid() % 250}"
    arguments = ["-m", "tdmpc_ros.hardware.xarm_standin", "--host", host]
    with peer_process(arguments, dict(os.environ), tmp_path / "standin.log"):
        yield host


def test_xarm_driver_watchdog_emergency_stop_and_controller_error(ros_env, tmp_path, standin):
    arguments = parse_arguments(["task:=reach", "backend:=real", f"robot_ip:={standin}",
                                 f"run_dir:={tmp_path}"])
    command = node_command("robot_driver", arguments, {"watchdog_s": 1.5})
    with NodeGroup({"robot_driver": command}, ros_env, tmp_path) as group, \
            ros_node("xarm_driver_test", ros_env) as (node, executor):
        states: list[RobotState] = []
        topic = graph.topic("robot/state")
        node.create_subscription(topic.message_class(), "robot/state", states.append,
                                 topic.profile())
        reasons: list[str] = []
        diagnostics = graph.topic("/diagnostics")
        node.create_subscription(
            diagnostics.message_class(), "/diagnostics",
            lambda array: reasons.extend(s.message for s in array.status
                                         if s.name.endswith("robot_driver")),
            diagnostics.profile())
        out = {name: node.create_publisher(graph.topic(name).message_class(), name,
                                           graph.topic(name).profile())
               for name in ("trial/events", "robot/action", "robot/emergency_stop")}
        spin_until(executor, lambda: all(p.get_subscription_count() for p in out.values()), 60,
                   "the driver's subscriptions")

        def start(episode_id: str, trial: int) -> None:
            out["trial/events"].publish(EpisodeEvent(event=EpisodeEvent.START, task="reach",
                                                     episode_id=episode_id, trial=trial))
            spin_until(executor, lambda: states and states[-1].episode_id == episode_id
                       and states[-1].state == RobotState.STATE_READY, 30, f"{episode_id} ready")

        def stopped_with(state: int, reason: str) -> None:
            spin_until(executor, lambda: states[-1].state == state and reasons
                       and reason in reasons[-1], 30, f"a stop saying {reason!r}")
            assert control(standin, {"op": "status"})["state"] == 4  # the arm itself stopped

        # No action for watchdog_s while ready: stopped.
        start("ep-watchdog", 1)
        home = states[-1].ee_pose.position
        assert np.allclose([home.x, home.y, home.z], (0.35, 0.0, 0.2), atol=0.005)
        stopped_with(RobotState.STATE_STOPPED, "watchdog: no action")

        # An action moves the real (stand-in) arm; the emergency stop topic stops it.
        start("ep-stop", 2)
        action = ActionCommand(episode_id="ep-stop", step=0, action=[1.0, 0.0, 0.0, 1.0])
        action.header.stamp = node.get_clock().now().to_msg()
        out["robot/action"].publish(action)
        spin_until(executor, lambda: states[-1].step == 1, 30, "the first step")
        assert states[-1].ee_pose.position.x > home.x + 0.015
        out["robot/emergency_stop"].publish(Bool(data=True))
        stopped_with(RobotState.STATE_STOPPED, "EMERGENCY STOP")

        # A collision on the controller: STATE_ERROR with the code and its meaning; not cleared.
        start("ep-error", 3)
        control(standin, {"op": "inject", "code": 31})
        stopped_with(RobotState.STATE_ERROR, "C31 collision")
        assert states[-1].error_code == 31  # in the state message too, for rviz and logs
        assert control(standin, {"op": "status"})["error"] == 31
        assert group.processes["robot_driver"].poll() is None  # the node carries on
