"""Observations from messages: one robot state, its world state and its camera frame, matched.

The planner and the replay recorder both see the world through this, so the model is trained on
exactly the observations it plans from.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from tdmpc_ros.interfaces import msg_to_image
from tdmpc_ros.msg import RobotState, WorldState
from tdmpc_ros.nodes.common import stamp_key, stamp_seconds
from tdmpc_ros.tasks import TaskSpec, proprio_vector, reward_and_success, state_vector


@dataclass
class Observation:
    robot: RobotState
    world: WorldState | None
    image: Image | None

    @property
    def key(self) -> tuple[str, int]:
        return self.robot.episode_id, self.robot.step

    @property
    def stamp(self) -> Any:
        return self.robot.header.stamp

    def positions(self) -> dict[str, Any]:
        """What tasks.reward_and_success and tasks.state_vector take."""
        position = self.robot.ee_pose.position
        world = self.world
        return {
            "ee_pos": np.array([position.x, position.y, position.z]),
            "gripper": float(self.robot.gripper_opening),
            "object_pos": None if world is None or not world.has_object else
            np.array([world.object_position.x, world.object_position.y,
                      world.object_position.z]),
            "target_pos": None if world is None or not world.has_target else
            np.array([world.target_position.x, world.target_position.y,
                      world.target_position.z]),
        }

    def model_inputs(self, spec: TaskSpec) -> dict[str, np.ndarray]:
        """The observation dict of the core: state, proprio and (when there is a frame) pixels.

        No ``state`` where the task's object or target is unknown (the real arm has no object
        perception): only pixel and proprioception models run there.
        """
        positions = self.positions()
        inputs = {"proprio": proprio_vector(positions["ee_pos"], positions["gripper"])}
        if not ((spec.uses_object and positions["object_pos"] is None)
                or (spec.uses_target and positions["target_pos"] is None)):
            inputs["state"] = state_vector(spec, **positions)
        if self.image is not None:
            inputs["pixels"] = msg_to_image(self.image)
        return inputs

    def reward_and_success(self, spec: TaskSpec) -> tuple[float, bool]:
        return reward_and_success(spec, **self.positions())


class ObservationAssembler:
    """Matches robot states with their world state (same stamp) and camera frame (same stamp, or
    the nearest within ``max_image_skew_s`` for a real camera with its own clock)."""

    def __init__(self, need_world: bool, need_image: bool, max_image_skew_s: float = 0.0,
                 keep: int = 64, image_size: int | None = None) -> None:
        self.need_world, self.need_image = need_world, need_image
        self.image_size = image_size  # the model's square rgb8 input; other frames are refused
        self.max_image_skew_s = max_image_skew_s
        self.keep = keep
        self._robot: OrderedDict[tuple[int, int], RobotState] = OrderedDict()
        self._world: OrderedDict[tuple[int, int], WorldState] = OrderedDict()
        self._images: OrderedDict[tuple[int, int], Image] = OrderedDict()
        self._done: set[tuple[int, int]] = set()

    def add(self, message: RobotState | WorldState | Image) -> Observation | None:
        """Store a message; return the observation it completes, once, or None.

        A frame that is not the model's input (size, encoding) raises ValueError before it is
        stored, so that it cannot take the place of the right frame for its stamp.
        """
        if type(message) is Image and self.image_size is not None and (
                message.height, message.width, message.encoding) != (
                self.image_size, self.image_size, "rgb8"):
            raise ValueError(f"a {message.height}x{message.width} {message.encoding} frame; "
                             f"the model's input is {self.image_size}x{self.image_size} rgb8")
        store = {RobotState: self._robot, WorldState: self._world, Image: self._images}
        table = store[type(message)]
        table[stamp_key(message.header.stamp)] = message
        while len(table) > self.keep:
            table.popitem(last=False)
        if type(message) is Image:  # completes the robot state it was taken with, or the nearest
            return self._complete(self._nearest_robot(message.header.stamp))
        return self._complete(stamp_key(message.header.stamp))

    def _nearest_robot(self, stamp: Any) -> tuple[int, int] | None:
        key = stamp_key(stamp)
        if key in self._robot:
            return key
        if not self.max_image_skew_s or not self._robot:
            return None
        time = stamp_seconds(stamp)
        best = min(self._robot, key=lambda k: abs(k[0] + k[1] * 1e-9 - time))
        return best if abs(best[0] + best[1] * 1e-9 - time) <= self.max_image_skew_s else None

    def _image_for(self, key: tuple[int, int]) -> Image | None:
        if key in self._images:
            return self._images[key]
        if not self.max_image_skew_s or not self._images:
            return None
        time = key[0] + key[1] * 1e-9
        best = min(self._images, key=lambda k: abs(k[0] + k[1] * 1e-9 - time))
        return (self._images[best]
                if abs(best[0] + best[1] * 1e-9 - time) <= self.max_image_skew_s else None)

    def _complete(self, key: tuple[int, int] | None) -> Observation | None:
        if key is None or key in self._done or key not in self._robot:
            return None
        world = self._world.get(key)
        image = self._image_for(key)
        if (self.need_world and world is None) or (self.need_image and image is None):
            return None
        self._done.add(key)
        if len(self._done) > 4 * self.keep:
            self._done = set(sorted(self._done)[-2 * self.keep:])
        return Observation(self._robot[key], world, image)
