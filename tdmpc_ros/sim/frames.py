"""The simulated arm as ROS sees it: its URDF and its TF frames, both read from the MuJoCo model.

One source for the geometry: ``scene.build_scene_xml`` defines the arm, and this module derives
from the compiled model (a) the URDF that rviz's RobotModel shows (installed as
``urdf/tdmpc_xarm_sim.urdf``; ``python -m tdmpc_ros.sim.frames`` writes it) and (b) the
transform of every link from its parent at the current physics state, which the robot driver
publishes on /tf. The links keep MuJoCo's bodies, renamed as the real xArm's URDF names them
where there is one (``link_base``, ``link1``..``link6``, ``link_eef``, ``link_tcp``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import quoteattr

import mujoco
import numpy as np

from tdmpc_ros.sim import scene

BASE_FRAME = "link_base"
"""The robot base frame (the world body of the MuJoCo model; ``tasks``' frame)."""
FRAME_OF_BODY = {"hand": "link_eef", scene.TCP_BODY: "link_tcp"}
ARM_BODIES = ("link1", "link2", "link3", "link4", "link5", "link6", "hand", "left_finger",
              "right_finger", scene.TCP_BODY)
"""The bodies of the arm, parents before children."""
URDF_NAME = "tdmpc_xarm_sim.urdf"
URDF_PATH = Path(__file__).resolve().parents[2] / "urdf" / URDF_NAME
"""The URDF in the source tree (``python -m tdmpc_ros.sim.frames`` writes it)."""


def installed_urdf() -> Path:
    """The URDF as installed with the package (share/tdmpc_ros/urdf), or the source tree's."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("tdmpc_ros")) / "urdf" / URDF_NAME
        if installed.is_file():
            return installed
    except (ImportError, LookupError, ValueError):
        pass
    return URDF_PATH


def frame_name(model: mujoco.MjModel, body: int) -> str:
    name = model.body(body).name
    return BASE_FRAME if body == 0 else FRAME_OF_BODY.get(name, name)


def link_transforms(model: mujoco.MjModel, data: mujoco.MjData
                    ) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(parent frame, child frame, translation (3,), rotation as quaternion x, y, z, w) of
    each arm link from its parent, at ``data``'s current state (after mj_forward or a step)."""
    out = []
    for name in ARM_BODIES:
        body = model.body(name).id
        parent = int(model.body_parentid[body])
        rotation_parent = data.xmat[parent].reshape(3, 3)
        translation = rotation_parent.T @ (data.xpos[body] - data.xpos[parent])
        relative = np.empty(4)
        conjugate = np.empty(4)
        mujoco.mju_negQuat(conjugate, data.xquat[parent])
        mujoco.mju_mulQuat(relative, conjugate, data.xquat[body])
        w, x, y, z = relative
        out.append((frame_name(model, parent), frame_name(model, body), translation,
                    np.array([x, y, z, w])))
    return out


def camera_optical_transform() -> tuple[np.ndarray, np.ndarray]:
    """The simulated camera's optical frame (z forward, x right, y down, as ROS cameras report)
    in the base frame: translation (3,) and quaternion x, y, z, w."""
    right, up = np.split(scene.camera_xyaxes(scene.CAMERA_POSITION, scene.CAMERA_LOOK_AT), 2)
    forward = -np.cross(right, up)  # a MuJoCo camera looks along the -z of (right, up, z)
    rotation = np.stack([right, -up, forward], axis=1)  # columns: optical x, y, z in base
    quaternion = np.empty(4)
    mujoco.mju_mat2Quat(quaternion, rotation.reshape(-1))
    w, x, y, z = quaternion
    return np.asarray(scene.CAMERA_POSITION, dtype=np.float64), np.array([x, y, z, w])


def camera_focal_px(height: int) -> float:
    """Focal length (pixels) of the simulated camera in a frame ``height`` pixels high."""
    return height / 2.0 / float(np.tan(np.radians(scene.CAMERA_FOVY_DEG) / 2.0))


def _origin(position: np.ndarray, quaternion_wxyz: np.ndarray) -> str:
    matrix = np.empty(9)
    mujoco.mju_quat2Mat(matrix, quaternion_wxyz)
    r = matrix.reshape(3, 3)
    # URDF's rpy: fixed-axis roll (x), pitch (y), yaw (z)
    pitch = float(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    roll = float(np.arctan2(r[2, 1], r[2, 2]))
    yaw = float(np.arctan2(r[1, 0], r[0, 0]))
    xyz = " ".join(f"{v:.6g}" for v in position)
    rpy = " ".join(f"{v + 0.0:.6g}" for v in (roll, pitch, yaw))  # + 0.0: no "-0"
    return f'<origin xyz="{xyz}" rpy="{rpy}"/>'


def _geometry(model: mujoco.MjModel, geom: int) -> str | None:
    kind, size = int(model.geom_type[geom]), model.geom_size[geom]
    if kind == mujoco.mjtGeom.mjGEOM_BOX.value:
        return f'<box size="{2 * size[0]:.6g} {2 * size[1]:.6g} {2 * size[2]:.6g}"/>'
    if kind in (mujoco.mjtGeom.mjGEOM_CYLINDER.value, mujoco.mjtGeom.mjGEOM_CAPSULE.value):
        # URDF has no capsule: a cylinder of the capsule's full length stands in for it
        caps = 2 * size[0] if kind == mujoco.mjtGeom.mjGEOM_CAPSULE.value else 0.0
        return f'<cylinder radius="{size[0]:.6g}" length="{2 * size[1] + caps:.6g}"/>'
    if kind == mujoco.mjtGeom.mjGEOM_SPHERE.value:
        return f'<sphere radius="{size[0]:.6g}"/>'
    return None


def build_urdf(model: mujoco.MjModel) -> str:
    """The URDF of the arm in ``model``: links with their visual shapes and colours, revolute
    arm joints and prismatic fingers with MuJoCo's axes and limits, the TCP as a fixed joint."""
    lines = ['<?xml version="1.0"?>',
             "<!-- Generated by `python -m tdmpc_ros.sim.frames` from the MuJoCo scene "
             "(tdmpc_ros/sim/scene.py): the simulated xArm6-like arm. -->",
             '<robot name="tdmpc_xarm_sim">', f'  <link name="{BASE_FRAME}"/>']
    for name in ARM_BODIES:
        body = model.body(name).id
        link = frame_name(model, body)
        lines.append(f"  <link name={quoteattr(link)}>")
        for geom in range(model.ngeom):
            if model.geom_bodyid[geom] != body or (shape := _geometry(model, geom)) is None:
                continue
            rgba = (model.mat_rgba[model.geom_matid[geom]] if model.geom_matid[geom] >= 0
                    else model.geom_rgba[geom])
            colour = " ".join(f"{v:.3g}" for v in rgba)
            origin = _origin(model.geom_pos[geom], model.geom_quat[geom])
            lines += ["    <visual>", f"      {origin}",
                      f"      <geometry>{shape}</geometry>",
                      f'      <material name=""><color rgba="{colour}"/></material>',
                      "    </visual>"]
        lines.append("  </link>")
        parent = frame_name(model, int(model.body_parentid[body]))
        joints = [j for j in range(model.njnt) if model.jnt_bodyid[j] == body]
        origin = _origin(model.body_pos[body], model.body_quat[body])
        if not joints:
            lines += [f'  <joint name="{link}_fixed" type="fixed">',
                      f'    <parent link="{parent}"/><child link="{link}"/>', f"    {origin}",
                      "  </joint>"]
            continue
        joint = joints[0]
        kind = ("revolute" if int(model.jnt_type[joint]) == mujoco.mjtJoint.mjJNT_HINGE.value
                else "prismatic")
        low, high = model.jnt_range[joint]
        axis = " ".join(f"{v:.6g}" for v in model.jnt_axis[joint])
        lines += [f"  <joint name={quoteattr(model.joint(joint).name)} type=\"{kind}\">",
                  f'    <parent link="{parent}"/><child link="{link}"/>', f"    {origin}",
                  f'    <axis xyz="{axis}"/>',
                  f'    <limit lower="{low:.6g}" upper="{high:.6g}" effort="50" velocity="3"/>',
                  "  </joint>"]
    lines.append("</robot>")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the URDF of the simulated arm (default: the installed ``urdf/`` file)."""
    from tdmpc_ros.tasks import get_task

    out = Path((argv if argv is not None else sys.argv[1:])[0]) if (
        argv if argv is not None else sys.argv[1:]) else URDF_PATH
    model = mujoco.MjModel.from_xml_string(scene.build_scene_xml(get_task("reach")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_urdf(model))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
