"""The message checks and the NumPy <-> sensor_msgs/Image conversion, without DDS."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image

from tdmpc_ros.interfaces import (
    IMAGE_ENCODINGS,
    MessageError,
    check_action,
    check_message,
    image_to_msg,
    msg_to_image,
)

import samples


@pytest.mark.parametrize("encoding", sorted(IMAGE_ENCODINGS))
def test_image_round_trip_for_every_encoding(encoding: str) -> None:
    dtype, channels = IMAGE_ENCODINGS[encoding]
    shape = (6, 5) if channels == 1 else (6, 5, channels)
    pixels = (np.arange(np.prod(shape)) * 37 % 251).astype(dtype).reshape(shape)
    message = image_to_msg(pixels, encoding, "camera")
    assert message.step == 5 * channels * dtype.itemsize
    np.testing.assert_array_equal(msg_to_image(message), pixels)


def test_image_rows_with_padding_and_big_endian_data_are_read() -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    message = Image(height=3, width=4, encoding="16UC1", is_bigendian=1, step=10)
    rows = np.zeros((3, 10), np.uint8)
    rows[:, :8] = pixels.astype(">u2").view(np.uint8).reshape(3, 8)
    message.data = rows.tobytes()
    np.testing.assert_array_equal(msg_to_image(message), pixels)


def test_image_refusals_name_the_problem() -> None:
    with pytest.raises(MessageError, match="does not fit encoding rgb8"):
        image_to_msg(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(MessageError, match="dtype float32"):
        image_to_msg(np.zeros((4, 4, 3), np.float32), "rgb8")
    with pytest.raises(MessageError, match="not one of"):
        image_to_msg(np.zeros((4, 4, 3), np.uint8), "yuv422")
    torn = image_to_msg(np.zeros((4, 4, 3), np.uint8))
    torn.data = bytes(40)
    with pytest.raises(MessageError, match="40 bytes, expected step x height = 48"):
        msg_to_image(torn)


def test_every_sample_passes_the_checks() -> None:
    for build in samples.ALL.values():
        check_message(build())


def test_check_action_refuses_nan_out_of_range_and_wrong_size() -> None:
    np.testing.assert_array_equal(check_action([0.5, -1.0]), np.array([0.5, -1.0], np.float32))
    with pytest.raises(MessageError, match=r"action\[1\]: nan is not finite"):
        check_action([0.0, float("nan")])
    with pytest.raises(MessageError, match="leaves"):
        check_action([1.5, 0.0])
    with pytest.raises(MessageError, match="3 values, expected 4"):
        check_action([0.0, 0.0, 0.0], action_dim=4)
    with pytest.raises(MessageError, match="empty"):
        check_action([])


def test_structural_check_reaches_nested_and_sequence_fields() -> None:
    weights = samples.model_weights(payload_bytes=10)
    weights.metrics = ["loss=1"]
    with pytest.raises(MessageError, match=r"ModelWeights.metrics\[0\]: expected a "
                                           r"diagnostic_msgs/msg/KeyValue"):
        check_message(weights)
    state = samples.robot_state()
    state.header.stamp.sec = 2**40
    with pytest.raises(MessageError, match="RobotState.header.stamp.sec: .* outside the range "
                                           "of int32"):
        check_message(state)
    state = samples.robot_state()
    state.joints.position = [0.0]  # seven names
    with pytest.raises(MessageError, match="RobotState.joints.position: 1 values, expected 7"):
        check_message(state)
