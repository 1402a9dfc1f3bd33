"""The task specs, action_to_target and the reward functions: pure Python, no simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tdmpc_ros.tasks import (
    TASKS,
    Region,
    action_to_target,
    get_task,
    proprio_vector,
    reward_and_success,
    state_vector,
)

REACH, PUSH, LIFT = get_task("reach"), get_task("push"), get_task("lift")
MIDDLE = np.array([0.4, 0.0, 0.15])


def test_registry_and_unknown_task() -> None:
    assert set(TASKS) == {"reach", "push", "lift"}
    assert (REACH.action_dim, PUSH.action_dim, LIFT.action_dim) == (4, 3, 4)
    for spec in TASKS.values():
        assert spec.episode_length == 25 and spec.action_repeat == 2
        assert spec.workspace.contains(np.asarray(spec.home_position))
        # at most 10 mm per servo command when the real driver interpolates at 100 Hz
        diagonal = spec.max_step_m * math.sqrt(3)
        assert diagonal / (spec.agent_period_s * 100) <= 0.010
    with pytest.raises(ValueError, match="unknown task 'pick'.*lift, push, reach"):
        get_task("pick")


def test_zero_and_full_actions_scale_to_max_step() -> None:
    target, gripper = action_to_target([0, 0, 0, 1], MIDDLE, REACH)
    np.testing.assert_allclose(target, MIDDLE)
    assert gripper == 1.0
    target, gripper = action_to_target([1, -1, 0.5, -1], MIDDLE, REACH)
    np.testing.assert_allclose(target, MIDDLE + [0.025, -0.025, 0.0125])
    assert gripper == 0.0
    _, gripper = action_to_target([0, 0, 0, 0], MIDDLE, REACH)
    assert gripper == 0.5


def test_actions_clip_to_unit_box_and_target_to_workspace() -> None:
    target, gripper = action_to_target([7, -7, 3, 9], MIDDLE, REACH)
    np.testing.assert_allclose(target, MIDDLE + [0.025, -0.025, 0.025])
    assert gripper == 1.0
    corner = np.array(REACH.workspace.high) - 0.01
    target, _ = action_to_target([1, 1, 1, 0], corner, REACH)
    np.testing.assert_allclose(target, REACH.workspace.high)
    low = np.array(REACH.workspace.low)
    target, _ = action_to_target([-1, -1, -1, 0], low, REACH)
    np.testing.assert_allclose(target, low)
    # already outside (e.g. after a collision): the target comes back inside
    outside = np.array([0.9, 0.0, -0.1])
    target, _ = action_to_target([0, 0, 0, 0], outside, REACH)
    assert REACH.workspace.contains(target)


def test_push_takes_three_numbers_and_keeps_the_gripper_closed() -> None:
    target, gripper = action_to_target(np.array([0.0, 1.0, 0.0], dtype=np.float32), MIDDLE, PUSH)
    np.testing.assert_allclose(target, MIDDLE + [0, 0.025, 0])
    assert gripper == PUSH.fixed_gripper_command == 0.0


@pytest.mark.parametrize(
    "action",
    [[math.nan, 0, 0, 0], [0, math.inf, 0, 0], [0, 0, -math.inf, 0], [0, 0, 0], [0, 0, 0, 0, 0],
     [[0, 0, 0, 0]], []],
)
def test_bad_actions_are_refused(action: list) -> None:
    with pytest.raises(ValueError):
        action_to_target(action, MIDDLE, REACH)


def test_bad_current_position_is_refused() -> None:
    with pytest.raises(ValueError):
        action_to_target([0, 0, 0, 0], [0.4, math.nan, 0.1], REACH)
    with pytest.raises(ValueError):
        action_to_target([0, 0, 0, 0], [0.4, 0.1], REACH)
    with pytest.raises(ValueError):
        action_to_target([0, 0, 0, 0, 0], MIDDLE, PUSH)


def test_reach_reward_and_success() -> None:
    target = np.array([0.45, 0.1, 0.2])
    reward_at, success_at = reward_and_success(REACH, target + [0.03, 0, 0.02], 1.0, None, target)
    reward_far, success_far = reward_and_success(REACH, target + [0.1, 0.1, 0], 1.0, None, target)
    assert success_at and not success_far
    assert 0 <= reward_far < reward_at <= 1
    assert reward_and_success(REACH, target, 0.0, None, target) == (1.0, True)
    with pytest.raises(ValueError, match="target"):
        reward_and_success(REACH, target, 1.0)


def test_push_reward_and_success() -> None:
    goal = np.array([0.4, -0.1, PUSH.object_rest_z])
    ee = np.array([0.35, -0.1, 0.02])
    reward_at, success_at = reward_and_success(PUSH, ee, 0.0, goal + [0.04, 0, 0], goal)
    reward_near, success_near = reward_and_success(PUSH, ee, 0.0, goal + [0.06, 0, 0], goal)
    reward_far, success_far = reward_and_success(PUSH, ee, 0.0, goal + [0.2, 0.1, 0], goal)
    assert success_at and not success_near and not success_far
    assert 0 <= reward_far < reward_near < reward_at <= 1
    # only the horizontal distance counts: a tipped cube on the goal still succeeds
    assert reward_and_success(PUSH, ee, 0.0, goal + [0, 0, 0.01], goal)[1]
    with pytest.raises(ValueError, match="object"):
        reward_and_success(PUSH, ee, 0.0, None, goal)


def test_lift_reward_and_success() -> None:
    rest = np.array([0.4, 0.0, LIFT.object_rest_z])
    ee_away = rest + [0.1, 0.0, 0.1]
    reward_rest, success_rest = reward_and_success(LIFT, ee_away, 1.0, rest)
    reward_grip, success_grip = reward_and_success(LIFT, rest, 0.47, rest)
    lifted = rest + [0, 0, 0.151]
    reward_up, success_up = reward_and_success(LIFT, lifted, 0.47, lifted)
    short = rest + [0, 0, 0.14]
    assert not success_rest and not success_grip and success_up
    assert not reward_and_success(LIFT, short, 0.47, short)[1]
    assert 0 <= reward_rest < reward_grip < reward_up <= 1
    # lifted is lifted, grasped or not (e.g. balanced on the closed fingers)
    assert reward_and_success(LIFT, ee_away, 1.0, lifted)[1]


def test_lift_from_proprioception_alone_on_the_real_arm() -> None:
    """No cube position: a grasp is a finger gap held open by something, the lift is the TCP's."""
    rest_z = LIFT.object_rest_z
    holding = 0.04 / LIFT.gripper_stroke_m  # fingers stopped by the 4 cm cube
    at_rest = [0.4, 0.0, rest_z]
    up = [0.4, 0.0, rest_z + 0.151]
    reward_open, success_open = reward_and_success(LIFT, up, 1.0)  # open: nothing held
    reward_shut, success_shut = reward_and_success(LIFT, up, 0.0)  # shut on nothing
    reward_grasp, success_grasp = reward_and_success(LIFT, at_rest, holding)
    reward_half, _ = reward_and_success(LIFT, [0.4, 0.0, rest_z + 0.075], holding)
    reward_up, success_up = reward_and_success(LIFT, up, holding)
    assert reward_open == reward_shut == 0.0 and not success_open and not success_shut
    assert not success_grasp and success_up
    assert reward_grasp == pytest.approx(0.5) and reward_half == pytest.approx(0.75)
    assert reward_up == pytest.approx(1.0)
    assert not reward_and_success(LIFT, [0.4, 0.0, rest_z + 0.14], holding)[1]


def test_state_and_proprio_layout() -> None:
    ee, obj, target = [0.4, 0.0, 0.1], [0.41, 0.02, 0.02], [0.3, 0.1, 0.02]
    for spec in TASKS.values():
        state = state_vector(spec, ee, 0.5, obj, target)
        assert state.dtype == np.float32 and state.shape == (spec.state_dim,)
        np.testing.assert_allclose(state[:4], [*ee, 0.5], rtol=1e-6)
    np.testing.assert_allclose(state_vector(PUSH, ee, 0.5, obj, target)[4:], [*obj, *target],
                               rtol=1e-6)
    assert (REACH.state_dim, PUSH.state_dim, LIFT.state_dim) == (7, 10, 7)
    proprio = proprio_vector(ee, 0.25)
    assert proprio.dtype == np.float32 and proprio.tolist() == pytest.approx([*ee, 0.25])


def test_region() -> None:
    region = Region((0.0, -1.0, 0.0), (1.0, 1.0, 0.0))
    points = np.array([region.sample(np.random.default_rng(seed)) for seed in range(20)])
    assert all(region.contains(point) for point in points)
    assert not region.contains([0.5, 0.0, 0.1])
    with pytest.raises(ValueError):
        Region((1.0, 0.0, 0.0), (0.0, 1.0, 1.0))
