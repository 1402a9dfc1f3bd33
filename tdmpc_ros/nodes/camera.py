"""The camera: publishes the model's RGB frames (sensor_msgs/Image) and CameraInfo.

Sources, chosen by the ``source`` parameter:
- ``sim``: renders a mirror of the simulated scene each time the robot driver publishes a
  world/state, stamped with that state's stamp, so a frame shows exactly that instant;
- ``realsense``, ``opencv``: real cameras (the hardware issue);
- ``ros_topic``: a lab's camera driver or Gazebo already publishes; nothing to do here.

Frames are already at the model's input size (``width`` x ``height``), sensor-data QoS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from tdmpc_ros.interfaces import image_to_msg, publish_checked
from tdmpc_ros.msg import WorldState
from tdmpc_ros.nodes.common import (
    OK,
    WARN,
    ConfigError,
    Diagnostics,
    param,
    publisher,
    read_parameters,
    run,
    subscribe,
)
from tdmpc_ros.tasks import get_task

SOURCES = ("sim", "realsense", "opencv", "ros_topic")


@dataclass
class CameraParams:
    task: str = param("task whose simulated scene to render (sim source)")
    source: str = param("sim, realsense, opencv or ros_topic")
    serial: str = param("realsense: the camera's serial number (empty: the only one connected)")
    width: int = param("width of the published frames, the model's input (pixels)")
    height: int = param("height of the published frames (pixels)")
    frame_id: str = param("optical frame of the camera")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {SOURCES}")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"frame size {self.width} x {self.height} is out of range")


class Camera(Node):
    def __init__(self) -> None:
        super().__init__("camera")
        self.params = read_parameters(self, CameraParams)
        if self.params.source in ("realsense", "opencv"):
            raise ConfigError(f"source {self.params.source!r}: real cameras come with the "
                              "hardware issue; use source:=sim (backend:=sim)")
        self.frames = 0
        self.failures = 0
        self.image_publisher = publisher(self, "camera/image_raw")
        self.info_publisher = publisher(self, "camera/camera_info")
        self.mirror = None
        if self.params.source == "sim":
            from tdmpc_ros.sim.arm import MujocoArm

            self.mirror = MujocoArm(get_task(self.params.task))
            subscribe(self, "world/state", self.on_world_state)
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"source {self.params.source}, {self.params.width} x "
                               f"{self.params.height}")

    def on_world_state(self, world: WorldState) -> None:
        try:
            self.mirror.set_physics_positions(world.sim_qpos, world.sim_mocap_pos)
            pixels = self.mirror.render(self.params.height, self.params.width)
        except ValueError as error:  # a state of another scene: say so, keep running
            self.failures += 1
            self.get_logger().warning(f"cannot render this world state: {error}",
                                      throttle_duration_sec=2.0)
            return
        image = image_to_msg(pixels, "rgb8", self.params.frame_id, world.header.stamp)
        publish_checked(self.image_publisher, image)
        publish_checked(self.info_publisher, self.camera_info(image.header))
        self.frames += 1

    def camera_info(self, header: Any) -> CameraInfo:
        info = CameraInfo(header=header, width=self.params.width, height=self.params.height)
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        # A pinhole with the simulated camera's field of view is not needed by the model;
        # report an ideal camera centred on the image.
        focal = float(self.params.width)
        cx, cy = self.params.width / 2.0, self.params.height / 2.0
        info.k = [focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return info

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = WARN if self.failures else OK
        return level, f"{self.frames} frames", {"frames": self.frames, "failures": self.failures,
                                                "source": self.params.source}

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()


def main() -> None:
    run(Camera)


if __name__ == "__main__":
    main()
