"""The learner: finetunes the world model while the trials run, and publishes its weights.

It loads the pretrained checkpoint and the offline dataset, takes every transition from the
replay recorder into its online buffer, and trains in a thread of its own with balanced
sampling (half of each batch offline, half online), as many updates per online step as
``updates_per_step`` allows, as in the paper's online phase. Every ``publish_every_updates``
updates or ``publish_every_s`` seconds it publishes the weights (safetensors, with version and
sha256) on a transient-local topic, and it saves a checkpoint every ``checkpoint_every_s``.

A restarted learner loses nothing: it starts from its own latest checkpoint when there is one,
and reads every episode the recorder has stored back into its online buffer.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import KeyValue
from rclpy.node import Node

from tdmpc_ros.core.agent import Agent
from tdmpc_ros.core.checkpoint import CheckpointError
from tdmpc_ros.core.episodes import EpisodeFormatError, load_episodes
from tdmpc_ros.interfaces import msg_to_image, publish_checked
from tdmpc_ros.msg import ModelWeights, Transition
from tdmpc_ros.nodes.common import (
    ERROR,
    OK,
    ConfigError,
    Diagnostics,
    param,
    publisher,
    read_parameters,
    refusals,
    run,
    subscribe,
)
from tdmpc_ros.nodes.planner import resolve_checkpoint
from tdmpc_ros.tasks import get_task


@dataclass
class LearnerParams:
    task: str = param("task being learnt")
    checkpoint: str = param("pretrained checkpoint; empty: the shipped model, "
                            "models/<task>-<model_input>.safetensors")
    model_input: str = param("state or pixels: which shipped model an empty checkpoint means")
    device: str = param("auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    dataset: str = param("offline dataset directory (episode files); empty: no offline data")
    store: str = param("the recorder's episode store, read back after a restart")
    run_dir: str = param("where checkpoints go (run_dir/checkpoints)")
    updates_per_step: float = param("updates per online step received (the paper: 1)")
    publish_every_updates: int = param("publish weights after this many updates")
    publish_every_s: float = param("... or after this many seconds with new updates")
    checkpoint_every_s: float = param("save a checkpoint this often (s)")
    threads: int = param("torch CPU threads of the learner (0: torch's default)")

    def __post_init__(self) -> None:
        get_task(self.task)
        if self.updates_per_step <= 0 or self.publish_every_updates < 1:
            raise ValueError("updates_per_step must be > 0 and publish_every_updates >= 1")


class Learner(Node):
    def __init__(self) -> None:
        super().__init__("learner")
        self.params = read_parameters(self, LearnerParams)
        self.spec = get_task(self.params.task)
        self.checkpoints = Path(self.params.run_dir) / "checkpoints"
        latest = self.checkpoints / "latest.safetensors"
        path = str(latest) if latest.exists() else resolve_checkpoint(
            self.params.task, self.params.checkpoint, self.params.model_input)
        overrides = {"device": self.params.device, "threads": self.params.threads}
        try:
            self.agent = Agent.from_checkpoint(path, overrides=overrides)
        except (CheckpointError, FileNotFoundError, ValueError) as error:
            raise ConfigError(f"cannot load checkpoint {path}: {error}") from error
        self.obs_keys = tuple(self.agent.model.obs_keys)
        self.lock = threading.Lock()
        self.online_steps = 0
        self.seen: set[tuple[str, int]] = set()
        self.open_episode: tuple[str, int] = ("", -1)  # the episode being added, its next step
        self.updates = 0
        self.metrics: dict[str, float] = {}
        self.version = int(self.agent.model.weights_version)
        self.published_at_update = 0
        self.last_publish = time.monotonic()
        self.last_checkpoint = time.monotonic()
        self.refuse = refusals(self)
        # what a transition must carry: the model's input shapes and the task's action size
        self.shapes = {key: tuple(shape) for key, shape in self.agent.model.spec.obs_shapes.items()
                       if key in self.obs_keys}
        # A new id each start: the planner then takes this run's weights though the version
        # numbers restart from the checkpoint's.
        self.run_id = f"{Path(self.params.run_dir).resolve().name}-{time.strftime('%H%M%S')}"
        self._load_data()
        self.weights_publisher = publisher(self, "learner/weights")
        # catch-up: a restarted learner also gets the transitions sent while it was down
        subscribe(self, "replay/transitions", self.on_transition, catch_up=True)
        Diagnostics(self, self.diagnostics)
        self.create_timer(0.5, self.maybe_publish)
        self.running = True
        self.trainer = threading.Thread(target=self.train, name="trainer", daemon=True)
        self.get_logger().info(
            f"from {path}: {len(self.agent.replay.offline)} offline and "
            f"{len(self.agent.replay.online)} online transitions, device {self.agent.device}")

    def start(self) -> None:
        """Called by common.run once the node is built: first weights, then training."""
        self.publish_weights()  # the planner starts from the learner's version numbering
        self.trainer.start()

    def _load_data(self) -> None:
        replay = self.agent.replay
        if self.params.dataset:
            try:
                replay.add_offline(load_episodes(self.params.dataset))
            except (EpisodeFormatError, ValueError) as error:
                raise ConfigError(f"offline dataset {self.params.dataset}: {error}") from error
        store = Path(self.params.store)
        try:
            stored = load_episodes(store) + load_episodes(store / "partial")
        except EpisodeFormatError as error:
            self.get_logger().error(f"episode store: {error}")
            stored = []
        for episode in stored:
            if episode.task != self.spec.name:
                continue
            replay.add_online(episode)
            first = int(episode.extras.get("first_step", 0))
            self.seen.update((episode.episode_id, first + step) for step in range(episode.length))
            self.online_steps += episode.length

    # --- data ----------------------------------------------------------------------------------

    def _observation(self, message: Transition, after: bool) -> dict[str, np.ndarray]:
        prefix = "next_" if after else ""
        observation = {"state": np.asarray(getattr(message, f"{prefix}state"), np.float32),
                       "proprio": np.asarray(getattr(message, f"{prefix}proprio"), np.float32)}
        image = getattr(message, f"{prefix}image")
        if image.height:
            observation["pixels"] = msg_to_image(image)
        return {key: observation[key] for key in self.obs_keys}

    def _misfit(self, message: Transition) -> str:
        """What makes a transition unfit for this model ("" when it fits)."""
        if message.task != self.spec.name:
            return f"task {message.task!r}, this learner's is {self.spec.name!r}"
        if len(message.action) != self.spec.action_dim:
            return f"{len(message.action)} action values, the task has {self.spec.action_dim}"
        for key, shape in self.shapes.items():
            for prefix in ("", "next_"):
                if key == "pixels":
                    image = getattr(message, f"{prefix}image")
                    got = (image.height, image.width, 3 if image.encoding == "rgb8" else 0)
                    if got != shape:
                        return (f"{prefix}image is {image.height}x{image.width} "
                                f"{image.encoding or 'empty'}, the model takes {shape} rgb8")
                elif (len(getattr(message, f"{prefix}{key}")),) != shape:
                    hint = (" (the real arm does not see the object: a state model cannot learn "
                            "from its transitions)" if key == "state" else "")
                    return (f"{prefix}{key} has {len(getattr(message, f'{prefix}{key}'))} "
                            f"values, the model takes {shape[0]}{hint}")
        return ""

    def on_transition(self, message: Transition) -> None:
        key = (message.episode_id, message.step)
        if key in self.seen:
            return  # already in the buffer (a catch-up after a restart brings it again)
        misfit = self._misfit(message)
        if misfit:
            self.refuse("replay/transitions (does not fit the model)",
                        f"{message.episode_id} step {message.step}: {misfit}")
            return
        online = self.agent.replay.online
        with self.lock:
            if self.open_episode != key:  # a new episode, or the part of one after a gap
                online.end_episode()
                online.begin_episode(self._observation(message, after=False))
            online.add_transition(np.asarray(message.action, np.float32), message.reward,
                                  self._observation(message, after=True),
                                  terminated=message.terminated, truncated=message.truncated)
            self.open_episode = (("", -1) if message.terminated or message.truncated
                                 else (message.episode_id, message.step + 1))
            self.seen.add(key)
            self.online_steps += 1

    # --- training ------------------------------------------------------------------------------

    def train(self) -> None:
        while self.running:
            with self.lock:
                allowed = self.online_steps * self.params.updates_per_step
                ready = self.updates < allowed and len(self.agent.replay) > 0
                if ready:
                    try:
                        self.metrics = self.agent.update()
                        self.updates += 1
                    except RuntimeError as error:  # e.g. too little data for a batch yet
                        self.get_logger().warning(f"update skipped: {error}",
                                                  throttle_duration_sec=5.0)
                        ready = False
            if not ready:
                time.sleep(0.05)

    def maybe_publish(self) -> None:
        new = self.updates - self.published_at_update
        if new >= self.params.publish_every_updates or (
                new and time.monotonic() - self.last_publish >= self.params.publish_every_s):
            self.publish_weights()
        if time.monotonic() - self.last_checkpoint >= self.params.checkpoint_every_s:
            self.save_checkpoint()

    def publish_weights(self) -> None:
        with self.lock:
            self.version += 1
            self.agent.model.weights_version = self.version
            payload = self.agent.to_bytes(actor_only=True)
            updates, metrics = self.updates, dict(self.metrics)
        message = ModelWeights()
        message.header.stamp = self.get_clock().now().to_msg()
        message.version = self.version
        message.learner_step = int(self.agent.learner.steps)
        message.run_id = self.run_id
        message.format = ModelWeights.FORMAT_SAFETENSORS
        message.payload = payload
        message.sha256 = hashlib.sha256(payload).hexdigest()
        message.metrics = [KeyValue(key=key, value=f"{value:.5g}")
                           for key, value in metrics.items()]
        message.metrics.append(KeyValue(key="online_steps", value=str(self.online_steps)))
        publish_checked(self.weights_publisher, message)
        self.published_at_update, self.last_publish = updates, time.monotonic()
        self.get_logger().info(f"published weights version {self.version} after {updates} "
                               f"updates ({self.online_steps} online steps)")

    def save_checkpoint(self) -> None:
        with self.lock:
            self.agent.save(self.checkpoints / "latest.safetensors")
        self.last_checkpoint = time.monotonic()

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = ERROR if not self.trainer.is_alive() else OK
        return level, f"{self.updates} updates, weights v{self.version}", {
            "updates": self.updates, "online_steps": self.online_steps,
            "weights_version": self.version, "run_id": self.run_id,
            **{key: f"{value:.4g}" for key, value in self.metrics.items()}}

    def close(self) -> None:
        self.running = False
        if self.trainer.is_alive():
            self.trainer.join(timeout=10)
            self.save_checkpoint()
        self.get_logger().info(f"stopping: {self.online_steps} online steps in the buffer, "
                               f"{self.updates} updates, weights v{self.version}")


def main() -> None:
    run(Learner)


if __name__ == "__main__":
    main()
