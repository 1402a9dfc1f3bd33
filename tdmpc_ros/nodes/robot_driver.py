"""The robot driver: executes actions within the workspace, resets between episodes, reports state.

Every backend goes through the same code path: an action is checked, turned into an end-effector
target by ``tasks.action_to_target`` (largest step, workspace box) and handed to an
``ArmBackend``. Only ``make_backend`` knows which robot it is.

Subscribes: robot/action, trial/events (START resets), robot/emergency_stop.
Publishes: robot/state and world/state after every reset and every executed action.
Service: robot/emergency_stop (std_srvs/Trigger).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.node import Node
from std_srvs.srv import Trigger

from tdmpc_ros.interfaces import MessageError, check_action, publish_checked
from tdmpc_ros.msg import ActionCommand, EpisodeEvent, RobotState, WorldState
from tdmpc_ros.nodes.common import (
    ERROR,
    OK,
    WARN,
    ConfigError,
    Diagnostics,
    param,
    publisher,
    read_parameters,
    run,
    stamp_seconds,
    subscribe,
)
from tdmpc_ros.robot import ArmBackend
from tdmpc_ros.tasks import TaskSpec, action_to_target, get_task

BACKENDS = ("sim", "real", "gazebo")


@dataclass
class DriverParams:
    task: str = param("task whose workspace box, step limit and scene apply")
    backend: str = param("sim (MuJoCo), real (xArm) or gazebo")
    robot_ip: str = param("real only: the xArm controller's IP address")
    base_frame: str = param("frame of every pose: the robot base")
    sim_seed: int = param("simulator only: seed of the scene of each trial (with the trial)")
    max_action_age_s: float = param("refuse an action computed from an observation older than "
                                    "this (seconds); 0 turns the check off")
    real_time: bool = param("simulator only: report states at the task's control rate (one "
                            "agent period apart at most as often), as a real arm moves; false "
                            "runs the simulation as fast as actions arrive")

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.max_action_age_s < 0:
            raise ValueError(f"max_action_age_s must be >= 0, got {self.max_action_age_s}")


def make_backend(name: str, spec: TaskSpec) -> ArmBackend:
    if name == "sim":
        from tdmpc_ros.sim.arm import MujocoArm

        return MujocoArm(spec)
    if name == "real":
        raise ConfigError("backend 'real': the xArm backend is not built yet (the hardware "
                          "issue); use backend:=sim")
    raise ConfigError("backend 'gazebo': drive Gazebo through the lab's ros2_control "
                      "controllers; not available in this build, use backend:=sim")


class RobotDriver(Node):
    def __init__(self) -> None:
        super().__init__("robot_driver")
        self.params = read_parameters(self, DriverParams)
        self.spec = get_task(self.params.task)
        self.backend = make_backend(self.params.backend, self.spec)
        self.episode_id = ""
        self.trial = 0
        self.step = 0
        self.limit = self.spec.episode_length
        self.state = RobotState.STATE_MOVING  # until the first START resets the robot
        self.stop_reason = ""
        self.executed = 0
        self.busy = False
        self.last_report = 0.0
        self.refused: dict[str, int] = {}
        self.state_publisher = publisher(self, "robot/state")
        self.world_publisher = publisher(self, "world/state")
        subscribe(self, "robot/action", self.on_action, self.on_refused)
        subscribe(self, "trial/events", self.on_event)
        subscribe(self, "robot/emergency_stop", self.on_emergency_stop_topic)
        self.create_service(Trigger, "robot/emergency_stop", self.on_emergency_stop_service)
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"driving the {self.params.backend} backend, task "
                               f"{self.spec.name}, workspace {self.spec.workspace}")

    # --- episodes ------------------------------------------------------------------------------

    def on_event(self, event: EpisodeEvent) -> None:
        if event.event == EpisodeEvent.END and event.episode_id == self.episode_id:
            self.limit = self.step  # the supervisor ended it: no step more
            return
        if event.event != EpisodeEvent.START or event.episode_id == self.episode_id:
            return
        if self.busy:  # a step of the last episode still to report: drop it
            self._report_timer.cancel()
            self.destroy_timer(self._report_timer)
            self.busy = False
        self.episode_id, self.trial, self.step = event.episode_id, event.trial, 0
        self.limit = min(event.length or self.spec.episode_length, self.spec.episode_length)
        self.state = RobotState.STATE_MOVING
        if self.params.backend == "sim":
            from tdmpc_ros.sim.env import reset_scene

            reset_scene(self.backend, np.random.default_rng([self.params.sim_seed, event.trial]))
        else:
            self.backend.reset(self.spec.home_position, self.spec.home_gripper)
        self.state = RobotState.STATE_READY
        self.stop_reason = ""
        self.get_logger().info(f"reset for {event.episode_id} (trial {event.trial})")
        self.publish_state()

    # --- actions -------------------------------------------------------------------------------

    def on_refused(self, message: Any, error: Exception) -> None:
        self._refuse("malformed", str(error))

    def _refuse(self, kind: str, why: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        self.get_logger().warning(f"action refused ({kind}): {why}", throttle_duration_sec=1.0)

    def on_action(self, command: ActionCommand) -> None:
        if self.busy:
            self._refuse("busy", "the previous step is still running")
            return
        if self.state != RobotState.STATE_READY:
            self._refuse("not_ready", f"robot is {self._state_name()}")
            return
        if command.episode_id != self.episode_id or command.step != self.step:
            self._refuse("out_of_order", f"for {command.episode_id} step {command.step}, robot "
                         f"is at {self.episode_id} step {self.step}")
            return
        if self.step >= self.limit:
            self._refuse("episode_over", f"{self.episode_id} has had its {self.limit} steps")
            return
        age = stamp_seconds(self.get_clock().now().to_msg()) - stamp_seconds(command.header.stamp)
        if self.params.max_action_age_s and age > self.params.max_action_age_s:
            self._refuse("stale", f"computed from an observation {age:.2f} s old")
            return
        try:
            action = check_action(command.action, "action", self.spec.action_dim)
            target, gripper = action_to_target(action, self.backend.ee_position(), self.spec)
        except (MessageError, ValueError) as error:
            self._refuse("invalid", str(error))
            return
        self.backend.move_to(target, gripper)
        self.step += 1
        self.executed += 1
        # A fixed-rate loop: the next state goes out one control period after the last one
        # (the planning time falls inside the period, as the arm moves during it).
        wait = self.spec.agent_period_s - (time.monotonic() - self.last_report)
        if self.params.real_time and self.params.backend == "sim" and wait > 0:
            self.busy = True  # the step is still "moving": no action until its state is out
            self._report_timer = self.create_timer(wait, self._report_step)
        else:
            self.publish_state()

    def _report_step(self) -> None:
        self._report_timer.cancel()
        self.destroy_timer(self._report_timer)
        self.busy = False
        self.publish_state()

    # --- safety ----------------------------------------------------------------------------------

    def emergency_stop(self, why: str) -> None:
        self.state = RobotState.STATE_STOPPED
        self.stop_reason = why
        self.get_logger().error(f"EMERGENCY STOP: {why}; actions refused until the next reset")
        self.publish_state()

    def on_emergency_stop_topic(self, message: Any) -> None:
        if message.data:
            self.emergency_stop("emergency stop topic")

    def on_emergency_stop_service(self, _request: Any, response: Any) -> Any:
        self.emergency_stop("emergency stop service")
        response.success, response.message = True, "stopped"
        return response

    # --- state -----------------------------------------------------------------------------------

    def _state_name(self) -> str:
        return {RobotState.STATE_READY: "ready", RobotState.STATE_MOVING: "moving",
                RobotState.STATE_STOPPED: "stopped", RobotState.STATE_ERROR: "in error"
                }[self.state]

    def publish_state(self) -> None:
        self.last_report = time.monotonic()
        now = self.get_clock().now().to_msg()
        state = RobotState()
        state.header.stamp, state.header.frame_id = now, self.params.base_frame
        state.episode_id, state.step = self.episode_id, self.step
        x, y, z = (float(value) for value in self.backend.ee_position())
        state.ee_pose.position.x, state.ee_pose.position.y, state.ee_pose.position.z = x, y, z
        state.ee_pose.orientation.w = 1.0  # the gripper points down, as in the tasks
        state.gripper_opening = float(self.backend.gripper_opening())
        state.joints.header = state.header
        state.joints.name = list(self.backend.joint_names)
        state.joints.position = [float(value) for value in self.backend.joint_positions()]
        state.state = self.state
        state.backend = self.params.backend
        world = WorldState()
        world.header = state.header
        world.episode_id, world.step = self.episode_id, self.step
        object_position = getattr(self.backend, "object_position", lambda: None)()
        target_position = getattr(self.backend, "target_position", lambda: None)()
        world.has_object = object_position is not None
        world.has_target = target_position is not None
        for point, value in ((world.object_position, object_position),
                             (world.target_position, target_position)):
            if value is not None:
                point.x, point.y, point.z = (float(v) for v in value)
        if hasattr(self.backend, "physics_positions"):
            qpos, mocap_pos = self.backend.physics_positions()
            world.sim_qpos = qpos.astype(float).tolist()
            world.sim_mocap_pos = mocap_pos.reshape(-1).astype(float).tolist()
        # The world first: whoever waits for a robot state then finds its world state there.
        publish_checked(self.world_publisher, world)
        publish_checked(self.state_publisher, state)

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = {RobotState.STATE_READY: OK, RobotState.STATE_MOVING: OK,
                 RobotState.STATE_STOPPED: ERROR, RobotState.STATE_ERROR: ERROR}[self.state]
        if level == OK and self.refused:
            level = WARN
        message = self.stop_reason or self._state_name()
        return level, message, {"episode": self.episode_id, "step": self.step,
                                "executed": self.executed, **{f"refused_{k}": v
                                                              for k, v in self.refused.items()}}

    def close(self) -> None:
        self.backend.close()


def main() -> None:
    run(RobotDriver)


if __name__ == "__main__":
    main()

