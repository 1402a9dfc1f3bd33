"""A stand-in for the xArm's controller: the real xarm-python-sdk talks to it over TCP on a
loopback address, and the project's MuJoCo arm (``tdmpc_ros.sim.arm.MujocoArm``) moves.

Run it as ``python -m tdmpc_ros.hardware.xarm_standin --host 127.0.0.2``; it prints ``READY``
once every port listens. The SDK hard-codes its ports (502 for commands, 30001 to 30003 for
state reports), so each stand-in takes a loopback address of its own (all of 127.0.0.0/8 reaches
this machine; 502 needs root). ``--silent`` accepts connections and never answers (a hung
controller); tests use it to check that connecting cannot hang.

Protocol (xarm/core/wrapper/uxbus_cmd_tcp.py): a request is transaction id (u16), protocol id
(u16, 2 or 3), length (u16, bytes that follow), function code (u8) and its parameters; the reply
repeats the first two, gives the length of what follows, the function code, a status byte (0x40
an uncleared error, 0x20 a warning, 0x10 not ready to move) and the data. Floats are little-endian
fp32, integers big-endian unless noted. Reports (xarm/x3/base.py, ``_handle_report_data``) are
frames that start with their own length (u32): 87 bytes on 30003 ("real"), 145 on 30001
("normal"), 245 on 30002 ("rich"), sent ``--report-hz`` times a second.

Commands covered (function code: SDK call):
  1 get_version, 2 get_robot_sn, 11 motion_enable, 12 set_state / emergency_stop, 13 get_state,
  14 get_cmdnum, 15 get_err_warn_code, 16 clean_error, 17 clean_warn, 19 set_mode,
  21 set_position (mode 0, straight line at the given speed), 30 set_servo_cartesian (mode 1),
  37 set_collision_sensitivity, 41 get_position, 42 get_servo_angle, 47
  set_reduced_max_tcp_speed, 50 set_reduced_mode, 52 set_reduced_tcp_boundary, 59 set_fence_mode,
  127/128 the tool-RS485 baud register (the SDK's baud check before gripper calls), 124 RS485 to
  the gripper (set_gripper_enable, set_gripper_mode, set_gripper_speed, set_gripper_position,
  get_gripper_position, get_gripper_err_code). Anything else is answered "invalid" and logged.

Behaviour: an error stops the arm (state 4), drops it to mode 0 and sets status bit 0x40 until
clean_error; motion needs motion_enable, then set_mode and set_state(0), as on the real arm.
With the fence on, a target outside the reduced TCP boundary raises C35 instead of moving.
Servo targets move the simulated TCP at once (the arm's own speed limits are not modelled);
every servo target received is logged with its time for tests.

Side channel for tests: JSON lines on ``--control-port`` (default 30100) of the same address;
one request per line, one reply per line. ``{"op": "status"}``, ``{"op": "servo_log"}``,
``{"op": "clear_log"}``, ``{"op": "inject", "code": 31}`` (a controller error, as a collision
would raise), ``{"op": "inject", "code": 2, "latched": true}`` (an error clean_error cannot clear,
as an emergency stop button still pressed), ``{"op": "release"}`` (the button let go),
``{"op": "clear"}`` (a person clears the error on the arm, as UFactory Studio does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import socket
import struct
import sys
import threading
import time
from typing import Any

import numpy as np

from tdmpc_ros.tasks import get_task

COMMAND_PORT = 502
REPORT_PORTS = {30003: 87, 30001: 145, 30002: 245}  # port: frame size (real, normal, rich)
# Below 2.0.102 the SDK waits for a move by polling the state, not by feedback frames.
VERSION = "6,6,XI1304000000,AC1304000000,v1.12.10"
GRIPPER_MAX = 850
BAUD_INDEX_2M = 11  # index of 2000000 in the SDK's UxbusCmd.BAUDRATES
DOWN_RPY = (math.pi, 0.0, 0.0)  # TCP pointing down

ST_ERROR, ST_WARN, ST_NOT_READY, ST_INVALID = 0x40, 0x20, 0x10, 0x08
MOVING, IDLE, STOPPED = 1, 2, 4  # controller states (3 paused is not modelled)


@dataclasses.dataclass
class ServoRecord:
    t: float
    xyz_mm: tuple[float, float, float]
    accepted: bool


class Controller:
    """The controller's state and the simulated arm; every method holds the lock."""

    def __init__(self, task: str, tick_s: float) -> None:
        from tdmpc_ros.sim.arm import MujocoArm

        # One physics tick per control tick: the TCP follows the setpoint at the tick rate.
        spec = dataclasses.replace(get_task(task), action_repeat=1, substep_period_s=tick_s)
        self.arm = MujocoArm(spec)
        self.tick_s = tick_s
        self.lock = threading.Lock()
        self.enabled = False
        self.state = STOPPED
        self.mode = 0
        self.pending_mode = 0
        self.error = 0
        self.warn = 0
        self.latched = False
        self.collision_sensitivity = 3
        self.fence = False
        self.reduced_mode = False
        self.reduced_speed = 0.0
        self.boundary_mm = [800, -800, 800, -800, 800, -800]  # xmax, xmin, ymax, ymin, zmax, zmin
        self.setpoint = self.arm.ee_position()
        self.goal: np.ndarray | None = None  # mode 0 line target (m) and speed (m/s)
        self.speed = 0.1
        self.gripper_target = GRIPPER_MAX
        self.gripper_enabled = False
        self.servo_log: list[ServoRecord] = []
        self.unknown: dict[int, int] = {}

    # --- the arm ------------------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            if self.state != STOPPED and self.goal is not None:
                step = self.goal - self.setpoint
                distance = float(np.linalg.norm(step))
                reach = self.speed * self.tick_s
                self.setpoint = self.goal.copy() if distance <= reach else (
                    self.setpoint + step * (reach / distance))
                if distance <= reach and np.linalg.norm(self.arm.ee_position() - self.goal) < 1e-3:
                    self.goal, self.state = None, IDLE
            self.arm.move_to(self.setpoint, self.gripper_target / GRIPPER_MAX)

    def ready(self) -> bool:
        return self.enabled and self.error == 0 and self.state in (MOVING, IDLE)

    def _stop(self) -> None:
        self.state, self.goal = STOPPED, None
        self.setpoint = self.arm.ee_position()

    def raise_error(self, code: int, latched: bool = False) -> None:
        """A controller error: stop, fall back to mode 0, keep the code until cleared."""
        self.error, self.latched = code, latched
        self.mode = self.pending_mode = 0
        self._stop()

    def _outside_fence(self, xyz_m: np.ndarray) -> bool:
        if not self.fence:
            return False
        xmax, xmin, ymax, ymin, zmax, zmin = self.boundary_mm
        x, y, z = xyz_m * 1000.0
        return not (xmin <= x <= xmax and ymin <= y <= ymax and zmin <= z <= zmax)

    def status_byte(self) -> int:
        status = ST_ERROR if self.error else 0
        status |= ST_WARN if self.warn else 0
        return status | (0 if self.ready() else ST_NOT_READY)

    def pose(self) -> list[float]:
        return [*(self.arm.ee_position() * 1000.0).tolist(), *DOWN_RPY]

    def joints(self) -> list[float]:
        return [*self.arm.joint_positions().tolist(), 0.0][:7]

    # --- commands -----------------------------------------------------------------------------

    def handle(self, code: int, params: bytes) -> tuple[int, bytes] | None:
        """The status byte and data answering one command; None: no answer (heartbeat)."""
        if code == 0:
            return None
        with self.lock:
            data = self._command(code, params)
            if data is None:
                self.unknown[code] = self.unknown.get(code, 0) + 1
                print(f"xarm_standin: command {code} not covered; answered invalid",
                      file=sys.stderr, flush=True)
                return ST_INVALID, b""
            return self.status_byte(), data

    def _command(self, code: int, p: bytes) -> bytes | None:  # noqa: C901 - one table
        if code == 1:
            return VERSION.encode().ljust(40, b"\0")
        if code == 2:
            return b"XI1304000000\0AC1304000000\0".ljust(40, b"\0")
        if code == 11:  # motion_en(axis, enable)
            self.enabled = bool(p[1])
            if not self.enabled:
                self._stop()
            return b""
        if code == 12:  # set_state
            if p[0] == 0:
                if self.enabled and self.error == 0:
                    self.mode = self.pending_mode
                    self.state = MOVING if self.goal is not None else IDLE
            elif p[0] >= 4:
                self._stop()
            return b""
        if code == 13:
            return bytes([self.state])
        if code == 14:
            return struct.pack(">H", 0)
        if code == 15:
            return bytes([self.error, self.warn])
        if code == 16:  # clean_error: the cause must be gone (a pressed button is not)
            if not self.latched:
                self.error = 0
            return b""
        if code == 17:
            self.warn = 0
            return b""
        if code == 19:
            self.pending_mode = p[0]
            return b""
        if code == 21:  # move line: x, y, z (mm), r, p, y (rad), speed (mm/s), acc, time, ...
            values = struct.unpack("<7f", p[:28])
            if self.ready() and self.mode == 0:
                goal = np.array(values[:3], dtype=np.float64) / 1000.0
                if self._outside_fence(goal):
                    self.raise_error(35)
                else:
                    self.goal, self.speed = goal, max(values[6], 1.0) / 1000.0
                    self.state = MOVING
            return bytes(3)
        if code == 30:  # servo cartesian: x, y, z (mm), r, p, y (rad), speed, acc, tool coord
            xyz = np.array(struct.unpack("<3f", p[:12]), dtype=np.float64)
            accepted = self.ready() and self.mode == 1
            self.servo_log.append(ServoRecord(time.monotonic(), tuple(xyz.tolist()), accepted))
            if accepted:
                if self._outside_fence(xyz / 1000.0):
                    self.raise_error(35)
                else:
                    self.setpoint = xyz / 1000.0
            return b""
        if code == 37:
            self.collision_sensitivity = p[0]
            return b""
        if code == 41:
            return struct.pack("<6f", *self.pose())
        if code == 42:
            return struct.pack("<7f", *self.joints())
        if code == 47:
            self.reduced_speed = struct.unpack("<f", p[:4])[0]
            return b""
        if code == 50:
            self.reduced_mode = bool(p[0])
            return b""
        if code == 52:
            self.boundary_mm = list(struct.unpack("<6i", p[:24]))
            return b""
        if code == 59:
            self.fence = bool(p[0])
            return b""
        if code == 127:  # tool RS485 register write (baud): accepted, nothing changes
            return b""
        if code == 128:  # tool RS485 register read: the baud index (2 Mbaud, the gripper's)
            return struct.pack(">i", BAUD_INDEX_2M)
        if code == 124:
            return self._gripper(p)
        return None

    def _gripper(self, p: bytes) -> bytes:
        """Modbus RTU to the gripper: [host id, gripper id, function, address, count, ...]."""
        host, slave, function = p[0], p[1], p[2]
        address, count = struct.unpack(">HH", p[3:7])
        if function == 0x03:  # read registers
            if address == 0x0702:  # current position, s32
                position = round(self.arm.gripper_opening() * GRIPPER_MAX)
                values = struct.pack(">i", position)
            else:  # error code (0x000F) and the rest: 0
                values = bytes(2 * count)
            return bytes([host, slave, function, len(values)]) + values
        if function == 0x10:  # write registers
            values = p[8:8 + 2 * count]
            if address == 0x0700:  # target position, s32
                target = struct.unpack(">i", values[:4])[0]
                self.gripper_target = int(np.clip(target, 0, GRIPPER_MAX))
            elif address == 0x0100:
                self.gripper_enabled = bool(struct.unpack(">H", values[:2])[0])
            return bytes([host, slave, function]) + p[3:7]
        return bytes([host, slave, function | 0x80, 1])

    def report(self, size: int) -> bytes:
        with self.lock:
            frame = bytearray(245)
            frame[4] = (self.state & 0x0F) | (self.mode << 4)
            frame[7:35] = struct.pack("<7f", *self.joints())
            frame[35:59] = struct.pack("<6f", *self.pose())
            motors = 0xFF if self.enabled else 0
            frame[87:91] = bytes([motors, motors, self.error, self.warn])
            frame[131:133] = bytes([self.collision_sensitivity, 0])
            frame[133:145] = struct.pack("<3f", 0.0, 0.0, -1.0)
            frame[145:151] = bytes([6, 6, 0, 0, 0, 0])  # arm type, axes, ids
            frame[151:180] = VERSION.encode()[:29].ljust(29, b"\0")
            frame[181:201] = struct.pack("<5f", 1000.0, 1.0, 50000.0, 0.1, 1000.0)
            frame[201:221] = struct.pack("<5f", 20.0, 0.01, 20.0, 0.0001, 4.0)
            frame[221:229] = struct.pack("<2f", 2.3, 2.7)
        frame[0:4] = struct.pack(">I", size)
        return bytes(frame[:size])

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"state": self.state, "mode": self.mode, "error": self.error,
                    "warn": self.warn, "enabled": self.enabled, "fence": self.fence,
                    "boundary_mm": self.boundary_mm, "reduced_mode": self.reduced_mode,
                    "reduced_speed": self.reduced_speed,
                    "collision_sensitivity": self.collision_sensitivity,
                    "tcp_m": self.arm.ee_position().tolist(),
                    "gripper": self.arm.gripper_opening(),
                    "gripper_target": self.gripper_target, "unknown": self.unknown}

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "servo_log":
            with self.lock:
                return {"targets": [[r.t, *r.xyz_mm, r.accepted] for r in self.servo_log]}
        if op == "clear_log":
            with self.lock:
                self.servo_log.clear()
            return {"ok": True}
        if op == "inject":
            with self.lock:
                self.raise_error(int(request["code"]), bool(request.get("latched", False)))
            return {"ok": True}
        if op == "release":
            with self.lock:
                self.latched = False
            return {"ok": True}
        if op == "clear":  # a person clears the error on the arm (UFactory Studio)
            with self.lock:
                if not self.latched:
                    self.error = 0
            return {"ok": not self.latched}
        return {"error": f"unknown op {op!r}"}


# --- servers ------------------------------------------------------------------------------------

def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


class Standin:
    """Listens on ``host``: commands (502), reports (30001-30003) and the test side channel."""

    def __init__(self, host: str, task: str = "reach", tick_hz: float = 100.0,
                 report_hz: float = 10.0, control_port: int = 30100, silent: bool = False):
        self.host, self.silent, self.report_period = host, silent, 1.0 / report_hz
        self.controller = None if silent else Controller(task, 1.0 / tick_hz)
        self.alive = True
        self.servers: list[socket.socket] = []
        self.connections: list[socket.socket] = []
        handlers = {COMMAND_PORT: self._serve_commands, control_port: self._serve_control}
        for port in REPORT_PORTS:
            handlers[port] = self._serve_reports
        for port, handler in handlers.items():
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, port))
            server.listen(8)
            self.servers.append(server)
            threading.Thread(target=self._accept, args=(server, port, handler),
                             daemon=True).start()
        if self.controller is not None:
            threading.Thread(target=self._simulate, daemon=True).start()

    def _simulate(self) -> None:
        assert self.controller is not None
        period = self.controller.tick_s
        next_tick = time.monotonic()
        while self.alive:
            self.controller.tick()
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))

    def _accept(self, server: socket.socket, port: int, handler: Any) -> None:
        while self.alive:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections.append(connection)
            silent = self.silent and handler != self._serve_control
            target = self._swallow if silent else handler
            threading.Thread(target=self._guard, args=(target, connection, port),
                             daemon=True).start()

    def _guard(self, handler: Any, connection: socket.socket, port: int) -> None:
        try:
            handler(connection, port)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            connection.close()

    def _swallow(self, connection: socket.socket, _port: int) -> None:
        while self.alive and connection.recv(4096):
            pass

    def _serve_commands(self, connection: socket.socket, _port: int) -> None:
        assert self.controller is not None
        while self.alive:
            header = _receive(connection, 6)
            transaction, protocol, length = struct.unpack(">HHH", header)
            body = _receive(connection, length)
            answer = self.controller.handle(body[0], body[1:])
            if answer is None:
                continue
            status, data = answer
            connection.sendall(struct.pack(">HHHBB", transaction, protocol, len(data) + 2,
                                           body[0], status) + data)

    def _serve_reports(self, connection: socket.socket, port: int) -> None:
        assert self.controller is not None
        while self.alive:
            connection.sendall(self.controller.report(REPORT_PORTS[port]))
            time.sleep(self.report_period)

    def _serve_control(self, connection: socket.socket, _port: int) -> None:
        reader = connection.makefile("r")
        for line in reader:
            try:
                request = json.loads(line)  # JSON only: never unpickle what comes over a socket
                reply = ({"error": "silent stand-in"} if self.controller is None
                         else self.controller.control(request))
            except (ValueError, KeyError, TypeError) as error:
                reply = {"error": str(error)}
            connection.sendall((json.dumps(reply) + "\n").encode())

    def close(self) -> None:
        self.alive = False
        for sock in self.servers + self.connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def control(host: str, request: dict[str, Any], port: int = 30100,
            timeout: float = 5.0) -> dict[str, Any]:
    """Send one side-channel request to the stand-in on ``host`` and return its reply."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall((json.dumps(request) + "\n").encode())
        reply = connection.makefile("r").readline()
    if not reply:
        raise ConnectionError(f"xarm stand-in on {host}:{port} closed without a reply")
    return json.loads(reply)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.2",
                        help="loopback address to listen on (one per stand-in; ports are fixed)")
    parser.add_argument("--task", default="reach", help="task whose scene is simulated")
    parser.add_argument("--tick-hz", type=float, default=100.0, help="simulation rate")
    parser.add_argument("--report-hz", type=float, default=10.0, help="state report rate")
    parser.add_argument("--control-port", type=int, default=30100, help="test side channel")
    parser.add_argument("--silent", action="store_true",
                        help="accept connections and never answer (a hung controller)")
    args = parser.parse_args(argv)
    standin = Standin(args.host, args.task, args.tick_hz, args.report_hz, args.control_port,
                      args.silent)
    print(f"READY xarm stand-in on {args.host}{' (silent)' if args.silent else ''}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        standin.close()


if __name__ == "__main__":
    main()
