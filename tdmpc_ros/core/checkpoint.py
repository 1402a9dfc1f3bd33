"""Checkpoints: safetensors for the tensors, a JSON header for everything else. No pickle.

A checkpoint is one safetensors blob whose header metadata carries

    format          "tdmpc_ros.checkpoint"
    format_version  this module's FORMAT_VERSION
    kind            "full" (model, target network, optimiser state) or "actor" (what planning
                    needs: no target network, no optimiser state; for sending weights to a robot)
    config          the whole Config as JSON
    spec            observation shapes and action size as JSON
    step            learner updates done
    weights_version a counter the publisher of weights increments
    sha256          hash of every tensor's name, dtype, shape and bytes
    extra           free JSON from the caller

``to_bytes``/``from_bytes`` are for topics and services, ``save``/``load`` for files (written
atomically). Loading checks the header, the hash, every name and shape against the model the
config builds, and that every value is finite, and raises ``CheckpointError`` saying what is
wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from tdmpc_ros.core.config import Config
from tdmpc_ros.core.world_model import ModelSpec, WorldModel

FORMAT = "tdmpc_ros.checkpoint"
FORMAT_VERSION = 1
KINDS = ("full", "actor")
_TARGET_PREFIXES = ("target_encoder.", "target_q.")
_MAX_HEADER = 64 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint is damaged, from another format or version, or does not fit the model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model built from its config, and its header fields."""

    model: WorldModel
    config: Config
    spec: ModelSpec
    kind: str
    step: int
    weights_version: int
    sha256: str
    learner_state: dict[str, Tensor] = field(default_factory=dict)
    """Optimiser state for ``Learner.load_state_tensors`` (full checkpoints only)."""
    extra: dict[str, Any] = field(default_factory=dict)


def to_bytes(model: WorldModel, *, learner: Any = None, step: int | None = None,
             weights_version: int | None = None, actor_only: bool = False,
             extra: Mapping[str, Any] | None = None) -> bytes:
    """Serialise ``model`` (and ``learner``'s optimiser state unless ``actor_only``)."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if actor_only and name.startswith(_TARGET_PREFIXES):
            continue
        tensors[f"model/{name}"] = tensor.detach().to("cpu", copy=True).contiguous()
    if learner is not None and not actor_only:
        tensors.update(learner.state_tensors())
    if step is None:
        step = learner.steps if learner is not None else 0
    if weights_version is None:
        weights_version = model.weights_version
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": "actor" if actor_only else "full",
        "config": json.dumps(model.config.to_dict()),
        "spec": json.dumps(model.spec.to_dict()),
        "step": str(int(step)),
        "weights_version": str(int(weights_version)),
        "sha256": tensors_sha256(tensors),
        "extra": json.dumps(dict(extra or {})),
        "created_unix": f"{time.time():.3f}",
    }
    return safetensors_save(tensors, metadata=metadata)


def from_bytes(data: bytes, *, device: torch.device | str = "cpu") -> Checkpoint:
    """Check and load a checkpoint; the model is built from the checkpoint's own config."""
    header = read_header(data)
    config, spec = _config_and_spec(header)
    try:
        model = WorldModel(config, spec)
    except ValueError as error:
        raise CheckpointError(f"checkpoint config does not build a model: {error}") from error
    tensors = _tensors(data, header)
    _load_model_tensors(model, tensors, header["kind"])
    model.weights_version = header["weights_version"]
    learner_state = {k: v for k, v in tensors.items() if not k.startswith("model/")}
    _check_finite(learner_state)
    return Checkpoint(
        model=model.to(device), config=config, spec=spec, kind=header["kind"],
        step=header["step"], weights_version=header["weights_version"],
        sha256=header["sha256"], learner_state=learner_state, extra=header["extra"],
    )


def load_weights_into(model: WorldModel, data: bytes) -> dict[str, Any]:
    """Copy a checkpoint's weights into an existing ``model`` in place (e.g. on the robot).

    The checkpoint must fit the model's shapes; an actor checkpoint leaves the model's target
    network as it is. Returns the header. Nothing is changed when a check fails.
    """
    header = read_header(data)
    tensors = _tensors(data, header)
    expected = model.state_dict()
    _check_names_and_shapes(expected, tensors, header["kind"])
    with torch.no_grad():
        for name, value in expected.items():
            source = tensors.get(f"model/{name}")
            if source is not None:
                value.copy_(source)
    model.weights_version = header["weights_version"]
    model.mark_changed()
    return header


def save(path: str | os.PathLike[str], model: WorldModel, **kwargs: Any) -> Path:
    """Write ``to_bytes(model, **kwargs)`` to ``path`` atomically (temporary file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_bytes(model, **kwargs)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> Checkpoint:
    """Read and check a checkpoint file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error})") from error
    try:
        return from_bytes(data, device=device)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error


def read_header(data: bytes) -> dict[str, Any]:
    """The checked header fields of a checkpoint, without reading its tensors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"checkpoint data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise CheckpointError(f"not a checkpoint: {len(data)} bytes is too short")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(_MAX_HEADER, len(data) - 8):
        raise CheckpointError(
            f"not a checkpoint or truncated: header of {length} bytes in {len(data)} bytes"
        )
    try:
        raw = json.loads(data[8 : 8 + length])
        metadata = raw["__metadata__"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"not a checkpoint: unreadable header ({error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} file (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"checkpoint format version {version!r}; this code reads version {FORMAT_VERSION}"
        )
    try:
        header = {
            "kind": metadata["kind"],
            "config": json.loads(metadata["config"]),
            "spec": json.loads(metadata["spec"]),
            "step": int(metadata["step"]),
            "weights_version": int(metadata["weights_version"]),
            "sha256": metadata["sha256"],
            "extra": json.loads(metadata.get("extra", "{}")),
            "created_unix": float(metadata.get("created_unix", "0")),
        }
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint header field missing or malformed: {error}") from error
    if header["kind"] not in KINDS:
        raise CheckpointError(f"checkpoint kind {header['kind']!r} is not one of {KINDS}")
    return header


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---- internals ------------------------------------------------------------------------------


def _config_and_spec(header: Mapping[str, Any]) -> tuple[Config, ModelSpec]:
    try:
        config = Config.from_dict(header["config"])
    except ValueError as error:
        raise CheckpointError(f"checkpoint config is invalid: {error}") from error
    try:
        spec = ModelSpec.from_dict(header["spec"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint spec is malformed: {error}") from error
    return config, spec


def _tensors(data: bytes, header: Mapping[str, Any]) -> dict[str, Tensor]:
    try:
        tensors = safetensors_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint tensors are damaged ({error})") from error
    digest = tensors_sha256(tensors)
    if digest != header["sha256"]:
        raise CheckpointError(
            f"checkpoint sha256 mismatch: header says {header['sha256'][:16]}..., "
            f"tensors hash to {digest[:16]}... (damaged or edited)"
        )
    return tensors


def _check_names_and_shapes(expected: Mapping[str, Tensor], tensors: Mapping[str, Tensor],
                            kind: str) -> None:
    provided = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    required = {
        name for name in expected if not (kind == "actor" and name.startswith(_TARGET_PREFIXES))
    }
    missing = sorted(required - provided.keys())
    unexpected = sorted(provided.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [
        f"{name}: checkpoint {tuple(value.shape)} {value.dtype}, model "
        f"{tuple(expected[name].shape)} {expected[name].dtype}"
        for name, value in sorted(provided.items())
        if value.shape != expected[name].shape or value.dtype != expected[name].dtype
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint shapes do not fit the model ({len(wrong)} tensors): "
            + "; ".join(wrong[:3])
        )
    _check_finite(provided)
    matrices = [value for value in provided.values() if value.ndim >= 2]
    if matrices and not any(bool(value.any()) for value in matrices):
        raise CheckpointError("every weight matrix of the checkpoint is zero: not a model")


def _check_finite(tensors: Mapping[str, Tensor]) -> None:
    bad = [name for name, value in tensors.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint has NaN or inf in {len(bad)} tensors: {', '.join(sorted(bad)[:5])}"
        )


def _load_model_tensors(model: WorldModel, tensors: Mapping[str, Tensor], kind: str) -> None:
    expected = model.state_dict()
    _check_names_and_shapes(expected, tensors, kind)
    with torch.no_grad():
        for name, value in expected.items():
            source = tensors.get(f"model/{name}")
            if source is not None:
                value.copy_(source)
        if kind == "actor":  # no target network was sent: start it from the online weights
            model.target_encoder.load_state_dict(model.encoder.state_dict())
            model.target_q.load_state_dict(model.q.state_dict())
