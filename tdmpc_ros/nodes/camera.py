"""The camera: publishes the model's RGB frames (sensor_msgs/Image) and CameraInfo.

Sources, chosen by the ``source`` parameter:
- ``sim``: renders a mirror of the simulated scene each time the robot driver publishes a
  world/state, stamped with that state's stamp, so a frame shows exactly that instant;
- ``realsense``: an Intel RealSense by ``serial`` (empty: the only one), or a recording of one
  (``playback_file``, a rosbag2 .db3) played through the same pyrealsense2 pipeline;
- ``opencv``: a plain USB camera (``device``: an index or /dev/video*) or a video file;
- ``ros_topic``: a lab's camera driver or Gazebo already publishes; nothing to do here.

Frames are already at the model's input size (``width`` x ``height``, centre-cropped, then
resized), rgb8, sensor-data QoS. Real cameras are read by a thread of their own, never by the
executor. Stamps: a RealSense's own (global time, i.e. its clock mapped onto the host's; its
hardware clock is mapped by CameraClock), a recording's as recorded, a USB camera's the host's
clock at grab time. A frame whose stamp does not advance is stale: counted, logged, never
published. Images are converted with NumPy in tdmpc_ros.interfaces, not cv_bridge.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo

from tdmpc_ros.hardware.frames import CameraClock, CameraError, EndOfStream, Frame, Intrinsics
from tdmpc_ros.interfaces import image_to_msg, publish_checked, transforms_to_msg
from tdmpc_ros.msg import WorldState
from tdmpc_ros.nodes.common import (
    ERROR,
    OK,
    WARN,
    ConfigError,
    Diagnostics,
    param,
    publisher,
    read_parameters,
    refusals,
    run,
    subscribe,
)
from tdmpc_ros.tasks import get_task

SOURCES = ("sim", "realsense", "opencv", "ros_topic")


@dataclass
class CameraParams:
    task: str = param("task whose simulated scene to render (sim source)")
    variant: str = param("sim source: the task variant of the simulated scene (its distractors "
                         "must be in the mirror too); empty: the training distribution")
    source: str = param("sim, realsense, opencv or ros_topic")
    serial: str = param("realsense: the camera's serial number (empty: the only one connected)")
    width: int = param("width of the published frames, the model's input (pixels)")
    height: int = param("height of the published frames (pixels)")
    frame_id: str = param("optical frame of the camera")
    playback_file: str = param("realsense: a recording (.db3) to play instead of a live camera "
                               "(empty: the live camera)")
    playback_real_time: bool = param("realsense playback: at the recorded pace (false: as "
                                     "fast as frames are published)")
    device: str = param("opencv: camera index as a string (on the command line "
                        "device:=\"'0'\"), device path (/dev/video2) or video file")
    capture_width: int = param("realsense, opencv: the camera's stream width before crop and "
                               "resize (pixels)")
    capture_height: int = param("realsense, opencv: the camera's stream height (pixels)")
    fps: int = param("realsense, opencv: frames per second asked of the camera")
    enable_depth: bool = param("realsense: also publish depth aligned to colour "
                               "(camera/depth/image_raw, 16UC1 mm)")
    warmup_frames: int = param("realsense live: frames dropped after each start while "
                               "auto-exposure settles")
    frame_timeout_s: float = param("realsense, opencv: no new frame for this long means the "
                                   "camera stalled: reported, then the stream is restarted")
    max_restarts: int = param("realsense, opencv: restarts in a row without a frame before the "
                              "node gives up (diagnostics ERROR)")
    hardware_reset: bool = param("realsense live: from the second restart on, reset the camera "
                                 "(USB re-enumeration) first")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {SOURCES}")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"frame size {self.width} x {self.height} is out of range")
        if not (16 <= self.capture_width <= 4096 and 16 <= self.capture_height <= 4096):
            raise ValueError(f"capture size {self.capture_width} x {self.capture_height} is out "
                             "of range")
        if not 1 <= self.fps <= 300:
            raise ValueError(f"fps {self.fps} is not in [1, 300]")
        if self.warmup_frames < 0 or self.max_restarts < 0:
            raise ValueError(f"warmup_frames {self.warmup_frames} and max_restarts "
                             f"{self.max_restarts} must be >= 0")
        if not 0.05 <= self.frame_timeout_s <= 60.0:
            raise ValueError(f"frame_timeout_s {self.frame_timeout_s} is not in [0.05, 60]")
        if self.playback_file and self.source != "realsense":
            raise ValueError(f"playback_file is for source realsense, not {self.source!r} "
                             "(opencv plays a video file given as device)")
        if self.playback_file and Path(self.playback_file).suffix not in (".db3", ".bag"):
            raise ValueError(f"playback_file {self.playback_file!r}: a RealSense recording "
                             "(.db3, or .bag from librealsense before 2.56) is expected")
        if self.enable_depth and self.source != "realsense":
            raise ValueError(f"enable_depth needs source realsense, not {self.source!r}")
        if self.source == "opencv" and not self.device:
            raise ValueError("source opencv needs device (an index, /dev/video* or a file)")


class Camera(Node):
    def __init__(self) -> None:
        super().__init__("camera")
        self.params = read_parameters(self, CameraParams)
        self.frames = 0
        self.failures = 0
        self.stale = 0  # frames whose stamp did not advance: never published
        self.image_publisher = publisher(self, "camera/image_raw")
        self.info_publisher = publisher(self, "camera/camera_info")
        self.depth_publisher = None
        self.mirror = None
        self.source: Any = None  # RealSenseSource or OpenCVSource
        self.clock_map = CameraClock(as_recorded=bool(self.params.playback_file))
        self.last_stamp_ns: int | None = None
        self.last_frame_at = time.monotonic()
        self.waiting = False  # a recording waits for a reader before it plays
        self.ended = False  # a recording or video file played to its end
        self.fatal = ""  # why the camera was given up
        self.stopping = threading.Event()
        self.grabber: threading.Thread | None = None
        if self.params.source == "sim":
            from tdmpc_ros.sim.arm import MujocoArm

            self.mirror = MujocoArm(get_task(self.params.task, self.params.variant))
            subscribe(self, "world/state", self.on_world_state)
            self.static_tf_publisher = publisher(self, "/tf_static")
            self.static_tf_publisher.publish(self.sim_camera_frame())
        elif self.params.source in ("realsense", "opencv"):
            self.source = make_source(self.params, self.warn)
            if self.params.enable_depth:
                self.depth_publisher = publisher(self, "camera/depth/image_raw")
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"source {self.params.source}, {self.params.width} x "
                               f"{self.params.height}")

    def start(self) -> None:
        """Open the camera (fails at once, with the reason, when it is not there) and start the
        thread that reads it. A recording is opened and checked here but played only once
        camera/image_raw has a reader, so that no frame of it is lost to DDS discovery."""
        if self.source is None:
            return
        playback = bool(self.params.playback_file)
        try:
            if playback:
                self.source.check()
            else:
                self.source.start()
        except CameraError as error:
            raise ConfigError(f"source {self.params.source}: {error}") from error
        self.get_logger().info(f"reading {self.source.description}")
        self.grabber = threading.Thread(target=self.grab, args=(playback,), name="camera-grab",
                                        daemon=True)
        self.grabber.start()

    def grab(self, playback: bool) -> None:
        """The reading thread: each new frame is published from here at once."""
        try:
            if playback:
                self.waiting = True
                while self.image_publisher.get_subscription_count() == 0:
                    if self.stopping.wait(0.05):
                        return
                self.source.start()
                self.waiting = False
            self.last_frame_at = time.monotonic()
            while not self.stopping.is_set():
                self.on_frame(self.source.read())
        except EndOfStream as end:
            self.ended = True
            self.get_logger().info(f"{end}; {self.frames} frames published")
        except CameraError as error:
            self.fatal = str(error)
            self.get_logger().error(f"camera given up: {error}")
        except Exception as error:  # any other failure: the node must say why frames stop
            if not self.stopping.is_set():
                self.fatal = f"{type(error).__name__}: {error}"
                self.get_logger().error(f"camera thread failed: {self.fatal}")

    def on_frame(self, frame: Frame) -> None:
        stamp_ns = self.clock_map.to_ros_ns(frame)
        if self.last_stamp_ns is not None and stamp_ns <= self.last_stamp_ns:
            # The camera's clock did not advance: the same or an older frame, not a new one.
            self.stale += 1
            self.get_logger().warning(
                f"stale frame {frame.number}: stamp {stamp_ns} ns is not after the last "
                f"published {self.last_stamp_ns} ns ({self.stale} so far)",
                throttle_duration_sec=2.0)
            return
        self.last_stamp_ns = stamp_ns
        self.last_frame_at = time.monotonic()
        stamp = Time(nanoseconds=stamp_ns).to_msg()
        image = image_to_msg(frame.rgb, "rgb8", self.params.frame_id, stamp)
        publish_checked(self.image_publisher, image)
        publish_checked(self.info_publisher, self.camera_info(image.header,
                                                              self.source.intrinsics))
        if self.depth_publisher is not None and frame.depth is not None:
            publish_checked(self.depth_publisher,
                            image_to_msg(frame.depth, "16UC1", self.params.frame_id, stamp))
        self.frames += 1

    def warn(self, text: str) -> None:
        self.get_logger().warning(text)

    def on_world_state(self, world: WorldState) -> None:
        try:
            self.mirror.set_physics_positions(world.sim_qpos, world.sim_mocap_pos)
            pixels = self.mirror.render(self.params.height, self.params.width)
        except ValueError as error:  # a state of another scene: say so, keep running
            self.failures += 1
            refusals(self)("world/state (does not fit the scene)",
                           f"cannot render this world state: {error}")
            return
        image = image_to_msg(pixels, "rgb8", self.params.frame_id, world.header.stamp)
        publish_checked(self.image_publisher, image)
        publish_checked(self.info_publisher, self.camera_info(image.header))
        self.frames += 1

    def sim_camera_frame(self) -> Any:
        """/tf_static: the simulated camera's optical frame on the arm's base, where the scene
        puts it (a real camera's mount is the lab's calibration, published by its own tools)."""
        from tdmpc_ros.sim.frames import BASE_FRAME, camera_optical_transform

        translation, rotation = camera_optical_transform()
        return transforms_to_msg([(BASE_FRAME, self.params.frame_id, translation, rotation)],
                                 self.get_clock().now().to_msg())

    def camera_info(self, header: Any, camera: Intrinsics | None = None) -> CameraInfo:
        info = CameraInfo(header=header, width=self.params.width, height=self.params.height)
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        if camera is None:  # the simulated camera: a pinhole with the scene's field of view
            from tdmpc_ros.sim.frames import camera_focal_px

            focal = camera_focal_px(self.params.height)
            camera = Intrinsics(self.params.width, self.params.height, focal, focal,
                                self.params.width / 2.0, self.params.height / 2.0)
        fx, fy, cx, cy = (float(value) for value in (camera.fx, camera.fy, camera.cx, camera.cy))
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return info

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        values: dict[str, Any] = {"frames": self.frames, "failures": self.failures,
                                  "source": self.params.source}
        if self.source is None:
            level = WARN if self.failures else OK
            return level, f"{self.frames} frames", values
        silent_s = time.monotonic() - self.last_frame_at
        values.update({"stale": self.stale, "timeouts": self.source.timeouts,
                       "restarts": self.source.restarts, "seconds since last frame":
                       f"{silent_s:.1f}", "camera": self.source.description,
                       "clock resyncs": self.clock_map.resyncs})
        if self.fatal:
            return ERROR, f"camera given up: {self.fatal}", values
        if self.ended:
            return OK, f"recording ended after {self.frames} frames", values
        if self.waiting:
            return OK, "the recording plays once camera/image_raw has a reader", values
        if self.grabber is not None and silent_s > self.params.frame_timeout_s:
            return WARN, f"no new frame for {silent_s:.1f} s", values
        level = WARN if self.stale or self.source.timeouts else OK
        return level, f"{self.frames} frames", values

    def close(self) -> None:
        self.stopping.set()
        if self.grabber is not None:
            self.grabber.join(timeout=self.params.frame_timeout_s + 2.0)
        if self.source is not None:
            self.source.stop()
        if self.mirror is not None:
            self.mirror.close()


def make_source(params: CameraParams, warn: Any) -> Any:
    """The camera source for the parameters; its library is imported only when used."""
    if params.source == "realsense":
        from tdmpc_ros.hardware.realsense import RealSenseConfig, RealSenseSource

        return RealSenseSource(RealSenseConfig(
            width=params.width, height=params.height, serial=params.serial,
            playback_file=params.playback_file, playback_real_time=params.playback_real_time,
            capture_width=params.capture_width, capture_height=params.capture_height,
            fps=params.fps, enable_depth=params.enable_depth,
            warmup_frames=params.warmup_frames, frame_timeout_s=params.frame_timeout_s,
            max_restarts=params.max_restarts, hardware_reset=params.hardware_reset), warn)
    from tdmpc_ros.hardware.opencv_camera import OpenCVConfig, OpenCVSource

    return OpenCVSource(OpenCVConfig(
        width=params.width, height=params.height, device=params.device,
        capture_width=params.capture_width, capture_height=params.capture_height,
        fps=params.fps, frame_timeout_s=params.frame_timeout_s,
        max_reopens=params.max_restarts), warn)


def main() -> None:
    run(Camera)


if __name__ == "__main__":
    main()
