"""TF and the robot model as rviz sees them: an independent subscriber rebuilds the TCP pose
from /tf alone and finds robot/state's; /tf_static places the camera; /robot_description is the
installed URDF; and config/tdmpc.rviz names only frames and topics that the stack publishes."""

from __future__ import annotations

import re
from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

from tdmpc_ros import graph
from tdmpc_ros.launcher import node_processes, parse_arguments, run
from tdmpc_ros.sim import frames

from rostest import ros_node, spinning

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def _pose(transform) -> np.ndarray:
    t, r = transform.translation, transform.rotation
    matrix = np.empty(9)
    mujoco.mju_quat2Mat(matrix, np.array([r.w, r.x, r.y, r.z]))
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = matrix.reshape(3, 3), (t.x, t.y, t.z)
    return out


def rebuild(transforms: dict[str, tuple[str, np.ndarray]], frame: str, root: str) -> np.ndarray:
    """``frame``'s pose in ``root`` by composing parent-to-child transforms, as tf2 does."""
    pose = np.eye(4)
    while frame != root:
        parent, relative = transforms[frame]
        pose, frame = relative @ pose, parent
    return pose


def test_an_independent_subscriber_rebuilds_the_tcp_from_tf(ros_env, tmp_path,
                                                             monkeypatch) -> None:
    from std_msgs.msg import String
    from tf2_msgs.msg import TFMessage

    from tdmpc_ros.msg import RobotState
    from tdmpc_ros.sim import datasets

    for name, value in ros_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    assert datasets.main(["--task", "lift", "--episodes", "2", "--out", str(data),
                          "--quiet"]) == 0
    arguments = parse_arguments(["task:=lift", "trials:=1", f"run_dir:={tmp_path / 'run'}",
                                 f"dataset:={data}", "device:=cpu"])
    processes = [p if p.name != "trial_supervisor" else
                 type(p)(p.name, (*p.command, "-p", "max_steps:=6"), p.required, p.respawn)
                 for p in node_processes(arguments)]
    tf_messages: list = []
    static: list = []
    descriptions: list = []
    states: list = []
    with ros_node("tf_listener", ros_env) as (node, executor):
        for name, sink in (("/tf", tf_messages), ("/tf_static", static),
                           ("/robot_description", descriptions), ("robot/state", states)):
            topic = graph.topic(name)
            node.create_subscription(topic.message_class(), name, sink.append,
                                     topic.reader_profile())
        with spinning(executor):
            assert run(processes, environment=ros_env) == 0
    assert all(isinstance(m, TFMessage) for m in tf_messages + static)
    assert all(isinstance(m, RobotState) for m in states)
    by_stamp = {}
    for message in tf_messages:
        stamps = {(t.header.stamp.sec, t.header.stamp.nanosec) for t in message.transforms}
        assert len(stamps) == 1  # one instant per message
        by_stamp[stamps.pop()] = {t.child_frame_id: (t.header.frame_id, _pose(t.transform))
                                  for t in message.transforms}
    checked = 0
    for state in states:
        stamp = (state.header.stamp.sec, state.header.stamp.nanosec)
        if stamp not in by_stamp:
            continue
        tcp = rebuild(by_stamp[stamp], "link_tcp", state.header.frame_id)
        position = state.ee_pose.position
        np.testing.assert_allclose(tcp[:3, 3], [position.x, position.y, position.z], atol=1e-6)
        # the gripper points down (robot/state's orientation), up to the servo weld's give
        assert np.degrees(np.arccos(np.clip(tcp[2, 2], -1.0, 1.0))) < 3.0
        checked += 1
    assert checked >= 6, (checked, len(states), len(tf_messages))
    camera = [t for m in static for t in m.transforms]
    assert [(t.header.frame_id, t.child_frame_id) for t in camera] == \
        [("link_base", "camera_color_optical_frame")]
    [description] = descriptions[-1:]
    assert isinstance(description, String)
    assert description.data == frames.URDF_PATH.read_text()


def test_the_rviz_config_names_only_frames_and_topics_the_stack_publishes() -> None:
    config = yaml.safe_load((REPO / "config" / "tdmpc.rviz").read_text())
    manager = config["Visualization Manager"]
    published = {name for node in graph.NODES for name in node.publishes}
    urdf = (REPO / "urdf" / frames.URDF_NAME).read_text()
    tf_frames = set(re.findall(r'<link name="([^"]+)"', urdf))
    assert manager["Global Options"]["Fixed Frame"] in tf_frames
    classes = set()
    for display in manager["Displays"]:
        classes.add(display["Class"])
        for key in ("Topic", "Description Topic"):
            if key in display:
                assert display[key]["Value"] in published, display
    assert {"rviz_default_plugins/RobotModel", "rviz_default_plugins/TF",
            "rviz_default_plugins/MarkerArray", "rviz_default_plugins/Image"} <= classes
    markers = next(d for d in manager["Displays"]
                   if d["Class"] == "rviz_default_plugins/MarkerArray")
    assert set(markers["Namespaces"]) == {"planned_path", "target", "object"}
