"""A plain USB camera (or a video file) through cv2.VideoCapture.

``device`` is a camera index ("0"), a device path ("/dev/video2") or a video file. Frames are
fitted to the model's input (frames.fit, the same as the RealSense's) and stamped with the
host's clock when grab() returns: a USB camera has no clock of its own that OpenCV exposes.

Live: when grab() fails (cable pulled, driver hiccup) the camera is reopened, at most
``max_reopens`` times in a row, then a CameraError says so. A video file ends with EndOfStream,
and plays in real time (its own fps) unless ``real_time`` is off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from tdmpc_ros.hardware.frames import CameraError, EndOfStream, Frame, fit


@dataclass
class OpenCVConfig:
    width: int  # output frames, the model's input
    height: int
    device: str = "0"  # an index, a /dev/video* path or a video file
    capture_width: int = 0  # ask the camera for this size; 0: its default
    capture_height: int = 0
    fps: int = 0  # ask the camera for this rate; 0: its default
    frame_timeout_s: float = 1.0
    max_reopens: int = 3  # consecutive reopens without a frame before giving up
    real_time: bool = True  # a video file: at its own fps (False: as fast as read)
    live: bool | None = None  # None: a regular file is a recording, anything else a camera


class OpenCVSource:
    def __init__(self, config: OpenCVConfig, warn: Callable[[str], None] = print) -> None:
        self.config = config
        self.warn = warn
        self.live = (not Path(config.device).is_file()) if config.live is None else config.live
        self.capture: Any = None
        self.intrinsics = None  # unknown for a plain camera
        self.timeouts = 0  # failed grabs
        self.restarts = 0  # successful reopens
        self.frames = 0
        self._failures_in_a_row = 0
        self._next_due = 0.0  # real-time file playback: when the next frame is due

    @property
    def description(self) -> str:
        return f"{'camera' if self.live else 'video file'} {self.config.device}"

    def start(self) -> None:
        device = self.config.device
        if not device.isdigit() and not Path(device).exists():
            raise CameraError(f"{device}: no such file or device")
        if not self._open():
            raise CameraError(f"cannot open {self.description} with OpenCV (no such device or "
                              "file, or it is busy)")

    def read(self) -> Frame:
        while True:
            if self.capture is not None:
                self._pace()
            if self.capture is not None and self.capture.grab():
                host_ns = time.time_ns()
                ok, bgr = self.capture.retrieve()
                if ok and bgr is not None:
                    self._failures_in_a_row = 0
                    self.frames += 1
                    return Frame(rgb=fit(bgr[:, :, ::-1], self.config.width, self.config.height),
                                 camera_ms=host_ns / 1e6, domain="system_time",
                                 number=self.frames - 1, host_ns=host_ns)
            if not self.live:
                raise EndOfStream(f"{self.description}: end of the file after {self.frames} "
                                  "frames")
            self._reopen()

    def stop(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def _open(self) -> bool:
        device = self.config.device
        capture = cv2.VideoCapture(int(device) if device.isdigit() else device)
        if not capture.isOpened():
            capture.release()
            return False
        if self.live:
            # Bound a blocking grab where the backend supports it (V4L2 waits 10 s otherwise).
            timeout_ms = int(self.config.frame_timeout_s * 1000)
            for name in ("CAP_PROP_READ_TIMEOUT_MSEC", "CAP_PROP_OPEN_TIMEOUT_MSEC"):
                if hasattr(cv2, name):
                    capture.set(getattr(cv2, name), timeout_ms)
            if self.config.capture_width and self.config.capture_height:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.capture_width)
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.capture_height)
            if self.config.fps:
                capture.set(cv2.CAP_PROP_FPS, self.config.fps)
        self.capture = capture
        self._next_due = time.monotonic()
        return True

    def _reopen(self) -> None:
        """Release and reopen the camera after a failed grab; CameraError after max_reopens
        attempts in a row that brought no frame."""
        self.timeouts += 1
        while True:
            self._failures_in_a_row += 1
            if self._failures_in_a_row > self.config.max_reopens:
                raise CameraError(f"{self.description}: no frame, and {self.config.max_reopens} "
                                  "reopens did not help")
            self.warn(f"{self.description}: no frame; reopening ({self._failures_in_a_row} of "
                      f"{self.config.max_reopens})")
            self.stop()
            if self._open():
                self.restarts += 1
                return
            time.sleep(min(1.0, self.config.frame_timeout_s))

    def _pace(self) -> None:
        if self.live or not self.config.real_time:
            return
        fps = self.capture.get(cv2.CAP_PROP_FPS) or 30.0
        delay = self._next_due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next_due = max(self._next_due, time.monotonic() - 1.0) + 1.0 / fps
