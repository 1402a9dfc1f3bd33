"""The operator console: mark trials a success or failure, pause, resume or abort, from a terminal.

Run it in a second terminal next to the robot while the stack runs (it is not in the launch file,
because it needs a keyboard)::

    ros2 run tdmpc_ros operator_console
    ros2 run tdmpc_ros operator_console --send failure --detail "cube slipped"  # one command
    tools/env.sh python -m tdmpc_ros.nodes.operator_console  # without ros2cli

Keys (no Enter needed on a terminal): ``s`` success, ``f`` failure, ``p`` pause, ``r`` resume,
``a`` abort (asks again), ``q`` quit the console (the trials go on). It also prints each trial's
start and end as the supervisor announces them. Without a terminal (piped input) it reads one
command word a line. The same commands go out with
``ros2 topic pub --once /trial/operator tdmpc_ros/msg/OperatorCommand "{command: 1}"``.

Publishes: trial/operator. Subscribes: trial/events.
"""

from __future__ import annotations

import argparse
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import rclpy
from rclpy.executors import (
    ExternalShutdownException,
    ShutdownException,
    SingleThreadedExecutor,
)
from rclpy.node import Node

from tdmpc_ros.interfaces import publish_checked
from tdmpc_ros.msg import EpisodeEvent, OperatorCommand
from tdmpc_ros.nodes.common import publisher, subscribe

COMMANDS = {"success": OperatorCommand.SUCCESS, "failure": OperatorCommand.FAILURE,
            "pause": OperatorCommand.PAUSE, "resume": OperatorCommand.RESUME,
            "abort": OperatorCommand.ABORT}
KEYS = {"s": "success", "f": "failure", "p": "pause", "r": "resume", "a": "abort"}
EVENTS = {EpisodeEvent.START: "started", EpisodeEvent.END: "ended",
          EpisodeEvent.PAUSE: "paused", EpisodeEvent.RESUME: "resumed"}
HELP = "keys: s success | f failure | p pause | r resume | a abort | q quit console"


def parse_command(word: str) -> int:
    """The OperatorCommand constant for a word (or its first letter); ValueError otherwise."""
    word = word.strip().lower()
    word = KEYS.get(word, word)
    if word not in COMMANDS:
        raise ValueError(f"unknown command {word!r}; one of {', '.join(COMMANDS)}")
    return COMMANDS[word]


class OperatorConsole(Node):
    def __init__(self, out: TextIO = sys.stdout) -> None:
        super().__init__("operator_console")
        self.out = out
        self.command_publisher = publisher(self, "trial/operator")
        subscribe(self, "trial/events", self.on_event)

    def send(self, command: int, detail: str = "") -> None:
        message = OperatorCommand(command=command, detail=detail)
        message.header.stamp = self.get_clock().now().to_msg()
        publish_checked(self.command_publisher, message)
        name = next(word for word, value in COMMANDS.items() if value == command)
        print(f"> sent {name}" + (f" ({detail})" if detail else ""), file=self.out, flush=True)

    def wait_for_supervisor(self, timeout_s: float) -> bool:
        """Whether the supervisor's subscription matched within ``timeout_s`` (DDS drops what
        is sent before a reader has matched)."""
        deadline = time.monotonic() + timeout_s
        while self.command_publisher.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def on_event(self, event: EpisodeEvent) -> None:
        what = EVENTS.get(event.event, str(event.event))
        line = f"  trial {event.trial} {what}"
        if event.event == EpisodeEvent.END:
            line += (f": {'success' if event.success else 'failure'}, {event.length} steps, "
                     f"return {event.episode_return:.2f}")
        if event.detail:
            line += f" ({event.detail})"
        print(line, file=self.out, flush=True)


@contextmanager
def raw_keys(stream: TextIO) -> Iterator[None]:
    """Single key presses from a terminal, restored afterwards."""
    descriptor = stream.fileno()
    saved = termios.tcgetattr(descriptor)
    try:
        # TCSADRAIN, not setcbreak's default TCSAFLUSH: a key pressed while the mode changes is
        # kept, not thrown away
        tty.setcbreak(descriptor, termios.TCSADRAIN)
        yield
    finally:
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


def interactive(console: OperatorConsole, stream: TextIO) -> None:
    with raw_keys(stream):
        print(HELP, flush=True)  # only once keys are read singly: a key pressed at once counts
        while rclpy.ok():
            ready, _, _ = select.select([stream], [], [], 0.2)
            if not ready:
                continue
            key = stream.read(1).lower()
            if key == "q":
                return
            if key == "a":
                print("abort the run? press a again to confirm", flush=True)
                if stream.read(1).lower() != "a":
                    print("not aborted", flush=True)
                    continue
            if key in KEYS:
                console.send(COMMANDS[KEYS[key]])
            elif key.strip():
                print(HELP, flush=True)


def line_by_line(console: OperatorConsole, stream: TextIO) -> None:
    for line in stream:
        if not line.strip():
            continue
        word, _, detail = line.strip().partition(" ")
        try:
            console.send(parse_command(word), detail.strip())
        except ValueError as error:
            print(error, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--send", help="send this one command and exit: " + ", ".join(COMMANDS))
    parser.add_argument("--detail", default="", help="free text kept with the trial")
    parser.add_argument("--wait", type=float, default=10.0,
                        help="seconds to wait for the trial supervisor before giving up")
    arguments, ros_arguments = parser.parse_known_args(argv)
    command = None
    if arguments.send is not None:
        try:
            command = parse_command(arguments.send)
        except ValueError as error:
            parser.error(str(error))
    rclpy.init(args=[sys.argv[0], *ros_arguments])
    console = OperatorConsole()
    executor = SingleThreadedExecutor()
    executor.add_node(console)
    spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
    spinner.start()
    try:
        if not console.wait_for_supervisor(arguments.wait):
            print(f"no trial supervisor listening on trial/operator after {arguments.wait:.0f} s "
                  "(is the stack running, in this ROS_DOMAIN_ID and namespace?)",
                  file=sys.stderr, flush=True)
            return 1
        if command is not None:
            console.send(command, arguments.detail)
            time.sleep(0.5)  # reliable QoS: give the message time to be acknowledged
        elif sys.stdin.isatty():
            interactive(console, sys.stdin)
        else:
            line_by_line(console, sys.stdin)
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        executor.shutdown()  # the spinning thread returns before the node goes
        spinner.join(timeout=5)
        console.destroy_node()
        rclpy.try_shutdown()


def _spin(executor: SingleThreadedExecutor) -> None:
    try:
        executor.spin()
    except (ExternalShutdownException, ShutdownException):
        pass


if __name__ == "__main__":
    sys.exit(main())
