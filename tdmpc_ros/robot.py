"""The interface every arm backend implements: the MuJoCo simulator now, the real xArm later.

No MuJoCo or ROS here. A backend moves the tool centre point (TCP) in the robot base frame, in
metres, with the gripper pointing down, one agent step per call, exactly as the real arm is
driven in Cartesian servo mode; see ``tdmpc_ros.tasks`` for the frame, units and timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ArmBackend(Protocol):
    """An arm with a parallel gripper, commanded by TCP position targets."""

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Names of the arm's joints, in the order of :meth:`joint_positions`."""
        ...

    def reset(self, home: Sequence[float] | np.ndarray, gripper_command: float = 1.0) -> None:
        """Bring the TCP to ``home`` (m, base frame) with the gripper at ``gripper_command``.

        The simulator teleports; the real arm moves there in position mode and waits.
        """
        ...

    def move_to(
        self, target_position_m: Sequence[float] | np.ndarray, gripper_command: float
    ) -> None:
        """Run one agent step: move the TCP towards ``target_position_m`` over the task's
        action-repeat substeps and command the gripper (0 closed, 1 fully open); returns when
        the step's time is up, whether or not the target was reached (e.g. blocked by contact).
        """
        ...

    def ee_position(self) -> np.ndarray:
        """Measured TCP position (m, base frame), float64 shape (3,)."""
        ...

    def gripper_opening(self) -> float:
        """Measured finger gap as a fraction of the full stroke: 0 closed, 1 fully open."""
        ...

    def joint_positions(self) -> np.ndarray:
        """Measured joint angles (rad), float64, in the order of :attr:`joint_names`."""
        ...

    def close(self) -> None:
        """Release the backend's resources (renderer, connection)."""
        ...


@runtime_checkable
class SceneBackend(Protocol):
    """The task objects around the arm: a cube and a target point.

    The simulator places and reads them exactly. On the real arm a person places the cube (its
    position comes from perception, or is unknown: None) and the target is a virtual point.
    """

    def place_object(self, position: Sequence[float] | np.ndarray) -> None:
        """Put the cube's centre at ``position`` (m, base frame), at rest, unrotated."""
        ...

    def place_target(self, position: Sequence[float] | np.ndarray) -> None:
        """Put the target (marker) at ``position`` (m, base frame)."""
        ...

    def object_position(self) -> np.ndarray | None:
        """The cube's centre (m, base frame), or None where unknown or absent."""
        ...

    def target_position(self) -> np.ndarray | None:
        """The target point (m, base frame), or None where the task has none."""
        ...
