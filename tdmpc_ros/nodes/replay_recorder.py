"""The replay recorder: every executed step, once, on disk and on the transitions topic.

A step is recorded once both its action and the observation that followed it (robot state,
world state and camera frame of the same instant) are in, whichever came first: DDS does not
order messages of different writers, and the planner's action for step N can arrive after the
observation of step N + 1. Observations wait in a per-episode table keyed by step, and steps are
recorded in step order as soon as each is complete. The wait is bounded: when a step has not
come ``GAP_WAIT_S`` after the recorder last made progress, while later steps are in, the episode
is split there, loudly (the part before is closed and kept, the part after is recorded as
``<episode id>+<its first step>``), and the steps after the gap are kept. Reward and success come
from the task's own function (``tasks.reward_and_success``), the one the trial supervisor judges
by.

Nothing is lost if a process is killed: after every step the episode so far is rewritten
atomically (temporary file, fsync, rename) to ``<store>/partial/``; at the episode's end it
moves to ``<store>/`` as one episode file. A restarted recorder reads its partial episodes back
and carries on: an episode still running continues where it stopped; one that ended meanwhile
is closed as truncated. Every input is read with catch-up QoS (graph.CATCH_UP_S): the writers
keep the last seconds of each stream, so a recorder restarted within that time also gets the
steps executed while it was down, and records each once (those already on disk are skipped).

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
from rclpy.time import Time

from tdmpc_ros import graph
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
    refusals,
    run,
    stamp_seconds,
    subscribe,
)
from tdmpc_ros.nodes.observations import Observation, ObservationAssembler
from tdmpc_ros.tasks import get_task

# A step that has not come this long after the recorder last made progress on its episode,
# while later steps are in, never will: the episode is split there (DDS reorders streams of
# different writers by milliseconds, and a catch-up after a restart by well under a second).
GAP_WAIT_S = 4.0
ENDING_GRACE_S = 6.0  # after its END, wait this long at most for an episode's last steps
FIRST_STEP_WAIT_S = GAP_WAIT_S  # an episode first seen after step 0: wait for step 0
MAX_PENDING = 1000  # observations waiting for their actions, all episodes together
MAX_ACTIONS = 1000  # actions waiting for their observations


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
    first_step: int = 0  # > 0 when the recorder came up late, or for the part after a gap
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    weights_version: list[int] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)  # the supervisor's END: the verdict

    progress_at: float = field(default_factory=time.monotonic)  # the last step recorded
    last_stamp: float = 0.0  # the stamp of its newest observation (s)

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def next_step(self) -> int:
        """The step whose observation (and the action before it) is needed next."""
        return self.first_step + self.steps + 1

    @property
    def name(self) -> str:
        """Its file name: the episode id, with the first step for a part after a gap."""
        first = self.first_step
        return f"{self.episode_id}+{first:03d}" if first else self.episode_id

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
            extras={"first_step": self.first_step, "last_stamp": self.last_stamp,
                    **self.outcome})


class ReplayRecorder(Node):
    def __init__(self) -> None:
        super().__init__("replay_recorder")
        self.params = read_parameters(self, RecorderParams)
        self.spec = get_task(self.params.task)
        self.store = Path(self.params.store)
        self.partial = self.store / "partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        # keep: a catch-up brings each stream's history, one stream after another
        self.assembler = ObservationAssembler(need_world=True,
                                              need_image=self.params.record_images,
                                              max_image_skew_s=self.params.max_image_skew_s,
                                              keep=2 * graph.CATCH_UP,
                                              image_size=self.params.image_size)
        self.running: dict[str, _Running] = {}
        self.last_observation: dict[str, Observation] = {}
        self.actions: dict[tuple[str, int], ActionCommand] = {}
        # observations not yet recorded, by episode and step: the observation, its model
        # inputs (converted once) and its arrival time
        self.pending: dict[str, dict[int, tuple[Observation, dict[str, np.ndarray], float]]] = {}
        self.refuse = refusals(self)
        self.ended = self._ended_episodes()
        self.ending: dict[str, tuple[int, float]] = {}  # episode -> (its length, when it ended)
        self.recorded = 0
        self.started = time.monotonic()
        self.last_event = ""  # "<START|END> <episode id>" of the newest event seen
        self.episodes_written = 0
        self.write_failures = 0
        self.splits = 0
        self.steps_lost = 0
        self.transition_publisher = publisher(self, "replay/transitions")
        self._resume()
        self.create_timer(0.5, self._tick)
        # Catch-up readers: every step counts, a disk write may hold this node up for a while,
        # and a restarted recorder gets what was sent while it was down.
        self.inputs = [subscribe(self, "robot/action", self.on_action, catch_up=True),
                       subscribe(self, "trial/events", self.on_event),
                       subscribe(self, "robot/state", self.on_observation_part, catch_up=True),
                       subscribe(self, "world/state", self.on_observation_part, catch_up=True)]
        if self.params.record_images:
            self.inputs.append(subscribe(self, "camera/image_raw", self.on_observation_part,
                                         catch_up=True))
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"recording to {self.store}")

    # --- restart -------------------------------------------------------------------------------

    def _ended_episodes(self) -> set[str]:
        """Episodes already closed in the store (by an earlier run of this node): a catch-up
        brings their steps again, and they must not be recorded twice."""
        return {path.stem.split("+")[0] for path in self.store.glob("*.npz")}

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
            running.last_stamp = float(episode.extras.get("last_stamp", path.stat().st_mtime))
            self.running[episode.episode_id] = running
            self.ended.discard(episode.episode_id)  # its earlier part was split off
            # A step written to disk may not have left this process on the topic before it
            # died (killed between the two): send the episode's steps again; the learner
            # takes each (episode, step) once.
            stamp = Time(seconds=running.last_stamp).to_msg()
            for index in range(running.steps):
                publish_checked(self.transition_publisher, self._transition(
                    running, index, stamp, stamp, frame_id=""))
            self.get_logger().info(f"resumed {episode.episode_id} at step "
                                   f"{running.first_step + episode.length}; its "
                                   f"{running.steps} transitions sent again")

    # --- inputs --------------------------------------------------------------------------------

    def on_action(self, command: ActionCommand) -> None:
        values = np.asarray(command.action, np.float64)
        if values.shape != (self.spec.action_dim,) or not np.isfinite(values).all():
            self.refuse("action (size)", f"{command.episode_id} step {command.step}: an action "
                        f"needs {self.spec.action_dim} finite values, got {values.tolist()}")
            return
        if not command.episode_id or command.episode_id in self.ended:
            return
        running = self.running.get(command.episode_id)
        if running is not None and command.step < running.next_step - 1:
            return  # its step is recorded already (a catch-up brings it again)
        self.actions.setdefault((command.episode_id, command.step), command)
        if len(self.actions) > MAX_ACTIONS:  # bounded: the oldest go, and the log says so
            for key in list(self.actions)[: MAX_ACTIONS // 4]:
                del self.actions[key]
            self.refuse("action (memory bound)", f"more than {MAX_ACTIONS} actions without "
                        "their observations; the oldest were dropped")
        self._advance(command.episode_id)

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
        elif event.event == EpisodeEvent.START and event.episode_id not in self.ended:
            self._close_others(event.episode_id, stamp_seconds(event.header.stamp))

    def _close_others(self, current: str, since: float) -> None:
        """The robot runs one episode at a time: one still open, not ending, not ``current``
        and last seen before ``since`` (the stamp of what began ``current``) ended while we
        were away, or its END was missed. By stamps, not by arrival: a catch-up replays old
        STARTs after the episodes that followed them."""
        for episode_id, running in list(self.running.items()):
            if (episode_id != current and episode_id not in self.ending
                    and running.last_stamp < since):
                self.ending[episode_id] = (0, time.monotonic())

    def _finish_ended(self) -> None:
        now = time.monotonic()
        for episode_id, (length, since) in list(self.ending.items()):
            # An END can overtake every step of a short episode: not begun is not done.
            running = self.running.get(episode_id)
            recorded = running.first_step + running.steps if running else 0
            if recorded < length and now - since > ENDING_GRACE_S:
                while self._split(episode_id):  # the steps after a gap are kept
                    running = self.running[episode_id]
                recorded = running.first_step + running.steps if running else 0
            if recorded >= length or now - since > ENDING_GRACE_S:
                del self.ending[episode_id]
                self.ended.add(episode_id)
                self._finish(episode_id, truncated=True)

    def on_observation_part(self, message: Any) -> None:
        try:
            observation = self.assembler.add(message)
            inputs = None if observation is None else observation.model_inputs(self.spec)
        except ValueError as error:  # a frame or state that does not fit the task's inputs
            self.refuse(f"{type(message).__name__} (inputs)", str(error))
            return
        if observation is None or not observation.robot.episode_id:
            return
        episode_id, step = observation.key
        running = self.running.get(episode_id)
        if episode_id in self.ended or (running is not None and step < running.next_step):
            return  # a repeat of a step already recorded: never record twice
        waiting = self.pending.setdefault(episode_id, {})
        waiting.setdefault(step, (observation, inputs, time.monotonic()))
        if sum(map(len, self.pending.values())) > MAX_PENDING:
            oldest = next(iter(self.pending))
            self.refuse("observation (memory bound)", f"more than {MAX_PENDING} observations "
                        f"without their actions; {oldest}'s {len(self.pending[oldest])} dropped")
            del self.pending[oldest]
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
                self.steps_lost += first
                self.get_logger().error(f"{episode_id}: first seen at step {first}; steps "
                                        f"0..{first - 1} are lost to this recorder")
            self.get_logger().info(f"recording {episode_id}")
            observation = pending[first][0]
            self._close_others(episode_id, stamp_seconds(observation.stamp))
            running = self._begin(episode_id, first)
        while episode_id in self.running:
            step = running.next_step
            command = self.actions.get((episode_id, step - 1))
            if step not in pending or command is None:
                break  # the observation or the action is still on its way
            observation, inputs, _ = pending.pop(step)
            del self.actions[(episode_id, step - 1)]
            self._record(running, self.last_observation.get(episode_id), observation, inputs,
                         command)

    def _begin(self, episode_id: str, first: int) -> _Running:
        """A new episode, or the part of one after a gap, from its pending observation."""
        observation, inputs, _ = self.pending[episode_id].pop(first)
        running = self.running[episode_id] = _Running(episode_id, first_step=first)
        running.observations.append(inputs)
        running.last_stamp = stamp_seconds(observation.stamp)
        self.last_observation[episode_id] = observation
        return running

    def _split(self, episode_id: str) -> bool:
        """Close the part of ``episode_id`` before a step that never came and go on from the
        next observation that did; False when nothing waits beyond the gap."""
        running, pending = self.running.get(episode_id), self.pending.get(episode_id)
        if running is None or not pending:
            return False
        gap = running.next_step
        resume = min((step for step in pending if step >= gap), default=None)
        if resume is None:
            return False
        missing = ("its action" if (episode_id, gap - 1) not in self.actions
                   else "the observation after it")
        lost = resume - gap + 1
        self.splits += 1
        self.steps_lost += lost
        self.get_logger().error(
            f"{episode_id}: step {gap - 1} never came complete ({missing} is missing after "
            f"{GAP_WAIT_S:.0f} s); {lost} step(s) lost, {gap - 1}..{resume - 1}. Steps "
            f"{running.first_step}..{gap - 2} are kept as {running.name}, and recording goes "
            f"on from step {resume} as {episode_id}+{resume:03d}")
        self.running.pop(episode_id)
        self._close(running)
        self._begin(episode_id, resume)
        self._advance(episode_id)
        return True

    def _tick(self) -> None:
        now = time.monotonic()
        for episode_id in list(self.pending):
            self._advance(episode_id)
            running = self.running.get(episode_id)
            if (running is not None and self.pending.get(episode_id)
                    and now - running.progress_at > GAP_WAIT_S):
                self._split(episode_id)
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
        running.progress_at = time.monotonic()
        running.last_stamp = stamp_seconds(after.stamp)
        self._write(running, self.partial, truncated=False)
        self.recorded += 1
        self.last_observation[running.episode_id] = after
        publish_checked(self.transition_publisher, self._transition(
            running, running.steps - 1, before.stamp if before is not None else after.stamp,
            after.stamp, after.robot.header.frame_id))
        if running.episode_id in self.ending:
            self._finish_ended()

    def _transition(self, running: _Running, index: int, before_stamp: Any, stamp: Any,
                    frame_id: str) -> Transition:
        """The transition of ``running``'s step ``index`` (0: its first recorded one)."""
        now, then = running.observations[index + 1], running.observations[index]
        message = Transition()
        message.header.stamp = stamp
        message.header.frame_id = frame_id
        message.episode_id = running.episode_id
        message.step = running.first_step + index
        message.task = self.spec.name
        message.source = SOURCES[self.params.backend]
        message.proprio, message.next_proprio = then["proprio"].tolist(), now["proprio"].tolist()
        if "state" in now:  # absent where the object is unknown (the real arm)
            message.state, message.next_state = then["state"].tolist(), now["state"].tolist()
        if "pixels" in now:
            message.image = image_to_msg(then["pixels"], "rgb8", "camera", before_stamp)
            message.next_image = image_to_msg(now["pixels"], "rgb8", "camera", stamp)
        message.action = running.actions[index].tolist()
        message.reward = running.rewards[index]
        message.truncated = message.step + 1 >= self.spec.episode_length
        message.success = running.success[index]
        message.weights_version = running.weights_version[index]
        return message

    def _write(self, running: _Running, directory: Path, truncated: bool) -> None:
        if not running.steps:
            return
        try:
            save_episode(running.episode(self.spec.name, self.params.backend, truncated),
                         directory, name=running.name)
        except (OSError, EpisodeFormatError) as error:  # a full disk must not lose what is in
            self.write_failures += 1  # memory: say so, and try again at the next step
            self.get_logger().error(f"cannot write {running.name}: {error}")

    def _finish(self, episode_id: str, truncated: bool) -> None:
        running = self.running.pop(episode_id, None)
        self.last_observation.pop(episode_id, None)
        self.pending.pop(episode_id, None)
        for key in [key for key in self.actions if key[0] == episode_id]:
            del self.actions[key]
        if running is not None:
            self._close(running, truncated)

    def _close(self, running: _Running, truncated: bool = True) -> None:
        """Move an episode (or the part of one before a gap) from partial/ to the store."""
        if not running.steps:
            return
        self._write(running, self.store, truncated=truncated)
        (self.partial / f"{running.name}.npz").unlink(missing_ok=True)
        self.episodes_written += 1
        self.get_logger().info(f"wrote {running.name}: steps {running.first_step}.."
                               f"{running.next_step - 2} ({running.steps}), success "
                               f"{any(running.success)}")

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        level = WARN if (self.write_failures or self.refuse.counts or self.steps_lost) else OK
        # The supervisor starts a trial only when this says every input stream is matched.
        matched = all(subscription.get_publisher_count() > 0 for subscription in self.inputs)
        return level, f"{self.recorded} steps, {self.episodes_written} episodes", {
            "inputs_matched": matched, "last_event": self.last_event,
            "up_s": round(time.monotonic() - self.started, 1), "steps_recorded": self.recorded,
            "episodes_written": self.episodes_written, "running": ",".join(self.running),
            "write_failures": self.write_failures, "splits": self.splits,
            "steps_lost": self.steps_lost}

    def close(self) -> None:
        for episode_id in list(self.ending):  # ended: final, even if a frame never came
            self._finish(episode_id, truncated=True)
        for running in self.running.values():  # running: kept; a restart resumes it
            self._write(running, self.partial, truncated=False)


def main() -> None:
    run(ReplayRecorder)


if __name__ == "__main__":
    main()
