"""The learner on another host: the robot PC's nodes in one network namespace, the learner in
another, joined by a veth pair as two machines by a cable. DDS is the only link: UDP over that
pair (no shared memory, no loopback between them), discovery on the subnet. Transitions flow
one way, weights the other, and the planner acts with the learner's new weights."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdmpc_ros.core.episodes import load_episodes
from tdmpc_ros.launcher import Process, node_processes, parse_arguments, run

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def _ip(*arguments: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *arguments], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[dict[str, str]]:
    """Two network namespaces, "robot" 10.231.7.1/24 and "gpu" 10.231.7.2/24, on a veth pair,
    each with its loopback up and a multicast route (DDS discovery); removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root here (CAP_SYS_ADMIN); the two-host test "
                    "skips")
    tag = uuid.uuid4().hex[:6]
    hosts = {"robot": f"tdmpc_robot_{tag}", "gpu": f"tdmpc_gpu_{tag}"}
    links = {"robot": f"vr{tag}", "gpu": f"vg{tag}"}
    try:
        subprocess.run(["ip", "netns", "add", hosts["robot"]], check=True, capture_output=True,
                       timeout=10)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot make network namespaces here ({error}); the two-host test skips")
    try:
        _ip("netns", "add", hosts["gpu"])
        _ip("link", "add", links["robot"], "type", "veth", "peer", "name", links["gpu"])
        for index, role in enumerate(("robot", "gpu"), start=1):
            _ip("link", "set", links[role], "netns", hosts[role])
            _ip("addr", "add", f"10.231.7.{index}/24", "dev", links[role], namespace=hosts[role])
            _ip("link", "set", links[role], "up", "multicast", "on", namespace=hosts[role])
            _ip("link", "set", "lo", "up", namespace=hosts[role])
            _ip("route", "add", "224.0.0.0/4", "dev", links[role], namespace=hosts[role])
        yield {**hosts, "robot_link": links["robot"]}
    finally:
        for name in hosts.values():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


def _received_bytes(namespace: str, link: str) -> int:
    result = subprocess.run(["ip", "netns", "exec", namespace, "cat",
                             f"/sys/class/net/{link}/statistics/rx_bytes"],
                            capture_output=True, text=True, check=True, timeout=10)
    return int(result.stdout)


def test_the_learner_on_another_host_trains_and_its_weights_are_used(
        two_hosts, ros_env, tmp_path, monkeypatch) -> None:
    from tdmpc_ros.sim import datasets

    monkeypatch.chdir(REPO)
    data = tmp_path / "data"
    assert datasets.main(["--task", "reach", "--episodes", "6", "--out", str(data),
                          "--quiet"]) == 0
    run_dir = tmp_path / "run"
    common = ["task:=reach", "trials:=3", f"run_dir:={run_dir}", f"dataset:={data}",
              "device:=cpu"]
    # The README's split: every node but the learner on the robot PC, the learner on the GPU
    # server (one launcher here for both, so that one test owns every process).
    robot = node_processes(parse_arguments(
        [*common, "nodes:=camera,robot_driver,planner,replay_recorder,trial_supervisor"]))
    gpu = node_processes(parse_arguments([*common, "nodes:=learner"]))
    assert [p.name for p in gpu] == ["learner"] and "learner" not in [p.name for p in robot]
    extra = {"trial_supervisor": ("-p", "max_steps:=8"),
             "learner": ("-p", "publish_every_updates:=4", "-p", "publish_every_s:=2.0")}
    processes = [
        Process(p.name, ("ip", "netns", "exec", two_hosts[host], *p.command,
                         *extra.get(p.name, ())), required=p.required, respawn=p.respawn)
        for host, group in (("robot", robot), ("gpu", gpu)) for p in group]
    environment = {**ros_env,
                   # what a lab sets on both machines (README, "learner on a GPU server")
                   "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                   # UDP only: shared memory would join the namespaces behind the network's back
                   "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
    received_before = _received_bytes(two_hosts["robot"], two_hosts["robot_link"])
    assert run(processes, environment=environment) == 0
    received = _received_bytes(two_hosts["robot"], two_hosts["robot_link"]) - received_before

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["trials"] == 3 and summary["steps_not_recorded"] == 0
    # The planner (robot host) acted with weights the learner (GPU host) trained and sent.
    versions = {int(v) for e in load_episodes(run_dir / "episodes") for v in e.weights_version}
    assert max(versions) > 1, versions
    assert max(summary["weights_versions_used"]) > 1, summary
    # Those weights crossed the cable: more bytes arrived at the robot than one model's size.
    model_bytes = (REPO / "models" / "reach-state.safetensors").stat().st_size
    assert received > model_bytes, (received, model_bytes)
