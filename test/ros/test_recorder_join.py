"""The replay recorder joins each step by its step number, whatever order DDS delivers in.

DDS does not order messages of different writers: the planner's action for step N can arrive
after the robot's state of step N + 1 (seen 96 times in 1450 steps under load). The recorder
used to drop that step and, by contiguity, the rest of the episode. Here a test node plays
robot, world and planner to a real recorder process, with every action published late and some
observations out of order, plus malformed actions that must be refused without a crash.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tdmpc_ros.core.episodes import load_episodes
from tdmpc_ros.launcher import parse_arguments
from tdmpc_ros.msg import ActionCommand, EpisodeEvent, RobotState, WorldState

from rostest import (
    NodeGroup,
    diagnostics_of,
    graph_publisher,
    listen,
    node_command,
    ros_node,
    spin_until,
)

STEPS = 12


def _observation(node, episode_id: str, step: int) -> tuple[RobotState, WorldState]:
    stamp = node.get_clock().now().to_msg()
    robot = RobotState(episode_id=episode_id, step=step, state=RobotState.STATE_READY,
                       backend="sim", gripper_opening=1.0)
    robot.header.stamp, robot.header.frame_id = stamp, "link_base"
    robot.ee_pose.position.x, robot.ee_pose.position.z = 0.35 + 0.01 * step, 0.2
    robot.ee_pose.orientation.w = 1.0
    world = WorldState(episode_id=episode_id, step=step, has_target=True)
    world.header.stamp = stamp
    world.target_position.x, world.target_position.y, world.target_position.z = 0.4, 0.0, 0.2
    return robot, world


def _action(node, episode_id: str, step: int, values: list[float]) -> ActionCommand:
    command = ActionCommand(episode_id=episode_id, step=step, action=values, weights_version=3)
    command.header.stamp = node.get_clock().now().to_msg()
    return command


def test_late_actions_and_reordered_observations_lose_no_step(ros_env, tmp_path: Path) -> None:
    arguments = parse_arguments(["task:=reach", f"run_dir:={tmp_path}", "backend:=sim"])
    commands = {"replay_recorder": node_command("replay_recorder", arguments,
                                                {"record_images": "false"})}
    store = tmp_path / "episodes"
    episode_id = "join-000001"
    actions = {step: [0.1 * (step % 5), -0.05 * step / STEPS, 0.0, 0.5]
               for step in range(STEPS)}
    with NodeGroup(commands, ros_env, tmp_path) as group, \
            ros_node("join_test", ros_env) as (node, executor):
        publishers = {name: graph_publisher(node, name) for name in
                      ("robot/state", "world/state", "robot/action", "trial/events")}
        transitions: list = []
        listen(node, "replay/transitions", transitions)
        diagnostics = diagnostics_of(node, "replay_recorder")
        spin_until(executor, lambda: all(p.get_subscription_count() > 0
                                         for p in publishers.values()), 60, "the recorder")
        time.sleep(1.0)  # let both directions of discovery settle
        publishers["trial/events"].publish(EpisodeEvent(
            event=EpisodeEvent.START, episode_id=episode_id, task="reach", trial=1,
            length=STEPS))

        def publish_observation(step: int) -> None:
            robot, world = _observation(node, episode_id, step)
            publishers["world/state"].publish(world)  # the world state first: any order works
            publishers["robot/state"].publish(robot)

        # Step order of the observations: 0, 1, then 3 before 2 and 7 before 6; each action
        # goes out only after the observation of the step after it (the late-action race),
        # and a malformed one (3 values) for the same step before it.
        order = [0, 1, 3, 2, 4, 5, 7, 6, *range(8, STEPS + 1)]
        published_actions: set[int] = set()
        for step in order:
            publish_observation(step)
            executor.spin_once(timeout_sec=0.02)
            for earlier in range(step):
                if earlier not in published_actions and all(s in order[:order.index(step) + 1]
                                                            for s in (earlier, earlier + 1)):
                    publishers["robot/action"].publish(
                        _action(node, episode_id, earlier, [0.5, 0.5, 0.5]))
                    publishers["robot/action"].publish(
                        _action(node, episode_id, earlier, actions[earlier]))
                    published_actions.add(earlier)
            executor.spin_once(timeout_sec=0.02)
        assert published_actions == set(range(STEPS))
        publishers["trial/events"].publish(EpisodeEvent(
            event=EpisodeEvent.END, episode_id=episode_id, task="reach", trial=1, length=STEPS,
            reason=EpisodeEvent.REASON_TIME_LIMIT))
        spin_until(executor, lambda: (store / f"{episode_id}.npz").exists(), 30,
                   f"the episode file; recorder log:\n{group.log('replay_recorder')}")
        spin_until(executor, lambda: len(transitions) >= STEPS, 10, "every transition")
        spin_until(executor, lambda: int(diagnostics.get("refused action (size)", 0)) >= STEPS,
                   10, "the refusals in the recorder's diagnostics")
        log = group.log("replay_recorder")
        assert group.processes["replay_recorder"].poll() is None, log  # still running

    [episode] = [e for e in load_episodes(store) if e.episode_id == episode_id]
    assert episode.length == STEPS, log
    np.testing.assert_allclose(episode.actions, np.asarray([actions[s] for s in range(STEPS)]),
                               rtol=0, atol=1e-6)
    # each observation is the one of its step, whatever order it came in
    np.testing.assert_allclose(episode.observations["proprio"][:, 0],
                               0.35 + 0.01 * np.arange(STEPS + 1), atol=1e-6)
    assert sorted(t.step for t in transitions) == list(range(STEPS))
    # every malformed one refused and counted; the first said out loud (repeats are merged)
    assert "refused action (size)" in log, log
    assert int(diagnostics["refused action (size)"]) == STEPS, diagnostics
    assert "never came" not in log and "lost" not in log, log


def _recorder_session(tmp_path: Path, ros_env: dict[str, str]):
    arguments = parse_arguments(["task:=reach", f"run_dir:={tmp_path}", "backend:=sim"])
    commands = {"replay_recorder": node_command("replay_recorder", arguments,
                                                {"record_images": "false"})}
    return NodeGroup(commands, ros_env, tmp_path)


def _connect(node, executor) -> dict:
    publishers = {name: graph_publisher(node, name) for name in
                  ("robot/state", "world/state", "robot/action", "trial/events")}
    spin_until(executor, lambda: all(p.get_subscription_count() > 0
                                     for p in publishers.values()), 60, "the recorder")
    time.sleep(1.0)  # let both directions of discovery settle
    return publishers


def test_any_interleaving_of_an_episodes_messages_records_every_step(ros_env, tmp_path):
    """All messages of an episode (observations, actions, in every stream) in a random order,
    across and within streams; three orders, one episode each."""
    store = tmp_path / "episodes"
    with _recorder_session(tmp_path, ros_env) as group, \
            ros_node("interleave_test", ros_env) as (node, executor):
        publishers = _connect(node, executor)
        transitions: list = []
        listen(node, "replay/transitions", transitions)
        for seed in range(3):
            episode_id = f"shuffle-{seed}"
            publishers["trial/events"].publish(EpisodeEvent(
                event=EpisodeEvent.START, episode_id=episode_id, task="reach", trial=seed + 1,
                length=STEPS))
            messages = []
            for step in range(STEPS + 1):
                robot, world = _observation(node, episode_id, step)
                messages += [("robot/state", robot), ("world/state", world)]
                if step < STEPS:
                    messages.append(("robot/action",
                                     _action(node, episode_id, step, [0.01 * step, 0, 0, 1])))
            for index in np.random.default_rng(seed).permutation(len(messages)):
                publishers[messages[index][0]].publish(messages[index][1])
                executor.spin_once(timeout_sec=0.005)
            publishers["trial/events"].publish(EpisodeEvent(
                event=EpisodeEvent.END, episode_id=episode_id, task="reach", trial=seed + 1,
                length=STEPS, reason=EpisodeEvent.REASON_TIME_LIMIT))
            spin_until(executor, lambda e=episode_id: (store / f"{e}.npz").exists(), 30,
                       f"{episode_id}; recorder log:\n{group.log('replay_recorder')}")
        spin_until(executor, lambda: len(transitions) >= 3 * STEPS, 10, "every transition")
        log = group.log("replay_recorder")
    episodes = {e.episode_id: e for e in load_episodes(store)}
    for seed in range(3):
        episode = episodes[f"shuffle-{seed}"]
        assert episode.length == STEPS, log
        np.testing.assert_allclose(episode.actions[:, 0], 0.01 * np.arange(STEPS), atol=1e-6)
        np.testing.assert_allclose(episode.observations["proprio"][:, 0],
                                   0.35 + 0.01 * np.arange(STEPS + 1), atol=1e-6)
    keys = [(t.episode_id, t.step) for t in transitions]
    assert len(keys) == len(set(keys)) == 3 * STEPS
    assert "lost" not in log, log


def test_a_step_that_never_comes_splits_the_episode_and_keeps_the_rest(ros_env, tmp_path):
    """The action of step 4 is never sent: steps 0..3 are kept as the episode, the transition
    of step 4 is lost (loudly), and steps 5.. are kept as <id>+005, without waiting for the
    episode's end."""
    store = tmp_path / "episodes"
    episode_id = "gap-000001"
    with _recorder_session(tmp_path, ros_env) as group, \
            ros_node("gap_test", ros_env) as (node, executor):
        publishers = _connect(node, executor)
        transitions: list = []
        listen(node, "replay/transitions", transitions)
        diagnostics = diagnostics_of(node, "replay_recorder")
        publishers["trial/events"].publish(EpisodeEvent(
            event=EpisodeEvent.START, episode_id=episode_id, task="reach", trial=1,
            length=STEPS))
        for step in range(STEPS + 1):
            robot, world = _observation(node, episode_id, step)
            publishers["world/state"].publish(world)
            publishers["robot/state"].publish(robot)
            if step < STEPS and step != 4:
                publishers["robot/action"].publish(_action(node, episode_id, step,
                                                           [0.01 * step, 0, 0, 1]))
            executor.spin_once(timeout_sec=0.01)
        # no END yet: the split comes from the bounded wait alone
        spin_until(executor, lambda: len(transitions) >= STEPS - 1, 30,
                   f"the steps after the gap; recorder log:\n{group.log('replay_recorder')}")
        assert (store / f"{episode_id}.npz").exists()  # the part before the gap, closed
        publishers["trial/events"].publish(EpisodeEvent(
            event=EpisodeEvent.END, episode_id=episode_id, task="reach", trial=1, length=STEPS,
            reason=EpisodeEvent.REASON_TIME_LIMIT))
        spin_until(executor, lambda: (store / f"{episode_id}+005.npz").exists(), 30,
                   "the part after the gap")
        spin_until(executor, lambda: diagnostics.get("steps_lost") == "1", 10,
                   "the lost step in the diagnostics")
        log = group.log("replay_recorder")
        assert group.processes["replay_recorder"].poll() is None, log
    parts = sorted(load_episodes(store), key=lambda e: e.extras["first_step"])
    assert [(e.episode_id, e.extras["first_step"], e.length) for e in parts] == [
        (episode_id, 0, 4), (episode_id, 5, STEPS - 5)], log
    np.testing.assert_allclose(parts[1].actions[:, 0], 0.01 * np.arange(5, STEPS), atol=1e-6)
    assert sorted(t.step for t in transitions) == [s for s in range(STEPS) if s != 4]
    assert "step 4 never came complete (its action is missing" in log, log


def test_every_interleaving_of_an_episode_records_every_step_once(tmp_path: Path) -> None:
    """The recorder's join, called directly (no DDS): 300 random orders of all eleven messages
    of a three-step episode (four robot states, four world states, three actions), each action
    before or after any observation, each order its own episode. Every one is recorded whole,
    each step with its own action and observation, and nothing is recorded twice."""
    import rclpy

    from tdmpc_ros.nodes.replay_recorder import ReplayRecorder

    steps, orders = 3, 300
    context_args = ["--ros-args", "-p", "task:=reach", "-p", "backend:=sim", "-p",
                    f"store:={tmp_path / 'episodes'}", "-p", "record_images:=false", "-p",
                    "max_image_skew_s:=0.0", "-p", "image_size:=84"]
    rclpy.init(args=context_args)
    try:
        recorder = ReplayRecorder()
        generator = np.random.default_rng(0)
        for order in range(orders):
            episode_id = f"order-{order:03d}"
            messages = []
            for step in range(steps + 1):
                robot = RobotState(episode_id=episode_id, step=step,
                                   state=RobotState.STATE_READY, backend="sim",
                                   gripper_opening=1.0)
                robot.header.stamp.sec, robot.header.stamp.nanosec = 1000 + order, step
                robot.ee_pose.position.x, robot.ee_pose.position.z = 0.3 + 0.01 * step, 0.2
                robot.ee_pose.orientation.w = 1.0
                world = WorldState(episode_id=episode_id, step=step, has_target=True)
                world.header.stamp = robot.header.stamp
                world.target_position.x = 0.4
                messages += [robot, world]
                if step < steps:
                    messages.append(ActionCommand(episode_id=episode_id, step=step,
                                                  action=[0.1 * step, 0.0, 0.0, 1.0]))
            for index in generator.permutation(len(messages)):
                message = messages[index]
                if isinstance(message, ActionCommand):
                    recorder.on_action(message)
                else:
                    recorder.on_observation_part(message)
            recorder.on_event(EpisodeEvent(event=EpisodeEvent.END, episode_id=episode_id,
                                           task="reach", length=steps))
        assert recorder.recorded == orders * steps and recorder.steps_lost == 0
        assert not recorder.running and not any(recorder.pending.values())
        recorder.destroy_node()
    finally:
        rclpy.shutdown()
    episodes = load_episodes(tmp_path / "episodes")
    assert len(episodes) == orders
    for episode in episodes:
        assert episode.length == steps and episode.extras["first_step"] == 0
        np.testing.assert_allclose(episode.actions[:, 0], 0.1 * np.arange(steps), atol=1e-6)
        np.testing.assert_allclose(episode.observations["proprio"][:, 0],
                                   0.3 + 0.01 * np.arange(steps + 1), atol=1e-6)


def test_a_restarted_recorder_sends_again_what_it_wrote_before_it_died(ros_env, tmp_path):
    """Killed between writing a step to disk and sending it: the restarted recorder finds the
    partial episode and sends its transitions again (the learner takes each step once), so the
    learner never lacks a step that is on disk."""
    from tdmpc_ros.core.episodes import Episode, save_episode

    steps, episode_id = 5, "resume-000001"
    rng = np.random.default_rng(0)
    partial = Episode(
        observations={"state": rng.standard_normal((steps + 1, 7)).astype(np.float32),
                      "proprio": rng.standard_normal((steps + 1, 4)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
        rewards=rng.standard_normal(steps).astype(np.float32),
        terminated=np.zeros(steps, bool), truncated=np.zeros(steps, bool),
        success=np.zeros(steps, bool), episode_id=episode_id, task="reach", source="sim",
        weights_version=np.full(steps, 3), extras={"first_step": 0, "last_stamp": 12.5})
    save_episode(partial, tmp_path / "episodes" / "partial")
    with ros_node("resume_test", ros_env) as (node, executor):
        transitions: list = []
        listen(node, "replay/transitions", transitions)  # before the recorder: none is missed
        with _recorder_session(tmp_path, ros_env) as group:
            spin_until(executor, lambda: len(transitions) >= steps, 60, "the resent steps")
            log = group.log("replay_recorder")
    assert [(t.episode_id, t.step) for t in transitions[:steps]] == \
        [(episode_id, step) for step in range(steps)]
    for message, step in zip(transitions, range(steps), strict=False):
        np.testing.assert_allclose(message.action, partial.actions[step], rtol=1e-6)
        np.testing.assert_allclose(message.next_state, partial.observations["state"][step + 1])
        assert abs(message.reward - float(partial.rewards[step])) < 1e-6
    assert f"resumed {episode_id} at step {steps}; its {steps} transitions sent again" in log
