"""The planner: world model plus uncertainty-regularised MPPI, one plan per observation.

Subscribes: robot/state, world/state, camera/image_raw (pixel models), learner/weights.
Publishes: robot/action, planner/plan (LatentPlan), planner/plan_markers (rviz).

New weights are checked (sha256 by interfaces, then shapes and finite values by the checkpoint
loader) and swapped in by the same single-threaded executor that plans, so a swap always falls
between two plans and never costs one. Bad weights are refused; the old ones stay.

Which weights to take: any good weights this planner has not held before, whatever their
version number says, so that no single message (a forged huge version, say) can stop it taking
the learner's next one. Weights that do not follow on from those held (another run id, a version
that jumps or goes back) are taken but logged and counted in diagnostics; weights held before (a
replayed old version) are refused. Every action names its weights exactly (``weights_id``: run
id, version and sha256 prefix), and the trial summary shows that. A graph that spans hosts is
locked down with SROS2 (README), since no check here can tell a forged message from the
learner's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from rclpy.node import Node
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from tdmpc_ros.core.agent import Agent
from tdmpc_ros.core.checkpoint import CheckpointError
from tdmpc_ros.core.planner import PlanSummary, cpu_bf16_native
from tdmpc_ros.interfaces import publish_checked
from tdmpc_ros.msg import ActionCommand, LatentPlan, ModelWeights, RobotState
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
    repo_or_share,
    run,
    stamp_seconds,
    subscribe,
)
from tdmpc_ros.nodes.observations import Observation, ObservationAssembler
from tdmpc_ros.tasks import action_to_target, get_task

# A learner publishes versions one apart; the planner may miss a few while it plans (the weights
# topic keeps only the newest). Further than this is not following on.
MAX_VERSION_STEP = 100


@dataclass
class PlannerParams:
    task: str = param("task to plan for")
    checkpoint: str = param("checkpoint to start from; empty: the shipped model, "
                            "models/<task>-<model_input>.safetensors")
    model_input: str = param("state or pixels: which shipped model an empty checkpoint means")
    device: str = param("auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    num_samples: int = param("MPPI samples per iteration (the paper: 512)")
    iterations: int = param("MPPI iterations per plan (the paper: 6)")
    uncertainty_coef: float = param("lambda: weight of the Q-ensemble std penalty (0: off)")
    explore: bool = param("add the planner's exploration noise to the action (online trials)")
    max_observation_age_s: float = param("skip an observation older than this (s); 0: never")
    max_image_skew_s: float = param("largest gap between a frame's stamp and its robot state's "
                                    "(s); 0: the same stamp (the simulated camera)")
    base_frame: str = param("frame of the plan markers")

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_image_skew_s <= 1.0:
            raise ValueError(f"max_image_skew_s must be in [0, 1] s, got {self.max_image_skew_s}")
        get_task(self.task)
        if self.num_samples < 8 or self.iterations < 1:
            raise ValueError("num_samples must be >= 8 and iterations >= 1")
        if self.uncertainty_coef < 0:
            raise ValueError(f"uncertainty_coef must be >= 0, got {self.uncertainty_coef}")


def planning_overrides(num_samples: int, iterations: int, uncertainty_coef: float,
                       device: str) -> dict[str, object]:
    """The checkpoint's config overrides this node plans with (config/planner.yaml's settings;
    elites a tenth of the samples, between 2 and 50)."""
    return {"device": device, "planner.num_samples": num_samples,
            "planner.iterations": iterations,
            "planner.num_elites": min(50, max(2, num_samples // 10)),
            "planner.uncertainty_coef": uncertainty_coef}


def resolve_checkpoint(task: str, checkpoint: str, model_input: str = "state") -> str:
    """``checkpoint``, or the shipped model of the task for that input (state or pixels)."""
    if checkpoint:
        return checkpoint
    if model_input not in ("state", "pixels"):
        raise ConfigError(f"model_input {model_input!r} is neither state nor pixels")
    shipped = repo_or_share(f"models/{task}-{model_input}.safetensors")
    if not shipped.exists():
        raise ConfigError(f"no checkpoint given and no shipped model at {shipped}")
    return str(shipped)


class Planner(Node):
    def __init__(self) -> None:
        super().__init__("planner")
        self.params = read_parameters(self, PlannerParams)
        self.spec = get_task(self.params.task)
        path = resolve_checkpoint(self.params.task, self.params.checkpoint,
                                  self.params.model_input)
        overrides = planning_overrides(self.params.num_samples, self.params.iterations,
                                       self.params.uncertainty_coef, self.params.device)
        try:
            self.agent = Agent.from_checkpoint(path, acting_only=True, overrides=overrides)
        except (CheckpointError, FileNotFoundError, ValueError) as error:
            raise ConfigError(f"cannot load checkpoint {path}: {error}") from error
        self.need_pixels = "pixels" in self.agent.model.obs_keys
        self.assembler = ObservationAssembler(
            need_world=True, need_image=self.need_pixels,
            max_image_skew_s=self.params.max_image_skew_s,
            image_size=self.agent.model.spec.obs_shapes["pixels"][0] if self.need_pixels else None)
        self.episode_id = ""
        self.weights_run_id = ""  # a restarted learner starts a new run: its versions restart
        self.weights_sha = ""
        self.weights_id = f"{Path(path).name}:v{self.agent.model.weights_version}"
        self.weights_held: set[str] = set()  # sha256 of every weights taken so far
        self.weights_taken = 0
        self.weights_discontinuities = 0
        self.last_discontinuity = ""
        self.refuse = refusals(self)
        self.plans = 0
        self.skipped_stale = 0
        self.unplannable = 0  # observations lacking an input the checkpoint needs
        self.weights_refused = 0
        self.last_weights_error = ""
        self.plan_ms: list[float] = []
        self.action_publisher = publisher(self, "robot/action")
        self.plan_publisher = publisher(self, "planner/plan")
        self.marker_publisher = publisher(self, "planner/plan_markers")
        subscribe(self, "robot/state", self.on_message)
        subscribe(self, "world/state", self.on_message)
        if self.need_pixels:
            subscribe(self, "camera/image_raw", self.on_message)
        subscribe(self, "learner/weights", self.on_weights, self.on_bad_weights)
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(
            f"model {path} (weights version {self.agent.model.weights_version}, inputs "
            f"{list(self.agent.model.obs_keys)}), {self.params.num_samples} samples x "
            f"{self.params.iterations} iterations, lambda {self.params.uncertainty_coef}, "
            f"device {self.agent.device}")

    # --- weights -------------------------------------------------------------------------------

    def on_weights(self, message: ModelWeights) -> None:
        """Swap in good weights not held before (see the module's docstring)."""
        sha = message.sha256.lower()
        name = f"{message.run_id}:v{message.version}:{sha[:8]}"
        if sha == self.weights_sha:
            return  # the weights in use (e.g. the latched copy again)
        if sha in self.weights_held:
            self.refuse("learner/weights (replayed)", f"{name} was held before; keeping "
                        f"{self.weights_id}")
            return
        held = self.agent.model.weights_version
        unusual = ""
        if self.weights_run_id and message.run_id != self.weights_run_id:
            unusual = f"a new learner run {message.run_id!r} (was {self.weights_run_id!r})"
        elif self.weights_run_id and not held < message.version <= held + MAX_VERSION_STEP:
            unusual = f"version {message.version} does not follow on from {held}"
        try:
            self.agent.load_weights(bytes(message.payload))
        except (CheckpointError, ValueError, RuntimeError) as error:
            self.on_bad_weights(message, error)
            self.refuse("learner/weights (not a model that fits)",
                        f"{name}: {error}; keeping {self.weights_id}")
            return
        self.agent.model.weights_version = int(message.version)
        self.weights_run_id, self.weights_sha, self.weights_id = message.run_id, sha, name
        self.weights_held.add(sha)
        self.weights_taken += 1
        if unusual:
            self.weights_discontinuities += 1
            self.last_discontinuity = f"{name}: {unusual}"
            self.get_logger().warning(f"weights {name} do not follow on: {unusual}; taken "
                                      "(the next good weights will replace them)")
        self.get_logger().info(f"now planning with weights {name} (learner step "
                               f"{message.learner_step})")

    def on_bad_weights(self, message: Any, error: Exception) -> None:
        """Counted for the diagnostics (the refusal itself is logged where it is made)."""
        self.weights_refused += 1
        self.last_weights_error = f"version {getattr(message, 'version', '?')}: {error}"

    # --- planning ------------------------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        try:
            observation = self.assembler.add(message)
        except ValueError as error:  # a frame that is not the model's input
            self.refuse(f"{type(message).__name__} (inputs)", str(error))
            return
        if observation is None or observation.robot.state != RobotState.STATE_READY:
            return
        if observation.robot.step >= self.spec.episode_length:
            return
        age = stamp_seconds(self.get_clock().now().to_msg()) - stamp_seconds(observation.stamp)
        if self.params.max_observation_age_s and age > self.params.max_observation_age_s:
            self.skipped_stale += 1
            self.get_logger().warning(f"skipped an observation {age:.2f} s old",
                                      throttle_duration_sec=2.0)
            return
        self.plan(observation)

    def plan(self, observation: Observation) -> None:
        if observation.robot.episode_id != self.episode_id:
            self.episode_id = observation.robot.episode_id
            self.agent.reset()
        started = time.perf_counter()
        inputs = observation.model_inputs(self.spec)
        missing = [key for key in self.agent.model.obs_keys if key not in inputs]
        if missing:  # e.g. a state model on the real arm, which does not see the object
            self.unplannable += 1
            self.get_logger().error(f"this checkpoint needs {missing}, which this robot does "
                                    "not provide (a state model needs the object's position; "
                                    "on the real arm use a pixel model); no action sent",
                                    throttle_duration_sec=5.0)
            return
        action, summary = self.agent.act(inputs, explore=self.params.explore)
        command = ActionCommand()
        command.header.stamp = observation.stamp  # the observation's: latency is measurable
        command.header.frame_id = self.params.base_frame
        command.episode_id, command.step = observation.key
        command.action = np.clip(action, -1.0, 1.0).astype(np.float32).tolist()
        command.weights_version = int(self.agent.model.weights_version)
        command.weights_id = self.weights_id
        publish_checked(self.action_publisher, command)
        self.plans += 1
        self.plan_ms.append((time.perf_counter() - started) * 1000)
        self.plan_ms = self.plan_ms[-200:]
        publish_checked(self.plan_publisher, self.plan_message(observation, summary))
        self.marker_publisher.publish(self.markers(observation, summary))

    def plan_message(self, observation: Observation, summary: PlanSummary) -> LatentPlan:
        message = LatentPlan()
        message.header.stamp = observation.stamp
        message.header.frame_id = self.params.base_frame
        message.episode_id, message.step = observation.key
        message.weights_version = int(self.agent.model.weights_version)
        horizon, action_dim = summary.actions.shape
        message.horizon, message.action_dim = horizon, action_dim
        message.latent_dim = summary.latents.shape[1]
        message.actions = summary.actions.astype(np.float32).ravel().tolist()
        message.action_std = summary.std.astype(np.float32).ravel().tolist()
        message.predicted_reward = summary.rewards.astype(np.float32).tolist()
        message.q_mean = summary.q_mean.astype(np.float32).tolist()
        message.q_std = summary.q_std.astype(np.float32).tolist()
        message.uncertainty_lambda = float(summary.uncertainty_coef)
        message.uncertainty_penalty = float(summary.uncertainty_penalty)
        message.score = float(summary.score)
        message.expected_return = float(summary.expected_return)
        message.latent_trajectory = summary.latents.astype(np.float32).ravel().tolist()
        nanoseconds = int(summary.plan_ms * 1e6)
        message.planning_time = Duration(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)
        message.iterations = int(summary.iterations)
        message.num_samples = int(summary.num_samples)
        message.num_policy_samples = int(summary.num_policy_trajectories)
        message.device = summary.device
        return message

    def markers(self, observation: Observation, summary: PlanSummary) -> MarkerArray:
        """The planned end-effector path: the plan's xyz deltas through the driver's own
        action_to_target from the current pose, each point coloured green (certain) to red
        (uncertain) by the Q-ensemble std at that step; and the target and the cube where the
        task has them (namespaces target, object)."""
        position = observation.positions()["ee_pos"]
        points = [position]
        for action in summary.actions:
            position, _ = action_to_target(np.clip(action, -1, 1), position, self.spec)
            points.append(position)
        spread = summary.q_std[: len(points)]
        scale = max(float(spread.max()), 1e-6)
        path = Marker(type=Marker.LINE_STRIP, action=Marker.ADD, ns="planned_path", id=0)
        path.header.stamp = observation.stamp
        path.header.frame_id = self.params.base_frame
        path.scale.x = 0.005
        path.pose.orientation.w = 1.0
        path.lifetime = Duration(sec=1)
        for point, uncertainty in zip(points, spread, strict=False):
            path.points.append(Point(x=float(point[0]), y=float(point[1]), z=float(point[2])))
            share = float(uncertainty) / scale
            path.colors.append(ColorRGBA(r=share, g=1.0 - share, b=0.0, a=1.0))
        markers = [path]
        positions = observation.positions()
        for name, kind, size, colour in (
                ("target_pos", Marker.SPHERE, 0.03, ColorRGBA(r=0.15, g=0.8, b=0.25, a=0.8)),
                ("object_pos", Marker.CUBE, 0.04, ColorRGBA(r=0.85, g=0.15, b=0.1, a=0.9))):
            where = positions.get(name)
            if where is None:
                continue
            marker = Marker(type=kind, action=Marker.ADD, ns=name.removesuffix("_pos"), id=0)
            marker.header = path.header
            marker.pose.position = Point(x=float(where[0]), y=float(where[1]),
                                         z=float(where[2]))
            marker.pose.orientation.w = 1.0
            marker.scale.x = marker.scale.y = marker.scale.z = size
            marker.color, marker.lifetime = colour, Duration(sec=1)
            markers.append(marker)
        return MarkerArray(markers=markers)

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = ERROR if (self.weights_refused and not self.plans) or self.unplannable else (
            WARN if (self.weights_refused or self.skipped_stale or self.refuse.counts
                     or self.weights_discontinuities) else OK)
        median = float(np.median(self.plan_ms)) if self.plan_ms else 0.0
        return level, f"{self.plans} plans, weights v{self.agent.model.weights_version}", {
            "plans": self.plans, "plan_ms_median": f"{median:.1f}",
            "weights_version": self.agent.model.weights_version,
            "weights_id": self.weights_id, "weights_taken": self.weights_taken,
            "weights_refused": self.weights_refused, "last_weights_error":
            self.last_weights_error, "weights_discontinuities": self.weights_discontinuities,
            "last_discontinuity": self.last_discontinuity, "skipped_stale": self.skipped_stale,
            "unplannable": self.unplannable,
            # the precision rule (core.planner.resolve_precision) and what decided it
            "precision": str(self.agent.planner.dtype).split(".")[-1],
            "cpu_bf16": cpu_bf16_native() or "none"}


def main() -> None:
    run(Planner)


if __name__ == "__main__":
    main()
