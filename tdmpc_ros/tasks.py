"""The xArm task suite as plain data and pure functions, shared by the simulator and the real arm.

Nothing here imports MuJoCo or ROS: the MuJoCo backend (``tdmpc_ros.sim``) and the real xArm
driver both turn an agent action into a Cartesian target with :func:`action_to_target`, and both
score a step with :func:`reward_and_success` from positions alone (end effector, gripper, object,
target), so a policy trained in simulation sees the same action scale, workspace and reward on
the real robot.

Frame and units: every position is in metres in the robot base frame. The base frame's origin is
the centre of the arm's mounting flange on the table surface (the table top is z = 0), x points
away from the arm over the table, y to the arm's left, z up. The real xArm SDK speaks millimetres
in the same frame, so its driver multiplies by 1000 and nothing else. The end-effector position
is the tool centre point (TCP) between the gripper's finger pads, 15 mm above the fingertips; on
the real arm that is the TCP offset configured on the controller.

Timing: one agent step lasts ``action_repeat`` control substeps of ``substep_period_s`` (2 x 0.04
s = 0.08 s, 12.5 Hz). The arm moves at most ``max_step_m`` per axis per agent step (25 mm, i.e.
at most 25 * sqrt(3) = 43 mm along a diagonal). The real driver interpolates that move in the
xArm's Cartesian servo mode at 100 Hz or faster, i.e. at most 5.4 mm per servo command, under
the vendor's 10 mm limit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Region:
    """An axis-aligned box in the robot base frame, in metres."""

    low: Vec3
    """Smallest x, y, z."""
    high: Vec3
    """Largest x, y, z (each at least the matching ``low``)."""

    def __post_init__(self) -> None:
        if len(self.low) != 3 or len(self.high) != 3:
            raise ValueError(f"a region needs 3-d corners, got {self.low} and {self.high}")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f"region low {self.low} exceeds high {self.high}")

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A point drawn uniformly from the box (float64, shape (3,))."""
        return rng.uniform(np.asarray(self.low), np.asarray(self.high))

    def clip(self, point: np.ndarray) -> np.ndarray:
        """``point`` moved to the nearest point of the box."""
        return np.clip(point, self.low, self.high)

    def contains(self, point: np.ndarray, tolerance: float = 1e-9) -> bool:
        point = np.asarray(point, dtype=np.float64)
        return bool(
            np.all(point >= np.asarray(self.low) - tolerance)
            and np.all(point <= np.asarray(self.high) + tolerance)
        )


@dataclass(frozen=True)
class TaskSpec:
    """Everything about one task that the simulator, the real driver and the learner share."""

    name: str
    """Registry name: ``reach``, ``push`` or ``lift``."""
    action_dim: int
    """4 (x, y, z deltas and gripper) or 3 (x, y, z deltas; the gripper holds
    ``fixed_gripper_command``). Every component lies in [-1, 1]."""
    uses_object: bool
    """Whether the scene has the cube and the state vector carries its position."""
    uses_target: bool
    """Whether the task has a target point (marker) and the state vector carries it."""
    home_position: Vec3
    """TCP position at the start of every episode, in the base frame (m); gripper pointing down."""
    home_gripper: float = 1.0
    """Gripper command at the start of an episode (0 closed, 1 fully open)."""
    fixed_gripper_command: float | None = None
    """Gripper command used when ``action_dim`` is 3 (0 closed, 1 open); None for 4-d actions."""
    workspace: Region = Region((0.2, -0.25, 0.02), (0.6, 0.25, 0.35))
    """Box the commanded TCP target is clipped to (m). At z 0.02 the fingertips clear the table
    by 5 mm and the TCP is level with a resting cube's centre; the real driver also sets this box
    as the controller's safety fence."""
    max_step_m: float = 0.025
    """Largest TCP move per axis per agent step (m), reached at an action component of +-1."""
    gripper_stroke_m: float = 0.085
    """Finger gap when fully open (m), as the xArm gripper (0-850 in the SDK) opens 85 mm."""
    episode_length: int = 25
    """Agent steps per episode; episodes end by this time limit only (the paper's xArm tasks)."""
    action_repeat: int = 2
    """Control substeps per agent step; the TCP target is reached by interpolating over them."""
    substep_period_s: float = 0.04
    """Duration of one control substep (s); an agent step lasts action_repeat times this."""
    table_height_m: float = 0.0
    """Height of the table top in the base frame (m)."""
    object_half_size_m: float = 0.02
    """Half the edge of the cube (m): a 4 cm cube, graspable with the 8.5 cm stroke."""
    object_region: Region | None = None
    """Where the cube's centre is placed at reset (z is ignored: the cube rests on the table)."""
    target_region: Region | None = None
    """Where the target is drawn at reset (for ``push`` only x, y count: the goal is on the
    table, at the height of the cube's centre)."""
    min_object_target_distance_m: float = 0.0
    """Smallest horizontal distance between the cube and the target drawn at reset (m)."""
    max_object_target_distance_m: float = math.inf
    """Largest horizontal distance between the cube and the target drawn at reset (m)."""
    success_distance_m: float = 0.05
    """reach: TCP within this of the target; push: cube centre within this of the goal (x, y)."""
    lift_height_m: float = 0.15
    """lift: success once the cube is this far above its resting height (m)."""
    extras: dict[str, float] = field(default_factory=dict)
    """Free-form numbers for experiments; not used by the task logic."""
    variant: str = ""
    """Name of the variant whose placements these are (``with_variant``); "" for the training
    distribution, where every offline dataset comes from."""
    distractors: int = 0
    """Objects of other shapes and colours placed at random on the table at each reset: seen by
    the camera, absent from the state, and no obstacle to the arm (visual only)."""

    @property
    def agent_period_s(self) -> float:
        """Duration of one agent step (s)."""
        return self.action_repeat * self.substep_period_s

    @property
    def object_rest_z(self) -> float:
        """Height of the cube's centre when it rests on the table (m)."""
        return self.table_height_m + self.object_half_size_m

    @property
    def state_layout(self) -> tuple[tuple[str, int], ...]:
        """Names and sizes of the pieces of the ``state`` vector, in order."""
        layout: list[tuple[str, int]] = [("ee_position", 3), ("gripper_opening", 1)]
        if self.uses_object:
            layout.append(("object_position", 3))
        if self.uses_target:
            layout.append(("target_position", 3))
        return tuple(layout)

    @property
    def state_dim(self) -> int:
        return sum(size for _, size in self.state_layout)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="reach",
            action_dim=4,
            uses_object=False,
            uses_target=True,
            home_position=(0.35, 0.0, 0.2),
            target_region=Region((0.25, -0.2, 0.05), (0.55, 0.2, 0.3)),
        ),
        TaskSpec(
            name="push",
            action_dim=3,
            uses_object=True,
            uses_target=True,
            home_position=(0.35, 0.0, 0.1),
            fixed_gripper_command=0.0,  # closed fingers make a solid pushing block
            object_region=Region((0.32, -0.12, 0.0), (0.48, 0.12, 0.0)),
            target_region=Region((0.3, -0.15, 0.0), (0.5, 0.15, 0.0)),
            min_object_target_distance_m=0.08,
            max_object_target_distance_m=0.18,  # a push of at most ~8 steps: 25 steps suffice
        ),
        TaskSpec(
            name="lift",
            action_dim=4,
            uses_object=True,
            uses_target=False,
            home_position=(0.4, 0.0, 0.15),
            object_region=Region((0.32, -0.12, 0.0), (0.48, 0.12, 0.0)),
        ),
    )
}
"""The task registry, by name."""


def get_task(name: str, variant: str | Mapping[str, Any] | None = None) -> TaskSpec:
    """The spec of task ``name``, with ``variant``'s placements (``with_variant``) if given;
    ValueError naming the known tasks if there is none."""
    try:
        spec = TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}") from None
    return with_variant(spec, variant)


MAX_DISTRACTORS = 4
"""How many distractor objects a scene can hold (sim/scene.py DISTRACTORS)."""

VARIANT_FIELDS = ("object_region", "target_region", "min_object_target_distance_m",
                  "max_object_target_distance_m", "distractors")
"""What a variant may change: where the cube and the target are placed at reset, and how many
distractors the camera sees. Nothing else (action scale, workspace, reward) may differ, or the
model's actions would mean other things."""


def variants_file() -> Path:
    """``config/variants.yaml`` of the installed package, or of the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("tdmpc_ros")) / "config" / "variants.yaml"
        if installed.exists():
            return installed
    except (ImportError, LookupError, ValueError):
        pass
    return Path(__file__).resolve().parents[1] / "config" / "variants.yaml"


def known_variants(task: str, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The variants of ``task`` in a variants file (default: ``variants_file()``), by name."""
    import yaml

    path = Path(path) if path is not None else variants_file()
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of task -> variant name -> fields")
    entries = data.get(task) or {}
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: {task} must map variant names to their fields")
    return entries


def with_variant(spec: TaskSpec, variant: str | Mapping[str, Any] | None) -> TaskSpec:
    """``spec`` with a variant's placements: where the cube and the target appear at reset.

    ``variant`` is "" or None (the training distribution, unchanged), a name from
    ``config/variants.yaml``, ``FILE.yaml:NAME`` for a lab's own file of the same layout, or a
    mapping of fields (``VARIANT_FIELDS``; regions as ``{low: [x, y, z], high: [x, y, z]}``).
    ValueError names an unknown variant or field, or a region the task does not have.
    """
    if variant is None or variant == "" or variant == "train":
        return spec
    name = "custom"
    if isinstance(variant, str):
        path, _, name = variant.rpartition(":") if ".yaml:" in variant else ("", "", variant)
        entries = known_variants(spec.name, path or None)
        if name not in entries:
            where = path or "config/variants.yaml"
            raise ValueError(f"task {spec.name!r} has no variant {name!r} in {where} "
                             f"(known: {', '.join(sorted(entries)) or 'none'})")
        fields = dict(entries[name])
    else:
        fields = dict(variant)
    fields.pop("description", None)
    unknown = sorted(set(fields) - set(VARIANT_FIELDS))
    if unknown:
        raise ValueError(f"variant {name!r}: unknown field {unknown[0]!r} "
                         f"(a variant may set {', '.join(VARIANT_FIELDS)})")
    changes: dict[str, Any] = {"variant": name}
    for key, value in fields.items():
        if key.endswith("_region"):
            if getattr(spec, key) is None:
                raise ValueError(f"variant {name!r}: task {spec.name!r} has no {key}")
            if not isinstance(value, Mapping) or set(value) != {"low", "high"}:
                raise ValueError(f"variant {name!r}: {key} needs low and high corners")
            changes[key] = Region(tuple(map(float, value["low"])),
                                  tuple(map(float, value["high"])))
        elif key == "distractors":
            if not isinstance(value, int) or not 0 <= value <= MAX_DISTRACTORS:
                raise ValueError(f"variant {name!r}: distractors must be a whole number in "
                                 f"[0, {MAX_DISTRACTORS}], got {value!r}")
            changes[key] = value
        else:
            changes[key] = float(value)
    return dataclasses.replace(spec, **changes)


def action_to_target(
    action: Sequence[float] | np.ndarray, current_ee_position: Sequence[float] | np.ndarray,
    spec: TaskSpec,
) -> tuple[np.ndarray, float]:
    """Turn an agent action into a TCP target and a gripper command, as sim and real arm do.

    The action must hold ``spec.action_dim`` finite numbers (ValueError otherwise); they are
    clipped to [-1, 1]. The first three, times ``spec.max_step_m``, move the target away from the
    current TCP position per axis; the target is then clipped to ``spec.workspace``. The fourth
    (if any) maps [-1, 1] to a gripper command in [0, 1] (0 closed, 1 fully open) as an absolute
    command, not a delta; 3-d actions use ``spec.fixed_gripper_command``.

    Returns (target position, float64 shape (3,), in metres in the base frame; gripper command).
    """
    values = np.asarray(action, dtype=np.float64)
    if values.shape != (spec.action_dim,):
        raise ValueError(
            f"task {spec.name!r} takes actions of shape ({spec.action_dim},), got {values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"action has NaN or inf: {values.tolist()}")
    current = np.asarray(current_ee_position, dtype=np.float64)
    if current.shape != (3,) or not np.isfinite(current).all():
        raise ValueError(f"current end-effector position must be 3 finite numbers, got {current}")
    values = np.clip(values, -1.0, 1.0)
    target = spec.workspace.clip(current + values[:3] * spec.max_step_m)
    if spec.action_dim >= 4:
        gripper = float((values[3] + 1.0) / 2.0)
    else:
        fixed = spec.fixed_gripper_command
        gripper = float(fixed if fixed is not None else 1.0)
    return target, gripper


def _closeness(distance: float, scale: float) -> float:
    """1 at distance 0, falling smoothly towards 0; ``scale`` sets how fast (1/m)."""
    return 1.0 - math.tanh(scale * distance)


def _vector(value: Sequence[float] | np.ndarray | None, what: str, task: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"task {task!r} needs the {what} position")
    vector = np.asarray(value, dtype=np.float64)
    if vector.shape != (3,):
        raise ValueError(f"{what} position must have shape (3,), got {vector.shape}")
    return vector


def is_grasping(
    spec: TaskSpec, ee_position: np.ndarray, gripper: float, object_position: np.ndarray,
) -> bool:
    """Whether the cube sits between the fingers and the gripper is closed on it.

    Judged from positions alone (no force sensing, so it works on the real arm): the TCP is
    within half a cube edge of the cube's centre and the finger gap is at most the cube's width
    plus 1 cm.
    """
    gap = gripper * spec.gripper_stroke_m
    near = np.linalg.norm(np.asarray(ee_position) - np.asarray(object_position))
    return bool(near <= spec.object_half_size_m and gap <= 2 * spec.object_half_size_m + 0.01)


def holds_something(spec: TaskSpec, gripper: float) -> bool:
    """Whether the fingers are closed on an object, from the finger gap alone: narrower than
    the cube plus 1 cm, yet kept at least 5 mm apart by something between them."""
    gap = gripper * spec.gripper_stroke_m
    return bool(0.005 <= gap <= 2 * spec.object_half_size_m + 0.01)


def reward_and_success(
    spec: TaskSpec,
    ee_pos: Sequence[float] | np.ndarray,
    gripper: float,
    object_pos: Sequence[float] | np.ndarray | None = None,
    target_pos: Sequence[float] | np.ndarray | None = None,
) -> tuple[float, bool]:
    """Dense reward in [0, 1] and the success flag of a state, from positions alone.

    ``gripper`` is the measured opening in [0, 1] (0 closed, 1 fully open). ``object_pos`` is
    needed by push and lift, ``target_pos`` by reach and push.

    - reach: reward 1 - tanh(5 d) for the TCP-target distance d; success when d < 5 cm.
    - push: 0.3 for the TCP near the cube plus 0.7 for the cube near the goal (horizontal
      distance); success when the cube's centre is within 5 cm of the goal in x, y.
    - lift: 0.25 for the TCP near the cube, 0.25 for a grasp, 0.5 times the fraction of the 15 cm
      lift reached; success when the cube is 15 cm above its resting height. On the real arm,
      where nothing sees the cube (``object_pos`` None), from proprioception alone: a grasp is
      fingers closed on something (the gap neither open nor fully shut), and the lift is the
      TCP's height above the cube's resting height while grasping; 0.5 for the grasp, 0.5 times
      the lift fraction, success when grasping 15 cm up. The operator can overrule either way.
    """
    ee = _vector(ee_pos, "end-effector", spec.name)
    if spec.name == "reach":
        target = _vector(target_pos, "target", spec.name)
        distance = float(np.linalg.norm(ee - target))
        return _closeness(distance, 5.0), distance < spec.success_distance_m
    if spec.name == "push":
        obj = _vector(object_pos, "object", spec.name)
        target = _vector(target_pos, "target", spec.name)
        to_goal = float(np.linalg.norm(obj[:2] - target[:2]))
        to_object = float(np.linalg.norm(ee - obj))
        reward = 0.3 * _closeness(to_object, 10.0) + 0.7 * _closeness(to_goal, 5.0)
        return reward, to_goal < spec.success_distance_m
    if spec.name == "lift" and object_pos is None:
        grasp = holds_something(spec, gripper)
        height = float(ee[2] - spec.object_rest_z)
        lifted = min(max(height / spec.lift_height_m, 0.0), 1.0) if grasp else 0.0
        return 0.5 * float(grasp) + 0.5 * lifted, grasp and height >= spec.lift_height_m
    if spec.name == "lift":
        obj = _vector(object_pos, "object", spec.name)
        height = float(obj[2] - spec.object_rest_z)
        to_object = float(np.linalg.norm(ee - obj))
        grasp = 1.0 if is_grasping(spec, ee, gripper, obj) else 0.0
        lifted = min(max(height / spec.lift_height_m, 0.0), 1.0)
        reward = 0.25 * _closeness(to_object, 10.0) + 0.25 * grasp + 0.5 * lifted
        return reward, height >= spec.lift_height_m
    raise ValueError(f"no reward defined for task {spec.name!r}")


def state_vector(
    spec: TaskSpec,
    ee_pos: Sequence[float] | np.ndarray,
    gripper: float,
    object_pos: Sequence[float] | np.ndarray | None = None,
    target_pos: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """The ``state`` observation (float32) laid out as ``spec.state_layout`` says."""
    parts = [_vector(ee_pos, "end-effector", spec.name), np.array([gripper], dtype=np.float64)]
    if spec.uses_object:
        parts.append(_vector(object_pos, "object", spec.name))
    if spec.uses_target:
        parts.append(_vector(target_pos, "target", spec.name))
    return np.concatenate(parts).astype(np.float32)


def proprio_vector(ee_pos: Sequence[float] | np.ndarray, gripper: float) -> np.ndarray:
    """The ``proprio`` observation (float32): TCP x, y, z (m) and gripper opening in [0, 1]."""
    return np.array([*np.asarray(ee_pos, dtype=np.float64).reshape(3), gripper], dtype=np.float32)
