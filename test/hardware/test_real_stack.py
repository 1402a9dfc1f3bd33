"""The whole stack with backend:=real: every node its own process over DDS, the robot driver on
the real xarm-python-sdk talking to the controller stand-in, the camera on a real capture path
(OpenCV reading a video file in real time, stamped by the host clock as a USB camera is). One
trial runs to its end, is recorded with its frames, and the learner takes it."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest

from tdmpc_ros import graph
from tdmpc_ros.core.episodes import load_episodes
from tdmpc_ros.hardware.xarm_standin import control
from tdmpc_ros.launcher import parse_arguments
from tdmpc_ros.msg import EpisodeEvent, ModelWeights, OperatorCommand, RobotState

from rostest import (
    NodeGroup,
    graph_publisher,
    listen,
    node_command,
    peer_process,
    ros_node,
    spin_until,
)

pytestmark = pytest.mark.ros

STEPS = 10


def _video(path, seconds: float = 90.0, fps: int = 30) -> None:
    """A moving pattern, so that consecutive frames differ."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (96, 96))
    assert writer.isOpened()
    for index in range(int(seconds * fps)):
        frame = np.zeros((96, 96, 3), np.uint8)
        frame[:, :, 2] = index % 256
        frame[index % 96, :, 1] = 255
        writer.write(frame)
    writer.release()


def _real_stack(tmp_path, address: int, video_seconds: float):
    """The commands of every node for one trial on the real backend, and the stand-in's."""
    from tdmpc_ros.sim import datasets

    host = f"127.{20 + os.getpid() % 200}.{address}.{1 + os.getpid() % 250}"
    video = tmp_path / "camera.avi"
    _video(video, video_seconds)
    data = tmp_path / "data"
    assert datasets.main(["--task", "reach", "--episodes", "4", "--out", str(data),
                          "--quiet"]) == 0
    arguments = parse_arguments(["backend:=real", f"robot_ip:={host}", "task:=reach",
                                 "trials:=1", f"run_dir:={tmp_path / 'run'}",
                                 f"dataset:={data}", "device:=cpu"])
    overrides = {"camera": {"source": "opencv", "device": str(video)},
                 "trial_supervisor": {"max_steps": STEPS},
                 "learner": {"publish_every_updates": 3, "publish_every_s": 1.0}}
    commands = {node.name: node_command(node.name, arguments, overrides.get(node.name))
                for node in graph.NODES}
    return host, commands, ["-m", "tdmpc_ros.hardware.xarm_standin", "--host", host]


def test_one_trial_on_the_real_backend_against_the_controller_stand_in(tmp_path, ros_env):
    host, commands, standin = _real_stack(tmp_path, 251, video_seconds=90.0)
    run_dir = tmp_path / "run"
    with peer_process(standin, dict(os.environ), tmp_path / "standin.log"), \
            NodeGroup(commands, ros_env, tmp_path) as group, \
            ros_node("real_stack_test", ros_env) as (node, executor):
        states: list[RobotState] = []
        weights: list[ModelWeights] = []
        listen(node, "robot/state", states)
        listen(node, "learner/weights", weights)
        spin_until(executor, lambda: group.processes["trial_supervisor"].poll() is not None,
                   240, "the trial to end")
        servo_targets = control(host, {"op": "servo_log"})
        assert group.processes["trial_supervisor"].returncode == 0, (
            group.log("trial_supervisor") + group.log("robot_driver"))
        assert all(process.poll() is None for name, process in group.processes.items()
                   if name != "trial_supervisor"), "a node died during the trial"
        learner_took_it = any(w.learner_step > 0 for w in weights)

    summary = json.loads((run_dir / "summary.json").read_text())
    result = summary["results"][0]
    assert summary["backend"] == "real" and result["steps"] == STEPS, result
    assert result["recorded_steps"] == STEPS, group.log("replay_recorder")
    # The arm moved through the SDK's servo stream, and reported back through it.
    assert len(servo_targets["targets"]) >= STEPS, servo_targets
    real_states = [s for s in states if s.backend == "real" and s.episode_id]
    assert real_states and max(s.step for s in real_states) == STEPS
    assert len({(round(s.ee_pose.position.x, 4), round(s.ee_pose.position.y, 4))
                for s in real_states}) > 1, "the arm never moved"
    # The episode holds the camera's frames, matched to the states within the allowed skew.
    (episode,) = load_episodes(run_dir / "episodes")
    assert episode.source == "real" and episode.length == STEPS
    assert episode.observations["pixels"].shape == (STEPS + 1, 84, 84, 3)
    assert len({int(frame[..., 0].mean()) for frame in episode.observations["pixels"]}) > 1
    assert learner_took_it, group.log("learner")


def test_a_camera_that_stops_ends_the_trial_as_stale_input(tmp_path, ros_env):
    """The camera dies during a trial (paused meanwhile, so that the trial outlasts the
    detection): on resume the trial ends at once as stale input."""
    host, commands, standin = _real_stack(tmp_path, 252, video_seconds=90.0)
    commands["trial_supervisor"] += ("-p", "max_steps:=25")
    run_dir = tmp_path / "run"
    with peer_process(standin, dict(os.environ), tmp_path / "standin.log"), \
            NodeGroup(commands, ros_env, tmp_path) as group, \
            ros_node("real_stack_test", ros_env) as (node, executor):
        states: list[RobotState] = []
        listen(node, "robot/state", states)
        operator = graph_publisher(node, "trial/operator")
        spin_until(executor, lambda: any(s.step >= 2 for s in states), 240, "step 2")
        operator.publish(OperatorCommand(command=OperatorCommand.PAUSE))
        group.kill("camera")
        deadline = time.monotonic() + 2.5  # longer than max_frame_age_s
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        operator.publish(OperatorCommand(command=OperatorCommand.RESUME))
        spin_until(executor, lambda: group.processes["trial_supervisor"].poll() is not None,
                   60, "the trial to end")
    assert group.processes["trial_supervisor"].returncode == 0, group.log("trial_supervisor")
    result = json.loads((run_dir / "summary.json").read_text())["results"][0]
    assert result["reason"] == EpisodeEvent.REASON_STALE_INPUT, result
    assert "no new frame" in result["detail"] and result["steps"] < 25, result


def test_push_on_the_real_arm_is_refused_at_start(tmp_path, ros_env):
    """Push's reward needs the cube's position, which the real arm does not see: the run stops
    at once with the reason, instead of crashing at the first step."""
    import subprocess

    arguments = parse_arguments(["backend:=real", "task:=push", f"run_dir:={tmp_path}"])
    command = node_command("trial_supervisor", arguments)
    result = subprocess.run(command, env=ros_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "push on the real arm" in result.stderr + result.stdout


def test_a_controller_error_ends_the_trial_and_holds_the_next_until_resumed(tmp_path, ros_env):
    """A collision (C31) on the controller mid-trial: the arm stays stopped, the trial ends at
    once as an error naming the code (not after the stale-step timeout), and the next trial
    waits until a person has cleared the error and resumed."""
    host, commands, standin = _real_stack(tmp_path, 253, video_seconds=90.0)
    commands["trial_supervisor"] += ("-p", "max_steps:=25", "-p", "trials:=2")
    run_dir = tmp_path / "run"
    with peer_process(standin, dict(os.environ), tmp_path / "standin.log"), \
            NodeGroup(commands, ros_env, tmp_path) as group, \
            ros_node("real_stack_test", ros_env) as (node, executor):
        states: list[RobotState] = []
        events: list[EpisodeEvent] = []
        listen(node, "robot/state", states)
        listen(node, "trial/events", events)
        operator = graph_publisher(node, "trial/operator")
        spin_until(executor, lambda: any(s.step >= 2 for s in states), 240, "step 2")
        control(host, {"op": "inject", "code": 31})  # 23 steps (1.8 s) of the trial left
        started = time.monotonic()
        spin_until(executor, lambda: any(e.event == EpisodeEvent.END for e in events), 30,
                   "the end of trial 1")
        assert time.monotonic() - started < 15, "ended by the error, not by a timeout"
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert not any(e.event == EpisodeEvent.START and e.trial == 2 for e in events), \
            "the next trial started with the error standing"
        assert control(host, {"op": "status"})["error"] == 31  # nobody cleared it
        assert control(host, {"op": "clear"})["ok"]
        operator.publish(OperatorCommand(command=OperatorCommand.RESUME))
        spin_until(executor, lambda: group.processes["trial_supervisor"].poll() is not None,
                   120, "trial 2 to run to its end")
    results = json.loads((run_dir / "summary.json").read_text())["results"]
    assert results[0]["reason"] == EpisodeEvent.REASON_ERROR, results[0]
    assert "C31" in results[0]["detail"] and results[0]["steps"] < 25, results[0]
    assert results[1]["reason"] == EpisodeEvent.REASON_TIME_LIMIT and results[1]["steps"] == 25
