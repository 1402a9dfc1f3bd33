"""The trial supervisor: starts each trial, judges it, ends it, and counts.

A trial starts with an EpisodeEvent START (the driver resets on it). Each robot state of the
episode is judged by the task's own function (``tasks.reward_and_success``); the episode ends
after the task's length (or ``max_steps``), or as stale input when no step arrives for
``step_timeout_s`` or a real camera has sent no new frame for ``max_frame_age_s``.

The operator has the last word (``trial/operator``, from ``operator_console``): success or
failure ends the running trial so marked (between trials it relabels the last one), pause holds
the robot and the clock until resume, abort ends the trial and the run.

Each trial's line is printed once its steps are recorded (or ``RECORD_WAIT_S`` after its end),
and says so when the recorder kept fewer steps than the robot executed. ``summary.json`` is
rewritten after every trial and whenever the run ends, however it ends (all trials done, abort,
Ctrl-C or SIGTERM from the launcher when another node failed), with what is known then and how
it ended (``ended``). After ``trials`` trials it prints a summary, writes a plot (success and
weights by trial) into ``run_dir``, and exits; the launcher then stops the rest of the graph.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rclpy.node import Node

from tdmpc_ros import graph
from tdmpc_ros.interfaces import publish_checked
from tdmpc_ros.msg import ActionCommand, EpisodeEvent, OperatorCommand, RobotState
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
from tdmpc_ros.nodes.observations import ObservationAssembler
from tdmpc_ros.nodes.replay_recorder import event_key
from tdmpc_ros.tasks import get_task

# topic -> readers its writer must have matched before a trial starts (from the writers' own
# diagnostics): the driver's state goes to planner, recorder and supervisor; the world state also
# to the simulated camera, which renders it (a real camera does not listen); the camera's frames
# to the recorder; the planner's actions to the driver, recorder and supervisor; the recorder's
# transitions to the learner and supervisor; the learner's weights (sent once it has loaded its
# data) to the planner.
READY_WHEN = {
    "robot/state": 3,
    "world/state": 3,
    "camera/image_raw": 1,
    "robot/action": 3,
    "replay/transitions": 2,
    "learner/weights": 1,
}
READY_WHEN_SIM = {**READY_WHEN, "world/state": 4}
RECORDER_SILENCE_S = 2.0  # no recorder heartbeat for this long: it is down
RECORDER_SETTLE_S = 2.0  # a (re)started recorder's streams need this long to match both ways
FINISH_GRACE_S = 10.0  # at the end, wait this long at most for the last step to be recorded
RECORD_WAIT_S = 8.0  # a trial's line waits this long at most for its steps to be recorded


@dataclass
class SupervisorParams:
    task: str = param("task of the trials")
    trials: int = param("trials to run, then stop")
    backend: str = param("sim, real or gazebo (shown in the summary)")
    variant: str = param("the task variant the trials run on (shown in the summary; empty: "
                         "the training distribution)")
    max_steps: int = param("steps per trial; 0: the task's episode length")
    run_dir: str = param("where summary.json and trials.png go")
    step_timeout_s: float = param("end a trial as stale when no step arrives for this long (s)")
    max_frame_age_s: float = param("end a trial as stale when a real camera has sent no new "
                                   "frame for this long (s, from its diagnostics); 0: never")
    startup_timeout_s: float = param("give up when the robot and planner are not up by then (s)")

    def __post_init__(self) -> None:
        spec = get_task(self.task)
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if not 0 <= self.max_steps <= spec.episode_length:
            raise ValueError(f"max_steps must be in [0, {spec.episode_length}]")
        if self.backend == "real" and self.task == "push":
            raise ValueError("task push on the real arm: its reward needs the cube's position, "
                             "and the real backend has no perception of it (reach and lift "
                             "are judged from proprioception)")
        if self.max_frame_age_s < 0 or self.step_timeout_s <= 0:
            raise ValueError(f"max_frame_age_s ({self.max_frame_age_s}) must be >= 0 and "
                             f"step_timeout_s ({self.step_timeout_s}) > 0")


@dataclass
class Trial:
    number: int
    episode_id: str
    started: float
    steps: int = 0
    episode_return: float = 0.0
    success: bool = False
    weights_version: int = -1
    weights_ids: list[str] = field(default_factory=list)  # every weights its actions named
    last_step_time: float = 0.0
    uncertainty: list[float] = field(default_factory=list)  # Q-ensemble std, executed action


class TrialSupervisor(Node):
    def __init__(self) -> None:
        super().__init__("trial_supervisor")
        self.params = read_parameters(self, SupervisorParams)
        self.spec = get_task(self.params.task)
        self.steps_per_trial = self.params.max_steps or self.spec.episode_length
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.assembler = ObservationAssembler(need_world=True, need_image=False)
        self.trial: Trial | None = None
        self.results: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.waiting_for = "the graph"
        self.ready_since: float | None = None
        self.event_publisher = publisher(self, "trial/events")
        subscribe(self, "robot/state", self.on_message)
        subscribe(self, "world/state", self.on_message)
        subscribe(self, "robot/action", self.on_action)
        subscribe(self, "planner/plan", self.on_plan)
        self.recorded: set[tuple[str, int]] = set()
        subscribe(self, "replay/transitions",
                  lambda message: self.recorded.add((message.episode_id, message.step)))
        self.finishing_since: float | None = None
        self.unreported: list[tuple[dict[str, Any], float]] = []  # trial lines to print
        self.ended = ""  # how the run ended, once it has
        self.paused = False
        self.aborted = False
        subscribe(self, "trial/operator", self.on_operator)
        self.recorder_heard = 0.0  # when the recorder last said all its inputs are matched
        self.last_event = ""  # the recorder must have seen it before the next trial starts
        self.readers: dict[str, tuple[int, float]] = {}  # topic -> (matched readers, when)
        self.camera_frame_at: float | None = None  # a real camera's last new frame, as it said
        subscribe(self, "/diagnostics", self.on_diagnostics)
        self.create_timer(0.2, self.tick)
        Diagnostics(self, self.diagnostics)
        self.get_logger().info(f"{self.params.trials} trials of {self.spec.name}, "
                               f"{self.steps_per_trial} steps each, on {self.params.backend}")

    # --- the trial loop ------------------------------------------------------------------------

    def graph_ready(self) -> bool:
        """Every node is up and DDS has matched the streams a trial needs, so that no one
        misses the first step of the first trial."""
        present = set(self.get_node_names())
        missing = [node.name for node in graph.NODES if node.name not in present]
        now = time.monotonic()
        ready_when = READY_WHEN_SIM if self.params.backend == "sim" else READY_WHEN
        for name, wanted in ready_when.items():
            readers, heard = self.readers.get(self.resolve_topic_name(name), (0, 0.0))
            if readers < wanted or now - heard > RECORDER_SILENCE_S:
                missing.append(f"{name} ({readers} of {wanted} readers)")
        if self.camera_stale_s() is not None:
            missing.append(f"the camera (no new frame for {self.camera_stale_s():.0f} s)")
        if not self.recorder_alive():
            missing.append("the replay recorder's heartbeat: up, every input matched, and the "
                           "last episode event seen")
        self.waiting_for = ", ".join(missing)
        return not missing

    def on_diagnostics(self, array: Any) -> None:
        now = time.monotonic()
        for status in array.status:
            values = {item.key: item.value for item in status.values}
            for key, value in values.items():
                readers = _number(value) if key.startswith("readers ") else None
                if readers is not None:
                    self.readers[key.removeprefix("readers ")] = (int(readers), now)
            silent = _number(values.get("seconds since last frame", ""))  # real cameras only
            if status.name.endswith("/camera") and silent is not None:
                self.camera_frame_at = now - silent
            if status.name.endswith("/replay_recorder"):
                if (values.get("inputs_matched") == "True"
                        and values.get("last_event", "") == self.last_event
                        and (_number(values.get("up_s", "")) or 0.0) >= RECORDER_SETTLE_S):
                    self.recorder_heard = time.monotonic()

    def camera_stale_s(self) -> float | None:
        """How long a real camera has sent no new frame, when that is over the limit (a camera
        whose node died goes silent on /diagnostics too, and so counts as stale)."""
        if not self.params.max_frame_age_s or self.camera_frame_at is None:
            return None
        silent = time.monotonic() - self.camera_frame_at
        return silent if silent > self.params.max_frame_age_s else None

    def recorder_alive(self) -> bool:
        return time.monotonic() - self.recorder_heard < RECORDER_SILENCE_S

    def tick(self) -> None:
        now = time.monotonic()
        self.report_trials()
        if self.finishing_since is not None:
            last = self.results[-1]
            if ((last["episode_id"], last["steps"] - 1) in self.recorded or not last["steps"]
                    or now - self.finishing_since > FINISH_GRACE_S):
                self.finish()
            return
        if self.paused:
            return  # the operator holds everything: no new trial, no stale-step clock
        if self.trial is None:
            if not self.graph_ready():
                self.ready_since = None
            elif self.ready_since is None:
                self.ready_since = now  # give DDS a moment to match every pair
            elif now - self.ready_since >= (0.0 if self.results else 1.0):
                self.start_trial(len(self.results) + 1)
            if (self.trial is None and not self.results
                    and now - self.started > self.params.startup_timeout_s):
                self.get_logger().error(f"not up after {self.params.startup_timeout_s:.0f} s: "
                                        f"{self.waiting_for}")
                self.ended = f"not up after {self.params.startup_timeout_s:.0f} s"
                self.write_summary(complete=False)
                raise SystemExit(1)
            return
        if not self.recorder_alive():
            self.end_trial(EpisodeEvent.REASON_ERROR, "the replay recorder went silent: this "
                           "trial's data is incomplete; the next trial waits for it")
        elif self.camera_stale_s() is not None:
            self.end_trial(EpisodeEvent.REASON_STALE_INPUT,
                           f"the camera sent no new frame for {self.camera_stale_s():.1f} s")
        elif now - self.trial.last_step_time > self.params.step_timeout_s:
            self.end_trial(EpisodeEvent.REASON_STALE_INPUT,
                           f"no step for {self.params.step_timeout_s:.0f} s")

    def start_trial(self, number: int) -> None:
        episode_id = f"{self.spec.name}-{self.run_id}-trial{number:03d}"
        now = time.monotonic()
        self.trial = Trial(number, episode_id, now, last_step_time=now)
        self.publish_event(EpisodeEvent.START, EpisodeEvent.REASON_NONE, "")
        self.write_summary(complete=False)  # from the first trial on, a summary is there

    def on_action(self, command: ActionCommand) -> None:
        if self.trial is not None and command.episode_id == self.trial.episode_id:
            self.trial.weights_version = max(self.trial.weights_version,
                                             int(command.weights_version))
            if command.weights_id and command.weights_id not in self.trial.weights_ids:
                self.trial.weights_ids.append(command.weights_id)

    def on_plan(self, plan: Any) -> None:
        """The model's uncertainty about each action it chose: the Q-ensemble's std at the
        first step of the plan (what FOWM's penalty keeps low, and finetuning should lower)."""
        trial = self.trial
        if trial is not None and plan.episode_id == trial.episode_id and len(plan.q_std):
            trial.uncertainty.append(float(plan.q_std[0]))

    def on_message(self, message: Any) -> None:
        observation = self.assembler.add(message)
        trial = self.trial
        if observation is None or trial is None or observation.key[0] != trial.episode_id:
            return
        robot = observation.robot
        trial.last_step_time = time.monotonic()
        if robot.state == RobotState.STATE_STOPPED:
            self.end_trial(EpisodeEvent.REASON_SAFETY_STOP, "the robot was stopped (the robot "
                           "driver's diagnostics say why)")
            return
        if robot.state == RobotState.STATE_ERROR:
            self.end_trial(EpisodeEvent.REASON_ERROR, f"the controller reported error "
                           f"C{robot.error_code} (the robot driver's diagnostics say more)")
            # A person must look at the arm: no next trial (whose reset would refuse) until
            # they have cleared the error and resumed.
            if self.finishing_since is None:
                self.paused = True
                print(f"paused: the controller reported error C{robot.error_code}; check the "
                      "arm, clear the error, then resume from the operator console", flush=True)
            return
        if robot.step == 0 or robot.step <= trial.steps:
            return
        reward, success = observation.reward_and_success(self.spec)
        trial.steps = robot.step
        trial.episode_return += reward
        trial.success = trial.success or success
        if trial.steps >= self.steps_per_trial:
            self.end_trial(EpisodeEvent.REASON_TIME_LIMIT, "")

    # --- the operator -------------------------------------------------------------------------

    def on_operator(self, command: OperatorCommand) -> None:
        detail = command.detail or ""
        if command.command in (OperatorCommand.SUCCESS, OperatorCommand.FAILURE):
            success = command.command == OperatorCommand.SUCCESS
            label = "success" if success else "failure"
            if self.trial is not None:
                self.trial.success = success
                self.paused = False
                self.end_trial(EpisodeEvent.REASON_OPERATOR,
                               f"operator marked {label}" + (f": {detail}" if detail else ""))
            elif self.results:
                last = self.results[-1]
                last["success"], last["operator"] = success, label + (f": {detail}" if detail
                                                                      else "")
                self.get_logger().info(f"operator relabelled trial {last['trial']} a {label}")
            else:
                self.get_logger().warning(f"operator marked {label}, but no trial has run yet")
        elif command.command == OperatorCommand.PAUSE and not self.paused:
            self.paused = True
            if self.trial is not None:
                self.publish_event(EpisodeEvent.PAUSE, EpisodeEvent.REASON_OPERATOR, detail)
            print("paused by the operator: the robot holds; resume from the operator console",
                  flush=True)
        elif command.command == OperatorCommand.RESUME and self.paused:
            self.paused = False
            if self.trial is not None:
                self.trial.last_step_time = time.monotonic()
                self.publish_event(EpisodeEvent.RESUME, EpisodeEvent.REASON_OPERATOR, detail)
            print("resumed by the operator", flush=True)
        elif command.command == OperatorCommand.ABORT and self.finishing_since is None:
            self.paused = False
            self.aborted = True
            print("aborted by the operator: ending the run", flush=True)
            if self.trial is not None:
                self.trial.success = False
                self.end_trial(EpisodeEvent.REASON_ABORTED,
                               "aborted by the operator" + (f": {detail}" if detail else ""))
            if not self.results:
                self.ended = "aborted by the operator"
                self.write_summary(complete=False)
                raise SystemExit(0)
            self.finishing_since = time.monotonic()

    def end_trial(self, reason: int, detail: str) -> None:
        trial = self.trial
        assert trial is not None
        self.publish_event(EpisodeEvent.END, reason, detail)
        seconds = time.monotonic() - trial.started
        self.results.append({"trial": trial.number, "episode_id": trial.episode_id,
                             "success": trial.success, "return": round(trial.episode_return, 4),
                             "steps": trial.steps, "weights_version": trial.weights_version,
                             "weights": trial.weights_ids,
                             "seconds": round(seconds, 2), "reason": reason, "detail": detail,
                             "q_std": round(sum(trial.uncertainty) / len(trial.uncertainty), 5)
                             if trial.uncertainty else None})
        self.unreported.append((self.results[-1], time.monotonic()))
        self.write_summary(complete=False)  # a run killed later still leaves what it did
        self.trial = None
        self.ready_since = None
        self.recorder_heard = 0.0  # the next trial waits for a heartbeat that has seen this END
        if len(self.results) >= self.params.trials or self.aborted:
            self.finishing_since = time.monotonic()  # tick() finishes once all is recorded
        # else tick() starts the next trial once the graph is whole again

    def recorded_steps(self, episode_id: str) -> int:
        return sum(episode == episode_id for episode, _ in self.recorded)

    def report_trials(self, force: bool = False) -> None:
        """Print each ended trial's line once the recorder has its steps (or has had time to),
        saying so when it kept fewer than the robot executed."""
        while self.unreported:
            result, ended_at = self.unreported[0]
            recorded = self.recorded_steps(result["episode_id"])
            if not (force or recorded >= result["steps"]
                    or time.monotonic() - ended_at > RECORD_WAIT_S):
                return
            self.unreported.pop(0)
            number = result["trial"]
            successes = sum(r["success"] for r in self.results if r["trial"] <= number)
            weights = (result["weights"][-1] if result["weights"]
                       else f"v{result['weights_version']}")
            lost = (f" | RECORDED {recorded} OF {result['steps']} STEPS"
                    if recorded != result["steps"] else "")
            print(f"trial {number:>3}/{self.params.trials} | success {int(result['success'])} | "
                  f"return {result['return']:6.2f} | steps {result['steps']:>2}{lost} | "
                  f"weights {weights} | {result['seconds']:5.1f} s | successes so far "
                  f"{successes}/{number}"
                  + (f" | ended: {result['detail']}" if result["detail"] else ""), flush=True)
            if lost:
                self.get_logger().error(f"trial {number}: the recorder kept {recorded} of its "
                                        f"{result['steps']} steps (the replay recorder's log "
                                        "says which and why)")
            self.write_summary(complete=False)

    def publish_event(self, kind: int, reason: int, detail: str) -> None:
        trial = self.trial
        assert trial is not None
        event = EpisodeEvent()
        event.header.stamp = self.get_clock().now().to_msg()
        event.event = kind
        event.episode_id, event.task, event.trial = trial.episode_id, self.spec.name, trial.number
        event.length = self.steps_per_trial  # START: the limit the driver enforces
        if kind == EpisodeEvent.END:
            event.length, event.episode_return = trial.steps, float(trial.episode_return)
            event.success, event.weights_version = trial.success, trial.weights_version
        event.reason, event.detail = reason, detail
        publish_checked(self.event_publisher, event)
        if kind in (EpisodeEvent.START, EpisodeEvent.END):
            self.last_event = event_key(kind, trial.episode_id)

    # --- the end -------------------------------------------------------------------------------

    def write_summary(self, complete: bool) -> dict[str, Any]:
        """``summary.json`` with every trial so far; ``complete`` once all trials are done (or
        aborted), ``ended`` saying how the run ended when it has."""
        for result in self.results:  # a gap (the recorder was down) shows in the summary
            result["recorded_steps"] = self.recorded_steps(result["episode_id"])
            result["steps_not_recorded"] = result["steps"] - result["recorded_steps"]
        run_dir = Path(self.params.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        successes = sum(result["success"] for result in self.results)
        trial = self.trial
        summary = {"task": self.spec.name, "variant": self.params.variant,
                   "backend": self.params.backend, "complete": complete,
                   "ended": self.ended or ("finished" if complete else "running"),
                   "trials": len(self.results), "aborted": self.aborted, "successes": successes,
                   "success_rate": successes / len(self.results) if self.results else 0.0,
                   "steps_not_recorded": sum(r["steps_not_recorded"] for r in self.results),
                   "unfinished_trial": None if trial is None else {
                       "trial": trial.number, "episode_id": trial.episode_id,
                       "steps": trial.steps,
                       "recorded_steps": self.recorded_steps(trial.episode_id)},
                   "first_half_success": _rate(self.results[: len(self.results) // 2]),
                   "second_half_success": _rate(self.results[len(self.results) // 2:]),
                   "weights_versions_used": sorted({r["weights_version"] for r in self.results}),
                   "weights_used": list(dict.fromkeys(w for r in self.results
                                                      for w in r["weights"])),
                   "minutes": round((time.monotonic() - self.started) / 60, 2),
                   "results": self.results}
        temporary = run_dir / "summary.json.tmp"
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(temporary, run_dir / "summary.json")
        return summary

    def finish(self) -> None:
        self.report_trials(force=True)
        self.ended = "aborted by the operator" if self.aborted else "finished"
        summary = self.write_summary(complete=True)
        successes = summary["successes"]
        run_dir = Path(self.params.run_dir)
        plot = run_dir / "trials.png"
        where = f" ({self.params.variant} variant)" if self.params.variant else ""
        plot_trials(self.results, plot, f"{self.spec.name}{where} on {self.params.backend}")
        print(f"\nSummary: {successes}/{len(self.results)} trials succeeded "
              f"(first half {summary['first_half_success']:.0%}, second half "
              f"{summary['second_half_success']:.0%}); weights versions used "
              f"{summary['weights_versions_used']}; {summary['minutes']} min\n"
              f"  {run_dir / 'summary.json'}\n  {plot}", flush=True)
        if summary["steps_not_recorded"]:
            print(f"  WARNING: {summary['steps_not_recorded']} executed steps were not "
                  "recorded (summary.json says in which trials)", flush=True)
        raise SystemExit(0)

    def close(self) -> None:
        """Called on the way out, however the node stops: the summary says what was done."""
        if self.ended:
            return  # finish() or a start-up failure wrote it already
        self.report_trials(force=True)
        self.ended = "interrupted (Ctrl-C, or the launcher stopped the graph)"
        try:
            self.write_summary(complete=False)
        except OSError as error:
            print(f"cannot write the summary: {error}", flush=True)

    def diagnostics(self) -> tuple[int, str, dict[str, Any]]:
        trial = self.trial
        level = WARN if trial is None and not self.results else OK
        return level, f"{len(self.results)}/{self.params.trials} trials", {
            "trials_done": len(self.results),
            "successes": sum(result["success"] for result in self.results),
            "current": trial.episode_id if trial else "", "step": trial.steps if trial else 0,
            "paused": self.paused}


def _number(text: str) -> float | None:
    """A diagnostics value as a number; None if it is not one (anyone may publish there)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rate(results: list[dict[str, Any]]) -> float:
    return sum(result["success"] for result in results) / len(results) if results else 0.0


def plot_trials(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Success by trial (with a running mean), the model's uncertainty about the actions it took
    (mean Q-ensemble std), and the weights version each trial used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [result["trial"] for result in results]
    success = [float(result["success"]) for result in results]
    running = [sum(success[: index + 1]) / (index + 1) for index in range(len(success))]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7, 6.5), sharex=True,
                                                 gridspec_kw={"height_ratios": [2, 1.2, 1]})
    top.bar(trials, success, color="#9ecae1", label="trial success")
    top.plot(trials, running, color="#08519c", marker="o", label="success rate so far")
    half = len(results) // 2
    if half:  # the gain: success of the first half of the trials against the second's
        for part, style in ((results[:half], "--"), (results[half:], "-")):
            rate = _rate(part)
            top.hlines(rate, part[0]["trial"] - 0.45, part[-1]["trial"] + 0.45,
                       colors="#e6550d", linestyles=style, lw=2)
        top.plot([], [], color="#e6550d", lw=2,
                 label=f"trials 1-{half}: {_rate(results[:half]):.0%}, "
                       f"{half + 1}-{len(results)}: {_rate(results[half:]):.0%}")
    top.set_ylim(0, 1.35)  # room above the bars for the legend
    top.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    top.set_ylabel("success")
    top.legend(loc="upper left", ncol=3, framealpha=0.9, fontsize=8)
    top.set_title(f"Online finetuning: {title}")
    uncertain = [(result["trial"], result["q_std"]) for result in results
                 if result.get("q_std") is not None]
    if uncertain:
        middle.plot(*zip(*uncertain, strict=True), color="#d95f0e", marker=".")
    middle.set_ylabel("Q-ensemble std\n(actions taken)")
    bottom.step(trials, [result["weights_version"] for result in results], where="mid")
    bottom.set_ylabel("weights version")
    bottom.set_xlabel("trial")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.yaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    run(TrialSupervisor)


if __name__ == "__main__":
    main()
