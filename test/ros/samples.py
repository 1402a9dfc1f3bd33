"""Fully populated instances of every project message, for the DDS and checking tests."""

from __future__ import annotations

import hashlib

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import KeyValue

from tdmpc_ros.interfaces import image_to_msg
from tdmpc_ros.msg import (
    ActionCommand,
    EpisodeEvent,
    LatentPlan,
    ModelWeights,
    OperatorCommand,
    RobotState,
    Transition,
    WorldState,
)


def stamp() -> Time:
    """A fresh stamp each time: messages share no mutable parts."""
    return Time(sec=1_700_000_000, nanosec=123_456_789)


def _floats(generator: np.random.Generator, size: int) -> list[float]:
    return generator.uniform(-1, 1, size).astype(np.float32).tolist()


def transition(seed: int = 0, image_shape: tuple[int, int] = (720, 1280)) -> Transition:
    """A transition with a large camera image (1280 x 720 RGB by default, 2.7 MB)."""
    generator = np.random.default_rng(seed)
    message = Transition()
    message.header.stamp = stamp()
    message.header.frame_id = "link_base"
    message.episode_id = f"ep-{seed:06d}"
    message.step = 24
    message.task = "reach"
    message.source = Transition.SOURCE_REAL
    message.proprio = _floats(generator, 4)
    message.next_proprio = _floats(generator, 4)
    message.state = _floats(generator, 10)
    message.next_state = _floats(generator, 10)
    height, width = image_shape
    message.image = image_to_msg(generator.integers(0, 256, (height, width, 3), dtype=np.uint8),
                                 "rgb8", "camera_color_optical_frame", stamp())
    message.next_image = image_to_msg(
        generator.integers(0, 256, (height, width, 3), dtype=np.uint8), "rgb8",
        "camera_color_optical_frame", stamp())
    message.action = _floats(generator, 4)
    message.reward = 0.75
    message.terminated = False
    message.truncated = True
    message.success = True
    message.weights_version = 7
    return message


def latent_plan(seed: int = 0, horizon: int = 5, action_dim: int = 4,
                latent_dim: int = 50) -> LatentPlan:
    generator = np.random.default_rng(seed)
    message = LatentPlan()
    message.header.stamp = stamp()
    message.header.frame_id = "link_base"
    message.episode_id = "ep-000003"
    message.step = 11
    message.weights_version = 12
    message.horizon, message.action_dim, message.latent_dim = horizon, action_dim, latent_dim
    message.actions = _floats(generator, horizon * action_dim)
    message.action_std = np.abs(_floats(generator, horizon * action_dim)).tolist()
    message.predicted_reward = _floats(generator, horizon)
    message.q_mean = _floats(generator, horizon + 1)
    message.q_std = np.abs(_floats(generator, horizon + 1)).tolist()
    message.uncertainty_lambda = 1.0
    message.uncertainty_penalty = 0.5
    message.score = 2.5
    message.expected_return = 3.0
    message.latent_trajectory = _floats(generator, (horizon + 1) * latent_dim)
    message.planning_time = Duration(sec=0, nanosec=41_000_000)
    message.iterations, message.num_samples, message.num_policy_samples = 6, 512, 51
    message.device = "cpu"
    return message


def model_weights(seed: int = 0, payload_bytes: int = 4_000_000) -> ModelWeights:
    generator = np.random.default_rng(seed)
    payload = generator.integers(0, 256, payload_bytes, dtype=np.uint8).tobytes()
    message = ModelWeights()
    message.header.stamp = stamp()
    message.version = 3
    message.learner_step = 25_000
    message.run_id = "run-test"
    message.format = ModelWeights.FORMAT_SAFETENSORS
    message.payload = payload
    message.sha256 = hashlib.sha256(payload).hexdigest()
    message.metrics = [KeyValue(key="loss/total", value="1.25"),
                       KeyValue(key="updates_per_s", value="9.5")]
    return message


def episode_event() -> EpisodeEvent:
    message = EpisodeEvent()
    message.header.stamp = stamp()
    message.event = EpisodeEvent.END
    message.episode_id = "ep-000003"
    message.task = "lift"
    message.trial = 3
    message.length = 25
    message.episode_return = 12.5
    message.success = True
    message.weights_version = 4
    message.reason = EpisodeEvent.REASON_OPERATOR
    message.detail = "operator marked success"
    return message


def operator_command() -> OperatorCommand:
    message = OperatorCommand()
    message.header.stamp = stamp()
    message.command = OperatorCommand.FAILURE
    message.detail = "cube slipped out of the gripper"
    return message


def action_command() -> ActionCommand:
    message = ActionCommand()
    message.header.stamp = stamp()
    message.episode_id = "ep-000003"
    message.step = 5
    message.action = [0.5, -0.25, 1.0, -1.0]
    message.weights_version = 9
    return message


def robot_state() -> RobotState:
    message = RobotState()
    message.header.stamp = stamp()
    message.header.frame_id = "link_base"
    message.episode_id = "ep-000003"
    message.step = 12
    message.ee_pose.position.x, message.ee_pose.position.y, message.ee_pose.position.z = (
        0.4, -0.1, 0.2)
    message.ee_pose.orientation.w = 1.0
    message.gripper_opening = 0.75  # float32-exact, so equality holds after DDS
    message.joints.name = [f"joint{index}" for index in range(1, 8)]
    message.joints.position = [0.1 * index for index in range(7)]
    message.state = RobotState.STATE_READY
    message.error_code = 0
    message.warning_code = 0
    message.backend = "sim"
    return message


def world_state() -> WorldState:
    message = WorldState()
    message.header.stamp = stamp()
    message.header.frame_id = "link_base"
    message.episode_id = "ep-000003"
    message.step = 12
    message.has_object = True
    message.object_position.x, message.object_position.y = 0.4, 0.05
    message.object_position.z = 0.02
    message.has_target = True
    message.target_position.x, message.target_position.y = 0.45, -0.1
    message.target_position.z = 0.02
    message.sim_qpos = [0.1 * index for index in range(15)]
    message.sim_mocap_pos = [0.3, 0.0, 0.2, 0.45, -0.1, 0.02]
    return message


ALL = {
    "Transition": transition,
    "LatentPlan": latent_plan,
    "ModelWeights": model_weights,
    "EpisodeEvent": episode_event,
    "ActionCommand": action_command,
    "RobotState": robot_state,
    "WorldState": world_state,
    "OperatorCommand": operator_command,
}
