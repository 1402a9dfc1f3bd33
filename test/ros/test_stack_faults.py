"""Faults the node graph must survive: malformed and out-of-range actions, an emergency stop,
bad model weights and weights that try to hijack the planner. (Killed processes:
test_recording.py; malformed messages on every topic: test_fuzz.py.)"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from std_msgs.msg import Bool

from tdmpc_ros import graph
from tdmpc_ros.core import checkpoint
from tdmpc_ros.core.agent import Agent
from tdmpc_ros.core.config import Config
from tdmpc_ros.launcher import parse_arguments
from tdmpc_ros.msg import ActionCommand, EpisodeEvent, ModelWeights, RobotState, WorldState
from tdmpc_ros.tasks import get_task

from rostest import NodeGroup, listen, node_command, ros_node, spin_until

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "reach-state.safetensors"


def _endpoints(node, names: list[str]) -> dict:
    """Publishers for the graph topics ``names``, on the graph's own QoS."""
    return {name: node.create_publisher(graph.topic(name).message_class(), name,
                                        graph.topic(name).profile()) for name in names}


def _diagnostics(node, of: str) -> dict[str, str]:
    values: dict[str, str] = {}

    def receive(array) -> None:
        for status in array.status:
            if status.name.endswith(of):
                values.update({item.key: item.value for item in status.values})

    node.create_subscription(graph.topic("/diagnostics").message_class(), "/diagnostics",
                             receive, graph.topic("/diagnostics").profile())
    return values


def _start(episode_id: str, trial: int, length: int = 25) -> EpisodeEvent:
    event = EpisodeEvent(event=EpisodeEvent.START, episode_id=episode_id, task="reach",
                         trial=trial, length=length)
    return event


def _command(node, episode_id: str, step: int, action: list[float]) -> ActionCommand:
    command = ActionCommand(episode_id=episode_id, step=step, action=action)
    command.header.stamp = node.get_clock().now().to_msg()
    return command


def test_driver_refuses_bad_actions_keeps_to_the_workspace_and_stops(ros_env, tmp_path):
    spec = get_task("reach")
    arguments = parse_arguments(["task:=reach", f"run_dir:={tmp_path}"])
    group = NodeGroup({"robot_driver": node_command("robot_driver", arguments)}, ros_env,
                      tmp_path)
    with group, ros_node("driver_faults", ros_env) as (node, executor):
        states: list[RobotState] = []
        listen(node, "robot/state", states)
        diagnostics = _diagnostics(node, "robot_driver")
        out = _endpoints(node, ["trial/events", "robot/action", "robot/emergency_stop"])
        spin_until(executor, lambda: all(p.get_subscription_count() for p in out.values()), 60,
                   "the driver's subscriptions")
        out["trial/events"].publish(_start("ep-faults", 1))
        spin_until(executor, lambda: any(s.episode_id == "ep-faults" for s in states), 30,
                   "the reset")

        # Malformed or out of range: refused, sent raw as a misbehaving peer would. (One at a
        # time: the command topic keeps only the newest message, by design.)
        def refused(kind: str) -> int:
            return int(diagnostics.get(f"refused_{kind}", 0))

        expected = {"malformed": 0, "invalid": 0}
        for kind, action in (("malformed", [math.nan, 0.0, 0.0, 0.0]),
                             ("malformed", [2.0, 0.0, 0.0, 0.0]),
                             ("invalid", [0.5, 0.5, 0.5])):
            expected[kind] += 1
            out["robot/action"].publish(_command(node, "ep-faults", 0, action))
            spin_until(executor, lambda k=kind, n=expected[kind]: refused(k) >= n, 30,
                       f"the refusal of {action}")
        # Valid actions that push beyond the workspace corner, for the whole episode.
        for step in range(spec.episode_length):
            out["robot/action"].publish(_command(node, "ep-faults", step, [1.0, 1.0, 1.0, 1.0]))
            spin_until(executor, lambda s=step: states[-1].step == s + 1, 30, f"step {step + 1}")
        out["robot/action"].publish(_command(node, "ep-faults", spec.episode_length,
                                             [1.0, 1.0, 1.0, 1.0]))
        spin_until(executor, lambda: refused("episode_over") >= 1, 30,
                   "the refusal after the episode's last step")
        assert refused("malformed") == 2 and refused("invalid") == 1, group.log("robot_driver")
        assert int(diagnostics["executed"]) == spec.episode_length
        low, high = np.array(spec.workspace.low), np.array(spec.workspace.high)
        for state in states:
            position = state.ee_pose.position
            xyz = np.array([position.x, position.y, position.z])
            assert (xyz >= low - 0.01).all() and (xyz <= high + 0.01).all(), xyz
        final = states[-1].ee_pose.position
        assert np.allclose([final.x, final.y, final.z], high, atol=0.02)

        # Emergency stop: the robot stops and refuses actions until the next reset.
        out["trial/events"].publish(_start("ep-stop", 2))
        spin_until(executor, lambda: states[-1].episode_id == "ep-stop", 30, "the second reset")
        out["robot/emergency_stop"].publish(Bool(data=True))
        spin_until(executor, lambda: states[-1].state == RobotState.STATE_STOPPED, 30,
                   "the stop")
        out["robot/action"].publish(_command(node, "ep-stop", 0, [0.1, 0.0, 0.0, 1.0]))
        spin_until(executor, lambda: int(diagnostics.get("refused_not_ready", 0)) >= 1, 30,
                   "the refusal while stopped")
        assert states[-1].step == 0
        assert group.processes["robot_driver"].poll() is None


def _payload(model_bytes: bytes, version: int, run_id: str = "test-run",
             sha256: str | None = None) -> ModelWeights:
    message = ModelWeights(version=version, run_id=run_id, format="safetensors",
                           payload=model_bytes)
    message.sha256 = sha256 or hashlib.sha256(model_bytes).hexdigest()
    return message


def _bad_weights() -> list[tuple[str, ModelWeights]]:
    loaded = checkpoint.load(MODEL)
    good = checkpoint.to_bytes(loaded.model, actor_only=True)
    smaller = Agent(Config().replace(**{"model.mlp_dim": 64}), loaded.spec, acting_only=True)
    poisoned = checkpoint.load(MODEL).model
    with torch.no_grad():
        next(poisoned.parameters()).fill_(float("nan"))
    try:
        nan_bytes = checkpoint.to_bytes(poisoned, actor_only=True)
    except checkpoint.CheckpointError:  # the writer refuses NaN too: forge it on the wire
        nan_bytes = good.replace(b"\x00\x00\x80\x3f", b"\x00\x00\xc0\x7f", 1)
    return [("checksum", _payload(good, 10, sha256="0" * 64)),
            ("shapes", _payload(checkpoint.to_bytes(smaller.model, actor_only=True), 11)),
            ("nan", _payload(nan_bytes, 12)),
            ("garbage", _payload(b"not a safetensors file at all", 13))]


def test_planner_refuses_bad_weights_keeps_planning_and_takes_good_ones(ros_env, tmp_path):
    arguments = parse_arguments(["task:=reach", f"run_dir:={tmp_path}", "device:=cpu"])
    group = NodeGroup({"planner": node_command("planner", arguments)}, ros_env, tmp_path)
    with group, ros_node("planner_faults", ros_env) as (node, executor):
        actions: list[ActionCommand] = []
        listen(node, "robot/action", actions)
        diagnostics = _diagnostics(node, "planner")
        out = _endpoints(node, ["robot/state", "world/state", "learner/weights"])
        spin_until(executor, lambda: all(p.get_subscription_count() for p in out.values()), 90,
                   "the planner's subscriptions")

        def observe(step: int) -> ActionCommand:
            stamp = node.get_clock().now().to_msg()
            world = WorldState(episode_id="ep-w", step=step, has_target=True)
            world.header.stamp = stamp
            world.target_position.x, world.target_position.z = 0.45, 0.15
            robot = RobotState(episode_id="ep-w", step=step, state=RobotState.STATE_READY,
                               gripper_opening=1.0)
            robot.header.stamp = stamp
            robot.ee_pose.position.x, robot.ee_pose.position.z = 0.35, 0.2
            robot.ee_pose.orientation.w = 1.0
            out["world/state"].publish(world)
            out["robot/state"].publish(robot)
            spin_until(executor, lambda: actions and actions[-1].step == step, 60,
                       f"a plan for step {step}")
            return actions[-1]

        start_version = observe(0).weights_version
        for index, (kind, message) in enumerate(_bad_weights(), start=1):
            out["learner/weights"].publish(message)
            spin_until(executor, lambda i=index: int(diagnostics.get("weights_refused", 0)) >= i,
                       30, f"the refusal of weights with bad {kind}")
            command = observe(index)
            assert command.weights_version == start_version, kind
            assert all(math.isfinite(value) for value in command.action)
        good = checkpoint.to_bytes(checkpoint.load(MODEL).model, actor_only=True)
        out["learner/weights"].publish(_payload(good, 20, run_id="another-run"))
        spin_until(executor, lambda: observe(9).weights_version == 20, 60,
                   "the good weights in use")
        assert group.processes["planner"].poll() is None


def _weights_variant(seed: int, scale: float = 1e-3) -> bytes:
    """The shipped model's actor weights, nudged by ``seed``: weights a learner might send."""
    model = checkpoint.load(MODEL).model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return checkpoint.to_bytes(model, actor_only=True)


def _zeroed_weights() -> bytes:
    model = checkpoint.load(MODEL).model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return checkpoint.to_bytes(model, actor_only=True)


def test_no_single_weights_message_can_hijack_the_planner(ros_env, tmp_path):
    """A forged huge version, zeroed weights under a new run id, a replayed old version: none
    stops the planner taking the learner's next weights, and each is logged and counted."""
    arguments = parse_arguments(["task:=reach", f"run_dir:={tmp_path}", "device:=cpu"])
    group = NodeGroup({"planner": node_command("planner", arguments)}, ros_env, tmp_path)
    with group, ros_node("planner_hijack", ros_env) as (node, executor):
        actions: list[ActionCommand] = []
        listen(node, "robot/action", actions)
        diagnostics = _diagnostics(node, "planner")
        out = _endpoints(node, ["robot/state", "world/state", "learner/weights"])
        spin_until(executor, lambda: all(p.get_subscription_count() for p in out.values()), 90,
                   "the planner's subscriptions")
        steps = iter(range(1000))

        def planned_with() -> tuple[int, str]:
            step = next(steps)
            stamp = node.get_clock().now().to_msg()
            world = WorldState(episode_id="ep-h", step=step, has_target=True)
            world.header.stamp = stamp
            world.target_position.x, world.target_position.z = 0.45, 0.15
            robot = RobotState(episode_id="ep-h", step=step % 20, state=RobotState.STATE_READY,
                               gripper_opening=1.0)
            robot.header.stamp = stamp
            robot.ee_pose.position.x, robot.ee_pose.position.z = 0.35, 0.2
            robot.ee_pose.orientation.w = 1.0
            count = len(actions)
            out["world/state"].publish(world)
            out["robot/state"].publish(robot)
            spin_until(executor, lambda: len(actions) > count, 60, f"a plan for step {step}")
            return actions[-1].weights_version, actions[-1].weights_id

        def send(message: ModelWeights, until) -> None:
            out["learner/weights"].publish(message)
            spin_until(executor, until, 30, f"the planner's answer to {message.run_id} "
                       f"v{message.version}:\n{group.log('planner')}")

        def count(key: str) -> int:
            return int(diagnostics.get(key, 0))

        real = {version: _payload(_weights_variant(version), version, run_id="lab-run")
                for version in (1, 2, 3)}
        send(real[1], lambda: count("weights_taken") >= 1)
        assert planned_with() == (1, f"lab-run:v1:{real[1].sha256[:8]}")
        # A forged version 2^62 under the learner's run id: taken (nothing tells it from the
        # learner's), but flagged; the learner's real v2 still replaces it.
        send(_payload(_weights_variant(99), 2**62, run_id="lab-run"),
             lambda: count("weights_taken") >= 2)
        assert count("weights_discontinuities") == 1
        send(real[2], lambda: count("weights_taken") >= 3)
        assert planned_with() == (2, f"lab-run:v2:{real[2].sha256[:8]}")
        assert count("weights_discontinuities") == 2  # 2 does not follow on from 2^62 either
        # Zeroed weights under a new run id: refused, not a model.
        send(_payload(_zeroed_weights(), 1, run_id="intruder"),
             lambda: count("weights_refused") >= 1)
        assert "every weight matrix" in diagnostics["last_weights_error"]
        assert planned_with()[1] == f"lab-run:v2:{real[2].sha256[:8]}"
        # The learner's v1 replayed: refused, the planner keeps v2.
        send(real[1], lambda: count("refused learner/weights (replayed)") >= 1)
        assert planned_with()[0] == 2
        send(real[3], lambda: count("weights_taken") >= 4)
        assert planned_with() == (3, f"lab-run:v3:{real[3].sha256[:8]}")
        log = group.log("planner")
        assert "do not follow on: version 4611686018427387904 does not follow on from 1" in log
        assert "refused learner/weights (replayed): lab-run:v1:" in log
        assert group.processes["planner"].poll() is None
