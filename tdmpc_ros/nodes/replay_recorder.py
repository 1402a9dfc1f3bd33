"""The replay recorder: every executed step, once, on disk and on the transitions topic.

A step is recorded once both its action and the observation that followed it (robot state,
world state and camera frame of the same instant) are in, whichever came first: DDS does not
order messages of different writers, and the planner's action for step N can arrive after the
observation of step N + 1. Observations wait in a per-episode table keyed by step, and steps are
recorded in step order as soon as each is complete. Reward and success come from the task's own
function (``tasks.reward_and_success``), the one the trial supervisor judges by.

Nothing is lost if a process is killed: after every step the episode so far is rewritten
atomically (temporary file, fsync, rename) to ``<store>/partial/``; at the episode's end it
moves to ``<store>/`` as one episode file. A restarted recorder reads its partial episodes back
and carries on: an episode still running continues where it stopped; one that ended meanwhile
is closed as truncated.

Subscribes: robot/state, world/state, camera/image_raw, robot/action, trial/events.
Publishes: replay/transitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node

from tdmpc_ros.core.episodes import Episode, EpisodeFormatError, load_episode, save_episode
from tdmpc_ros.interfaces import image_to_msg, publish_checked
from tdmpc_ros.msg import ActionCommand, EpisodeEvent, Transition
from tdmpc_ros.nodes.common import (
    OK,
    WARN,
    Diagnostics,
    param,
    publisher,
    read_parameters,
    run,
    subscribe,
)
from tdmpc_ros.nodes.observations import Observation, ObservationAssembler
from tdmpc_ros.tasks import get_task

ENDING_GRACE_S = 5.0
FIRST_STEP_WAIT_S = 1.0  # an episode first seen after step 0: wait this long for step 0
QUEUE = 100  # messages of each input kept while the recorder is busy (4 episodes)


def event_key(kind: int, episode_id: str) -> str:
    """How the recorder's heartbeat names the newest episode event it has seen."""
    return f"{'START' if kind == EpisodeEvent.START else 'END'} {episode_id}"


SOURCES = {"sim": Transition.SOURCE_SIM, "real": Transition.SOURCE_REAL,
           "gazebo": Transition.SOURCE_GAZEBO}


@dataclass
class RecorderParams:
    task: str = param("task being recorded")
    backend: str = param("sim, real or gazebo: the transitions' source")
    store: str = param("episode store directory (episode files; partial/ for running ones)")
    record_images: bool = param("keep camera frames in episodes and transitions")
    max_image_skew_s: float = param("largest gap between a frame's stamp and its robot state's "
                                    "(s); 0: the same stamp (the simulated camera)")
    image_size: int = param("height and width of the model's rgb8 input (camera.yaml's width "
                            "and height); any other frame is refused")

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_image_skew_s <= 1.0:
            raise ValueError(f"max_image_skew_s must be in [0, 1] s, got {self.max_image_skew_s}")
        get_task(self.task)
        if self.backend not in SOURCES:
            raise ValueError(f"backend {self.backend!r} is not one of {sorted(SOURCES)}")


@dataclass
class _Running:
    """The steps of one episode so far, as rows of arrays."""

    episode_id: str
    first_step: int = 0  # > 0 only when the recorder came up after the episode began
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    weights_version: list[int] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)  # the supervisor's END: the verdict

    @property
    def steps(self) -> int:
        return len(self.actions)

    def episode(self, task: str, source: str, truncated: bool) -> Episode:
        steps = self.steps
        ends = np.zeros(steps, bool)
        if truncated and steps:
            ends[-1] = True
        return Episode(
            observations={key: np.stack([o[key] for o in self.observations])
                          for key in self.observations[0]},
            actions=np.stack(self.actions), rewards=self.rewards,
            terminated=np.zeros(steps, bool), truncated=ends, success=self.success,
            episode_id=self.episode_id, task=task, source=source,
            weights_version=self.weights_version,
            extras={"first_step": self.first_step, **self.outcome})


class ReplayRecorder(Node):
    def __init__(self) -> None:
        super().__init__("replay_recorder")
        self.params = read_parameters(self, RecorderParams)
        self.spec = get_task(self.params.task)
        self.store = Path(self.params.store)
        self.partial = self.store / "partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        self.assembler = ObservationAssembler(need_world=True,
                                              need_image=self.params.record_images,
                                              max_image_skew_s=self.params.max_image_skew_s)
        self.image_shape = (self.params.image_size, self.params.image_size, 3)
        self.running: dict[str, _Running] = {}
        self.last_observation: dict[str, Observation] = {}
        self.actions: dict[tuple[str, int], ActionCommand] = {}
        # observations not yet recorded, by episode and step: the observation, its model
        # inputs (converted once) and its arrival time
        self.pending: dict[str, dict[int, tuple[Observation, dict[str, np.ndarray], float]]] = {}
        self.refused: dict[str, int] = {}
        self.ended: set[str] = set()
        self.ending: dict[str, tuple[int, float]] = {}  # episode -> (its length, when it ended)
        self.recorded = 0
        self.started = time.monotonic()
        self.last_event = ""  # "<START|END> <episode id>" of the newest event seen
        self.episodes_written = 0
        self.write_failures = 0
        self._resume()
        self.create_timer(0.5, self._tick)
        self.transition_publisher = publisher(self, "replay/transitions")
        # Deep queues: every step counts, and a disk write may hold this node up for a while.
        self.inputs = [subscribe(self, "robot/action", self.on_action, queue=QUEUE),
                       subscribe(self, "trial/events", self.on_event),
                       subscribe(self, "robot/state", self.on_observation_part, queue=QUEUE),
                       subscribe(self, "world/state", self.on_observation_part, queue=QUEUE)]
        if self.params.record_images:
            self.inputs.append(subscribe(self, "camera/image_raw", self.on_observation_part,
                                         queue=QUEUE))
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"recording to {self.store}")

    # --- restart -------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Partial episodes of an earlier run of this node come back into memory."""
        for path in sorted(self.partial.glob("*.npz")):
            try:
                episode = load_episode(path)
            except EpisodeFormatError as error:
                self.get_logger().error(f"unreadable partial episode kept aside: {error}")
                path.rename(path.with_suffix(".unreadable"))
                continue
            running = _Running(episode.episode_id, int(episode.extras.get("first_step", 0)))
            running.observations = [{key: value[index] for key, value in
                                     episode.observations.items()}
                                    for index in range(episode.length + 1)]
            running.actions = list(episode.actions)
            running.rewards = list(map(float, episode.rewards))
            running.success = list(map(bool, episode.success))
            running.weights_version = list(map(int, episode.weights_version))
            self.running[episode.episode_id] = running
            self.get_logger().info(f"resumed {episode.episode_id} at step "
                                   f"{running.first_step + episode.length}")

    # --- inputs --------------------------------------------------------------------------------

    def on_action(self, command: ActionCommand) -> None:
        values = np.asarray(command.action, np.float64)
        if values.shape != (self.spec.action_dim,) or not np.isfinite(values).all():
            self._refuse("action", f"{command.episode_id} step {command.step}: an action "
                         f"needs {self.spec.action_dim} finite values, got {values.tolist()}")
            return
        self.actions.setdefault((command.episode_id, command.step), command)
        if len(self.actions) > 512:
            for key in list(self.actions)[:256]:
                del self.actions[key]
        self._advance(command.episode_id)

    def _refuse(self, what: str, reason: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1
        self.get_logger().error(f"refused {what} #{self.refused[what]}: {reason}")

    def on_event(self, event: EpisodeEvent) -> None:
        if event.event in (EpisodeEvent.START, EpisodeEvent.END):
            self.last_event = event_key(event.event, event.episode_id)
        if event.event == EpisodeEvent.END and event.episode_id not in self.ended:
            # The END can overtake the last step's camera frame: finish once that step is in,
            # or after a grace period.
            self.ending[event.episode_id] = (event.length, time.monotonic())
            if event.episode_id in self.running:  # the verdict, operator's marks included
                self.running[event.episode_id].outcome = {
                    "success": bool(event.success), "reason": int(event.reason),
                    "detail": event.detail}
            self._finish_ended()
        elif event.event == EpisodeEvent.START:
            self._close_others(event.episode_id)

    def _close_others(self, current: str) -> None:
        """The robot runs one episode at a time: one still open, not ending and not
        ``current``, ended while we were away (or its END was missed)."""
        for episode_id in list(self.running):
            if episode_id != current and episode_id not in self.ending:
                self.ending[episode_id] = (0, time.monotonic())

    def _finish_ended(self) -> None:
        now = time.monotonic()
        for episode_id, (length, since) in list(self.ending.items()):
            running = self.running.get(episode_id)
            recorded = running.first_step + running.steps if running else length
            if recorded >= length or now - since > ENDING_GRACE_S:
                del self.ending[episode_id]
                self.ended.add(episode_id)
                self._finish(episode_id, truncated=True)

    def on_observation_part(self, message: Any) -> None:
        try:
            observation = self.assembler.add(message)
            inputs = None if observation is None else observation.model_inputs(self.spec)
        except ValueError as error:  # a frame or state that does not fit the task's inputs
            self._refuse(type(message).__name__, str(error))
            return
        if observation is None or not observation.robot.episode_id:
            return
        if "pixels" in inputs and inputs["pixels"].shape != self.image_shape:
            self._refuse("image", f"a {inputs['pixels'].shape} frame; the model's input is "
                         f"{self.image_shape}")
            return
        episode_id, step = observation.key
        running = self.running.get(episode_id)
        if episode_id in self.ended or (
                running is not None and step <= running.first_step + running.steps):
            return  # a repeat of a step already recorded: never record twice
        self.pending.setdefault(episode_id, {}).setdefault(
            step, (observation, inputs, time.monotonic()))
        self._advance(episode_id)

    def _advance(self, episode_id: str) -> None:
        """Record every step of ``episode_id`` whose action and next observation are both in,
        in step order."""
        pending = self.pending.get(episode_id)
        if not pending or episode_id in self.ended:
            return
        running = self.running.get(episode_id)
        if running is None:
            first = min(pending)
            if first != 0 and time.monotonic() - pending[first][2] < FIRST_STEP_WAIT_S:
                return  # step 0 may still be on its way
            if first != 0:
                self.get_logger().warning(f"{episode_id}: first seen at step {first}; its "
                                          "earlier steps are lost to this recorder")
            self.get_logger().info(f"recording {episode_id}")
            self._close_others(episode_id)
            observation, inputs, _ = pending.pop(first)
            running = self.running[episode_id] = _Running(episode_id, first_step=first)
            running.observations.append(inputs)
            self.last_observation[episode_id] = observation
        while episode_id in self.running:
            step = running.first_step + running.steps + 1
            command = self.actions.get((episode_id, step - 1))
            if step not in pending or command is None:
                break  # the observation or the action is still on its way
            observation, inputs, _ = pending.pop(step)
            self._record(running, self.last_observation.get(episode_id), observation, inputs,
                         command)

    def _tick(self) -> None:
        for episode_id in list(self.pending):
            self._advance(episode_id)
        self._finish_ended()

    # --- recording -----------------------------------------------------------------------------

    def _record(self, running: _Running, before: Observation | None, after: Observation,
                inputs: dict[str, np.ndarray], command: ActionCommand) -> None:
        reward, success = after.reward_and_success(self.spec)
        running.observations.append(inputs)
        running.actions.append(np.asarray(command.action, np.float32))
        running.rewards.append(float(reward))
        running.success.append(bool(success))
        running.weights_version.append(int(command.weights_version))
        last = after.robot.step >= self.spec.episode_length
        self._write(running, self.partial, truncated=False)
        self.recorded += 1
        self.last_observation[running.episode_id] = after
        publish_checked(self.transition_publisher,
                        self._transition(running, before, after, last))
        if running.episode_id in self.ending:
            self._finish_ended()

    def _transition(self, running: _Running, before: Observation | None, after: Observation,
                    last: bool) -> Transition:
        now, then = running.observations[-1], running.observations[-2]
        message = Transition()
        message.header.stamp = after.stamp
        message.header.frame_id = after.robot.header.frame_id
        message.episode_id = running.episode_id
        message.step = running.first_step + running.steps - 1
        message.task = self.spec.name
        message.source = SOURCES[self.params.backend]
        message.proprio, message.next_proprio = then["proprio"].tolist(), now["proprio"].tolist()
        if "state" in now:  # absent where the object is unknown (the real arm)
            message.state, message.next_state = then["state"].tolist(), now["state"].tolist()
        if "pixels" in now:
            stamp = before.stamp if before is not None else after.stamp
            message.image = image_to_msg(then["pixels"], "rgb8", "camera", stamp)
            message.next_image = image_to_msg(now["pixels"], "rgb8", "camera", after.stamp)
        message.action = running.actions[-1].tolist()
        message.reward = running.rewards[-1]
        message.truncated = last
        message.success = running.success[-1]
        message.weights_version = running.weights_version[-1]
        return message

    def _write(self, running: _Running, directory: Path, truncated: bool) -> None:
        if not running.steps:
            return
        try:
            save_episode(running.episode(self.spec.name, self.params.backend, truncated),
                         directory)
        except OSError as error:  # a full disk must not lose what is in memory: say so
            self.write_failures += 1
            self.get_logger().error(f"cannot write {running.episode_id}: {error}")

    def _finish(self, episode_id: str, truncated: bool) -> None:
        running = self.running.pop(episode_id, None)
        self.last_observation.pop(episode_id, None)
        waiting = sorted(self.pending.pop(episode_id, {}))
        if running is not None and waiting:  # say which steps were lost, and why
            step = running.first_step + running.steps + 1
            missing = ("no action" if (episode_id, step - 1) not in self.actions
                       else "no observation after it")
            self.get_logger().error(f"{episode_id}: steps {step - 1}..{waiting[-1] - 1} not "
                                    f"recorded: {missing} for step {step - 1}")
        if running is None or not running.steps:
            return
        self._write(running, self.store, truncated=truncated)
        (self.partial / f"{episode_id}.npz").unlink(missing_ok=True)
        self.episodes_written += 1
        self.get_logger().info(f"wrote {episode_id}: {running.steps} steps, success "
                               f"{any(running.success)}")

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = WARN if self.write_failures or self.refused else OK
        # The supervisor starts a trial only when this says every input stream is matched.
        matched = all(subscription.get_publisher_count() > 0 for subscription in self.inputs)
        return level, f"{self.recorded} steps, {self.episodes_written} episodes", {
            "inputs_matched": matched, "last_event": self.last_event,
            "up_s": round(time.monotonic() - self.started, 1), "steps_recorded": self.recorded,
            "episodes_written": self.episodes_written, "running": ",".join(self.running),
            "write_failures": self.write_failures,
            **{f"refused_{what}": count for what, count in self.refused.items()}}

    def close(self) -> None:
        for episode_id in list(self.ending):  # ended: final, even if a frame never came
            self._finish(episode_id, truncated=True)
        for running in self.running.values():  # running: kept; a restart resumes it
            self._write(running, self.partial, truncated=False)


def main() -> None:
    run(ReplayRecorder)


if __name__ == "__main__":
    main()
