"""Malformed messages on every subscribed topic of every node: each node survives each case,
logs the first of each kind of problem, and leaves the arm, the buffers and the files untouched.

The whole graph runs as separate processes (sim backend, reach). The trial supervisor is paused
before the first trial, so that nothing moves; a test node then sends each case of ``CASES`` and
waits until every node it is malformed for has counted a refusal (their diagnostics). At the end
every node is still running, nothing was executed, recorded or learnt, and after a resume one
trial runs through, so the graph still works.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image

from tdmpc_ros import graph
from tdmpc_ros.launcher import parse_arguments
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
from tdmpc_ros.tasks import get_task

from rostest import NodeGroup, diagnostics_of, graph_publisher, node_command, ros_node, spin_until

REPO = Path(__file__).resolve().parents[2]
SPEC = get_task("reach")
EPISODE = "fuzz-ep"  # no trial of this name ever runs


def _now() -> Time:
    import time

    nanoseconds = time.time_ns()
    return Time(sec=nanoseconds // 10**9, nanosec=nanoseconds % 10**9)


def _robot(**fields: Any) -> RobotState:
    message = RobotState(episode_id=EPISODE, step=1, state=RobotState.STATE_READY,
                         gripper_opening=1.0, backend="sim")
    message.header.stamp = _now()
    message.ee_pose.position.x, message.ee_pose.position.z = 0.35, 0.2
    message.ee_pose.orientation.w = 1.0
    for name, value in fields.items():
        if name == "x":
            message.ee_pose.position.x = value
        elif name == "qw":
            message.ee_pose.orientation.w = value
        elif name == "joints":
            message.joints.name, message.joints.position = value
        else:
            setattr(message, name, value)
    return message


def _world(**fields: Any) -> WorldState:
    message = WorldState(episode_id=EPISODE, step=1, has_target=True)
    message.header.stamp = _now()
    message.target_position.x = 0.4
    for name, value in fields.items():
        if name == "object_x":
            message.has_object, message.object_position.x = True, value
        else:
            setattr(message, name, value)
    return message


def _action(values: list[float], **fields: Any) -> ActionCommand:
    message = ActionCommand(episode_id=EPISODE, step=0, action=values, **fields)
    message.header.stamp = _now()
    return message


def _image(height: int, width: int, encoding: str = "rgb8", channels: int = 3,
           short_by: int = 0) -> Image:
    message = Image(height=height, width=width, encoding=encoding, step=width * channels)
    message.header.stamp = _now()
    message.data = bytes(height * width * channels - short_by)
    return message


def _event(**fields: Any) -> EpisodeEvent:
    message = EpisodeEvent(event=EpisodeEvent.END, episode_id=EPISODE, task="reach", trial=99,
                           length=3)
    message.header.stamp = _now()
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _transition(**fields: Any) -> Transition:
    state, proprio = [0.1] * SPEC.state_dim, [0.2] * 4
    message = Transition(episode_id=EPISODE, step=0, task="reach",
                         source=Transition.SOURCE_SIM, state=state, next_state=state,
                         proprio=proprio, next_proprio=proprio, action=[0.0] * SPEC.action_dim,
                         reward=0.5)
    message.header.stamp = _now()
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _weights(payload: bytes, **fields: Any) -> ModelWeights:
    message = ModelWeights(version=7, run_id="fuzz", format=ModelWeights.FORMAT_SAFETENSORS,
                           payload=payload, sha256=hashlib.sha256(payload).hexdigest())
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _zeroed_weights() -> bytes:
    import torch

    from tdmpc_ros.core import checkpoint

    model = checkpoint.load(REPO / "models" / "reach-state.safetensors").model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return checkpoint.to_bytes(model, actor_only=True)


def _plan(**fields: Any) -> LatentPlan:
    horizon, action_dim, latent = 3, SPEC.action_dim, 4
    message = LatentPlan(episode_id=EPISODE, horizon=horizon, action_dim=action_dim,
                         latent_dim=latent, actions=[0.0] * horizon * action_dim,
                         action_std=[0.1] * horizon * action_dim,
                         predicted_reward=[0.0] * horizon, q_mean=[0.0] * (horizon + 1),
                         q_std=[0.1] * (horizon + 1),
                         latent_trajectory=[0.0] * (horizon + 1) * latent)
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _diagnostic(name: str, key: str, value: str) -> DiagnosticArray:
    status = DiagnosticStatus(name=name, message="fuzz", hardware_id="fuzz")
    status.values = [KeyValue(key=key, value=value)]
    return DiagnosticArray(status=[status])


STATE_READERS = ("planner", "replay_recorder", "trial_supervisor")
WORLD_READERS = ("camera", *STATE_READERS)
ACTION_READERS = ("robot_driver", "replay_recorder", "trial_supervisor")


@dataclass(frozen=True)
class Case:
    name: str
    topic: str
    message: Callable[[], Any]
    refused_by: tuple[str, ...]  # the nodes it is malformed for; every other reader ignores it


CASES: tuple[Case, ...] = (
    Case("robot state with a NaN position", "robot/state", lambda: _robot(x=math.nan),
         STATE_READERS),
    Case("robot state with a quaternion of norm 2", "robot/state", lambda: _robot(qw=2.0),
         STATE_READERS),
    Case("robot state with gripper opening 5", "robot/state",
         lambda: _robot(gripper_opening=5.0), STATE_READERS),
    Case("robot state with 2 joint names and 3 positions", "robot/state",
         lambda: _robot(joints=(["a", "b"], [0.0, 0.1, 0.2])), STATE_READERS),
    Case("robot state of unknown state 9", "robot/state", lambda: _robot(state=9),
         STATE_READERS),
    Case("world state with a NaN object position", "world/state",
         lambda: _world(object_x=math.nan), WORLD_READERS),
    Case("world state whose physics state fits no scene (5 joints)", "world/state",
         lambda: _world(sim_qpos=[0.0] * 5), ("camera",)),
    Case("world state with 4 mocap values (not xyz)", "world/state",
         lambda: _world(sim_mocap_pos=[0.0] * 4), WORLD_READERS),
    Case("action of 3 values", "robot/action", lambda: _action([0.1, 0.1, 0.1]),
         ("robot_driver", "replay_recorder")),
    Case("action of 16 values", "robot/action", lambda: _action([0.1] * 16),
         ("robot_driver", "replay_recorder")),
    Case("action with a NaN", "robot/action", lambda: _action([math.nan, 0.0, 0.0, 0.0]),
         ACTION_READERS),
    Case("action outside [-1, 1]", "robot/action", lambda: _action([2.0, 0.0, 0.0, 0.0]),
         ACTION_READERS),
    Case("empty action", "robot/action", lambda: _action([]), ACTION_READERS),
    Case("action with weights version -5", "robot/action",
         lambda: _action([0.0] * 4, weights_version=-5), ACTION_READERS),
    Case("120x160 rgb8 frame", "camera/image_raw", lambda: _image(120, 160),
         ("replay_recorder",)),
    Case("84x84 mono8 frame", "camera/image_raw", lambda: _image(84, 84, "mono8", 1),
         ("replay_recorder",)),
    Case("frame with too few bytes", "camera/image_raw", lambda: _image(84, 84, short_by=7),
         ("replay_recorder",)),
    Case("frame of an unknown encoding", "camera/image_raw",
         lambda: _image(84, 84, "yuv9000"), ("replay_recorder",)),
    Case("10 MB frame of the wrong size", "camera/image_raw", lambda: _image(1800, 1900),
         ("replay_recorder",)),
    Case("episode event of unknown kind 9", "trial/events", lambda: _event(event=9),
         ("robot_driver", "replay_recorder")),
    Case("episode event without an episode id", "trial/events",
         lambda: _event(episode_id=""), ("robot_driver", "replay_recorder")),
    Case("episode event with a NaN return", "trial/events",
         lambda: _event(episode_return=math.nan), ("robot_driver", "replay_recorder")),
    Case("episode event of unknown reason 200", "trial/events", lambda: _event(reason=200),
         ("robot_driver", "replay_recorder")),
    Case("transition with a 3-value state", "replay/transitions",
         lambda: _transition(state=[0.0] * 3, next_state=[0.0] * 3), ("learner",)),
    Case("transition with a 3-value action", "replay/transitions",
         lambda: _transition(action=[0.0] * 3), ("learner",)),
    Case("transition of another task", "replay/transitions",
         lambda: _transition(task="lift"), ("learner",)),
    Case("transition with a NaN reward", "replay/transitions",
         lambda: _transition(reward=math.nan), ("learner", "trial_supervisor")),
    Case("transition whose next state is shorter", "replay/transitions",
         lambda: _transition(next_state=[0.0] * 2), ("learner", "trial_supervisor")),
    Case("transition with an image but no next image", "replay/transitions",
         lambda: _transition(image=_image(84, 84)), ("learner", "trial_supervisor")),
    Case("weights with a wrong sha256", "learner/weights",
         lambda: _weights(b"abc", sha256="0" * 64), ("planner",)),
    Case("weights that are no safetensors file", "learner/weights",
         lambda: _weights(b"not a checkpoint"), ("planner",)),
    Case("weights of an unknown format", "learner/weights",
         lambda: _weights(b"abc", format="pickle"), ("planner",)),
    Case("zeroed weights under a new run id", "learner/weights",
         lambda: _weights(_zeroed_weights(), run_id="intruder"), ("planner",)),
    Case("plan whose lengths do not fit its horizon", "planner/plan",
         lambda: _plan(q_std=[0.1]), ("trial_supervisor",)),
    Case("plan with a negative spread", "planner/plan", lambda: _plan(q_std=[-1.0] * 4),
         ("trial_supervisor",)),
    Case("operator command 9", "trial/operator", lambda: OperatorCommand(command=9),
         ("trial_supervisor",)),
    # Anyone may publish on /diagnostics: nonsense there is ignored, not refused.
    Case("diagnostics with a reader count that is no number", "/diagnostics",
         lambda: _diagnostic("/replay_recorder", "readers /robot/state", "lots"), ()),
    Case("diagnostics with a NaN uptime for the recorder", "/diagnostics",
         lambda: _diagnostic("/replay_recorder", "up_s", "nan"), ()),
)


def _refusals(values: dict[str, str]) -> int:
    return sum(int(value) for key, value in values.items()
               if key.startswith("refused") and value.isdigit())


def test_every_node_survives_every_malformed_message(ros_env, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    from tdmpc_ros.sim import datasets

    data = tmp_path / "data"
    assert datasets.main(["--task", "reach", "--episodes", "3", "--out", str(data),
                          "--quiet"]) == 0
    run_dir = tmp_path / "run"
    arguments = parse_arguments(["task:=reach", "trials:=1", f"run_dir:={run_dir}",
                                 f"dataset:={data}", "device:=cpu"])
    overrides = {"trial_supervisor": {"max_steps": 3}}
    commands = {node.name: node_command(node.name, arguments, overrides.get(node.name))
                for node in graph.NODES}
    topics = sorted({case.topic for case in CASES})
    with NodeGroup(commands, ros_env, tmp_path) as group, \
            ros_node("fuzzer", ros_env) as (node, executor):
        diagnostics = {name: diagnostics_of(node, name) for name in commands}
        out = {topic: graph_publisher(node, topic) for topic in [*topics, "trial/operator"]}
        # Hold the first trial: nothing may move while the cases go out.
        spin_until(executor, lambda: out["trial/operator"].get_subscription_count() > 0, 90,
                   "the trial supervisor")
        out["trial/operator"].publish(OperatorCommand(command=OperatorCommand.PAUSE))
        spin_until(executor, lambda: "paused by the operator" in group.log("trial_supervisor"),
                   30, "the pause")
        spin_until(executor, lambda: all(out[t].get_subscription_count() > 0 for t in topics)
                   and all(diagnostics[name] for name in commands), 120,
                   "every node's subscriptions and diagnostics")

        # What each node really reads and writes is what graph.py declares (and the SROS2
        # policy grants, tdmpc_ros/security.py). A node's name and endpoints reach this node's
        # graph cache by discovery of their own, which can lag its topics: wait for them.
        common = {"/rosout", "/parameter_events"}

        def discovered(name: str) -> bool:
            try:
                return bool(node.get_subscriber_names_and_types_by_node(name, "/"))
            except RuntimeError:  # rclpy's NodeNameNonExistentError: not discovered yet
                return False

        spin_until(executor, lambda: all(discovered(spec.name) for spec in graph.NODES), 60,
                   "every node's name and endpoints in the ROS graph")
        for spec in graph.NODES:
            reads = {name for name, _ in node.get_subscriber_names_and_types_by_node(
                spec.name, "/")} - common
            writes = {name for name, _ in node.get_publisher_names_and_types_by_node(
                spec.name, "/")} - common
            declared = {f"/{t.lstrip('/')}" for t in spec.subscribes}
            assert reads and reads <= declared, (spec.name, reads - declared)
            assert writes <= {f"/{t.lstrip('/')}" for t in spec.publishes}, (spec.name, writes)

        for case in CASES:
            before = {name: _refusals(diagnostics[name]) for name in case.refused_by}
            out[case.topic].publish(case.message())
            spin_until(executor, lambda c=case, b=before: all(
                _refusals(diagnostics[name]) > b[name] for name in c.refused_by), 20,
                f"the refusal of a {case.name} by {case.refused_by}")
            dead = [name for name, process in group.processes.items() if process.poll() is not None]
            assert not dead, f"{case.name} ended {dead}:\n" + "\n".join(
                group.log(name)[-3000:] for name in dead)
        executor.spin_once(timeout_sec=1.0)  # the last diagnostics in

        # Each kind of problem a node counted, it logged (the first of each kind at least).
        for name in commands:
            log = group.log(name)
            for key in diagnostics[name]:
                if key.startswith("refused ") and diagnostics[name][key] != "0":
                    assert f"{key}:" in log, f"{name} counted {key!r} but never logged it"
        # Nothing moved, nothing was recorded or learnt.
        assert diagnostics["robot_driver"]["executed"] == "0"
        assert diagnostics["replay_recorder"]["steps_recorded"] == "0"
        assert diagnostics["learner"]["online_steps"] == "0"
        assert not list((run_dir / "episodes").glob("*.npz"))
        assert not list((run_dir / "episodes" / "partial").glob("*.npz"))

        # And the graph still works: one short trial, recorded whole.
        out["trial/operator"].publish(OperatorCommand(command=OperatorCommand.RESUME))
        spin_until(executor, lambda: group.processes["trial_supervisor"].poll() is not None,
                   180, "the trial after the fuzzing")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trials"] == 1 and summary["complete"], summary
    assert summary["results"][0]["recorded_steps"] == 3, group.log("replay_recorder")
