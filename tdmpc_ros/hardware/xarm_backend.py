"""The real xArm as an ``ArmBackend`` (``tdmpc_ros.robot``), on the vendor's xarm-python-sdk.

Frame and units: the project speaks metres in the robot base frame, the SDK millimetres in the
same frame (``tdmpc_ros.tasks``), so positions are multiplied by 1000 and nothing else; angles
go to the SDK in radians (``is_radian=True``). The TCP keeps pointing down (roll 180 degrees).

Motion: streaming Cartesian servo mode (mode 1, ``set_servo_cartesian``). The agent already
gives one absolute TCP target per 80 ms step; servo mode takes absolute targets, is what the
simulator models (``MujocoArm.move_to`` interpolates the same way) and lets this backend bound
every single command itself: one agent step becomes ``servo_rate_hz`` x 0.08 s targets on the
straight line to the goal, each at most ``max_servo_step_mm`` (vendor limit 10 mm) and
``max_speed_mm_s / servo_rate_hz`` past the previous one. Mode 5 (Cartesian velocity,
``vc_set_cartesian_velocity`` with a duration that stops by itself) and mode 7 (online
planning, ``set_position(wait=False)`` replacing the target) are the vendor's alternatives for
jogging: smoother, but the controller plans the path, so the per-command bounds here and the
step timing the model was trained on would no longer be ours. Resets move in position mode
(mode 0, ``set_position(wait=True)`` with a timeout), then switch back to servo mode.

Safety, independent of the planner: targets are clipped to the task's workspace box and to the
configured box; each servo command is bounded in step and speed as above; the controller's
reduced TCP boundary (the clip box grown by ``fence_margin_m``) with fence mode on is a second
fence that stops the arm (C35) if anything gets past the first, and its reduced mode caps the
TCP speed at 1.5 x ``max_speed_mm_s`` on the controller too; collision sensitivity comes
from the configuration (0, detection off, is refused). ``stop()`` stops the arm at once.

Errors: the SDK's error callback and ``get_err_warn_code()`` report controller codes. Codes in
``auto_recover_codes`` (default C35 boundary hit and C24 speed limit, both raised by the
controller's own limits with nobody touched) are cleared with the vendor's sequence
(clean_warn, clean_error, motion_enable, set_mode, set_state(0)) at most ``max_recoveries``
times per episode; the step then ends where the arm stopped. Everything else raises
``XArmError`` with the code and its meaning and waits for a person: a collision (C31) may
have hit someone, a self-collision (C22) or servo fault (C10-C17) needs a look, and an
emergency stop (C1-C3) is never cleared by software.

Connecting never hangs: the SDK blocks for minutes when a peer accepts but never answers and
sets the process's default socket timeout to 1 s. The port is probed first, the SDK connects in
a daemon thread with a deadline, and the default timeout is restored afterwards (the SDK sets it
again if it has to reconnect its report socket later).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tdmpc_ros.tasks import Region, TaskSpec

log = logging.getLogger(__name__)

COMMAND_PORT = 502
GRIPPER_MAX = 850  # SDK gripper position when fully open; 0 is closed
EMERGENCY_STOP_CODES = frozenset({1, 2, 3})
NEVER_AUTO_RECOVER = EMERGENCY_STOP_CODES | {22, 31}  # e-stop, self-collision, collision
JOINT_NAMES = tuple(f"joint{i}" for i in range(1, 7))

# The controller codes this project meets most; the SDK's own table covers the rest.
ERROR_TEXT = {
    1: "emergency stop button on the controller pressed",
    2: "emergency stop IO of the control box triggered",
    3: "emergency stop button of the three-state switch pressed",
    22: "self-collision",
    23: "joint angle beyond its limit",
    24: "speed beyond its limit",
    31: "collision: abnormal joint current",
    35: "safety boundary reached (the reduced TCP boundary, fence mode)",
    40: "no inverse-kinematics solution for the target",
}
SDK_CODES = {-1: "not connected", 1: "uncleared controller error", 2: "controller warning",
             3: "no reply in time", 9: "not ready (stopped or disabled)"}


def describe(code: int) -> str:
    """'C<code> <meaning>' for a controller error code."""
    text = ERROR_TEXT.get(code)
    if text is None:
        try:
            from xarm.core.config.x_code import ControllerErrorCodeMap

            text = ControllerErrorCodeMap.get(code, {}).get("en", {}).get("title")
        except ImportError:
            text = None
    return f"C{code} {text or 'unknown controller error'}"


class XArmError(RuntimeError):
    """The controller reports an error this backend does not clear by itself."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class XArmConnectionError(ConnectionError):
    """No usable connection to the controller (nothing there, no answer, a failed read)."""


@dataclass(frozen=True)
class XArmConfig:
    """Everything the real arm needs; checked when built (ValueError naming the field)."""

    ip: str
    """The controller's IPv4 address (the vendor's default network is 192.168.1.x)."""
    connect_timeout_s: float = 5.0
    """Longest wait to connect (probe, version check, reports), in seconds."""
    servo_rate_hz: float = 100.0
    """Servo commands per second while a step runs; the vendor advises 50 to 200 (at most 250)."""
    max_servo_step_mm: float = 5.0
    """Longest move between two servo commands (mm); at most 10, the vendor's limit."""
    max_speed_mm_s: float = 250.0
    """TCP speed the servo stream never exceeds (mm/s); at most 1000, the arm's own limit."""
    workspace_low_m: tuple[float, float, float] = (0.15, -0.35, 0.0)
    """Lowest x, y, z (m, base frame) any target may have, on top of the task's box."""
    workspace_high_m: tuple[float, float, float] = (0.65, 0.35, 0.45)
    """Highest x, y, z (m, base frame) any target may have, on top of the task's box."""
    fence_margin_m: float = 0.02
    """The controller's reduced TCP boundary is the clip box grown by this (m), so it only trips
    (C35) when something gets past the software clip."""
    collision_sensitivity: int = 3
    """Controller collision detection, 1 (least sensitive) to 5; 0 (off) is refused."""
    home_speed_mm_s: float = 100.0
    """TCP speed of the position-mode move to the home pose at a reset (mm/s); never above
    ``max_speed_mm_s``."""
    home_timeout_s: float = 20.0
    """Longest wait for the home move (s)."""
    home_tolerance_mm: float = 5.0
    """Largest distance from home after the home move that still counts as arrived (mm)."""
    gripper_speed: int = 3000
    """Gripper speed in the SDK's units (1 to 5000)."""
    tool_rpy_rad: tuple[float, float, float] = (math.pi, 0.0, 0.0)
    """TCP orientation held throughout (roll, pitch, yaw; rad): pointing down."""
    target_m: tuple[float, float, float] | None = (0.45, 0.1, 0.2)
    """The reach task's target on the real arm: a virtual point (m, base frame); None: none."""
    auto_recover_codes: tuple[int, ...] = (24, 35)
    """Controller codes cleared automatically (never C1-C3, C22 or C31)."""
    max_recoveries: int = 3
    """Automatic recoveries allowed per episode before an error is raised instead."""
    read_period_s: float = 0.04
    """Readings younger than this are reused (s): one read serves a step's state message."""
    sdk_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``XArmAPI`` (tests; normally empty)."""

    def __post_init__(self) -> None:
        try:
            socket.inet_aton(self.ip)
        except OSError:
            raise ValueError(f"ip must be an IPv4 address, got {self.ip!r}") from None
        positive = ("connect_timeout_s", "servo_rate_hz", "max_servo_step_mm", "max_speed_mm_s",
                    "home_speed_mm_s", "home_timeout_s", "home_tolerance_mm", "read_period_s")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not 1 <= self.servo_rate_hz <= 250:
            raise ValueError(f"servo_rate_hz must lie in [1, 250], got {self.servo_rate_hz}")
        if self.max_servo_step_mm > 10:
            raise ValueError(f"max_servo_step_mm must be at most 10 (vendor limit), got "
                             f"{self.max_servo_step_mm}")
        if self.max_speed_mm_s > 1000 or self.home_speed_mm_s > 1000:
            raise ValueError("max_speed_mm_s and home_speed_mm_s must be at most 1000 mm/s")
        Region(tuple(self.workspace_low_m), tuple(self.workspace_high_m))  # checks the corners
        if not 0 <= self.fence_margin_m <= 0.2:
            raise ValueError(f"fence_margin_m must lie in [0, 0.2], got {self.fence_margin_m}")
        if self.collision_sensitivity not in range(1, 6):
            raise ValueError(f"collision_sensitivity must be 1 to 5 (0 turns collision "
                             f"detection off), got {self.collision_sensitivity}")
        if not 1 <= self.gripper_speed <= 5000:
            raise ValueError(f"gripper_speed must lie in [1, 5000], got {self.gripper_speed}")
        if len(self.tool_rpy_rad) != 3:
            raise ValueError(f"tool_rpy_rad needs 3 angles, got {self.tool_rpy_rad}")
        if self.target_m is not None and len(self.target_m) != 3:
            raise ValueError(f"target_m needs 3 coordinates, got {self.target_m}")
        forbidden = sorted(set(self.auto_recover_codes) & NEVER_AUTO_RECOVER)
        if forbidden:
            raise ValueError(f"auto_recover_codes may not hold {forbidden}: emergency stops, "
                             "collisions and self-collisions wait for a person")
        if self.max_recoveries < 0:
            raise ValueError(f"max_recoveries must be >= 0, got {self.max_recoveries}")


def probe(ip: str, timeout_s: float) -> None:
    """Raise XArmConnectionError at once unless something accepts on the command port."""
    try:
        socket.create_connection((ip, COMMAND_PORT), timeout=timeout_s).close()
    except OSError as error:
        raise XArmConnectionError(f"no xArm controller at {ip}:{COMMAND_PORT} ({error}); is "
                                  "the arm powered, the cable in and robot_ip right?") from None


def connect(config: XArmConfig) -> Any:
    """A connected ``XArmAPI``, or XArmConnectionError within about connect_timeout_s."""
    deadline = time.monotonic() + config.connect_timeout_s
    probe(config.ip, min(1.0, config.connect_timeout_s))
    from xarm.wrapper import XArmAPI

    options = {"report_type": "normal", **config.sdk_options}
    arm = XArmAPI(config.ip, is_radian=True, do_not_open=True, **options)
    outcome: dict[str, BaseException] = {}

    def work() -> None:
        try:
            arm.connect()
        except BaseException as error:  # noqa: BLE001 - handed over to the caller
            outcome["error"] = error

    saved = socket.getdefaulttimeout()
    worker = threading.Thread(target=work, name=f"xarm-connect-{config.ip}", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    socket.setdefaulttimeout(saved)  # the SDK set it to 1 s for the whole process
    if worker.is_alive():
        # Close its sockets so the SDK's retries end; never wait for it.
        threading.Thread(target=arm.disconnect, daemon=True).start()
        raise XArmConnectionError(
            f"the xArm controller at {config.ip} accepted the connection but did not answer "
            f"within {config.connect_timeout_s:g} s (another program holding it, or not an "
            "xArm?)")
    if "error" in outcome or not arm.connected:
        raise XArmConnectionError(f"connecting to the xArm controller at {config.ip} failed: "
                                  f"{outcome.get('error', 'not connected')}")
    return arm


class XArmBackend:
    """An xArm with the UFACTORY gripper, driven as in the module docstring."""

    def __init__(self, spec: TaskSpec, config: XArmConfig) -> None:
        self.spec, self.config = spec, config
        config_box = Region(tuple(config.workspace_low_m), tuple(config.workspace_high_m))
        low = np.maximum(spec.workspace.low, config_box.low)
        high = np.minimum(spec.workspace.high, config_box.high)
        if np.any(low > high):
            raise ValueError(f"the configured workspace {config_box} and the task's "
                             f"{spec.workspace} do not overlap")
        self.box = Region(tuple(low.tolist()), tuple(high.tolist()))
        self.recoveries = 0
        self.last_recovered = ""
        self._reported_error = 0
        self._setpoint_mm: np.ndarray | None = None
        self._gripper_sent: int | None = None
        self._reading: tuple[np.ndarray, float, np.ndarray] | None = None
        self._read_time = -math.inf
        self._arm = connect(config)
        try:
            self._configure()
        except BaseException:
            self._arm.disconnect()
            raise

    # --- set-up --------------------------------------------------------------------------------

    def _configure(self) -> None:
        arm, config = self._arm, self.config
        arm.register_error_warn_changed_callback(self._on_error_warn)
        # Starting the driver is an operator's act: clear what can be cleared, then check.
        arm.clean_warn()
        arm.clean_error()
        self._check(arm.motion_enable(True), "motion_enable")
        self._switch_mode(0)
        margin_mm = config.fence_margin_m * 1000.0
        low = np.asarray(self.box.low) * 1000.0 - margin_mm
        high = np.asarray(self.box.high) * 1000.0 + margin_mm
        boundary = [int(round(v)) for v in (high[0], low[0], high[1], low[1], high[2], low[2])]
        self._check(arm.set_reduced_tcp_boundary(boundary),
                    "set_reduced_tcp_boundary")
        # Servo mode ignores speed arguments: the controller's reduced-mode TCP speed is the
        # second limit on speed, as the fence is on position, with a margin (x1.5) so that only
        # a failure of the first trips it. (Reduced settings take effect when reduced mode is
        # switched on, so it comes after them.)
        self._check(arm.set_reduced_max_tcp_speed(int(round(1.5 * config.max_speed_mm_s))),
                    "set_reduced_max_tcp_speed")
        self._check(arm.set_reduced_mode(True), "set_reduced_mode")
        code = arm.set_fence_mode(True)
        self._check(code[0] if isinstance(code, list | tuple) else code, "set_fence_mode")
        self._check(arm.set_collision_sensitivity(config.collision_sensitivity),
                    "set_collision_sensitivity")
        self._check(arm.set_gripper_enable(True), "set_gripper_enable")
        self._check(arm.set_gripper_mode(0), "set_gripper_mode")
        self._check(arm.set_gripper_speed(config.gripper_speed), "set_gripper_speed")
        self._raise_if_error()
        log.info("xArm at %s ready: workspace %s, fence %s mm", config.ip, self.box, boundary)

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            self._raise_if_error()
            raise XArmError(0, f"xArm {what} failed: SDK code {code} "
                               f"({SDK_CODES.get(code, 'see the SDK documentation')})")

    def _on_error_warn(self, item: dict[str, int]) -> None:
        """The SDK's report thread: keep the latest error for the next call to act on."""
        self._reported_error = int(item.get("error_code", 0))
        if self._reported_error:
            log.error("xArm reports %s", describe(self._reported_error))

    # --- errors --------------------------------------------------------------------------------

    def _error_code(self) -> int:
        code, (error, _warn) = self._arm.get_err_warn_code()
        if code != 0:
            raise XArmConnectionError(f"reading the xArm's error code failed: SDK code {code} "
                                      f"({SDK_CODES.get(code, '?')})")
        self._reported_error = int(error)
        return int(error)

    def _error_pending(self) -> bool:
        """An error seen by the report callback, or flagged in the status byte of any reply
        (the SDK reads the code itself on some calls, and then the callback never comes)."""
        return bool(self._reported_error) or bool(self._arm.has_err_warn)

    def _raise_if_error(self) -> None:
        error = self._error_code()
        if error:
            raise XArmError(error, f"xArm controller error {describe(error)}")

    def _handle_error(self) -> bool:
        """Act on a controller error, if any: recover (True) or raise XArmError."""
        error = self._error_code()
        if error == 0:
            return False
        text = describe(error)
        if error not in self.config.auto_recover_codes:
            raise XArmError(error, f"xArm controller error {text}; not cleared automatically: "
                                   "check the arm, clear it, then start the next trial")
        if self.recoveries >= self.config.max_recoveries:
            raise XArmError(error, f"xArm controller error {text} again after "
                                   f"{self.recoveries} automatic recoveries this episode")
        self.recover(mode=1)
        self.recoveries += 1
        self.last_recovered = text
        log.warning("xArm recovered from %s (%d this episode)", text, self.recoveries)
        return True

    def recover(self, mode: int = 1) -> None:
        """The vendor's sequence: clear warning and error, enable, set the mode, ready."""
        arm = self._arm
        arm.clean_warn()
        arm.clean_error()
        arm.motion_enable(True)
        self._switch_mode(mode)
        self._setpoint_mm = None  # streaming restarts from where the arm stands
        self._read(force=True)

    def _switch_mode(self, mode: int) -> None:
        """set_mode, set_state(0), then wait until the reports show the mode: the SDK's
        waits read the mode from the reports, which come a few times a second."""
        self._check(self._arm.set_mode(mode), f"set_mode({mode})")
        self._check(self._arm.set_state(0), "set_state(0)")
        deadline = time.monotonic() + 2.0
        while self._arm.mode != mode:
            if time.monotonic() > deadline:
                self._raise_if_error()
                raise XArmError(0, f"the xArm did not switch to mode {mode} within 2 s")
            time.sleep(0.01)
        self._raise_if_error()

    # --- ArmBackend ----------------------------------------------------------------------------

    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    def reset(self, home: Sequence[float] | np.ndarray, gripper_command: float = 1.0) -> None:
        """Move to ``home`` in position mode and wait, then switch to servo mode."""
        arm, config = self._arm, self.config
        self.recoveries = 0
        error = self._error_code()
        if error and error not in config.auto_recover_codes:
            raise XArmError(error, f"xArm controller error {describe(error)}; clear it on the "
                                   "arm before the next trial")
        self.recover(mode=0)
        goal = self._clip(home)
        self._command_gripper(gripper_command, force=True)
        speed = min(config.home_speed_mm_s, config.max_speed_mm_s)  # the limit holds here too
        code = arm.set_position(*goal.tolist(), *config.tool_rpy_rad, speed=speed,
                                is_radian=True, wait=True, timeout=config.home_timeout_s)
        if code != 0:
            self._raise_if_error()
            raise XArmError(0, f"xArm move home failed: SDK code {code} "
                               f"({SDK_CODES.get(code, 'timed out or stopped')})")
        position = self._read(force=True)[0] * 1000.0
        if np.linalg.norm(position - goal) > config.home_tolerance_mm:
            raise XArmError(0, f"xArm ended the home move at {np.round(position, 1)} mm, not "
                               f"{np.round(goal, 1)} mm")
        self._switch_mode(1)
        self._setpoint_mm = goal

    def move_to(self, target_position_m: Sequence[float] | np.ndarray,
                gripper_command: float) -> None:
        """One agent step: stream servo targets on the line to the clipped target for the
        step's 0.08 s, each bounded in step and speed; returns when the time is up."""
        target = np.asarray(target_position_m, dtype=np.float64)
        if target.shape != (3,) or not np.isfinite(target).all():
            raise ValueError(f"target must be 3 finite numbers, got {target}")
        if self._error_pending() and self._handle_error():
            return
        config = self.config
        goal = self._clip(target)
        if self._setpoint_mm is None:
            self._setpoint_mm = self._read(force=True)[0] * 1000.0
        self._command_gripper(gripper_command)
        period = 1.0 / config.servo_rate_hz
        largest = min(config.max_servo_step_mm, config.max_speed_mm_s * period)
        commands = max(1, round(self.spec.agent_period_s * config.servo_rate_hz))
        start = time.monotonic()
        for index in range(1, commands + 1):
            step = goal - self._setpoint_mm
            length = float(np.linalg.norm(step))
            point = goal if length <= largest else self._setpoint_mm + step * (largest / length)
            code = self._arm.set_servo_cartesian([*point.tolist(), *config.tool_rpy_rad],
                                                 is_radian=True)
            if code != 0:
                if self._handle_error():
                    return  # recovered: the step ends where the arm stopped
                raise XArmError(0, f"xArm refused a servo command: SDK code {code} "
                                   f"({SDK_CODES.get(code, '?')})")
            self._setpoint_mm = point
            time.sleep(max(0.0, start + index * period - time.monotonic()))
        self._read(force=True)

    def ee_position(self) -> np.ndarray:
        return self._read()[0].copy()

    def gripper_opening(self) -> float:
        return self._read()[1]

    def joint_positions(self) -> np.ndarray:
        return self._read()[2].copy()

    def close(self) -> None:
        try:
            self._arm.release_error_warn_changed_callback(self._on_error_warn)
        finally:
            self._arm.disconnect()

    # --- SceneBackend (the parts the real arm has) ---------------------------------------------

    def target_position(self) -> np.ndarray | None:
        """The configured virtual target (reach), None for tasks without one."""
        if not self.spec.uses_target or self.config.target_m is None:
            return None
        return np.asarray(self.config.target_m, dtype=np.float64)

    def object_position(self) -> np.ndarray | None:
        """Unknown: nothing on the real arm measures the cube."""
        return None

    # --- safety --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the arm now (controller state 4); the next reset enables it again."""
        self._setpoint_mm = None
        self._arm.emergency_stop()

    emergency_stop = stop

    def poll(self) -> None:
        """Read the state now: XArmError on a controller error that is not recovered,
        XArmConnectionError when the reading fails."""
        self._read(force=True)
        if self._error_pending():
            self._handle_error()

    def state_age_s(self) -> float:
        """Seconds since the last successful reading of pose, joints and gripper."""
        return time.monotonic() - self._read_time

    # --- internals -----------------------------------------------------------------------------

    def _clip(self, position_m: Sequence[float] | np.ndarray) -> np.ndarray:
        """A target clipped to the task's box and the configured box, in mm."""
        return self.box.clip(np.asarray(position_m, dtype=np.float64)) * 1000.0

    def _command_gripper(self, command: float, force: bool = False) -> None:
        pulses = int(round(float(np.clip(command, 0.0, 1.0)) * GRIPPER_MAX))
        if not force and self._gripper_sent is not None and abs(pulses - self._gripper_sent) < 5:
            return  # unchanged: spare the tool bus a write every step
        code = self._arm.set_gripper_position(pulses, wait=False, wait_motion=False)
        if code != 0:
            self._raise_if_error()
            raise XArmError(0, f"xArm gripper command failed: SDK code {code}")
        self._gripper_sent = pulses

    def _read(self, force: bool = False) -> tuple[np.ndarray, float, np.ndarray]:
        if not force and self._reading is not None and self.state_age_s() < \
                self.config.read_period_s:
            return self._reading
        arm = self._arm
        code_pose, pose = arm.get_position(is_radian=True)
        code_joints, joints = arm.get_servo_angle(is_radian=True)
        code_gripper, gripper = arm.get_gripper_position()
        for code, what in ((code_pose, "pose"), (code_joints, "joints"),
                           (code_gripper, "gripper")):
            if code != 0:
                raise XArmConnectionError(f"reading the xArm's {what} failed: SDK code {code} "
                                          f"({SDK_CODES.get(code, '?')})")
        if gripper is None:
            raise XArmConnectionError("reading the xArm's gripper failed (gripper error)")
        position = np.asarray(pose[:3], dtype=np.float64) / 1000.0
        opening = float(np.clip(gripper / GRIPPER_MAX, 0.0, 1.0))
        angles = np.asarray(joints[:len(JOINT_NAMES)], dtype=np.float64)
        self._reading = (position, opening, angles)
        self._read_time = time.monotonic()
        return self._reading
