"""The camera node as its own process, as the launcher starts it, with real camera sources:
a RealSense recording played back, a video file through OpenCV, no camera at all, bad
parameters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdmpc_ros import graph
from tdmpc_ros.hardware.realsense import connected_serials
from tdmpc_ros.interfaces import msg_to_image
from tdmpc_ros.launcher import parse_arguments

from rostest import NodeGroup, node_command, ros_node, spin_until

pytestmark = pytest.mark.ros


def camera_command(tmp_path: Path, backend: str = "real", **overrides: object) -> tuple[str, ...]:
    return node_command("camera", parse_arguments([f"backend:={backend}",
                                                   f"run_dir:={tmp_path}"]), overrides)


class Observer:
    """Subscribes to the camera's topics and its diagnostics."""

    def __init__(self, node, depth: bool = False) -> None:
        self.images, self.infos, self.depths, self.status = [], [], [], None
        for name, store in (("camera/image_raw", self.images),
                            ("camera/camera_info", self.infos)):
            topic = graph.topic(name)
            node.create_subscription(topic.message_class(), name, store.append, topic.profile())
        if depth:
            topic = graph.topic("camera/image_raw")
            node.create_subscription(topic.message_class(), "camera/depth/image_raw",
                                     self.depths.append, topic.profile())
        diagnostics = graph.topic("/diagnostics")
        node.create_subscription(diagnostics.message_class(), "/diagnostics", self.on_status,
                                 diagnostics.profile())

    def on_status(self, array) -> None:
        for status in array.status:
            if status.name.endswith("/camera"):
                self.status = status

    def message(self) -> str:
        return self.status.message if self.status is not None else ""


def record(out: Path, frames: int, width: int, height: int, **options: object) -> list[float]:
    """``record_realsense.record`` in a process of its own: librealsense objects left in a
    process that also ran rclpy crash it at exit."""
    script = ("import json, sys; from pathlib import Path; "
              "from tdmpc_ros.hardware.record_realsense import record; "
              "arguments = json.loads(sys.argv[1]); "
              "print(json.dumps(record(Path(arguments.pop('out')), **arguments)))")
    arguments = {"out": str(out), "frames": frames, "width": width, "height": height, **options}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(arguments)],
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def test_the_node_plays_a_recording_with_its_stamps(ros_env, tmp_path) -> None:
    frames, fps = 30, 30
    recording = tmp_path / "session.db3"
    stamps = record(recording, frames, 128, 96, fps=fps, start_ms=5000.0, depth=True)
    command = camera_command(tmp_path, playback_file=recording, enable_depth="true")
    with ros_node("camera_observer", ros_env) as (node, executor), \
            NodeGroup({"camera": command}, ros_env, tmp_path) as group:
        observer = Observer(node, depth=True)
        spin_until(executor, lambda: "recording ended" in observer.message(), 30,
                   f"the end of the recording; camera log:\n{group.log('camera')}")
        executor.spin_once(timeout_sec=0.2)
    # The recording waits for a reader, then plays in real time: most frames arrive (the
    # colour-depth syncer drops a few pairs, more on a loaded machine), in order, each with the
    # stamp it was recorded with and its own content.
    assert len(observer.images) >= 0.6 * frames, group.log("camera")
    indices = []
    for image in observer.images:
        pixels = msg_to_image(image)
        assert (image.width, image.height, image.encoding) == (84, 84, "rgb8")
        index = int(pixels[0, 0, 0])
        assert (pixels[:, :, 0] == index).all() and pixels[:, :, 2].max() == 0
        assert stamp_ns(image.header) == round(stamps[index] * 1e6)
        assert image.header.frame_id == "camera_color_optical_frame"
        indices.append(index)
    assert indices == sorted(set(indices))
    assert {stamp_ns(info.header) for info in observer.infos} <= \
        {stamp_ns(image.header) for image in observer.images}
    info = observer.infos[-1]
    assert (info.width, info.height) == (84, 84) and info.k[0] == pytest.approx(112.0)
    assert len(observer.depths) >= 0.6 * frames
    for depth in observer.depths:
        index = indices[[stamp_ns(i.header) for i in observer.images].index(
            stamp_ns(depth.header))]
        values = msg_to_image(depth)
        # rs.align leaves a few holes (0: no depth) where projected pixels round apart.
        assert depth.encoding == "16UC1" and set(np.unique(values)) <= {0, 1000 + index}
        assert (values > 0).mean() > 0.95
    assert f"recording ended after {len(observer.images)} frames" in observer.message()


def test_stale_frames_and_a_stalled_camera_are_reported_never_published(ros_env,
                                                                          tmp_path) -> None:
    # Frame 2 repeats frame 1's stamp and frame 5 goes back in time: the camera's clock did not
    # advance. After frame 3 the camera sends nothing for 0.8 s (frame_timeout_s is 0.3).
    stamps = [1000.0, 1033.0, 1033.0, 1066.0, 1100.0, 1050.0, 1133.0, 1166.0]
    delays = [0.03, 0.03, 0.03, 0.8, 0.03, 0.03, 0.03, 0.03]
    recording = tmp_path / "stalls.db3"
    record(recording, len(stamps), 84, 84, stamps=stamps, delays_s=delays)
    command = camera_command(tmp_path, playback_file=recording, frame_timeout_s=0.3)
    with ros_node("camera_observer", ros_env) as (node, executor), \
            NodeGroup({"camera": command}, ros_env, tmp_path) as group:
        observer = Observer(node)
        seen: set[str] = set()

        def ended() -> bool:
            seen.add(observer.message().split(" for ")[0])
            return "recording ended" in observer.message()

        spin_until(executor, ended, 30, f"the end; camera log:\n{group.log('camera')}")
        values = {value.key: value.value for value in observer.status.values}
    published = [stamp_ns(image.header) for image in observer.images]
    indices = [int(msg_to_image(image)[0, 0, 0]) for image in observer.images]
    assert published == sorted(set(published)) and indices == sorted(indices)
    assert 2 not in indices and 5 not in indices, "a stale frame is never published"
    assert [round(stamps[index] * 1e6) for index in indices] == published
    assert values["stale"] == "2" and int(values["timeouts"]) >= 1, values
    assert "no new frame" in seen, "the stall was reported while it lasted"
    log = group.log("camera")
    assert "stale frame 2" in log and "no frame for 0.3 s" in log  # the next: log throttled


def test_the_node_reads_a_video_file_through_opencv(ros_env, tmp_path) -> None:
    video = tmp_path / "usb.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    for index in range(45):
        writer.write(np.full((120, 160, 3), (0, 0, 5 * index), np.uint8))  # BGR: red grows
    writer.release()
    command = camera_command(tmp_path, source="opencv", device=video)
    before = time.time_ns()
    with ros_node("camera_observer", ros_env) as (node, executor), \
            NodeGroup({"camera": command}, ros_env, tmp_path) as group:
        observer = Observer(node)
        spin_until(executor, lambda: "recording ended" in observer.message(), 30,
                   f"the end of the video; camera log:\n{group.log('camera')}")
    # Frames sent before the subscription matched are gone (a camera does not wait); the rest
    # arrive fitted, red growing, stamped by the host clock in order.
    assert len(observer.images) >= 5, group.log("camera")
    reds = [float(msg_to_image(image)[:, :, 0].mean()) for image in observer.images]
    stamps = [stamp_ns(image.header) for image in observer.images]
    assert all((image.width, image.height) == (84, 84) for image in observer.images)
    assert np.all(np.diff(reds) > 0) and np.all(np.diff(stamps) > 0)
    assert before < stamps[0] < time.time_ns()


def run_node(command: tuple[str, ...], environment: dict[str, str]) -> tuple[int, str, float]:
    start = time.monotonic()
    result = subprocess.run(command, env=environment, capture_output=True, text=True,
                            timeout=60)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - start


def test_no_camera_stops_the_node_at_once_with_the_reason(ros_env, tmp_path) -> None:
    if connected_serials():
        pytest.skip("a RealSense is connected to this machine")
    code, output, seconds = run_node(camera_command(tmp_path), ros_env)  # backend:=real
    assert code == 2, output
    assert "no RealSense camera connected" in output and "playback_file" in output
    assert seconds < 10.0  # start-up included; pipeline.start() alone would wait ~15 s


def test_bad_parameters_stop_the_node_with_the_reason(ros_env, tmp_path) -> None:
    cases = {
        "fps 0 is not in [1, 300]": camera_command(tmp_path, fps=0),
        "frame_timeout_s 0.0 is not in": camera_command(tmp_path, frame_timeout_s=0.0),
        "playback_file is for source realsense": camera_command(
            tmp_path, source="opencv", playback_file=tmp_path / "x.db3"),
        "enable_depth needs source realsense": camera_command(
            tmp_path, source="opencv", enable_depth="true"),
        "no such file": camera_command(tmp_path, playback_file=tmp_path / "missing.db3"),
        "missing.avi: no such file or device": camera_command(
            tmp_path, source="opencv", device=tmp_path / "missing.avi"),
    }
    # All at once: each is a node start-up, a few seconds on a small machine.
    processes = {reason: subprocess.Popen(command, env=ros_env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
                 for reason, command in cases.items()}
    for reason, process in processes.items():
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 2, output
        assert "configuration error" in output
        assert reason in output, output
