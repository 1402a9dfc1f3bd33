"""Camera sources without ROS: RealSense recordings played through the real pyrealsense2
pipeline, a video file through cv2.VideoCapture, and the shared crop / resize / clock code."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdmpc_ros.hardware import record_realsense
from tdmpc_ros.hardware.frames import (
    CameraClock,
    CameraError,
    EndOfStream,
    Frame,
    Intrinsics,
    crop_box,
    fit,
    fit_intrinsics,
)
from tdmpc_ros.hardware.opencv_camera import OpenCVConfig, OpenCVSource
from tdmpc_ros.hardware.realsense import RealSenseConfig, RealSenseSource, connected_serials

FRAMES, WIDTH, HEIGHT, FPS = 24, 128, 96, 60  # recorded; played back as 84 x 84


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    out = tmp_path_factory.mktemp("realsense") / "pattern.db3"
    assert record_realsense.main(["--out", str(out), "--frames", str(FRAMES), "--width",
                                  str(WIDTH), "--height", str(HEIGHT), "--fps", str(FPS)]) == 0
    return out, record_realsense.stamps_ms(FRAMES, FPS, 1000.0)


def play(source: RealSenseSource | OpenCVSource) -> list[Frame]:
    frames = []
    source.start()
    try:
        with pytest.raises(EndOfStream):
            while True:
                frames.append(source.read())
    finally:
        source.stop()
    return frames


def assert_pattern(frame: Frame, index: int) -> None:
    """The recording's pattern (record_realsense.pattern) after the crop to a square."""
    assert frame.rgb.shape == (84, 84, 3) and frame.rgb.dtype == np.uint8
    assert (frame.rgb[:, :, 0] == index).all(), "red is the frame counter"
    assert frame.rgb[:, :, 2].max() == 0, "the centre crop removes the blue side bands"
    assert (frame.rgb[:30, :, 1] == 0).all() and (frame.rgb[-30:, :, 1] == 255).all(), \
        "top stays on top"


def test_the_recording_plays_back_through_the_pipeline_intact(recording) -> None:
    path, stamps = recording
    source = RealSenseSource(RealSenseConfig(84, 84, playback_file=str(path),
                                             playback_real_time=False, frame_timeout_s=0.5))
    frames = play(source)
    # Every frame in order to the last. (On a loaded machine librealsense's playback now and
    # then drops the very first frame as the pipeline starts; seen once in three full runs.)
    numbers = [frame.number for frame in frames]
    assert numbers == list(range(numbers[0], FRAMES)) and numbers[0] <= 1, numbers
    for frame in frames:
        assert_pattern(frame, frame.number)
        assert frame.domain == "hardware_clock"
        assert frame.camera_ms == pytest.approx(stamps[frame.number], abs=1e-3)
    # As recorded: the camera's stamps, strictly increasing, 1000 / fps ms apart.
    clock = CameraClock(as_recorded=True)
    ros_ns = [clock.to_ros_ns(frame) for frame in frames]
    assert np.all(np.diff(ros_ns) > 0)
    assert np.diff(ros_ns) == pytest.approx(1e9 / FPS, abs=1e3)
    # Intrinsics follow the crop (128 -> 96 wide) and the resize (96 -> 84).
    assert source.intrinsics.fx == pytest.approx(max(WIDTH, HEIGHT) * 84 / 96)
    assert source.intrinsics.width == 84 and source.timeouts == 0


def test_real_time_playback_keeps_the_recorded_pace(recording) -> None:
    path, _ = recording
    source = RealSenseSource(RealSenseConfig(84, 84, playback_file=str(path),
                                             frame_timeout_s=0.5))
    start = time.monotonic()
    frames = play(source)
    first_to_last = time.monotonic() - start - 0.5  # the last wait is the end's timeout
    numbers = [frame.number for frame in frames]
    assert numbers == sorted(set(numbers)) and len(numbers) >= FRAMES - 2
    assert first_to_last >= 0.8 * (FRAMES - 1) / FPS


def test_depth_is_aligned_and_paired_with_its_colour_frame(tmp_path) -> None:
    path = tmp_path / "depth.db3"
    record_realsense.record(path, 12, WIDTH, HEIGHT, fps=FPS, depth=True)
    frames = play(RealSenseSource(RealSenseConfig(
        84, 84, playback_file=str(path), enable_depth=True, frame_timeout_s=0.5)))
    # librealsense's colour-depth syncer drops a pair or two in playback, more on a loaded
    # machine; what arrives must be paired right.
    assert len(frames) >= 6
    for frame in frames:
        assert frame.depth.shape == (84, 84) and frame.depth.dtype == np.uint16
        # The same instant's depth, in mm; rs.align leaves a few holes (0: no depth).
        assert set(np.unique(frame.depth)) <= {0, 1000 + frame.number}
        assert (frame.depth > 0).mean() > 0.95
        assert (frame.rgb[:, :, 0] == frame.number).all()


def test_bad_recordings_fail_at_once_with_the_reason(recording, tmp_path) -> None:
    path, _ = recording
    not_a_recording = tmp_path / "notes.db3"
    not_a_recording.write_text("hello")
    cases = [
        (RealSenseConfig(84, 84, playback_file=str(tmp_path / "missing.db3")), "no such file"),
        (RealSenseConfig(84, 84, playback_file=str(not_a_recording)), "cannot play colour"),
        (RealSenseConfig(84, 84, playback_file=str(path), enable_depth=True),
         "cannot play colour + depth"),
    ]
    for config, message in cases:
        start = time.monotonic()
        with pytest.raises(CameraError, match=message.replace("+", r"\+")):
            RealSenseSource(config).check()
        assert time.monotonic() - start < 2.0


def test_no_camera_fails_fast_with_a_clear_message() -> None:
    if connected_serials():
        pytest.skip("a RealSense is connected to this machine")
    for serial in ("", "123456789"):
        start = time.monotonic()
        with pytest.raises(CameraError, match="no RealSense camera connected.*playback_file"):
            RealSenseSource(RealSenseConfig(84, 84, serial=serial)).start()
        assert time.monotonic() - start < 2.0  # pipeline.start() would take ~15 s


def test_the_recording_tool_refuses_other_formats(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        record_realsense.main(["--out", str(tmp_path / "x.bag"), "--frames", "2"])
    assert "FILE.db3" in capsys.readouterr().err
    assert not (tmp_path / "x.bag").exists()


# --- OpenCV ---------------------------------------------------------------------------------

VIDEO_FRAMES, VIDEO_FPS = 12, 30


@pytest.fixture
def video(tmp_path) -> Path:
    """An MJPG video, 160 x 120: frame i has red = 20 i, green 0 on top and 255 below, blue 0."""
    path = tmp_path / "video.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (160, 120))
    assert writer.isOpened()
    for index in range(VIDEO_FRAMES):
        rgb = np.zeros((120, 160, 3), np.uint8)
        rgb[:, :, 0] = 20 * index
        rgb[60:, :, 1] = 255
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


def assert_video_frame(frame: Frame, index: int) -> None:
    assert frame.rgb.shape == (84, 84, 3)
    centre = frame.rgb[10:30, 20:60].reshape(-1, 3).mean(axis=0)  # away from JPEG's edges
    assert abs(centre[0] - 20 * index) < 8 and centre[2] < 8, "RGB order, frame in order"
    assert frame.rgb[-20:, 20:60, 1].mean() > 240


def test_opencv_plays_a_video_file_fitted_and_stamped_then_ends(video) -> None:
    source = OpenCVSource(OpenCVConfig(84, 84, device=str(video), real_time=False))
    before = time.time_ns()
    frames = play(source)
    assert len(frames) == VIDEO_FRAMES and not source.live
    for index, frame in enumerate(frames):
        assert_video_frame(frame, index)
        assert frame.domain == "system_time"
    stamps = [frame.camera_ms for frame in frames]
    assert np.all(np.diff(stamps) > 0) and stamps[0] * 1e6 >= before


def test_opencv_file_in_real_time_keeps_its_fps(video) -> None:
    start = time.monotonic()
    frames = play(OpenCVSource(OpenCVConfig(84, 84, device=str(video))))
    assert len(frames) == VIDEO_FRAMES
    assert time.monotonic() - start >= 0.9 * (VIDEO_FRAMES - 1) / VIDEO_FPS


def test_opencv_reopens_a_camera_that_stops_and_gives_up_when_it_is_gone(video) -> None:
    warnings: list[str] = []
    # A file read as if it were a camera: its end is a failed grab, reopening starts it again.
    source = OpenCVSource(OpenCVConfig(84, 84, device=str(video), real_time=False, live=True,
                                       frame_timeout_s=0.05, max_reopens=2), warnings.append)
    source.start()
    for index in list(range(VIDEO_FRAMES)) * 2:
        assert_video_frame(source.read(), index)
    assert source.restarts == 1 and source.timeouts == 1 and "reopening (1 of 2)" in warnings[0]
    video.unlink()  # the camera is unplugged for good
    with pytest.raises(CameraError, match="2 reopens did not help"):
        for _ in range(VIDEO_FRAMES + 1):
            source.read()
    assert source.restarts == 1 and len(warnings) == 3
    source.stop()


def test_opencv_missing_device_fails_at_once(tmp_path) -> None:
    start = time.monotonic()
    with pytest.raises(CameraError, match="none.avi: no such file or device"):
        OpenCVSource(OpenCVConfig(84, 84, device=str(tmp_path / "none.avi"))).start()
    assert time.monotonic() - start < 2.0


# --- Shared code ----------------------------------------------------------------------------

def test_fit_crops_the_centre_and_resizes_without_distortion() -> None:
    assert crop_box(640, 480, 84, 84) == (80, 0, 480, 480)
    assert crop_box(480, 640, 84, 84) == (0, 80, 480, 480)
    assert crop_box(640, 480, 160, 90) == (0, 60, 640, 360)
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, 80:560] = 200  # the centre square
    assert (fit(image, 84, 84) == 200).all()
    depth = np.full((480, 640), 7, np.uint16)
    depth[240:, :] = 9
    fitted = fit(depth, 84, 84, nearest=True)
    assert fitted.dtype == np.uint16 and set(np.unique(fitted)) == {7, 9}, "no invented depths"
    same = np.arange(84 * 84 * 3, dtype=np.uint8).reshape(84, 84, 3)
    out = fit(same, 84, 84)
    assert (out == same).all() and not np.shares_memory(out, same)
    camera = fit_intrinsics(Intrinsics(640, 480, 600.0, 600.0, 319.5, 239.5), 84, 84)
    assert camera.fx == pytest.approx(600 * 84 / 480) and camera.cx == pytest.approx(41.5)


def test_the_camera_clock_maps_a_hardware_clock_onto_host_time() -> None:
    def frame(camera_ms: float, host_ms: float, domain: str = "hardware_clock") -> Frame:
        return Frame(np.zeros((1, 1, 3), np.uint8), camera_ms, domain, 0, int(host_ms * 1e6))

    clock = CameraClock()
    base = 1.7e12  # host ms since the epoch
    first = clock.to_ros_ns(frame(5000.0, base + 40))  # arrived 40 ms after exposure
    second = clock.to_ros_ns(frame(5033.0, base + 33 + 10))  # less latency: a better offset
    assert first == pytest.approx((base + 40) * 1e6, abs=1e3)
    assert second == pytest.approx((base + 43) * 1e6, abs=1e3)
    third = clock.to_ros_ns(frame(5066.0, base + 66 + 25))
    assert third == pytest.approx((base + 66 + 10) * 1e6, abs=1e3), "the least latency wins"
    restarted = clock.to_ros_ns(frame(10.0, base + 5000))  # the camera's clock restarted
    assert clock.resyncs == 1 and restarted == pytest.approx((base + 5000) * 1e6, abs=1e3)
    assert CameraClock().to_ros_ns(frame(base, base + 3, "global_time")) == base * 1e6
    assert CameraClock(as_recorded=True).to_ros_ns(frame(5000.0, base)) == 5_000_000_000
