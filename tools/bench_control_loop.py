"""Control-loop benchmark: the whole node graph in simulation, the learner training meanwhile.

Measures, at an observer node, the time from an observation's stamp (the robot state and the
camera frame of one instant share it) to the arrival of the action the planner computed from it,
and the control rate held during trials against the task's rate. Prints one JSON line:
{"bench": "control_loop", "p50_ms", "p99_ms", "rate_hz", "target_hz", "learner_training", ...}
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    os.chdir(REPO)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    import numpy as np
    import rclpy

    from tdmpc_ros import graph
    from tdmpc_ros.launcher import node_processes, parse_arguments, run
    from tdmpc_ros.sim import datasets
    from tdmpc_ros.tasks import get_task

    with contextlib.redirect_stdout(io.StringIO()):  # only the benchmark's line on stdout
        datasets.main(["--task", "reach", "--out", "data/reach", "--quiet"])
    trials = int(os.environ.get("BENCH_TRIALS", "4"))
    run_dir = Path(tempfile.mkdtemp(prefix="bench-control-"))
    arguments = parse_arguments(["task:=reach", f"trials:={trials}", f"run_dir:={run_dir}"])
    latencies: list[float] = []
    action_times: dict[str, list[float]] = {}
    updates: list[int] = []

    rclpy.init()
    node = rclpy.create_node("bench_observer")

    def on_action(command) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        latencies.append(now - (command.header.stamp.sec + command.header.stamp.nanosec * 1e-9))
        action_times.setdefault(command.episode_id, []).append(time.monotonic())

    def on_weights(message) -> None:
        updates.extend(int(kv.value) for kv in message.metrics if kv.key == "online_steps")

    for name, callback in (("robot/action", on_action), ("learner/weights", on_weights)):
        topic = graph.topic(name)
        node.create_subscription(topic.message_class(), name, callback, topic.profile())
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [rclpy.spin_once(node, timeout_sec=0.05)
                                               for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()
    with open(run_dir / "graph.log", "w") as log:
        stdout = sys.stdout
        sys.stdout = log  # the graph's output goes to the log; the JSON line to stdout
        try:
            code = run(node_processes(arguments))
        finally:
            sys.stdout = stdout
    stop.set()
    spinner.join(timeout=5)
    node.destroy_node()
    rclpy.try_shutdown()
    if code != 0 or not latencies:
        print(f"control loop benchmark failed (exit {code}); log: {run_dir / 'graph.log'}",
              file=sys.stderr)
        return 1
    rates = [(len(times) - 1) / (times[-1] - times[0]) for times in action_times.values()
             if len(times) > 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    milliseconds = np.array(latencies) * 1000
    print(json.dumps({
        "bench": "control_loop",
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
        "rate_hz": round(float(np.median(rates)), 2),
        "target_hz": round(1.0 / get_task("reach").agent_period_s, 2),
        "learner_training": len(summary["weights_versions_used"]) > 1,
        "weights_versions_used": summary["weights_versions_used"],
        "actions": len(latencies),
        "planner": "256 samples x 4 iterations (config/planner.yaml)",
        "device": "cpu",
        "threads": os.cpu_count(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
