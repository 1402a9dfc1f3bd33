"""Every project message crosses between two processes over DDS intact; malformed ones are
refused at the sender with a clear error, and a receiver survives those that get through."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from tdmpc_ros.interfaces import MessageError, publish_checked

import samples
from rostest import peer_process, ros_node, spin_until

MESSAGE_DIR = Path(__file__).resolve().parents[2] / "msg"
PEER = Path(__file__).with_name("echo_peer.py")
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def message_names() -> list[str]:
    return sorted(path.stem for path in MESSAGE_DIR.glob("*.msg"))


def test_samples_cover_every_message() -> None:
    assert set(samples.ALL) == set(message_names())


@pytest.mark.parametrize("name", message_names())
def test_message_imports_with_the_fields_of_its_msg_file(name: str) -> None:
    message_type = getattr(importlib.import_module("tdmpc_ros.msg"), name)
    declared = []
    for line in (MESSAGE_DIR / f"{name}.msg").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not re.match(r"^\S+\s+[A-Z][A-Z0-9_]*\s*=", line):  # not a constant
            declared.append(re.split(r"\s+", line)[1])
    assert list(message_type.get_fields_and_field_types()) == declared


def _differences(received: object, sent: object) -> list[str]:
    return [field for field in sent.get_fields_and_field_types()
            if getattr(received, field) != getattr(sent, field)]


def _connect(node, executor, names: list[str]):
    """Publishers to the peer and subscriptions to its echoes, once DDS has matched them."""
    publishers, echoes = {}, {name: [] for name in names}
    for name in names:
        message_type = type(samples.ALL[name]())
        publishers[name] = node.create_publisher(message_type, f"/tdmpc_test/{name}", RELIABLE)
        node.create_subscription(message_type, f"/tdmpc_test/{name}/echo",
                                 echoes[name].append, LATCHED)
    refused: list[str] = []
    node.create_subscription(String, "/tdmpc_test/refused",
                             lambda message: refused.append(message.data), LATCHED)
    spin_until(executor, lambda: all(
        publisher.get_subscription_count() > 0 for publisher in publishers.values()),
        30, "the peer's subscriptions")
    return publishers, echoes, refused


def test_every_message_crosses_two_processes_intact(ros_env, tmp_path) -> None:
    names = message_names()
    originals = {name: samples.ALL[name]() for name in names}
    assert len(originals["Transition"].image.data) == 1280 * 720 * 3
    with peer_process([str(PEER), *names], ros_env, tmp_path / "peer.log") as peer, \
            ros_node("dds_test_sender", ros_env) as (node, executor):
        publishers, echoes, refused = _connect(node, executor, names)
        for name in names:
            publish_checked(publishers[name], originals[name])
        spin_until(executor, lambda: all(echoes.values()), 60, "every message to come back")
        assert peer.poll() is None
    assert refused == []
    for name in names:
        assert len(echoes[name]) == 1, name
        assert _differences(echoes[name][0], originals[name]) == [], name
        assert echoes[name][0] == originals[name]


def _bad_messages():
    """Messages that pass the structural check (so DDS carries them) but break the rules."""
    nan_action = samples.transition(image_shape=(84, 84))
    nan_action.action = [0.1, float("nan"), 0.0, 0.0]
    short_next_state = samples.transition(image_shape=(84, 84))
    short_next_state.next_state = [0.0, 0.0]
    torn_image = samples.transition(image_shape=(84, 84))
    torn_image.image.data = bytes(len(torn_image.image.data) - 7)
    wrong_checksum = samples.model_weights(payload_bytes=1000)
    wrong_checksum.sha256 = "0" * 64
    open_gripper = samples.robot_state()
    open_gripper.gripper_opening = 2.0
    short_plan = samples.latent_plan()
    short_plan.q_std = [0.1]
    far_action = samples.action_command()
    far_action.action = [3.0, 0.0, 0.0, 0.0]
    return [("Transition", nan_action, "Transition.action"),
            ("Transition", short_next_state, "Transition.next_state"),
            ("Transition", torn_image, "Transition.image.data"),
            ("ModelWeights", wrong_checksum, "ModelWeights.sha256"),
            ("RobotState", open_gripper, "RobotState.gripper_opening"),
            ("LatentPlan", short_plan, "LatentPlan.q_std"),
            ("ActionCommand", far_action, "ActionCommand.action")]


def _wrong_type_or_size():
    """Messages that would crash or fail rclpy's serialisation: refused before publishing."""
    text_reward = samples.transition(image_shape=(84, 84))
    text_reward.reward = "high"
    integer_reward = samples.transition(image_shape=(84, 84))
    integer_reward.reward = 1
    negative_step = samples.action_command()
    negative_step.step = -1
    too_many_actions = samples.action_command()
    too_many_actions.action = [0.0] * 17
    numeric_id = samples.episode_event()
    numeric_id.episode_id = 42
    nested_wrong = samples.robot_state()
    nested_wrong.ee_pose = "home"
    return [(text_reward, "Transition.reward: expected a Python float"),
            (integer_reward, "Transition.reward: expected a Python float"),
            (negative_step, "ActionCommand.step: -1 is outside the range of uint32"),
            (too_many_actions, "ActionCommand.action: 17 values, at most 16"),
            (numeric_id, "EpisodeEvent.episode_id: expected a string"),
            (nested_wrong, "RobotState.ee_pose: expected a geometry_msgs/msg/Pose message")]


def test_malformed_messages_are_refused_and_the_receiver_keeps_running(ros_env, tmp_path):
    names = message_names()
    with peer_process([str(PEER), *names], ros_env, tmp_path / "peer.log") as peer, \
            ros_node("dds_test_malformed", ros_env) as (node, executor):
        publishers, echoes, refused = _connect(node, executor, names)

        # At the sender: a wrong type or size never leaves the process, and says which field.
        for message, expected in _wrong_type_or_size():
            with pytest.raises(MessageError, match=re.escape(expected)):
                publish_checked(publishers[type(message).__name__], message)

        # Past the sender (a peer running other code): the receiver refuses and carries on.
        bad = _bad_messages()
        for name, message, _ in bad:
            publishers[name].publish(message)
        good = {name: samples.ALL[name]() for name in names}
        good["Transition"] = samples.transition(seed=5, image_shape=(84, 84))
        for name in names:
            publish_checked(publishers[name], good[name])
        spin_until(executor, lambda: len(refused) == len(bad) and all(echoes.values()), 60,
                   "the refusals and the good messages after them")
        assert peer.poll() is None, "the receiver died"

    # Topics are not ordered among themselves: match each refusal to the field it names.
    assert sorted(field for _, _, field in bad) == sorted(
        re.match(r"\w+: ([\w.]+)", report).group(1) for report in refused), refused
    for name in names:  # exactly the good message came through, intact
        assert [echo == good[name] for echo in echoes[name]] == [True], name
    assert "refused a" in (tmp_path / "peer.log").read_text()
