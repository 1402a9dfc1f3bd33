"""The project's episode format: one ``.npz`` file per episode, written atomically.

Every producer of robot data (the scripted experts that make offline datasets, the replay
recorder node, the command-line tools) writes this format, and every consumer (replay buffers,
the learner, plots) reads it. Files are plain NumPy archives read with ``allow_pickle=False``,
so an episode file from an untrusted source can never run code, and they need neither ROS nor
the simulator to read.

Layout of one file (T steps, observations have T + 1 rows: o_0 ... o_T):

    obs/<key>         (T + 1, ...)  one array per observation key, e.g. ``state`` (float32),
                                    ``proprio`` (float32), ``pixels`` (uint8, H x W x 3)
    action            (T, A)  float32 in [-1, 1]
    reward            (T,)    float32
    terminated        (T,)    bool, true only on the last step, for a true termination
    truncated         (T,)    bool, true only on the last step, for a time limit or an abort
    success           (T,)    bool, the task's success flag after each step
    weights_version   (T,)    int64, the model weights version that chose each action (-1: none)
    meta              ()      a JSON string: episode id, task, source, format version, extras
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SUFFIX = ".npz"
SOURCES = ("sim", "real", "scripted", "gazebo")


class EpisodeFormatError(ValueError):
    """An episode, or an episode file, breaks the format; the message says how."""


@dataclass
class Episode:
    """One episode of T steps, as arrays; see the module docstring for the layout."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    episode_id: str
    task: str
    source: str = "sim"
    weights_version: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        self.terminated = np.asarray(self.terminated, dtype=bool).reshape(-1)
        self.truncated = np.asarray(self.truncated, dtype=bool).reshape(-1)
        self.success = np.asarray(self.success, dtype=bool).reshape(-1)
        if self.weights_version is None:
            self.weights_version = np.full(len(self.rewards), -1, dtype=np.int64)
        self.weights_version = np.asarray(self.weights_version, dtype=np.int64).reshape(-1)
        self.observations = {key: np.asarray(value) for key, value in self.observations.items()}
        self.validate()

    @property
    def length(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())

    @property
    def succeeded(self) -> bool:
        return bool(self.success.any())

    def validate(self) -> None:
        """Raise EpisodeFormatError unless every array has the right shape, type and values."""
        steps = self.length
        if steps < 1:
            raise EpisodeFormatError(f"episode {self.episode_id!r} has no steps")
        if self.actions.ndim != 2 or self.actions.shape[0] != steps:
            raise EpisodeFormatError(
                f"episode {self.episode_id!r}: actions have shape {self.actions.shape}, "
                f"expected ({steps}, action_dim)"
            )
        for name in ("terminated", "truncated", "success", "weights_version"):
            if getattr(self, name).shape != (steps,):
                raise EpisodeFormatError(
                    f"episode {self.episode_id!r}: {name} has shape "
                    f"{getattr(self, name).shape}, expected ({steps},)"
                )
        if not self.observations:
            raise EpisodeFormatError(f"episode {self.episode_id!r} has no observations")
        for key, value in self.observations.items():
            if value.ndim < 2 or value.shape[0] != steps + 1:
                raise EpisodeFormatError(
                    f"episode {self.episode_id!r}: observation {key!r} has shape {value.shape}, "
                    f"expected ({steps + 1}, ...): one row per step plus the final observation"
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise EpisodeFormatError(
                    f"episode {self.episode_id!r}: observation {key!r} has NaN or inf"
                )
            if value.dtype.kind not in "fui":
                raise EpisodeFormatError(
                    f"episode {self.episode_id!r}: observation {key!r} has dtype {value.dtype}"
                )
        for name in ("actions", "rewards"):
            if not np.isfinite(getattr(self, name)).all():
                raise EpisodeFormatError(f"episode {self.episode_id!r}: {name} have NaN or inf")
        if np.abs(self.actions).max() > 1.0 + 1e-6:
            raise EpisodeFormatError(
                f"episode {self.episode_id!r}: actions leave [-1, 1] "
                f"(largest magnitude {np.abs(self.actions).max():.3f})"
            )
        ends = self.terminated | self.truncated
        if ends[:-1].any():
            raise EpisodeFormatError(
                f"episode {self.episode_id!r}: terminated or truncated before the last step "
                f"(step {int(np.argmax(ends))} of {steps})"
            )
        if self.source not in SOURCES:
            raise EpisodeFormatError(
                f"episode {self.episode_id!r}: source {self.source!r} is not one of {SOURCES}"
            )
        if not self.episode_id or "/" in self.episode_id or self.episode_id.startswith("."):
            raise EpisodeFormatError(f"episode id {self.episode_id!r} is not a plain file name")


def save_episode(episode: Episode, directory: str | os.PathLike[str],
                 name: str | None = None) -> Path:
    """Write ``episode`` to ``directory/<name>.npz`` (name: the episode id, unless a part of an
    episode needs a file of its own) atomically and durably.

    The archive goes to a temporary file in the same directory, is fsynced, then renamed over
    the final name, and the directory is fsynced: a reader (or a process restarted after a
    crash) sees either the whole episode or none of it, never a torn file.
    """
    episode.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "episode_id": episode.episode_id,
        "task": episode.task,
        "source": episode.source,
        "extras": episode.extras,
    }
    arrays: dict[str, np.ndarray] = {
        f"obs/{key}": value for key, value in episode.observations.items()
    }
    arrays.update(
        action=episode.actions,
        reward=episode.rewards,
        terminated=episode.terminated,
        truncated=episode.truncated,
        success=episode.success,
        weights_version=episode.weights_version,
        meta=np.array(json.dumps(meta)),
    )
    name = name or episode.episode_id
    if "/" in name or name.startswith("."):
        raise EpisodeFormatError(f"episode file name {name!r} is not a plain file name")
    final_path = directory / f"{name}{SUFFIX}"
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes it private; episodes are data
            os.fsync(handle.fileno())
        os.replace(temporary, final_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
    return final_path


def load_episode(path: str | os.PathLike[str]) -> Episode:
    """Read one episode file without unpickling anything; raise EpisodeFormatError if it is bad."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as error:  # zip damage, truncation, object arrays
        raise EpisodeFormatError(f"{path}: not a readable episode file ({error})") from error
    missing = {"action", "reward", "terminated", "truncated", "success", "meta"} - arrays.keys()
    if missing:
        raise EpisodeFormatError(f"{path}: missing arrays {sorted(missing)}")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as error:
        raise EpisodeFormatError(f"{path}: metadata is not JSON ({error})") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise EpisodeFormatError(
            f"{path}: format version {meta.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )
    observations = {
        name.removeprefix("obs/"): value
        for name, value in arrays.items()
        if name.startswith("obs/")
    }
    try:
        return Episode(
            observations=observations,
            actions=arrays["action"],
            rewards=arrays["reward"],
            terminated=arrays["terminated"],
            truncated=arrays["truncated"],
            success=arrays["success"],
            weights_version=arrays.get("weights_version"),
            episode_id=str(meta["episode_id"]),
            task=str(meta["task"]),
            source=str(meta.get("source", "sim")),
            extras=dict(meta.get("extras", {})),
        )
    except EpisodeFormatError as error:
        raise EpisodeFormatError(f"{path}: {error}") from error
    except KeyError as error:
        raise EpisodeFormatError(f"{path}: metadata lacks {error}") from error


def episode_paths(directory: str | os.PathLike[str]) -> list[Path]:
    """The episode files of a directory in name order; temporary files are left out."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob(f"*{SUFFIX}") if not path.name.startswith("."))


def load_episodes(directory: str | os.PathLike[str]) -> list[Episode]:
    """Every episode of a directory; a bad file raises EpisodeFormatError naming it."""
    return [load_episode(path) for path in episode_paths(directory)]
