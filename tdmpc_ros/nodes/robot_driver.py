"""The robot driver: executes actions within the workspace, resets between episodes, reports state.

Every backend goes through the same code path: an action is checked, turned into an end-effector
target by ``tasks.action_to_target`` (largest step, workspace box) and handed to an
``ArmBackend``. Only ``make_backend`` knows which robot it is.

Safety, for every backend: during an episode a watchdog stops the robot (state STOPPED, reason
in diagnostics) when no action comes for ``watchdog_s`` while it is ready. A backend may also
offer ``stop()`` (called on an emergency stop), ``poll()`` (read the state now; the driver does
so several times a second while ready) and ``state_age_s()``: a reading that fails or is older
than ``max_state_age_s`` stops the robot. A controller error (``XArmError``) puts it in
STATE_ERROR with the controller's code and meaning in diagnostics; the trial supervisor ends
the trial on either.

Subscribes: robot/action, trial/events (START resets; PAUSE holds the robot, refusing actions,
until RESUME, which publishes a fresh state to plan from), robot/emergency_stop.
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

from tdmpc_ros.hardware.xarm_backend import XArmConfig, XArmError
from tdmpc_ros.interfaces import MessageError, check_action, publish_checked, transforms_to_msg
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
    refusals,
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
    variant: str = param("simulator only: the task variant whose cube and target placements "
                         "the scene of each trial uses (config/variants.yaml; empty: the "
                         "training distribution)")
    backend: str = param("sim (MuJoCo), real (xArm) or gazebo")
    robot_ip: str = param("real only: the xArm controller's IP address")
    base_frame: str = param("frame of every pose: the robot base")
    publish_tf: bool = param("publish the arm's frames on /tf (link_base .. link_tcp)")
    sim_seed: int = param("simulator only: seed of the scene of each trial (with the trial)")
    max_action_age_s: float = param("refuse an action computed from an observation older than "
                                    "this (seconds); 0 turns the check off")
    real_time: bool = param("simulator only: report states at the task's control rate (one "
                            "agent period apart at most as often), as a real arm moves; false "
                            "runs the simulation as fast as actions arrive")
    watchdog_s: float = param("stop the robot when no action arrives for this long (s) while it "
                              "is ready during an episode; 0 turns the watchdog off")
    max_state_age_s: float = param("stop the robot when its latest good reading of pose, joints "
                                   "and gripper is older than this (s; backends that report an "
                                   "age: real); 0 turns the check off")
    xarm_connect_timeout_s: float = param("real only: longest wait to connect to the "
                                          "controller (s); it never hangs longer")
    xarm_servo_rate_hz: float = param("real only: servo commands per second while a step runs "
                                      "(vendor: 50 to 200, at most 250)")
    xarm_max_servo_step_mm: float = param("real only: longest move between two servo commands "
                                          "(mm; at most 10, the vendor's limit)")
    xarm_max_speed_mm_s: float = param("real only: TCP speed the servo stream never exceeds "
                                       "(mm/s)")
    xarm_workspace_low: list[float] = param("real only: lowest x, y, z (m, base frame) of a "
                                            "target, on top of the task's workspace box")
    xarm_workspace_high: list[float] = param("real only: highest x, y, z (m, base frame) of a "
                                             "target, on top of the task's workspace box")
    xarm_fence_margin_m: float = param("real only: the controller's own TCP boundary (fence "
                                       "mode) is the clip box grown by this (m)")
    xarm_collision_sensitivity: int = param("real only: controller collision detection, 1 "
                                            "(least sensitive) to 5; 0 (off) is refused")
    xarm_home_speed_mm_s: float = param("real only: TCP speed of the move home at a reset "
                                        "(mm/s)")
    xarm_home_timeout_s: float = param("real only: longest wait for the move home (s)")
    xarm_target: list[float] = param("real only: the reach task's virtual target x, y, z (m, "
                                     "base frame)")
    xarm_auto_recover_codes: str = param("real only: controller error codes cleared "
                                         "automatically, comma-separated (e.g. '24,35'); never "
                                         "1-3 (emergency stop), 22 or 31 (collisions)")
    xarm_max_recoveries: int = param("real only: automatic recoveries per episode before an "
                                     "error stops the trial")

    def __post_init__(self) -> None:
        get_task(self.task, self.variant)
        if self.variant and self.backend != "sim":
            raise ValueError(f"variant {self.variant!r} is for the simulator: on a real arm "
                             "the operator places the objects")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.max_action_age_s < 0:
            raise ValueError(f"max_action_age_s must be >= 0, got {self.max_action_age_s}")
        for name in ("watchdog_s", "max_state_age_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.backend == "real":
            self.xarm_config()  # wrong values stop the node at start-up, naming the field

    def xarm_config(self) -> XArmConfig:
        """The real arm's settings from these parameters (ValueError on a wrong one)."""
        try:
            codes = tuple(int(code) for code in self.xarm_auto_recover_codes.split(",")
                          if code.strip())
        except ValueError:
            raise ValueError("xarm_auto_recover_codes must be integers separated by commas, "
                             f"got {self.xarm_auto_recover_codes!r}") from None
        for name in ("xarm_workspace_low", "xarm_workspace_high", "xarm_target"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 values, got {getattr(self, name)}")
        return XArmConfig(
            ip=self.robot_ip, connect_timeout_s=self.xarm_connect_timeout_s,
            servo_rate_hz=self.xarm_servo_rate_hz, max_servo_step_mm=self.xarm_max_servo_step_mm,
            max_speed_mm_s=self.xarm_max_speed_mm_s,
            workspace_low_m=tuple(self.xarm_workspace_low),
            workspace_high_m=tuple(self.xarm_workspace_high),
            fence_margin_m=self.xarm_fence_margin_m,
            collision_sensitivity=self.xarm_collision_sensitivity,
            home_speed_mm_s=self.xarm_home_speed_mm_s, home_timeout_s=self.xarm_home_timeout_s,
            target_m=tuple(self.xarm_target), auto_recover_codes=codes,
            max_recoveries=self.xarm_max_recoveries)


def make_backend(name: str, spec: TaskSpec, params: DriverParams | None = None) -> ArmBackend:
    if name == "sim":
        from tdmpc_ros.sim.arm import MujocoArm

        return MujocoArm(spec)
    if name == "real":
        from tdmpc_ros.hardware.xarm_backend import XArmBackend

        if params is None:
            raise ConfigError("backend 'real' needs the driver's parameters")
        try:
            return XArmBackend(spec, params.xarm_config())
        except (ConnectionError, XArmError, ValueError) as error:
            raise ConfigError(f"backend 'real': {error}") from error
    raise ConfigError("backend 'gazebo': drive Gazebo through the lab's ros2_control "
                      "controllers; not available in this build, use backend:=sim")


class RobotDriver(Node):
    def __init__(self) -> None:
        super().__init__("robot_driver")
        self.params = read_parameters(self, DriverParams)
        self.spec = get_task(self.params.task, self.params.variant)
        self.backend = make_backend(self.params.backend, self.spec, self.params)
        self.episode_id = ""
        self.trial = 0
        self.step = 0
        self.limit = self.spec.episode_length
        self.state = RobotState.STATE_MOVING  # until the first START resets the robot
        self.stop_reason = ""
        self.error_code = 0  # the controller's, while an error it raised stands
        self.executed = 0
        self.busy = False
        self.last_report = 0.0
        self.refused: dict[str, int] = {}
        self.last_action = time.monotonic()  # watchdog: the last action, reset or resume
        self.paused = False  # the operator paused the episode: the robot holds still
        self.reading: tuple[np.ndarray, float, np.ndarray] | None = None  # last good one
        self.state_publisher = publisher(self, "robot/state")
        self.world_publisher = publisher(self, "world/state")
        self.tf_publisher = publisher(self, "/tf") if self.params.publish_tf else None
        self.joint_publisher = publisher(self, "joint_states")
        if self.params.publish_tf and hasattr(self.backend, "link_transforms"):
            from std_msgs.msg import String

            from tdmpc_ros.sim.frames import installed_urdf

            self.description_publisher = publisher(self, "/robot_description")
            self.description_publisher.publish(String(data=installed_urdf().read_text()))
        subscribe(self, "robot/action", self.on_action, self.on_refused)
        subscribe(self, "trial/events", self.on_event)
        subscribe(self, "robot/emergency_stop", self.on_emergency_stop_topic)
        self.create_service(Trigger, "robot/emergency_stop", self.on_emergency_stop_service)
        self.create_timer(min(0.1, self.spec.agent_period_s), self.check_safety)
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"driving the {self.params.backend} backend, task "
                               f"{self.spec.name}, workspace {self.spec.workspace}")

    # --- episodes ------------------------------------------------------------------------------

    def on_event(self, event: EpisodeEvent) -> None:
        if event.event == EpisodeEvent.END and event.episode_id == self.episode_id:
            self.limit = self.step  # the supervisor ended it: no step more
            return
        if event.event in (EpisodeEvent.PAUSE, EpisodeEvent.RESUME) \
                and event.episode_id == self.episode_id:
            self.paused = event.event == EpisodeEvent.PAUSE
            self.get_logger().info(f"{'paused' if self.paused else 'resumed'} "
                                   f"{self.episode_id} at step {self.step}")
            if not self.paused:
                self.last_action = time.monotonic()
                if self.state == RobotState.STATE_READY and not self.busy:
                    self.publish_state()  # a fresh state to plan the next step from
            return
        if event.event != EpisodeEvent.START or event.episode_id == self.episode_id:
            return
        if self.busy:  # a step of the last episode still to report: drop it
            self._report_timer.cancel()
            self.destroy_timer(self._report_timer)
            self.busy = False
        self.episode_id, self.trial, self.step = event.episode_id, event.trial, 0
        self.paused = False
        self.limit = min(event.length or self.spec.episode_length, self.spec.episode_length)
        self.state = RobotState.STATE_MOVING
        try:
            if self.params.backend == "sim":
                from tdmpc_ros.sim.env import reset_scene

                reset_scene(self.backend,
                            np.random.default_rng([self.params.sim_seed, event.trial]))
            else:
                self.backend.reset(self.spec.home_position, self.spec.home_gripper)
        except Exception as error:  # noqa: BLE001 - a failed reset ends the trial, not the node
            self.fail(error, f"reset for {event.episode_id}")
            return
        self.state = RobotState.STATE_READY
        self.stop_reason, self.error_code = "", 0
        self.last_action = time.monotonic()
        self.get_logger().info(f"reset for {event.episode_id} (trial {event.trial})")
        self.publish_state()

    # --- actions -------------------------------------------------------------------------------

    def on_refused(self, message: Any, error: Exception) -> None:
        self.refused["malformed"] = self.refused.get("malformed", 0) + 1  # subscribe logged it

    def _refuse(self, kind: str, why: str) -> None:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        refusals(self)(f"robot/action ({kind})", why, level="warning")

    def on_action(self, command: ActionCommand) -> None:
        if self.busy:
            self._refuse("busy", "the previous step is still running")
            return
        if self.state != RobotState.STATE_READY:
            self._refuse("not_ready", f"robot is {self._state_name()}")
            return
        if self.paused:
            self._refuse("paused", f"{self.episode_id} is paused by the operator")
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
        except Exception as error:  # noqa: BLE001 - reading the robot failed: it stops
            self.fail(error, f"step {self.step}")
            return
        try:
            self.backend.move_to(target, gripper)
        except Exception as error:  # noqa: BLE001 - the robot stops; the node carries on
            self.fail(error, f"step {self.step}")
            return
        self.step += 1
        self.executed += 1
        self.last_action = time.monotonic()
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
        self.halt(RobotState.STATE_STOPPED, f"EMERGENCY STOP: {why}")

    def halt(self, state: int, why: str) -> None:
        """Stop the arm (where the backend can), enter ``state`` and say why."""
        stop = getattr(self.backend, "stop", None)
        if stop is not None:
            try:
                stop()
            except Exception as error:  # noqa: BLE001 - report, keep the state
                why += f" (and stopping the arm failed: {error})"
        self.state, self.stop_reason = state, why
        self.get_logger().error(f"{why}; actions refused until the next reset")
        self.publish_state()

    def fail(self, error: Exception, during: str) -> None:
        """A backend failed: a controller error is STATE_ERROR, anything else (no reading,
        lost connection) STOPPED; both with the cause in diagnostics."""
        if isinstance(error, XArmError):
            self.error_code = error.code  # reported in every state until the next reset
            self.halt(RobotState.STATE_ERROR, f"controller error during {during}: {error}")
        else:
            self.halt(RobotState.STATE_STOPPED, f"robot failed during {during}: {error}")

    def check_safety(self) -> None:
        """The watchdog and the state-age check, several times a second while ready."""
        if self.state != RobotState.STATE_READY or self.busy:
            return
        in_episode = bool(self.episode_id) and self.step < self.limit and not self.paused
        idle = time.monotonic() - self.last_action
        if in_episode and self.params.watchdog_s and idle > self.params.watchdog_s:
            self.halt(RobotState.STATE_STOPPED, f"watchdog: no action for {idle:.1f} s at step "
                      f"{self.step} of {self.episode_id}")
            return
        poll = getattr(self.backend, "poll", None)
        age_of = getattr(self.backend, "state_age_s", None)
        try:
            if poll is not None:
                poll()
        except Exception as error:  # noqa: BLE001 - see fail()
            self.fail(error, "a state reading")
            return
        if age_of is not None and self.params.max_state_age_s:
            age = age_of()
            if age > self.params.max_state_age_s:
                self.halt(RobotState.STATE_STOPPED, f"stale robot state: the last good reading "
                          f"is {age:.2f} s old")

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
        ee, gripper, joints = self._read()
        x, y, z = (float(value) for value in ee)
        state.ee_pose.position.x, state.ee_pose.position.y, state.ee_pose.position.z = x, y, z
        state.ee_pose.orientation.w = 1.0  # the gripper points down, as in the tasks
        state.gripper_opening = float(gripper)
        state.joints.header = state.header
        state.joints.name = list(self.backend.joint_names)
        state.joints.position = [float(value) for value in joints]
        state.state = self.state
        state.error_code = self.error_code
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
        self.joint_publisher.publish(state.joints)
        if self.tf_publisher is not None:
            self.tf_publisher.publish(self.transforms(state))

    def transforms(self, state: RobotState) -> Any:
        """/tf at the state's stamp: every link of the arm from its parent where the backend
        knows them (the simulator's kinematics), else the base to the measured TCP (a lab's
        robot_state_publisher with the xArm's URDF adds the links from the joint states)."""
        link_transforms = getattr(self.backend, "link_transforms", None)
        if link_transforms is not None:
            frames = [(parent if parent != "link_base" else self.params.base_frame, child,
                       translation, rotation)
                      for parent, child, translation, rotation in link_transforms()]
        else:
            position = state.ee_pose.position
            frames = [(self.params.base_frame, "link_tcp",
                       (position.x, position.y, position.z), (0.0, 0.0, 0.0, 1.0))]
        return transforms_to_msg(frames, state.header.stamp)

    def _read(self) -> tuple[np.ndarray, float, np.ndarray]:
        """The backend's pose, gripper and joints; if reading fails, the robot stops and the
        last good reading is reported with the STOPPED state."""
        try:
            self.reading = (self.backend.ee_position(), self.backend.gripper_opening(),
                            self.backend.joint_positions())
        except Exception as error:  # noqa: BLE001 - see fail()
            if self.reading is None:  # never read: zeros, and the state says why
                self.reading = (np.zeros(3), 0.0, np.zeros(len(self.backend.joint_names)))
            if isinstance(error, XArmError):
                self.error_code = error.code
            if self.state == RobotState.STATE_READY or self.state == RobotState.STATE_MOVING:
                self.state = (RobotState.STATE_ERROR if isinstance(error, XArmError)
                              else RobotState.STATE_STOPPED)
                self.stop_reason = f"reading the robot failed: {error}"
                self.get_logger().error(self.stop_reason)
        return self.reading

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = {RobotState.STATE_READY: OK, RobotState.STATE_MOVING: OK,
                 RobotState.STATE_STOPPED: ERROR, RobotState.STATE_ERROR: ERROR}[self.state]
        if level == OK and self.refused:
            level = WARN
        message = self.stop_reason or self._state_name()
        values: dict[str, Any] = {"episode": self.episode_id, "step": self.step,
                                  "executed": self.executed, "stop_reason": self.stop_reason,
                                  **{f"refused_{k}": v for k, v in self.refused.items()}}
        if hasattr(self.backend, "recoveries"):  # the real arm's automatic recoveries
            values["recoveries"] = self.backend.recoveries
            values["last_recovered"] = self.backend.last_recovered
            if level == OK and self.backend.recoveries:
                level = WARN
        return level, message, values

    def close(self) -> None:
        self.backend.close()


def main() -> None:
    run(RobotDriver)


if __name__ == "__main__":
    main()

