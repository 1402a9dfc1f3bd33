"""The one place where messages are checked, and where images cross between NumPy and ROS.

Why checks at the sender: rclpy's generated messages do not check field types by default
(``ROS_PYTHON_CHECK_FIELDS`` is off), and publishing a message whose scalar field has the wrong
Python type aborts the whole process inside the C conversion. ``publish_checked`` refuses such a
message with a ``MessageError`` that names the field, before it reaches rclpy.

Why checks at the receiver: a peer on the network may run other code. ``checked_callback`` drops
a message that breaks the rules (wrong sizes, NaN, a bad checksum), logs why, counts it, and
keeps the node running.

Images: cv_bridge from PyPI does not work with ROS 2 messages and NumPy 2 (see README), so the
conversion lives here, in NumPy, for every encoding the project uses.
"""

from __future__ import annotations

import array
import hashlib
import math
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rosidl_parser import definition as idl
from sensor_msgs.msg import Image

from tdmpc_ros.msg import (
    ActionCommand,
    EpisodeEvent,
    LatentPlan,
    ModelWeights,
    OperatorCommand,
    RobotState,
    Transition,
    WorldState,
)


class MessageError(ValueError):
    """A message breaks its type or the project's rules; the text names the field."""


# --- Structure: every field has the type and size its .msg file declares ---------------------

_INTEGER_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "octet": (0, 2**8 - 1),
}
_FLOAT_TYPES = {"float", "double", "long double"}
# array.array type codes and NumPy dtype kinds that hold each element type without loss.
_ARRAY_TYPECODES = {"float": "f", "double": "d", "uint8": "B", "octet": "B", "int8": "b",
                    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
                    "uint64": "Q"}


def check_fields(message: Any, where: str | None = None) -> None:
    """Raise MessageError unless every field matches the declared type and size, recursively."""
    where = where or type(message).__name__
    if not hasattr(type(message), "SLOT_TYPES"):
        raise MessageError(f"{where}: {type(message).__name__} is not a ROS message")
    for (name, _), slot in zip(message.get_fields_and_field_types().items(), message.SLOT_TYPES,
                              strict=True):
        _check_value(getattr(message, name), slot, f"{where}.{name}")


def _check_value(value: Any, slot: idl.AbstractType, where: str) -> None:
    if isinstance(slot, idl.NamespacedType):
        if type(value).__name__ != slot.name or not hasattr(value, "SLOT_TYPES"):
            raise MessageError(
                f"{where}: expected a {'/'.join(slot.namespaces)}/{slot.name} message, "
                f"got {type(value).__name__}"
            )
        check_fields(value, where)
    elif isinstance(slot, idl.AbstractGenericString):
        if not isinstance(value, str):
            raise MessageError(f"{where}: expected a string, got {type(value).__name__}")
        bounded = isinstance(slot, idl.BoundedString | idl.BoundedWString)
        if bounded and len(value) > slot.maximum_size:
            raise MessageError(f"{where}: {len(value)} characters, at most {slot.maximum_size}")
    elif isinstance(slot, idl.BasicType):
        _check_scalar(value, slot.typename, where)
    elif isinstance(slot, idl.AbstractNestedType):
        _check_sequence(value, slot, where)
    else:  # pragma: no cover - rosidl has no other kinds today
        raise MessageError(f"{where}: unsupported field kind {type(slot).__name__}")


def _check_scalar(value: Any, typename: str, where: str) -> None:
    if typename in _FLOAT_TYPES:
        if not isinstance(value, float):
            raise MessageError(f"{where}: expected a Python float ({typename}), got "
                               f"{type(value).__name__} {value!r}")
    elif typename == "boolean":
        if not isinstance(value, bool):
            raise MessageError(f"{where}: expected a bool, got {type(value).__name__} {value!r}")
    elif typename in _INTEGER_RANGES:
        if typename == "octet" and isinstance(value, bytes) and len(value) == 1:
            return
        if not isinstance(value, int) or isinstance(value, bool):
            raise MessageError(f"{where}: expected an int ({typename}), got "
                               f"{type(value).__name__} {value!r}")
        low, high = _INTEGER_RANGES[typename]
        if not low <= value <= high:
            raise MessageError(f"{where}: {value} is outside the range of {typename} "
                               f"[{low}, {high}]")
    elif typename in ("char", "wchar"):
        if not isinstance(value, str) or len(value) != 1:
            raise MessageError(f"{where}: expected one character, got {value!r}")


def _check_sequence(value: Any, slot: idl.AbstractNestedType, where: str) -> None:
    if isinstance(value, str) or not hasattr(value, "__len__"):
        raise MessageError(f"{where}: expected a sequence, got {type(value).__name__}")
    size = len(value)
    if isinstance(slot, idl.Array) and size != slot.size:
        raise MessageError(f"{where}: {size} values, exactly {slot.size} required")
    if isinstance(slot, idl.BoundedSequence) and size > slot.maximum_size:
        raise MessageError(f"{where}: {size} values, at most {slot.maximum_size} allowed")
    element = slot.value_type
    if isinstance(element, idl.BasicType) and element.typename in _ARRAY_TYPECODES:
        # Numeric sequences: the generated setters store array.array (or bytes, NumPy arrays for
        # fixed arrays); check the container's element type rather than every value.
        typecode = _ARRAY_TYPECODES[element.typename]
        if isinstance(value, array.array):
            if value.typecode != typecode:
                raise MessageError(f"{where}: array of type code {value.typecode!r}, "
                                   f"expected {typecode!r} ({element.typename})")
            return
        if isinstance(value, bytes | bytearray) and typecode == "B":
            return
        if isinstance(value, np.ndarray):
            if value.dtype != np.dtype(typecode):
                raise MessageError(f"{where}: NumPy array of {value.dtype}, expected "
                                   f"{np.dtype(typecode)} ({element.typename})")
            return
    for index, item in enumerate(value):
        _check_value(item, element, f"{where}[{index}]")


# --- Images ---------------------------------------------------------------------------------

# encoding -> (NumPy dtype, channels)
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


def image_to_msg(pixels: np.ndarray, encoding: str = "rgb8", frame_id: str = "",
                 stamp: Any = None) -> Image:
    """A sensor_msgs/Image holding a copy of ``pixels`` (H x W or H x W x C)."""
    if encoding not in IMAGE_ENCODINGS:
        raise MessageError(f"image encoding {encoding!r} is not one of {sorted(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    pixels = np.asarray(pixels)
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim == 3 and channels == 1 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise MessageError(f"image of shape {pixels.shape} does not fit encoding {encoding}")
    if pixels.dtype != dtype:
        raise MessageError(f"image of dtype {pixels.dtype} does not fit encoding {encoding} "
                           f"({dtype})")
    message = Image()
    if stamp is not None:
        message.header.stamp = stamp
    message.header.frame_id = frame_id
    message.height, message.width = int(pixels.shape[0]), int(pixels.shape[1])
    message.encoding = encoding
    message.is_bigendian = 0
    message.step = int(pixels.shape[1] * channels * dtype.itemsize)
    message.data = np.ascontiguousarray(pixels).tobytes()
    return message


def transforms_to_msg(frames: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
                      stamp: Any) -> Any:
    """A tf2_msgs/TFMessage of (parent, child, translation x y z, rotation x y z w) frames,
    each stamped ``stamp``."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    message = TFMessage()
    for parent, child, translation, rotation in frames:
        transform = TransformStamped()
        transform.header.stamp, transform.header.frame_id = stamp, parent
        transform.child_frame_id = child
        t, r = transform.transform.translation, transform.transform.rotation
        t.x, t.y, t.z = (float(v) for v in translation)
        r.x, r.y, r.z, r.w = (float(v) for v in rotation)
        message.transforms.append(transform)
    return message


def check_image(message: Image, where: str = "Image", allow_empty: bool = False) -> None:
    """Raise MessageError unless the image's sizes, encoding and data length agree."""
    if allow_empty and message.height == 0 and message.width == 0 and len(message.data) == 0:
        return
    if message.encoding not in IMAGE_ENCODINGS:
        raise MessageError(f"{where}.encoding: {message.encoding!r} is not one of "
                           f"{sorted(IMAGE_ENCODINGS)}")
    if message.height == 0 or message.width == 0:
        raise MessageError(f"{where}: empty image ({message.height} x {message.width})")
    dtype, channels = IMAGE_ENCODINGS[message.encoding]
    row_bytes = message.width * channels * dtype.itemsize
    if message.step < row_bytes:
        raise MessageError(f"{where}.step: {message.step} bytes per row, at least {row_bytes} "
                           f"needed for {message.width} pixels of {message.encoding}")
    if len(message.data) != message.step * message.height:
        raise MessageError(f"{where}.data: {len(message.data)} bytes, expected step x height = "
                           f"{message.step * message.height}")


def msg_to_image(message: Image) -> np.ndarray:
    """The image as a NumPy array (H x W x C, or H x W for one channel), after check_image."""
    check_image(message)
    dtype, channels = IMAGE_ENCODINGS[message.encoding]
    dtype = dtype.newbyteorder(">" if message.is_bigendian else "<")
    rows = np.frombuffer(bytes(message.data), dtype=np.uint8).reshape(message.height, message.step)
    row_bytes = message.width * channels * dtype.itemsize
    pixels = rows[:, :row_bytes].copy().view(dtype).reshape(message.height, message.width, channels)
    pixels = pixels.astype(dtype.newbyteorder("="), copy=False)
    return pixels[:, :, 0] if channels == 1 else pixels


# --- The project's rules, message by message ------------------------------------------------

def _finite(values: Sequence[float] | np.ndarray, where: str) -> np.ndarray:
    array_values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array_values).all():
        bad = int(np.flatnonzero(~np.isfinite(array_values))[0])
        raise MessageError(f"{where}[{bad}]: {array_values[bad]} is not finite")
    return array_values


def _length(values: Sequence[Any], expected: int, where: str) -> None:
    if len(values) != expected:
        raise MessageError(f"{where}: {len(values)} values, expected {expected}")


def check_action(values: Sequence[float], where: str = "action",
                 action_dim: int | None = None) -> np.ndarray:
    """The action as float32 after checking it is non-empty, finite and within [-1, 1]."""
    if len(values) == 0:
        raise MessageError(f"{where}: empty")
    if action_dim is not None:
        _length(values, action_dim, where)
    action = _finite(values, where)
    if np.abs(action).max() > 1.0:
        raise MessageError(f"{where}: {action.tolist()} leaves [-1, 1]")
    return action.astype(np.float32)


def check_transition(message: Transition) -> None:
    check_fields(message)
    if not message.episode_id:
        raise MessageError("Transition.episode_id: empty")
    if message.source not in (Transition.SOURCE_SIM, Transition.SOURCE_REAL,
                              Transition.SOURCE_GAZEBO):
        raise MessageError(f"Transition.source: unknown source {message.source}")
    check_action(message.action, "Transition.action")
    _finite([message.reward], "Transition.reward")
    for now, after in (("proprio", "next_proprio"), ("state", "next_state")):
        _finite(getattr(message, now), f"Transition.{now}")
        _finite(getattr(message, after), f"Transition.{after}")
        _length(getattr(message, after), len(getattr(message, now)), f"Transition.{after}")
    if not (message.proprio or message.state or message.image.height or message.image_ref):
        raise MessageError("Transition: no observation (proprio, state, image and image_ref "
                           "are all empty)")
    check_image(message.image, "Transition.image", allow_empty=True)
    check_image(message.next_image, "Transition.next_image", allow_empty=True)
    if bool(message.image.height) != bool(message.next_image.height):
        raise MessageError("Transition: image and next_image must both be set or both empty")
    if message.weights_version < -1:
        raise MessageError(f"Transition.weights_version: {message.weights_version} < -1")


def check_action_command(message: ActionCommand) -> None:
    check_fields(message)
    check_action(message.action, "ActionCommand.action")
    if message.weights_version < -1:
        raise MessageError(f"ActionCommand.weights_version: {message.weights_version} < -1")


def check_latent_plan(message: LatentPlan) -> None:
    check_fields(message)
    horizon, action_dim, latent_dim = message.horizon, message.action_dim, message.latent_dim
    if horizon < 1 or action_dim < 1:
        raise MessageError(f"LatentPlan: horizon {horizon} and action_dim {action_dim} "
                           "must be >= 1")
    expected = {
        "actions": horizon * action_dim,
        "action_std": horizon * action_dim,
        "predicted_reward": horizon,
        "q_mean": horizon + 1,
        "q_std": horizon + 1,
        "latent_trajectory": (horizon + 1) * latent_dim,
    }
    for name, size in expected.items():
        _length(getattr(message, name), size, f"LatentPlan.{name}")
        _finite(getattr(message, name), f"LatentPlan.{name}")
    for name in ("uncertainty_lambda", "uncertainty_penalty", "score", "expected_return"):
        _finite([getattr(message, name)], f"LatentPlan.{name}")
    if message.uncertainty_lambda < 0:
        raise MessageError(f"LatentPlan.uncertainty_lambda: {message.uncertainty_lambda} < 0")
    if min(message.q_std, default=0.0) < 0:
        raise MessageError("LatentPlan.q_std: a standard deviation is negative")


def check_model_weights(message: ModelWeights) -> None:
    """Structure, format and checksum; shapes and values are checked when the payload is loaded."""
    check_fields(message)
    if message.format != ModelWeights.FORMAT_SAFETENSORS:
        raise MessageError(f"ModelWeights.format: {message.format!r}; only "
                           f"{ModelWeights.FORMAT_SAFETENSORS!r} is read")
    if len(message.payload) == 0:
        raise MessageError("ModelWeights.payload: empty")
    digest = hashlib.sha256(memoryview(message.payload)).hexdigest()
    if digest != message.sha256.lower():
        raise MessageError(f"ModelWeights.sha256: payload hashes to {digest[:12]}..., message "
                           f"says {message.sha256[:12]}...; refusing weights version "
                           f"{message.version}")


def check_episode_event(message: EpisodeEvent) -> None:
    check_fields(message)
    if message.event not in (EpisodeEvent.START, EpisodeEvent.END, EpisodeEvent.PAUSE,
                             EpisodeEvent.RESUME):
        raise MessageError(f"EpisodeEvent.event: unknown event {message.event}")
    if not message.episode_id:
        raise MessageError("EpisodeEvent.episode_id: empty")
    if message.reason > EpisodeEvent.REASON_ABORTED:
        raise MessageError(f"EpisodeEvent.reason: unknown reason {message.reason}")
    _finite([message.episode_return], "EpisodeEvent.episode_return")


def check_operator_command(message: OperatorCommand) -> None:
    check_fields(message)
    if message.command > OperatorCommand.ABORT:
        raise MessageError(f"OperatorCommand.command: unknown command {message.command}; "
                           "0 success, 1 failure, 2 pause, 3 resume, 4 abort")


def check_robot_state(message: RobotState) -> None:
    check_fields(message)
    position, orientation = message.ee_pose.position, message.ee_pose.orientation
    _finite([position.x, position.y, position.z], "RobotState.ee_pose.position")
    quaternion = _finite([orientation.x, orientation.y, orientation.z, orientation.w],
                         "RobotState.ee_pose.orientation")
    if abs(float(np.linalg.norm(quaternion)) - 1.0) > 1e-3:
        raise MessageError(f"RobotState.ee_pose.orientation: quaternion norm "
                           f"{np.linalg.norm(quaternion):.4f}, expected 1")
    if not 0.0 <= message.gripper_opening <= 1.0 or math.isnan(message.gripper_opening):
        raise MessageError(f"RobotState.gripper_opening: {message.gripper_opening} outside [0, 1]")
    joints = message.joints
    _length(joints.position, len(joints.name), "RobotState.joints.position")
    _finite(joints.position, "RobotState.joints.position")
    if message.state > RobotState.STATE_ERROR:
        raise MessageError(f"RobotState.state: unknown state {message.state}")


def check_world_state(message: WorldState) -> None:
    check_fields(message)
    for name in ("object_position", "target_position"):
        point = getattr(message, name)
        _finite([point.x, point.y, point.z], f"WorldState.{name}")
    _finite(message.sim_qpos, "WorldState.sim_qpos")
    _finite(message.sim_mocap_pos, "WorldState.sim_mocap_pos")
    if len(message.sim_mocap_pos) % 3:
        raise MessageError(f"WorldState.sim_mocap_pos: {len(message.sim_mocap_pos)} values, "
                           "not a multiple of 3")


CHECKS: dict[type, Callable[[Any], None]] = {
    Transition: check_transition,
    ActionCommand: check_action_command,
    LatentPlan: check_latent_plan,
    ModelWeights: check_model_weights,
    EpisodeEvent: check_episode_event,
    OperatorCommand: check_operator_command,
    RobotState: check_robot_state,
    WorldState: check_world_state,
    Image: lambda message: (check_fields(message), check_image(message)),
}


def check_message(message: Any) -> None:
    """The structural check plus, for the project's messages, the project's rules."""
    CHECKS.get(type(message), check_fields)(message)


def publish_checked(publisher: Any, message: Any) -> None:
    """Publish ``message`` after check_message; a bad message raises MessageError, unsent."""
    check_message(message)
    publisher.publish(message)


def checked_callback(callback: Callable[[Any], None],
                     on_refused: Callable[[Any, Exception], None]) -> Callable[[Any], None]:
    """Wrap a subscription callback: a message that fails check_message goes to ``on_refused``
    and is dropped. So does one whose handling raises: no message, however malformed, ends the
    node (``on_refused`` gets the error, traceback included, to log)."""

    def receive(message: Any) -> None:
        try:
            check_message(message)
        except MessageError as error:
            on_refused(message, error)
            return
        try:
            callback(message)
        except (MessageError, ValueError, TypeError, KeyError, IndexError, RuntimeError,
                OverflowError) as error:
            trace = traceback.format_exc(limit=-3)
            on_refused(message, MessageError(f"{type(message).__name__} (handling failed): "
                                             f"{type(error).__name__}: {error}\n{trace}"))

    return receive
