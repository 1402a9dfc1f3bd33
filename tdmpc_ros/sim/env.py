"""Gymnasium environments for the reach, push and lift tasks on the MuJoCo arm backend.

Observations (a ``gymnasium.spaces.Dict``):

- ``state`` float32: TCP x, y, z (m, base frame), gripper opening (0 closed, 1 open), then the
  cube's centre x, y, z (push, lift) and the target x, y, z (reach, push); see
  ``TaskSpec.state_layout``. Sizes: reach 7, push 10, lift 7.
- ``proprio`` float32 (4,): TCP x, y, z and gripper opening, what the real arm measures.
- ``pixels`` uint8 (S, S, 3), height x width x RGB, from the fixed front camera; only with
  ``render_pixels=True``. S is ``image_size``: 84 as in the paper, or e.g. 64 (a smaller
  encoder input, about half the arithmetic per frame).

Episodes last exactly ``spec.episode_length`` (25) agent steps and end by truncation: success
does not terminate them, as in the paper's xArm tasks (a policy should also learn to stay at
the goal, and every episode has the same length). ``terminated`` is always False;
``info["success"]`` is the task's success flag after the step.

``variant`` (``tasks.with_variant``: a name from ``config/variants.yaml``) moves where the cube
and the target are placed at reset, for finetuning on what the offline data did not cover.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from tdmpc_ros.sim.arm import MujocoArm
from tdmpc_ros.tasks import (
    TaskSpec,
    action_to_target,
    get_task,
    proprio_vector,
    reward_and_success,
    state_vector,
)

IMAGE_SIZE = 84


class XArmTaskEnv(gymnasium.Env):
    """One of the xArm tabletop tasks; ``seed`` seeds the first reset (later resets continue)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12.5}

    def __init__(
        self,
        task: str = "reach",
        render_pixels: bool = True,
        seed: int | None = None,
        render_mode: str | None = None,
        render_size: int = 256,
        variant: str | dict[str, Any] | None = None,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        self.task_spec: TaskSpec = get_task(task, variant)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.render_pixels = render_pixels
        self.render_size = render_size
        if not 16 <= image_size <= 1024:
            raise ValueError(f"image_size must be 16..1024 pixels, got {image_size}")
        self.image_size = image_size
        self.arm = MujocoArm(self.task_spec)
        task_spec = self.task_spec
        self.metadata = {**self.metadata, "render_fps": 1.0 / task_spec.agent_period_s}
        self.action_space = spaces.Box(-1.0, 1.0, shape=(task_spec.action_dim,), dtype=np.float32)
        # positions stay within 2 m of the base (a cube knocked off the table lands on the floor)
        observation = {
            "state": spaces.Box(-2.0, 2.0, shape=(task_spec.state_dim,), dtype=np.float32),
            "proprio": spaces.Box(-2.0, 2.0, shape=(4,), dtype=np.float32),
        }
        if render_pixels:
            observation["pixels"] = spaces.Box(
                0, 255, shape=(image_size, image_size, 3), dtype=np.uint8
            )
        self.observation_space = spaces.Dict(observation)
        self._first_seed = seed
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is None and self._first_seed is not None:
            seed, self._first_seed = self._first_seed, None
        super().reset(seed=seed)
        reset_scene(self.arm, self.np_random)
        self._steps = 0
        return self._observation(), self.evaluate()[1]

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        spec = self.task_spec
        target, gripper = action_to_target(action, self.arm.ee_position(), spec)
        self.arm.move_to(target, gripper)
        self._steps += 1
        reward, info = self.evaluate()
        truncated = self._steps >= spec.episode_length
        return self._observation(), reward, False, truncated, info

    def evaluate(self) -> tuple[float, dict[str, Any]]:
        """Reward and info (with ``success``) of the current state, without stepping."""
        reward, success = reward_and_success(self.task_spec, **self.positions())
        return reward, {"success": success, "step": self._steps}

    def positions(self) -> dict[str, Any]:
        """The current positions the task is scored on (m, base frame): ``ee_pos``,
        ``gripper`` (opening, 0-1), ``object_pos`` and ``target_pos`` (None where absent)."""
        return {
            "ee_pos": self.arm.ee_position(),
            "gripper": self.arm.gripper_opening(),
            "object_pos": self.arm.object_position(),
            "target_pos": self.arm.target_position(),
        }

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.arm.render(self.render_size, self.render_size)

    def close(self) -> None:
        self.arm.close()

    def _observation(self) -> dict[str, np.ndarray]:
        positions = self.positions()
        observation = {
            "state": state_vector(self.task_spec, **positions),
            "proprio": proprio_vector(positions["ee_pos"], positions["gripper"]),
        }
        if self.render_pixels:
            observation["pixels"] = self.arm.render(self.image_size, self.image_size)
        return observation


DISTRACTOR_REGION = ((0.25, -0.25), (0.55, 0.25))  # x, y on the table, in the camera's view
DISTRACTOR_CLEARANCE_M = 0.08  # from the cube and from each other


def distractor_places(spec: TaskSpec, cube: np.ndarray | None,
                      rng: np.random.Generator) -> np.ndarray:
    """Random places on the table for the distractors, clear of the cube and of each other."""
    (x0, y0), (x1, y1) = DISTRACTOR_REGION
    taken = [] if cube is None else [np.asarray(cube[:2])]
    places = []
    for _ in range(spec.distractors):
        for _attempt in range(100):
            xy = rng.uniform((x0, y0), (x1, y1))
            if all(np.linalg.norm(xy - other) >= DISTRACTOR_CLEARANCE_M for other in taken):
                break
        taken.append(xy)
        places.append((xy[0], xy[1], spec.table_height_m + 0.03))
    return np.array(places)


def reset_scene(arm: MujocoArm, rng: np.random.Generator) -> None:
    """The arm to its home pose, the task's cube and target to random places, settled.

    Shared by the gymnasium envs and the robot driver's simulator backend, so both start
    episodes from the same distribution.
    """
    spec = arm.spec
    arm.reset(spec.home_position, spec.home_gripper)
    object_position = None
    if spec.uses_object:
        assert spec.object_region is not None
        object_position = spec.object_region.sample(rng)
        object_position[2] = spec.object_rest_z
        arm.place_object(object_position)
    if spec.uses_target:
        assert spec.target_region is not None
        target = spec.target_region.sample(rng)
        while object_position is not None and not (
            spec.min_object_target_distance_m
            <= np.linalg.norm(target[:2] - object_position[:2])
            <= spec.max_object_target_distance_m
        ):
            target = spec.target_region.sample(rng)
        if spec.uses_object:  # a goal for the cube: on the table, at the cube's height
            target[2] = spec.object_rest_z
        arm.place_target(target)
    if spec.distractors:
        arm.place_distractors(distractor_places(spec, object_position, rng))
    arm.hold(1)  # let the cube settle on the table before the first observation
