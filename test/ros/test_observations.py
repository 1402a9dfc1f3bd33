"""Matching robot states with their camera frames: exact stamps in simulation, the nearest frame
within the allowed skew from a real camera, and no observation from a stale frame."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time

from tdmpc_ros.interfaces import image_to_msg
from tdmpc_ros.msg import RobotState, WorldState
from tdmpc_ros.nodes.observations import ObservationAssembler
from tdmpc_ros.tasks import get_task


def _stamp(seconds: float) -> Time:
    return Time(sec=int(seconds), nanosec=int(round((seconds % 1) * 1e9)))


def _state(seconds: float, step: int) -> tuple[RobotState, WorldState]:
    robot = RobotState(episode_id="ep", step=step)
    robot.header.stamp = _stamp(seconds)
    robot.ee_pose.orientation.w = 1.0
    world = WorldState(episode_id="ep", step=step, has_target=True)
    world.header.stamp = robot.header.stamp
    return robot, world


def _frame(seconds: float, value: int):
    return image_to_msg(np.full((8, 8, 3), value, np.uint8), "rgb8", "camera", _stamp(seconds))


def test_a_real_cameras_nearest_frame_within_the_skew() -> None:
    assembler = ObservationAssembler(need_world=True, need_image=True, max_image_skew_s=0.05)
    robot, world = _state(100.0, 3)
    assert assembler.add(_frame(99.97, 7)) is None  # before its state: kept
    assert assembler.add(world) is None
    observation = assembler.add(robot)
    assert observation is not None and observation.key == ("ep", 3)
    assert int(observation.model_inputs(get_task("reach"))["pixels"][0, 0, 0]) == 7


def test_a_stale_frame_gives_no_observation() -> None:
    assembler = ObservationAssembler(need_world=True, need_image=True, max_image_skew_s=0.05)
    assembler.add(_frame(99.90, 1))  # 100 ms before the state: the camera stalled
    robot, world = _state(100.0, 3)
    assembler.add(world)
    assert assembler.add(robot) is None
    observation = assembler.add(_frame(100.01, 2))  # a fresh frame completes it
    assert observation is not None
    assert int(observation.model_inputs(get_task("reach"))["pixels"][0, 0, 0]) == 2


def test_simulation_matches_exact_stamps_only() -> None:
    assembler = ObservationAssembler(need_world=True, need_image=True)
    robot, world = _state(100.0, 3)
    assembler.add(world)
    assembler.add(robot)
    assert assembler.add(_frame(100.001, 1)) is None
    assert assembler.add(_frame(100.0, 2)) is not None


def test_no_state_vector_where_the_object_is_unknown() -> None:
    robot, world = _state(100.0, 0)
    world.has_target = False
    observation = ObservationAssembler(need_world=True, need_image=False)
    observation.add(world)
    inputs = observation.add(robot).model_inputs(get_task("lift"))
    assert "state" not in inputs and inputs["proprio"].shape == (4,)
