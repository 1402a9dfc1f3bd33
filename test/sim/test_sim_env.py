"""The MuJoCo arm and the gymnasium tasks: success by hand-placed objects, physics, determinism."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import tdmpc_ros.sim
from tdmpc_ros.robot import ArmBackend, SceneBackend
from tdmpc_ros.sim.arm import MujocoArm
from tdmpc_ros.sim.env import XArmTaskEnv
from tdmpc_ros.sim.experts import SKILLS, Skill, make_expert
from tdmpc_ros.tasks import get_task, is_grasping

PERFECT = Skill("perfect", noise_std=0.0, random_action_prob=0.0, aim_error_m=0.0, gain=1.0)


def red_pixels_mask(image: np.ndarray) -> np.ndarray:
    r, g, b = (image[..., channel].astype(int) for channel in range(3))
    return (r > 120) & (g < 80) & (b < 80)


def red_pixels(image: np.ndarray) -> int:
    return int(red_pixels_mask(image).sum())


def green_pixels(image: np.ndarray) -> int:
    r, g, b = (image[..., channel].astype(int) for channel in range(3))
    return int(((g > 120) & (r < 100) & (b < 110)).sum())


def test_arm_backend_implements_the_protocols() -> None:
    arm = MujocoArm(get_task("push"))
    assert isinstance(arm, ArmBackend) and isinstance(arm, SceneBackend)
    assert len(arm.joint_names) == 6 == arm.joint_positions().shape[0]
    np.testing.assert_allclose(arm.ee_position(), get_task("push").home_position, atol=1e-6)
    assert arm.gripper_opening() == pytest.approx(1.0)
    before = arm.joint_positions()
    arm.move_to(arm.ee_position() + [0.02, 0.02, 0.02], 0.0)
    assert np.abs(arm.joint_positions() - before).max() > 0.01  # the joints really move
    assert arm.gripper_opening() < 0.2  # the fingers close within one agent step
    with pytest.raises(ValueError):
        arm.move_to([np.nan, 0, 0], 1.0)
    arm.close()


def test_tcp_follows_targets_and_stays_in_the_workspace() -> None:
    spec = get_task("reach")
    arm = MujocoArm(spec)
    goal = np.array([0.3, 0.1, 0.12])
    arm.move_to(goal, 1.0)
    arm.hold(2)
    np.testing.assert_allclose(arm.ee_position(), goal, atol=1e-3)
    arm.hold(10)  # no drift while holding still
    np.testing.assert_allclose(arm.ee_position(), goal, atol=1e-3)
    env = XArmTaskEnv("reach", render_pixels=False, seed=0)
    env.reset()
    for _ in range(25):  # drive into the far low corner
        env.step(np.array([1.0, -1.0, -1.0, 1.0], dtype=np.float32))
    ee = env.positions()["ee_pos"]
    assert spec.workspace.contains(ee, tolerance=0.005)
    np.testing.assert_allclose(ee, [0.6, -0.25, 0.02], atol=0.01)
    env.close()
    arm.close()


def test_reach_success_by_placing_the_target() -> None:
    env = XArmTaskEnv("reach", render_pixels=False, seed=0)
    env.reset()
    ee = env.positions()["ee_pos"]
    env.arm.place_target(ee + [0.03, 0.0, -0.02])
    assert env.evaluate()[1]["success"]
    _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert info["success"] and not terminated and not truncated
    env.arm.place_target(ee + [0.05, 0.03, 0.0])
    assert not env.evaluate()[1]["success"]
    env.close()


def test_push_success_by_placing_the_cube() -> None:
    env = XArmTaskEnv("push", render_pixels=False, seed=1)
    env.reset()
    spec = env.task_spec
    goal = env.positions()["target_pos"]
    env.arm.place_object([goal[0] + 0.03, goal[1] - 0.02, spec.object_rest_z])
    _, reward_at, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert info["success"]
    env.arm.place_object([goal[0] + 0.05, goal[1] + 0.03, spec.object_rest_z])
    _, reward_off, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert not info["success"] and reward_off < reward_at
    env.close()


def test_lift_success_by_placing_the_cube() -> None:
    env = XArmTaskEnv("lift", render_pixels=False, seed=2)
    env.reset()
    spec = env.task_spec
    resting = env.positions()["object_pos"]
    assert resting[2] == pytest.approx(spec.object_rest_z, abs=1e-3)
    assert not env.evaluate()[1]["success"]
    env.arm.place_object([resting[0], resting[1], spec.object_rest_z + 0.16])
    assert env.evaluate()[1]["success"]
    env.arm.place_object([resting[0], resting[1], spec.object_rest_z + 0.14])
    assert not env.evaluate()[1]["success"]
    env.step(np.zeros(4, dtype=np.float32))  # nothing holds it: it falls
    assert not env.evaluate()[1]["success"]
    env.close()


def test_cube_rests_still_on_the_table() -> None:
    env = XArmTaskEnv("push", render_pixels=False, seed=3)
    env.reset()
    start = env.positions()["object_pos"]
    for _ in range(25):
        env.step(np.zeros(3, dtype=np.float32))
    np.testing.assert_allclose(env.positions()["object_pos"], start, atol=5e-4)
    env.close()


@pytest.mark.parametrize("task", ["reach", "push", "lift"])
def test_noise_free_expert_solves_the_task(task: str) -> None:
    """The physics allows the task: a real push along the table and a real grasp and lift."""
    env = XArmTaskEnv(task, render_pixels=False)
    for seed in range(3):
        env.reset(seed=seed)
        expert = make_expert(env.task_spec, PERFECT, np.random.default_rng(seed))
        for _ in range(env.task_spec.episode_length):
            _, _, _, truncated, info = env.step(expert.act(**env.positions()))
        assert truncated and info["success"], f"{task} seed {seed}"
        if task == "lift":
            positions = env.positions()
            assert is_grasping(env.task_spec, positions["ee_pos"], positions["gripper"],
                               positions["object_pos"])
    env.close()


def test_random_play_rarely_succeeds() -> None:
    env = XArmTaskEnv("lift", render_pixels=False)
    for seed in range(3):
        env.reset(seed=seed)
        expert = make_expert(env.task_spec, SKILLS[-1], np.random.default_rng(seed))
        for _ in range(25):
            _, _, _, _, info = env.step(expert.act(**env.positions()))
        assert not info["success"]
    env.close()


def test_same_seed_same_observations_including_pixels() -> None:
    envs = [XArmTaskEnv("push", render_pixels=True, seed=7) for _ in range(2)]
    observations = [env.reset()[0] for env in envs]
    rng = np.random.default_rng(0)
    for _ in range(8):
        action = rng.uniform(-1, 1, size=3).astype(np.float32)
        steps = [env.step(action) for env in envs]
        for key in ("state", "proprio", "pixels"):
            np.testing.assert_array_equal(steps[0][0][key], steps[1][0][key])
        assert steps[0][1] == steps[1][1]
    for key in ("state", "proprio", "pixels"):
        np.testing.assert_array_equal(observations[0][key], observations[1][key])
    # a used env reset with the same seed starts exactly like a fresh one
    again = envs[0].reset(seed=7)[0]
    for key in ("state", "pixels"):
        np.testing.assert_array_equal(again[key], observations[1][key])
    other = envs[1].reset(seed=8)[0]
    assert not np.array_equal(other["state"], observations[1]["state"])
    for env in envs:
        env.close()


@pytest.mark.parametrize("task", ["reach", "push", "lift"])
def test_gymnasium_ids_observations_and_time_limit(task: str) -> None:
    env = gymnasium.make(tdmpc_ros.sim.ENV_IDS[task])
    tdmpc_ros.sim.register_envs()  # registering again is harmless
    observation, info = env.reset(seed=0)
    assert observation in env.observation_space and info["success"] is False
    spec = env.unwrapped.task_spec
    pixels = observation["pixels"]
    assert pixels.shape == (84, 84, 3) and pixels.dtype == np.uint8
    assert observation["state"].shape == (spec.state_dim,)
    np.testing.assert_array_equal(observation["state"][:4], observation["proprio"])
    # the camera sees the cube (red) and the target (green)
    if spec.uses_object:
        assert red_pixels(pixels) >= 6
    if spec.uses_target:
        assert green_pixels(pixels) >= 6
    for step in range(1, 26):
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert observation in env.observation_space and 0.0 <= reward <= 1.0
        assert not terminated and truncated == (step == 25)
    with pytest.raises(ValueError):
        env.unwrapped.step(np.full(spec.action_dim, np.nan, dtype=np.float32))
    env.close()


def test_images_show_where_the_cube_is() -> None:
    env = XArmTaskEnv("lift", render_pixels=True, seed=0)
    observation, _ = env.reset()
    cube = env.positions()["object_pos"]
    env.arm.place_object([cube[0], cube[1] + 0.1, cube[2]])
    moved = env.arm.render()
    assert red_pixels(moved) >= 6
    before = np.argwhere(red_pixels_mask(observation["pixels"])).mean(axis=0)
    after = np.argwhere(red_pixels_mask(moved)).mean(axis=0)
    assert after[1] - before[1] > 5  # +y is to the right in the image, by several pixels
    env.close()


def test_a_mirror_renders_exactly_what_the_original_shows() -> None:
    """The camera node renders from a mirror of the driver's scene (physics positions only)."""
    from tdmpc_ros.sim.arm import MujocoArm
    from tdmpc_ros.sim.env import reset_scene
    from tdmpc_ros.tasks import get_task

    spec = get_task("push")
    original, mirror = MujocoArm(spec), MujocoArm(spec)
    reset_scene(original, np.random.default_rng(3))
    original.move_to(original.ee_position() + np.array([0.02, -0.02, -0.02]), 0.0)
    assert not np.array_equal(original.render(), mirror.render())
    mirror.set_physics_positions(*original.physics_positions())
    np.testing.assert_array_equal(original.render(), mirror.render())
    with pytest.raises(ValueError, match="do not fit"):
        mirror.set_physics_positions(np.zeros(3), np.zeros((1, 3)))
    original.close()
    mirror.close()


def test_camera_frames_take_the_models_image_size() -> None:
    """64x64 frames (model.image_size 64) come straight from the renderer, and a dataset made
    at that size is what a 64x64 model's spec asks for."""
    from tdmpc_ros.core.config import Config
    from tdmpc_ros.core.world_model import ModelSpec, WorldModel

    env = XArmTaskEnv("reach", render_pixels=True, seed=0, image_size=64)
    try:
        observation, _ = env.reset(seed=0)
    finally:
        env.close()
    assert observation["pixels"].shape == (64, 64, 3) == env.observation_space["pixels"].shape
    assert observation["pixels"].std() > 5  # a picture, not a blank
    spec = ModelSpec.from_observation(observation, 4)
    WorldModel(Config().replace(**{"model.obs_type": "pixels+proprio", "model.image_size": 64}),
               spec)
    with pytest.raises(ValueError, match="image_size"):
        XArmTaskEnv("reach", image_size=8)
