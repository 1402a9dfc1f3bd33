"""The MuJoCo arm backend: implements ``ArmBackend`` and ``SceneBackend`` of ``tdmpc_ros.robot``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import mujoco
import numpy as np

from tdmpc_ros.sim import scene
from tdmpc_ros.tasks import TaskSpec

_DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # TCP orientation: gripper pointing down, yaw 0


class MujocoArm:
    """A simulated xArm6-like arm, driven by TCP position targets like the real arm's servo mode.

    One instance owns one MuJoCo model and data (and, once asked for images, one offscreen
    renderer). Everything is deterministic: the same calls give bit-identical states.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.model = mujoco.MjModel.from_xml_string(scene.build_scene_xml(spec))
        self.data = mujoco.MjData(self.model)
        model = self.model
        self._arm_qpos = np.array(
            [model.jnt_qposadr[model.joint(name).id] for name in scene.ARM_JOINTS]
        )
        self._finger_qpos = np.array(
            [model.jnt_qposadr[model.joint(name).id] for name in scene.FINGER_JOINTS]
        )
        self._finger_ctrl = np.array([model.actuator(name).id for name in scene.FINGER_JOINTS])
        self._tcp = model.body(scene.TCP_BODY).id
        self._ee_mocap = model.body_mocapid[model.body(scene.EE_MOCAP_BODY).id]
        self._object_qpos: int | None = None
        self._object_body: int | None = None
        if spec.uses_object:
            self._object_body = model.body(scene.OBJECT_BODY).id
            self._object_qpos = int(model.jnt_qposadr[model.joint("cube").id])
        self._target_mocap: int | None = None
        if spec.uses_target:
            self._target_mocap = int(model.body_mocapid[model.body(scene.TARGET_BODY).id])
        self._distractor_mocaps = [
            int(model.body_mocapid[model.body(scene.DISTRACTOR_BODY.format(index)).id])
            for index in range(spec.distractors)]
        self._physics_steps = round(spec.substep_period_s / model.opt.timestep)
        self._ik_cache: dict[tuple[float, ...], np.ndarray] = {}
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self.reset(spec.home_position, spec.home_gripper)

    # --- ArmBackend -------------------------------------------------------------------------

    @property
    def joint_names(self) -> tuple[str, ...]:
        return scene.ARM_JOINTS

    def reset(self, home: Sequence[float] | np.ndarray, gripper_command: float = 1.0) -> None:
        """Teleport the TCP to ``home`` (gripper down, at rest); clears the whole physics state.

        The cube, if any, goes back to its default place; put it elsewhere with place_object.
        """
        home = self.spec.workspace.clip(np.asarray(home, dtype=np.float64))
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = self._inverse_kinematics(home)
        opening = float(np.clip(gripper_command, 0.0, 1.0)) * self.spec.gripper_stroke_m / 2
        self.data.qpos[self._finger_qpos] = opening
        self.data.ctrl[self._finger_ctrl] = opening
        self.data.mocap_pos[self._ee_mocap] = home
        self.data.mocap_quat[self._ee_mocap] = _DOWN
        mujoco.mj_forward(self.model, self.data)

    def move_to(
        self, target_position_m: Sequence[float] | np.ndarray, gripper_command: float
    ) -> None:
        """One agent step: the TCP target moves in a straight line from the last target to
        ``target_position_m`` over ``action_repeat`` substeps (as the real driver interpolates
        servo commands); the fingers are driven towards ``gripper_command`` (0 closed, 1 open)."""
        target = np.asarray(target_position_m, dtype=np.float64)
        if target.shape != (3,) or not np.isfinite(target).all():
            raise ValueError(f"target must be 3 finite numbers, got {target}")
        target = self.spec.workspace.clip(target)
        opening = float(np.clip(gripper_command, 0.0, 1.0)) * self.spec.gripper_stroke_m / 2
        self.data.ctrl[self._finger_ctrl] = opening
        start = self.data.mocap_pos[self._ee_mocap].copy()
        total = self.spec.action_repeat * self._physics_steps
        for step in range(1, total + 1):
            self.data.mocap_pos[self._ee_mocap] = start + (target - start) * (step / total)
            mujoco.mj_step(self.model, self.data)
        # mj_step leaves positions (xpos) one step behind qpos: bring them up to date, so that
        # observations, rewards and a mirror of this scene all see the same instant.
        mujoco.mj_forward(self.model, self.data)

    def hold(self, substeps: int = 1) -> None:
        """Let the physics run for ``substeps`` control substeps without moving the target."""
        for _ in range(substeps * self._physics_steps):
            mujoco.mj_step(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)

    def ee_position(self) -> np.ndarray:
        return self.data.xpos[self._tcp].copy()

    def gripper_opening(self) -> float:
        gap = float(self.data.qpos[self._finger_qpos].sum())
        return float(np.clip(gap / self.spec.gripper_stroke_m, 0.0, 1.0))

    def link_transforms(self) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """Each arm link from its parent, now (``tdmpc_ros.sim.frames.link_transforms``)."""
        from tdmpc_ros.sim.frames import link_transforms

        return link_transforms(self.model, self.data)

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._arm_qpos].copy()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    # --- SceneBackend -----------------------------------------------------------------------

    def place_object(self, position: Sequence[float] | np.ndarray) -> None:
        if self._object_qpos is None:
            raise ValueError(f"task {self.spec.name!r} has no object")
        address = self._object_qpos
        self.data.qpos[address : address + 3] = np.asarray(position, dtype=np.float64)
        self.data.qpos[address + 3 : address + 7] = (1.0, 0.0, 0.0, 0.0)
        dof = self.model.jnt_dofadr[self.model.joint("cube").id]
        self.data.qvel[dof : dof + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def place_target(self, position: Sequence[float] | np.ndarray) -> None:
        if self._target_mocap is None:
            raise ValueError(f"task {self.spec.name!r} has no target")
        self.data.mocap_pos[self._target_mocap] = np.asarray(position, dtype=np.float64)
        mujoco.mj_forward(self.model, self.data)

    def place_distractors(self, positions: np.ndarray) -> None:
        """Put the distractors (``spec.distractors`` of them) at ``positions`` (N x 3)."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if len(positions) != len(self._distractor_mocaps):
            raise ValueError(f"{len(positions)} places for {len(self._distractor_mocaps)} "
                             "distractors")
        for mocap, position in zip(self._distractor_mocaps, positions, strict=True):
            self.data.mocap_pos[mocap] = position
        mujoco.mj_forward(self.model, self.data)

    def distractor_positions(self) -> np.ndarray:
        return self.data.mocap_pos[self._distractor_mocaps].copy()

    def object_position(self) -> np.ndarray | None:
        if self._object_body is None:
            return None
        return self.data.xpos[self._object_body].copy()

    def target_position(self) -> np.ndarray | None:
        if self._target_mocap is None:
            return None
        return self.data.mocap_pos[self._target_mocap].copy()

    # --- mirroring: a second instance (the camera node's) shows this one's instant --------

    def physics_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything rendering depends on: joint positions (qpos) and mocap positions (N x 3)."""
        return self.data.qpos.copy(), self.data.mocap_pos.copy()

    def set_physics_positions(self, qpos: np.ndarray, mocap_pos: np.ndarray) -> None:
        """Put this scene in the state ``physics_positions`` read from another instance."""
        qpos = np.asarray(qpos, dtype=np.float64)
        mocap_pos = np.asarray(mocap_pos, dtype=np.float64).reshape(-1, 3)
        if qpos.shape != self.data.qpos.shape or mocap_pos.shape != self.data.mocap_pos.shape:
            raise ValueError(
                f"physics positions of shape {qpos.shape} and {mocap_pos.shape} do not fit the "
                f"{self.spec.name!r} scene ({self.data.qpos.shape}, {self.data.mocap_pos.shape})"
            )
        self.data.qpos[:] = qpos
        self.data.mocap_pos[:] = mocap_pos
        mujoco.mj_forward(self.model, self.data)

    # --- camera -----------------------------------------------------------------------------

    def render(self, height: int = 84, width: int = 84) -> np.ndarray:
        """An RGB image (uint8, height x width x 3) from the fixed front camera."""
        renderer = self._renderers.get((height, width))
        if renderer is None:
            try:
                renderer = mujoco.Renderer(self.model, height=height, width=width)
            except Exception as error:  # GL backends fail with many exception types
                raise RuntimeError(
                    f"MuJoCo cannot render offscreen ({error}). MUJOCO_GL is "
                    f"{os.environ.get('MUJOCO_GL')!r}; it must be 'egl' or 'osmesa' on a "
                    "headless machine and be set before mujoco is first imported (import "
                    "tdmpc_ros.sim first); requirements/apt.txt lists the Debian packages."
                ) from error
            self._renderers[(height, width)] = renderer
        renderer.update_scene(self.data, camera=scene.CAMERA_NAME)
        return renderer.render().copy()

    # --- internals --------------------------------------------------------------------------

    def _inverse_kinematics(self, position: np.ndarray) -> np.ndarray:
        """Joint angles putting the TCP at ``position``, pointing down (damped least squares).

        Done on a scratch MjData so the live state is untouched; cached per position.
        """
        key = tuple(np.round(position, 9))
        cached = self._ik_cache.get(key)
        if cached is not None:
            return cached.copy()
        data = mujoco.MjData(self.model)
        qpos = self._arm_qpos
        data.qpos[qpos] = scene.JOINT_GUESS
        dofs = np.array([self.model.jnt_dofadr[self.model.joint(n).id] for n in scene.ARM_JOINTS])
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        error = np.zeros(6)
        orientation = np.zeros(4)
        for _ in range(200):
            mujoco.mj_kinematics(self.model, data)
            mujoco.mj_comPos(self.model, data)
            error[:3] = position - data.xpos[self._tcp]
            mujoco.mju_negQuat(orientation, data.xquat[self._tcp])
            mujoco.mju_mulQuat(orientation, _DOWN, orientation)
            mujoco.mju_quat2Vel(error[3:], orientation, 1.0)
            if np.linalg.norm(error) < 1e-10:
                break
            mujoco.mj_jacBody(self.model, data, jacp, jacr, self._tcp)
            jacobian = np.vstack([jacp[:, dofs], jacr[:, dofs]])
            step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + 1e-6 * np.eye(6), error)
            data.qpos[qpos] += step
            for index, name in zip(qpos, scene.ARM_JOINTS, strict=True):
                low, high = self.model.jnt_range[self.model.joint(name).id]
                data.qpos[index] = np.clip(data.qpos[index], low, high)
        self._ik_cache[key] = data.qpos[qpos].copy()
        return self._ik_cache[key].copy()
