"""The real xArm backend through the real xarm-python-sdk, against the controller stand-in
(tdmpc_ros.hardware.xarm_standin, a separate process on a loopback address of its own)."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tdmpc_ros.hardware.xarm_backend import (
    XArmBackend,
    XArmConfig,
    XArmConnectionError,
    XArmError,
)
from tdmpc_ros.hardware.xarm_standin import control
from tdmpc_ros.tasks import get_task

from rostest import peer_process

SPEC = get_task("reach")
_addresses = itertools.count(1)


def free_address() -> str:
    """A loopback address for one stand-in: the SDK's ports are fixed, so each stand-in gets an
    address of its own (spread by process id, so two test runs side by side rarely meet)."""
    return f"127.{20 + os.getpid() % 200}.{next(_addresses)}.{1 + os.getpid() % 250}"


@pytest.fixture
def standin(tmp_path, request) -> Iterator[str]:
    """A running stand-in; the test gets its address. ``@pytest.mark.parametrize('standin',
    [['--silent']], indirect=True)`` passes extra arguments."""
    host = free_address()
    extra = getattr(request, "param", [])
    arguments = ["-m", "tdmpc_ros.hardware.xarm_standin", "--host", host, *extra]
    with peer_process(arguments, dict(os.environ), tmp_path / "standin.log"):
        yield host


def backend_on(host: str, **settings) -> XArmBackend:
    return XArmBackend(SPEC, XArmConfig(ip=host, **settings))


def servo_targets(host: str) -> np.ndarray:
    """Servo targets the stand-in received and accepted: time (s), x, y, z (mm)."""
    rows = [row[:4] for row in control(host, {"op": "servo_log"})["targets"] if row[4]]
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("settings, field", [
    ({"ip": "not-an-ip"}, "ip"),
    ({"max_servo_step_mm": 12.0}, "max_servo_step_mm"),
    ({"max_servo_step_mm": 0.0}, "max_servo_step_mm"),
    ({"servo_rate_hz": 500.0}, "servo_rate_hz"),
    ({"max_speed_mm_s": float("nan")}, "max_speed_mm_s"),
    ({"max_speed_mm_s": 2000.0}, "max_speed_mm_s"),
    ({"collision_sensitivity": 0}, "collision_sensitivity"),
    ({"workspace_low_m": (0.5, 0.0, 0.0), "workspace_high_m": (0.4, 0.1, 0.1)}, "region"),
    ({"auto_recover_codes": (35, 2)}, "auto_recover_codes"),
    ({"auto_recover_codes": (31,)}, "auto_recover_codes"),
    ({"connect_timeout_s": -1.0}, "connect_timeout_s"),
    ({"fence_margin_m": 0.5}, "fence_margin_m"),
])
def test_xarm_config_rejects_bad_values(settings, field) -> None:
    values = {"ip": "192.168.1.185", **settings}
    with pytest.raises(ValueError, match=field):
        XArmConfig(**values)
    XArmConfig(ip="192.168.1.185")  # the defaults pass


def test_xarm_nothing_listening_is_reported_at_once() -> None:
    host = free_address()
    start = time.monotonic()
    with pytest.raises(XArmConnectionError, match=host.replace(".", r"\.")):
        backend_on(host)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("standin", [["--silent"]], indirect=True)
def test_xarm_silent_controller_is_reported_within_seconds(standin) -> None:
    before = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(XArmConnectionError, match="did not answer within 2 s"):
        backend_on(standin, connect_timeout_s=2.0)
    elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 10.0  # it waited for its deadline, not for the SDK's minutes
    assert socket.getdefaulttimeout() == before  # the SDK's process-wide 1 s is undone


def test_xarm_connect_sets_the_controller_safety(standin) -> None:
    backend = backend_on(standin, collision_sensitivity=4, fence_margin_m=0.03,
                         workspace_high_m=(0.65, 0.35, 0.30))
    try:
        status = control(standin, {"op": "status"})
        assert status["enabled"] and status["error"] == 0 and status["mode"] == 0
        assert status["fence"] and status["collision_sensitivity"] == 4
        # The controller caps the TCP speed too (servo mode ignores speed arguments).
        assert status["reduced_mode"] and status["reduced_speed"] == 375  # 1.5 x 250 mm/s
        # The task's box (x 0.2-0.6, y +-0.25, z 0.02-0.35) cut by the configured z <= 0.30,
        # grown by 30 mm: xmax, xmin, ymax, ymin, zmax, zmin in mm.
        assert status["boundary_mm"] == [630, 170, 280, -280, 330, -10]
        assert backend.target_position().tolist() == [0.45, 0.1, 0.2]
        assert backend.object_position() is None
        assert len(backend.joint_positions()) == len(backend.joint_names) == 6
    finally:
        backend.close()


def test_xarm_moves_to_target_with_bounded_servo_steps(standin) -> None:
    backend = backend_on(standin, max_servo_step_mm=4.0, max_speed_mm_s=200.0)
    try:
        backend.reset(SPEC.home_position, 1.0)
        home = np.asarray(control(standin, {"op": "status"})["tcp_m"])
        assert np.linalg.norm(home - SPEC.home_position) < 0.003
        assert control(standin, {"op": "status"})["mode"] == 1  # back in servo mode
        control(standin, {"op": "clear_log"})
        target = np.array([0.45, 0.08, 0.15])
        for _ in range(12):  # 12 steps of at most 2 mm x 8: 192 mm > 141 mm to go
            backend.move_to(target, 0.2)
        time.sleep(0.1)
        assert np.linalg.norm(backend.ee_position() - target) < 0.003
        assert np.linalg.norm(np.asarray(control(standin, {"op": "status"})["tcp_m"]) - target
                              ) < 0.003
        log = servo_targets(standin)
        steps = np.linalg.norm(np.diff(log[:, 1:], axis=0), axis=1)
        # 200 mm/s at 100 Hz: 2 mm per command, under the 4 mm step limit.
        assert len(log) == 12 * 8 and steps.max() <= 2.0 + 1e-3
        assert np.linalg.norm(log[0, 1:] - home * 1000) <= 2.0 + 1e-3
        wait_for(lambda: abs(backend.gripper_opening() - 0.2) < 0.02, 3.0, "the gripper")
    finally:
        backend.close()


def test_xarm_reset_keeps_to_the_speed_limit(standin) -> None:
    """The move home (position mode) is no faster than max_speed_mm_s either."""
    backend = backend_on(standin, max_speed_mm_s=50.0, home_speed_mm_s=200.0)
    try:
        backend.reset(SPEC.home_position, 1.0)
        away = np.asarray(SPEC.home_position) + [0.05, 0.0, 0.0]
        for _ in range(20):  # 50 mm/s x 0.08 s: 4 mm a step, 50 mm in 13 steps
            backend.move_to(away, 1.0)
        assert np.linalg.norm(backend.ee_position() - away) < 0.003
        started = time.monotonic()
        backend.reset(SPEC.home_position, 1.0)
        assert time.monotonic() - started >= 0.05 / 50.0 * 1000 * 0.9  # 1 s at 50 mm/s
    finally:
        backend.close()


def test_xarm_clips_targets_to_the_task_and_configured_boxes(standin) -> None:
    backend = backend_on(standin, workspace_high_m=(0.65, 0.35, 0.25), max_speed_mm_s=1000.0,
                         max_servo_step_mm=10.0)
    try:
        backend.reset((0.35, 0.0, 0.5), 1.0)  # home above the configured box: clipped
        assert backend.ee_position()[2] == pytest.approx(0.25, abs=0.003)
        control(standin, {"op": "clear_log"})
        for _ in range(10):
            backend.move_to((1.0, -1.0, 0.9), 1.0)  # far outside both boxes
        log = servo_targets(standin)
        corner_mm = np.array([600.0, -250.0, 250.0])  # task's x, y limits, configured z
        assert np.all(log[:, 1:] <= np.array([600, 250, 250]) + 1e-3)
        assert np.all(log[:, 1:] >= np.array([200, -250, 20]) - 1e-3)
        assert np.linalg.norm(log[-1, 1:] - corner_mm) < 1e-3
        assert np.linalg.norm(np.diff(log[:, 1:], axis=0), axis=1).max() <= 10.0 + 1e-3
        assert control(standin, {"op": "status"})["error"] == 0  # the fence never tripped
    finally:
        backend.close()


def test_xarm_boundary_error_is_reported_and_recovered(standin) -> None:
    backend = backend_on(standin)
    try:
        backend.reset(SPEC.home_position, 1.0)
        control(standin, {"op": "inject", "code": 35})
        # The SDK's report thread calls the backend's error callback; poll() acts on it.
        wait_for(lambda: backend._reported_error == 35, 3.0, "the error callback")
        backend.poll()
        assert backend.recoveries == 1 and "C35" in backend.last_recovered
        status = control(standin, {"op": "status"})
        assert status["error"] == 0 and status["mode"] == 1 and status["state"] == 2
        # During a step: the step ends early, recovered, and the next one moves again.
        control(standin, {"op": "inject", "code": 35})
        backend.move_to((0.37, 0.0, 0.2), 1.0)
        assert backend.recoveries == 2
        start = backend.ee_position()
        for _ in range(3):
            backend.move_to(start + (0.02, 0.0, 0.0), 1.0)
        assert backend.ee_position()[0] - start[0] > 0.015
        backend.reset(SPEC.home_position, 1.0)
        assert backend.recoveries == 0  # counted per episode
    finally:
        backend.close()


def test_xarm_collision_and_emergency_stop_are_not_recovered(standin) -> None:
    backend = backend_on(standin)
    try:
        backend.reset(SPEC.home_position, 1.0)
        control(standin, {"op": "inject", "code": 31})
        with pytest.raises(XArmError, match="C31 collision") as caught:
            backend.move_to((0.37, 0.0, 0.2), 1.0)
        assert caught.value.code == 31
        status = control(standin, {"op": "status"})
        assert status["error"] == 31 and status["state"] == 4  # left for a person
        with pytest.raises(XArmError, match="C31"):
            backend.reset(SPEC.home_position, 1.0)
        assert backend.recoveries == 0
        # A pressed emergency stop button, even when the SDK is asked to clear it.
        control(standin, {"op": "inject", "code": 2, "latched": True})
        with pytest.raises(XArmError, match="C2 emergency stop") as caught:
            backend.poll()
        assert caught.value.code == 2 and control(standin, {"op": "status"})["error"] == 2
    finally:
        backend.close()


def test_xarm_emergency_stop_stops_until_the_next_reset(standin) -> None:
    backend = backend_on(standin)
    try:
        backend.reset(SPEC.home_position, 1.0)
        control(standin, {"op": "clear_log"})
        backend.move_to((0.37, 0.0, 0.2), 1.0)
        backend.emergency_stop()
        assert control(standin, {"op": "status"})["state"] == 4
        accepted = len(servo_targets(standin))
        with pytest.raises(XArmError, match="not ready"):
            backend.move_to((0.39, 0.0, 0.2), 1.0)
        assert len(servo_targets(standin)) == accepted  # nothing moved after the stop
        backend.reset(SPEC.home_position, 1.0)
        backend.move_to((0.37, 0.0, 0.2), 1.0)
        assert len(servo_targets(standin)) > accepted
    finally:
        backend.close()


def test_xarm_lost_controller_fails_the_reading(tmp_path) -> None:
    host = free_address()
    arguments = ["-m", "tdmpc_ros.hardware.xarm_standin", "--host", host]
    with peer_process(arguments, dict(os.environ), tmp_path / "standin.log") as process:
        backend = backend_on(host)
        try:
            backend.reset(SPEC.home_position, 1.0)
            backend.poll()
            assert backend.state_age_s() < 0.5
            process.kill()
            process.wait(timeout=10)
            start = time.monotonic()
            with pytest.raises(XArmConnectionError, match="reading the xArm"):
                backend.poll()
            assert time.monotonic() - start < 5.0
            time.sleep(0.6)  # the driver stops once the last good reading is this old
            assert backend.state_age_s() > 0.5
        finally:
            backend.close()
