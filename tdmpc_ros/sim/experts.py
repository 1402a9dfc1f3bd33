"""Scripted experts with noise, for offline datasets of mixed quality like the paper's.

Each expert reads the true positions (``XArmTaskEnv.positions()``) and proposes a move of the TCP
towards a sub-goal, as an action in [-1, 1]. A :class:`Skill`, drawn per episode, then spoils it:
a constant aiming error (the expert "sees" the cube or target a few centimetres off), Gaussian
action noise, random actions now and then, and a slower gain. The mix of skills gives datasets
with some successes and many near misses and failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdmpc_ros.tasks import TaskSpec


@dataclass(frozen=True)
class Skill:
    """How well a scripted expert performs during one episode."""

    name: str
    """Label stored in the episode's metadata."""
    noise_std: float
    """Standard deviation of the Gaussian noise added to every action component."""
    random_action_prob: float
    """Chance per step of replacing the action with a uniform random one."""
    aim_error_m: float
    """Standard deviation (m, per axis; horizontal axes only for the cube tasks) of a constant
    error in where the expert believes the cube and target are, drawn once per episode."""
    gain: float
    """Multiplies the proposed move; below 1 the expert is slow and may run out of time."""


SKILLS: tuple[Skill, ...] = (
    Skill("expert", noise_std=0.1, random_action_prob=0.0, aim_error_m=0.0, gain=1.0),
    Skill("sloppy", noise_std=0.3, random_action_prob=0.1, aim_error_m=0.025, gain=0.9),
    Skill("poor", noise_std=0.6, random_action_prob=0.25, aim_error_m=0.07, gain=0.7),
    Skill("random", noise_std=0.0, random_action_prob=1.0, aim_error_m=0.0, gain=1.0),
)
"""The skill levels, from best to worst."""

SKILL_WEIGHTS: dict[str, tuple[float, ...]] = {
    "reach": (0.1, 0.2, 0.4, 0.3),  # reaching forgives errors: fewer good players
    "push": (0.3, 0.3, 0.25, 0.15),
    "lift": (0.3, 0.3, 0.25, 0.15),
}
"""Per task, how often each of SKILLS is drawn for an episode (about 30-45% successes)."""


def draw_skill(task: str, rng: np.random.Generator) -> Skill:
    """A skill level for one episode of ``task``."""
    weights = np.asarray(SKILL_WEIGHTS[task], dtype=np.float64)
    return SKILLS[int(rng.choice(len(SKILLS), p=weights / weights.sum()))]


class ScriptedExpert:
    """Base class: subclasses propose a TCP sub-goal and a gripper command per step."""

    aim_error_in_z = False
    """Whether the aiming error is 3-d (a target in the air) or horizontal (a cube on the table)."""

    def __init__(self, spec: TaskSpec, skill: Skill, rng: np.random.Generator) -> None:
        self.spec = spec
        self.skill = skill
        self.rng = rng
        aim = rng.normal(0.0, skill.aim_error_m, size=3) if skill.aim_error_m > 0 else np.zeros(3)
        if not self.aim_error_in_z:
            aim[2] = 0.0
        self.aim_offset = aim

    def act(
        self,
        ee_pos: np.ndarray,
        gripper: float,
        object_pos: np.ndarray | None,
        target_pos: np.ndarray | None,
    ) -> np.ndarray:
        """The (noisy) action for the current positions, float32 in [-1, 1]."""
        spec, skill = self.spec, self.skill
        if self.rng.random() < skill.random_action_prob:
            return self.rng.uniform(-1.0, 1.0, size=spec.action_dim).astype(np.float32)
        goal, gripper_command = self.subgoal(ee_pos, gripper, object_pos, target_pos)
        move = np.clip(skill.gain * (goal - ee_pos) / spec.max_step_m, -1.0, 1.0)
        action = np.concatenate([move, [2.0 * gripper_command - 1.0]])[: spec.action_dim]
        action = action + self.rng.normal(0.0, skill.noise_std, size=spec.action_dim)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def subgoal(
        self,
        ee_pos: np.ndarray,
        gripper: float,
        object_pos: np.ndarray | None,
        target_pos: np.ndarray | None,
    ) -> tuple[np.ndarray, float]:
        """Where the TCP should head next (m) and the gripper command (0 closed, 1 open)."""
        raise NotImplementedError


class ReachExpert(ScriptedExpert):
    """Straight to the target, gripper open."""

    aim_error_in_z = True

    def subgoal(
        self, ee_pos: np.ndarray, gripper: float, object_pos: np.ndarray | None,
        target_pos: np.ndarray | None,
    ) -> tuple[np.ndarray, float]:
        assert target_pos is not None
        return target_pos + self.aim_offset, 1.0


class PushExpert(ScriptedExpert):
    """Go behind the cube (seen from the goal) above it, come down, push it along the line."""

    def subgoal(
        self, ee_pos: np.ndarray, gripper: float, object_pos: np.ndarray | None,
        target_pos: np.ndarray | None,
    ) -> tuple[np.ndarray, float]:
        assert object_pos is not None and target_pos is not None
        spec = self.spec
        cube = object_pos + self.aim_offset
        goal = target_pos
        direction = goal[:2] - cube[:2]
        remaining = float(np.linalg.norm(direction))
        direction = direction / max(remaining, 1e-6)
        # fingers are 12 mm thick: the TCP touches the cube's back face this far from its centre
        contact = spec.object_half_size_m + 0.014
        behind = cube[:2] - direction * (contact + 0.01)
        push_z = spec.object_rest_z
        safe_z = spec.object_rest_z + 2 * spec.object_half_size_m + 0.02
        relative = ee_pos[:2] - cube[:2]
        along = float(relative @ direction)
        across = float(abs(relative[0] * direction[1] - relative[1] * direction[0]))
        if along < -contact + 0.005 and across < 0.012 and ee_pos[2] < push_z + 0.015:
            # in place: push through the cube's centre towards the goal
            aim = cube[:2] + direction * min(remaining, 0.03)
            return np.array([aim[0], aim[1], push_z]), 0.0
        if float(np.linalg.norm(ee_pos[:2] - behind)) > 0.02:
            near_cube = float(np.linalg.norm(relative)) < contact + 0.03
            if ee_pos[2] < safe_z - 0.01 and near_cube:
                return np.array([ee_pos[0], ee_pos[1], safe_z]), 0.0  # rise clear of the cube
            return np.array([behind[0], behind[1], max(ee_pos[2], safe_z)]), 0.0
        return np.array([behind[0], behind[1], push_z]), 0.0


class LiftExpert(ScriptedExpert):
    """Above the cube with the gripper open, down, close, wait for the grip, lift."""

    def __init__(self, spec: TaskSpec, skill: Skill, rng: np.random.Generator) -> None:
        super().__init__(spec, skill, rng)
        self.closed_steps = 0

    def subgoal(
        self, ee_pos: np.ndarray, gripper: float, object_pos: np.ndarray | None,
        target_pos: np.ndarray | None,
    ) -> tuple[np.ndarray, float]:
        assert object_pos is not None
        spec = self.spec
        cube = object_pos + self.aim_offset
        above = np.array([cube[0], cube[1], cube[2] + 0.06])
        if self.closed_steps > 0:
            self.closed_steps += 1
            if self.closed_steps <= 3:  # let the fingers close before pulling up
                return ee_pos.copy(), 0.0
            if gripper < 0.05 and self.closed_steps > 6:  # closed on nothing: try again
                self.closed_steps = 0
                return above, 1.0
            lift = np.array([ee_pos[0], ee_pos[1], spec.object_rest_z + spec.lift_height_m + 0.05])
            return lift, 0.0
        horizontal = float(np.linalg.norm(ee_pos[:2] - cube[:2]))
        if horizontal > 0.012:
            return np.array([cube[0], cube[1], max(ee_pos[2], above[2])]), 1.0
        if ee_pos[2] > cube[2] + 0.008:
            return np.array([cube[0], cube[1], cube[2]]), 1.0
        self.closed_steps = 1
        return ee_pos.copy(), 0.0


EXPERTS: dict[str, type[ScriptedExpert]] = {
    "reach": ReachExpert,
    "push": PushExpert,
    "lift": LiftExpert,
}


def make_expert(spec: TaskSpec, skill: Skill, rng: np.random.Generator) -> ScriptedExpert:
    """The scripted expert of ``spec``'s task, playing at ``skill``."""
    return EXPERTS[spec.name](spec, skill, rng)
