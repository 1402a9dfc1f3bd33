"""What the camera sources share: the frame they return, fitting it to the model's input size,
and mapping a camera's clock onto ROS time. No ROS and no camera library here."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


class CameraError(RuntimeError):
    """The camera cannot be opened or gave no frame after every retry; the text says why."""


class EndOfStream(CameraError):
    """A recording (RealSense playback file, video file) has no more frames."""


# Timestamp domains, named as librealsense names them:
# - "global_time": the camera's hardware clock mapped by librealsense onto the host's clock
#   (ms since the Unix epoch); what a live D400 gives by default;
# - "hardware_clock": the camera's own clock (ms since it powered up); not the host's;
# - "system_time": the host's clock when the frame reached librealsense (or, for OpenCV,
#   when grab() returned), ms since the Unix epoch.
HOST_DOMAINS = ("global_time", "system_time")


@dataclass
class Frame:
    rgb: np.ndarray  # height x width x 3, uint8, already at the model's size
    camera_ms: float  # the frame's timestamp, ms, in ``domain``
    domain: str  # "global_time", "hardware_clock" or "system_time"
    number: int  # the camera's frame counter
    host_ns: int  # the host's clock (time.time_ns) when the frame was read
    depth: np.ndarray | None = None  # height x width uint16 (depth units), aligned to rgb


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera: focal lengths and principal point in pixels, for width x height."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float


def crop_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """The centred (x, y, w, h) box of the input with the output's aspect ratio, as large as
    fits: cropping it and resizing gives the output without distorting the image."""
    if width * out_height > height * out_width:  # input wider than output: cut left and right
        crop_w, crop_h = round(height * out_width / out_height), height
    else:  # input taller (or same ratio): cut top and bottom
        crop_w, crop_h = width, round(width * out_height / out_width)
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def fit(image: np.ndarray, out_width: int, out_height: int, nearest: bool = False) -> np.ndarray:
    """Centre-crop ``image`` to the output's aspect ratio, then resize it to out_width x
    out_height. Area averaging for colour (no aliasing when shrinking); nearest neighbour for
    depth, where averaging would invent distances at object edges."""
    height, width = image.shape[:2]
    x, y, w, h = crop_box(width, height, out_width, out_height)
    cropped = image[y:y + h, x:x + w]
    if (w, h) == (out_width, out_height):
        return cropped.copy()  # never a view of the camera's buffer, which it reuses
    shrinking = w >= out_width and h >= out_height
    interpolation = (cv2.INTER_NEAREST if nearest
                     else cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return cv2.resize(cropped, (out_width, out_height), interpolation=interpolation)


def fit_intrinsics(camera: Intrinsics, out_width: int, out_height: int) -> Intrinsics:
    """The intrinsics of the frames ``fit`` makes from this camera's."""
    x, y, w, h = crop_box(camera.width, camera.height, out_width, out_height)
    sx, sy = out_width / w, out_height / h
    return Intrinsics(out_width, out_height, camera.fx * sx, camera.fy * sy,
                      (camera.cx - x + 0.5) * sx - 0.5, (camera.cy - y + 0.5) * sy - 0.5)


class CameraClock:
    """Maps frame timestamps onto ROS time (ns since the epoch, the host's clock).

    - ``as_recorded`` (playback): the recording's own stamps, unchanged, whatever their domain,
      so that a replayed session keeps the times it was recorded at;
    - global_time and system_time are already the host's clock: taken as they are;
    - hardware_clock counts from the camera's power-up: it is shifted by an offset, the smallest
      (host - camera) difference seen so far, i.e. the frame that arrived with the least
      latency. A jump (the camera restarted, or drifted a second away) starts a new offset.
    """

    RESYNC_NS = 1_000_000_000

    def __init__(self, as_recorded: bool = False) -> None:
        self.as_recorded = as_recorded
        self.offset_ns: int | None = None
        self.resyncs = 0

    def to_ros_ns(self, frame: Frame) -> int:
        camera_ns = round(frame.camera_ms * 1e6)
        if self.as_recorded or frame.domain in HOST_DOMAINS:
            return camera_ns
        difference = frame.host_ns - camera_ns
        if self.offset_ns is not None and abs(difference - self.offset_ns) > self.RESYNC_NS:
            self.offset_ns = None
            self.resyncs += 1
        if self.offset_ns is None or difference < self.offset_ns:
            self.offset_ns = difference
        return camera_ns + self.offset_ns
