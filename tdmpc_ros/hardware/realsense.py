"""An Intel RealSense camera (or a recording of one) through the pyrealsense2 pipeline.

Live: the colour stream (and depth aligned to it when asked) of the camera with the given
serial, or of the only one connected; the first frames after each start are dropped while
auto-exposure settles. When frames stop, the pipeline is restarted (optionally after a
hardware_reset of the camera) a bounded number of times, then a CameraError says so.

Playback: ``playback_file`` is a recording (rosbag2 ``.db3``, as rs.recorder and the RealSense
Viewer write them), played once through the same pipeline, in real time or as fast as the
reader takes frames. Its stamps are the recorded ones.

Frames come out already fitted to the model's input (frames.fit) with the camera's timestamp
and its domain (frames.CameraClock maps them onto ROS time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdmpc_ros.hardware.frames import (
    CameraError,
    EndOfStream,
    Frame,
    Intrinsics,
    fit,
    fit_intrinsics,
)

# In a process that also runs ROS 2, create the rclpy node first: a process that loads
# librealsense before its first node segfaults at exit (seen with pyrealsense2 2.59.1).
try:  # only a machine with a RealSense needs the library; importing this module must not
    import pyrealsense2 as rs
except ImportError as _error:  # pragma: no cover - the project's venv has it
    rs = None
    _IMPORT_ERROR: ImportError | None = _error
else:
    _IMPORT_ERROR = None


@dataclass
class RealSenseConfig:
    width: int  # output frames, the model's input
    height: int
    serial: str = ""  # empty: the only camera connected
    playback_file: str = ""  # a recording to play instead of a live camera
    playback_real_time: bool = True  # False: as fast as the reader takes frames
    capture_width: int = 640  # the camera's stream, before fitting
    capture_height: int = 480
    fps: int = 30
    enable_depth: bool = False
    warmup_frames: int = 30  # live only: dropped after each start (auto-exposure)
    frame_timeout_s: float = 1.0
    max_restarts: int = 3  # consecutive restarts without a frame before giving up
    hardware_reset: bool = False  # reset the camera (USB re-enumeration) from the 2nd restart


def connected_serials() -> list[str]:
    """Serial numbers of the RealSense cameras connected now (answers at once, even if none)."""
    _require_library()
    return [device.get_info(rs.camera_info.serial_number)
            for device in rs.context().query_devices()]


class RealSenseSource:
    def __init__(self, config: RealSenseConfig, warn: Callable[[str], None] = print) -> None:
        _require_library()
        self.config = config
        self.warn = warn
        self.pipeline: Any = None
        self.playback: Any = None
        self.align = rs.align(rs.stream.color) if config.enable_depth else None
        self.serial = config.serial
        self.intrinsics: Intrinsics | None = None  # of the fitted frames
        self.depth_to_mm = 1.0
        self.timeouts = 0  # frame_timeout_s passed without a new frame
        self.restarts = 0
        self.duplicates = 0  # framesets repeating a colour frame already returned
        self._checked = False
        self._failures_in_a_row = 0
        self._to_drop = 0
        self._last: tuple[int, float] | None = None
        self._new_at = 0.0  # time.monotonic() of the last new colour frame

    @property
    def description(self) -> str:
        if self.config.playback_file:
            return f"RealSense recording {self.config.playback_file}"
        return f"RealSense {self.serial or '(no serial yet)'}"

    def check(self) -> None:
        """Find the camera, or open the recording and resolve its streams, without streaming.
        A CameraError says why not, at once: with no camera connected, pipeline.start() would
        wait ~15 s before saying so."""
        if self.config.playback_file:
            if not Path(self.config.playback_file).is_file():
                raise CameraError(f"playback_file {self.config.playback_file!r}: no such file")
            try:
                self._config().resolve(rs.pipeline_wrapper(rs.pipeline()))
            except RuntimeError as error:
                raise CameraError(f"{self.description}: cannot play {self._wanted()} from it: "
                                  f"{error}") from error
        else:
            self.serial = self._choose_serial()
        self._checked = True

    def start(self) -> None:
        """Start streaming (a recording from its beginning); check() first if not done."""
        if not self._checked:
            self.check()
        try:
            self._start_pipeline()
        except RuntimeError as error:
            raise CameraError(f"{self.description}: cannot start {self._wanted()}: "
                              f"{error}") from error

    def read(self) -> Frame:
        """The next new frame; waits at most frame_timeout_s per attempt, restarting the
        pipeline between attempts. EndOfStream at the end of a recording."""
        deadline = time.monotonic() + self.config.frame_timeout_s
        while True:
            timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                frames = self.pipeline.wait_for_frames(timeout_ms)
            except RuntimeError as error:
                if self._playback_ended():
                    raise EndOfStream(f"{self.description}: end of the recording") from error
                self._recover(str(error))
                deadline = time.monotonic() + self.config.frame_timeout_s
                continue
            frame = self._new_frame(frames)
            if frame is not None:
                self._failures_in_a_row = 0
                return frame
            # A frame dropped while warming up counts as the camera being alive.
            deadline = max(deadline, self._new_at + self.config.frame_timeout_s)
            if time.monotonic() > deadline:  # framesets keep coming, but nothing new in them
                self._recover("no new colour frame")
                deadline = time.monotonic() + self.config.frame_timeout_s

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:  # already stopped (a failed restart)
                pass
            self.pipeline = None

    # --- internals ------------------------------------------------------------------------

    def _choose_serial(self) -> str:
        serials = connected_serials()
        if not serials:
            raise CameraError("no RealSense camera connected (pyrealsense2 finds none): check "
                              "the USB 3 cable and rs-enumerate-devices, or set playback_file "
                              "to replay a recording")
        if self.config.serial:
            if self.config.serial not in serials:
                raise CameraError(f"no RealSense with serial {self.config.serial!r}; connected: "
                                  f"{', '.join(serials)}")
            return self.config.serial
        if len(serials) > 1:
            raise CameraError(f"{len(serials)} RealSense cameras connected ({', '.join(serials)})"
                              "; set serial to choose one")
        return serials[0]

    def _wanted(self) -> str:
        c = self.config
        size = "" if c.playback_file else f" {c.capture_width}x{c.capture_height}@{c.fps}"
        return f"colour{size}" + (" + depth" if c.enable_depth else "")

    def _config(self) -> Any:
        c = self.config
        config = rs.config()
        if c.playback_file:
            config.enable_device_from_file(c.playback_file, repeat_playback=False)
            config.enable_stream(rs.stream.color)  # whatever size and format were recorded
            if c.enable_depth:
                config.enable_stream(rs.stream.depth)
        else:
            config.enable_device(self.serial)
            config.enable_stream(rs.stream.color, c.capture_width, c.capture_height,
                                 rs.format.rgb8, c.fps)
            if c.enable_depth:
                config.enable_stream(rs.stream.depth, c.capture_width, c.capture_height,
                                     rs.format.z16, c.fps)
        return config

    def _start_pipeline(self) -> None:
        c = self.config
        pipeline = rs.pipeline()
        profile = pipeline.start(self._config())
        self.pipeline = pipeline
        device = profile.get_device()
        if c.playback_file:
            self.playback = device.as_playback()
            self.playback.set_real_time(c.playback_real_time)
            self._to_drop = 0  # a recording has no auto-exposure to wait for
        else:
            self._to_drop = c.warmup_frames
        color = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        self.intrinsics = fit_intrinsics(
            Intrinsics(color.width, color.height, color.fx, color.fy, color.ppx, color.ppy),
            c.width, c.height)
        if c.enable_depth:
            # ROS's 16UC1 depth is in millimetres; D400 cameras count 1 mm by default.
            self.depth_to_mm = device.first_depth_sensor().get_depth_scale() * 1000.0

    def _playback_ended(self) -> bool:
        return (self.playback is not None
                and self.playback.current_status() == rs.playback_status.stopped)

    def _new_frame(self, frames: Any) -> Frame | None:
        host_ns = time.time_ns()
        if self.align is not None:
            frames = self.align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        key = (color.get_frame_number(), color.get_timestamp())
        if key == self._last:  # the syncer pairs one colour frame with two depth frames
            self.duplicates += 1
            return None
        depth_frame = None
        if self.align is not None:
            # The syncer may first pair a new colour frame with the previous depth frame; wait
            # for the set where both are from the same instant (within half a frame period).
            depth_frame = frames.get_depth_frame()
            half_period_ms = 500.0 / max(1, color.get_profile().fps())
            if not depth_frame or abs(depth_frame.get_timestamp() - key[1]) > half_period_ms:
                return None
        self._last = key
        self._new_at = time.monotonic()
        if self._to_drop > 0:
            self._to_drop -= 1
            return None
        pixels = np.asanyarray(color.get_data())
        if color.get_profile().format() == rs.format.bgr8:
            pixels = pixels[:, :, ::-1]
        elif color.get_profile().format() != rs.format.rgb8:
            raise CameraError(f"{self.description}: colour format "
                              f"{color.get_profile().format()} is neither rgb8 nor bgr8")
        depth = None
        if depth_frame is not None:
            depth = fit(np.asanyarray(depth_frame.get_data()), self.config.width,
                        self.config.height, nearest=True)
            if abs(self.depth_to_mm - 1.0) > 1e-6:
                depth = np.clip(depth * self.depth_to_mm, 0, 65535).astype(np.uint16)
        return Frame(rgb=fit(pixels, self.config.width, self.config.height),
                     camera_ms=float(key[1]), number=int(key[0]),
                     domain=str(color.get_frame_timestamp_domain()).rsplit(".", 1)[-1],
                     host_ns=host_ns, depth=depth)

    def _recover(self, why: str) -> None:
        """Restart the pipeline after frame_timeout_s without a frame; give up with a
        CameraError after max_restarts restarts in a row that brought no frame."""
        self.timeouts += 1
        while True:
            self._failures_in_a_row += 1
            if self._failures_in_a_row > self.config.max_restarts:
                raise CameraError(f"{self.description}: no frame for "
                                  f"{self.config.frame_timeout_s:g} s, and "
                                  f"{self.config.max_restarts} restarts did not help ({why})")
            if self.config.playback_file:
                # A recording that pauses: restarting would replay it from its beginning.
                self.warn(f"{self.description}: no frame for {self.config.frame_timeout_s:g} s "
                          f"({why}); waiting ({self._failures_in_a_row} of "
                          f"{self.config.max_restarts})")
                return
            self.warn(f"{self.description}: no frame for {self.config.frame_timeout_s:g} s "
                      f"({why}); restart {self._failures_in_a_row} of "
                      f"{self.config.max_restarts}")
            self.stop()
            if (self.config.hardware_reset and not self.config.playback_file
                    and self._failures_in_a_row > 1):
                self._hardware_reset()
            try:
                self._start_pipeline()
            except RuntimeError as error:
                why = f"restart failed: {error}"
                time.sleep(min(1.0, self.config.frame_timeout_s))
                continue
            self.restarts += 1
            return

    def _hardware_reset(self) -> None:
        """Power-cycle the camera's USB connection and wait (at most 15 s) until it is back."""
        for device in rs.context().query_devices():
            if device.get_info(rs.camera_info.serial_number) == self.serial:
                self.warn(f"{self.description}: hardware reset")
                device.hardware_reset()
                break
        time.sleep(2.0)  # it leaves the bus first
        deadline = time.monotonic() + 15.0
        while self.serial not in connected_serials() and time.monotonic() < deadline:
            time.sleep(0.5)


def _require_library() -> None:
    if rs is None:
        raise CameraError(f"pyrealsense2 cannot be imported ({_IMPORT_ERROR}); it needs the "
                          "Debian package libusb-1.0-0")
