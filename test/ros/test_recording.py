"""Every executed step recorded exactly once, on a machine kept busy and with processes killed
at the worst moment: the whole stack under the project's launcher, watched by an independent
node (tools/bench_recording.py, which `make bench` runs too)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("_bench_recording",
                                                  REPO / "tools" / "bench_recording.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_under_cpu_load_every_executed_step_is_recorded_and_learnt_once(ros_env, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(REPO)
    figures = _tool().measure(trials=3, run_dir=tmp_path, environment=ros_env, hog_count=2,
                              hog_seconds=240)
    print(json.dumps(figures))
    assert figures["trials"] == 3 and figures["launcher_exit"] == 0, figures
    assert figures["executed"] >= 3 * 20, figures  # reach: 25 steps a trial
    assert figures["lost"] == 0 and figures["recorded_twice"] == 0, figures
    assert figures["recorded"] == figures["executed"], figures
    assert figures["transitions"] == figures["executed"], figures
    assert figures["learner_online_steps"] == figures["executed"], figures
    assert figures["summary_steps_not_recorded"] == 0, figures


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_recorder_learner_and_launcher_loses_nothing_and_leaves_nothing(
        ros_env, tmp_path, monkeypatch):
    """kill -9 of the recorder mid-trial, then of the learner mid-trial: the launcher restarts
    each, they catch up, and every step executed up to then is recorded once. Then kill -9 of
    the launcher: every node is gone within seconds, and summary.json says what was done."""
    monkeypatch.chdir(REPO)
    tool = _tool()
    data = tool.make_dataset("reach", tmp_path / "data")
    run_dir = tmp_path / "run"
    with tool.StackRun(run_dir, ["task:=reach", "trials:=20", f"dataset:={data}",
                                 "device:=cpu"], ros_env) as stack:
        stack.spin_until(lambda: stack.at_step(1, 8), 180, "trial 1, step 8")
        [recorder] = stack.pids()["replay_recorder"]
        os.kill(recorder, signal.SIGKILL)
        stack.spin_until(lambda: len(stack.pids().get("replay_recorder", [])) == 2, 60,
                         "the recorder's restart")
        assert (run_dir / "summary.json").exists()
        stack.spin_until(lambda: stack.at_step(2, 8), 180, "trial 2, step 8")
        [learner] = stack.pids()["learner"]
        os.kill(learner, signal.SIGKILL)
        stack.spin_until(lambda: len(stack.pids().get("learner", [])) == 2, 60,
                         "the learner's restart")
        assert json.loads((run_dir / "summary.json").read_text())["trials"] >= 1
        stack.spin_until(lambda: stack.at_step(3, 8), 180, "trial 3, step 8")
        stack.spin_until(lambda: "online steps" in stack.log() or int(
            stack.diagnostics.get("learner", {}).get("online_steps", 0)) > 0, 30,
            "the restarted learner's buffer")
        learner_steps = int(stack.diagnostics["learner"]["online_steps"])
        executed_before = {key for key in stack.executed if not key[0].endswith("trial003")}
        transitions_before = set(stack.transitions)
        everyone = [pid for pids in stack.pids().values() for pid in pids]
        os.kill(stack.launcher.pid, signal.SIGKILL)
        stack.launcher.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(map(_alive, everyone)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in everyone if _alive(pid)]
        log = stack.log()
    assert not left, f"processes left behind after kill -9 of the launcher: {left}\n{log}"
    assert "replay_recorder exited with -9; restarting it" in log, log
    assert "learner exited with -9; restarting it" in log, log
    recorded = stack.recorded()
    assert len(recorded) == len(set(recorded)), "a step was recorded twice"
    missing = executed_before - set(recorded)
    assert not missing, f"executed steps lost across the restarts: {sorted(missing)}\n{log}"
    assert executed_before <= transitions_before, sorted(executed_before - transitions_before)
    # The restarted learner has what was recorded before it died, and what came since.
    assert learner_steps >= len([key for key in executed_before if key[0].endswith("trial001")])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trials"] >= 2 and not summary["complete"], summary
    assert summary["ended"].startswith("interrupted"), summary
