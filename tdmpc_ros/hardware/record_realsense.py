"""Make a RealSense recording without a camera, for tests and for trying the camera node.

    python -m tdmpc_ros.hardware.record_realsense --out FILE.db3 --frames N --width W --height H

Frames are built with ``rs.software_device`` and written by ``rs.recorder`` (a rosbag2 ``.db3``
file, what the RealSense Viewer records too), so playing them back goes through the real
pyrealsense2 pipeline. Each frame shows a known pattern (``pattern``) and carries a known
timestamp (``stamps_ms``), so a reader can check content, order and stamps.

Frames are pushed in real time (1/fps apart): the recorder stores arrival times, and real-time
playback spaces frames by them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DOMAINS = ("hardware_clock", "global_time", "system_time")


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` (height x width x 3 uint8): red is the frame counter (index mod 256)
    everywhere; green is 0 in the top half, 255 in the bottom half (orientation); blue is 0
    inside the centred square (min(width, height) pixels a side) and 255 outside it, which a
    centre-crop to a square output removes."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = index % 256
    image[height // 2:, :, 1] = 255
    side = min(width, height)
    x, y = (width - side) // 2, (height - side) // 2
    image[:, :, 2] = 255
    image[y:y + side, x:x + side, 2] = 0
    return image


def depth_pattern(index: int, width: int, height: int) -> np.ndarray:
    """Depth of frame ``index``: 1000 + index mm everywhere (uint16)."""
    return np.full((height, width), 1000 + index, np.uint16)


def stamps_ms(frames: int, fps: int, start_ms: float) -> list[float]:
    return [start_ms + index * 1000.0 / fps for index in range(frames)]


def record(out: Path, frames: int, width: int, height: int, fps: int = 30,
           start_ms: float = 1000.0, domain: str = "hardware_clock", depth: bool = False,
           stamps: Sequence[float] | None = None,
           delays_s: Sequence[float] | None = None) -> list[float]:
    """Write the recording; returns the frames' timestamps (ms). ``stamps`` and ``delays_s``
    (the wait after each frame) replace the regular ones, e.g. to record a camera whose clock
    stalls or that stops for a while."""
    import pyrealsense2 as rs

    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # the recorder would add to an existing file
    device = rs.software_device()
    sensors = [device.add_sensor("Color")]
    profiles = [sensors[0].add_video_stream(
        _stream(rs, rs.stream.color, 0, rs.format.rgb8, 3, width, height, fps))]
    if depth:
        sensors.append(device.add_sensor("Depth"))
        sensors[1].add_read_only_option(rs.option.depth_units, 0.001)
        profiles.append(sensors[1].add_video_stream(
            _stream(rs, rs.stream.depth, 1, rs.format.z16, 2, width, height, fps)))
        identity = rs.extrinsics()
        identity.rotation, identity.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        profiles[1].register_extrinsics_to(profiles[0], identity)  # align needs it
        device.create_matcher(rs.matchers.default)
    recorder = rs.recorder(str(out), device)
    queue = rs.frame_queue(frames * 2 + 2)
    for sensor, profile in zip(sensors, profiles, strict=True):
        sensor.open(profile)
        sensor.start(queue)
    stamps = list(stamps) if stamps is not None else stamps_ms(frames, fps, start_ms)
    delays_s = list(delays_s) if delays_s is not None else [1.0 / fps] * frames
    if len(stamps) != frames or len(delays_s) != frames:
        raise ValueError(f"{frames} frames need {frames} stamps and delays")
    rs_domain = getattr(rs.timestamp_domain, domain)
    for index, stamp in enumerate(stamps):
        images = [pattern(index, width, height)]
        if depth:
            images.append(depth_pattern(index, width, height))
        for sensor, profile, image in zip(sensors, profiles, images, strict=True):
            frame = rs.software_video_frame()
            frame.pixels = image
            frame.bpp = image.itemsize * (image.shape[2] if image.ndim == 3 else 1)
            frame.stride = width * frame.bpp
            frame.timestamp = stamp
            frame.domain = rs_domain
            frame.frame_number = index
            frame.profile = profile.as_video_stream_profile()
            sensor.on_video_frame(frame)
        time.sleep(delays_s[index])
    for sensor in sensors:
        sensor.stop()
        sensor.close()
    del recorder  # closes the file
    return stamps


def _stream(rs: object, kind: object, uid: int, fmt: object, bpp: int, width: int,
            height: int, fps: int) -> object:
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = width, height
    intrinsics.fx = intrinsics.fy = float(max(width, height))
    intrinsics.ppx, intrinsics.ppy = width / 2.0, height / 2.0
    intrinsics.model, intrinsics.coeffs = rs.distortion.none, [0.0] * 5
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = kind, 0, uid
    stream.width, stream.height, stream.fps = width, height, fps
    stream.bpp, stream.fmt, stream.intrinsics = bpp, fmt, intrinsics
    return stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .db3 file to write")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--width", type=int, default=84)
    parser.add_argument("--height", type=int, default=84)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--start-ms", type=float, default=1000.0,
                        help="timestamp of the first frame (ms); then 1000/fps apart")
    parser.add_argument("--domain", choices=DOMAINS, default="hardware_clock")
    parser.add_argument("--depth", action="store_true", help="also a depth stream (z16)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".db3":
        parser.error("--out: the recorder writes rosbag2 files; name it FILE.db3")
    if args.frames < 1 or args.width < 1 or args.height < 1 or not 1 <= args.fps <= 300:
        parser.error("--frames, --width, --height must be positive and --fps in [1, 300]")
    stamps = record(args.out, args.frames, args.width, args.height, args.fps, args.start_ms,
                    args.domain, args.depth)
    print(f"{args.out}: {len(stamps)} frames {args.width}x{args.height} at {args.fps} fps, "
          f"stamps {stamps[0]:.1f} to {stamps[-1]:.1f} ms ({args.domain})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
