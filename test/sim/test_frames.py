"""The simulated arm's URDF and TF frames, checked against the MuJoCo model they come from."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import mujoco
import numpy as np

from tdmpc_ros.sim import frames, scene
from tdmpc_ros.sim.arm import MujocoArm
from tdmpc_ros.tasks import get_task


def _rotation(quaternion_xyzw) -> np.ndarray:
    x, y, z, w = quaternion_xyzw
    matrix = np.empty(9)
    mujoco.mju_quat2Mat(matrix, np.array([w, x, y, z], dtype=np.float64))
    return matrix.reshape(3, 3)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    quaternion = np.empty(4)
    mujoco.mju_axisAngle2Quat(quaternion, axis.astype(np.float64), float(angle))
    w, x, y, z = quaternion
    return _rotation([x, y, z, w])


def _rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF's fixed-axis roll, pitch, yaw: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    return (_axis_angle(np.array([0.0, 0, 1]), yaw) @ _axis_angle(np.array([0.0, 1, 0]), pitch)
            @ _axis_angle(np.array([1.0, 0, 0]), roll))


def _matrix(translation, quaternion_xyzw) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = _rotation(quaternion_xyzw)
    out[:3, 3] = translation
    return out


def _chain(transforms: dict[str, tuple[str, np.ndarray]], child: str) -> np.ndarray:
    """Compose parent-to-child transforms from the base frame to ``child``."""
    pose = np.eye(4)
    while child != frames.BASE_FRAME:
        parent, relative = transforms[child]
        pose = relative @ pose
        child = parent
    return pose


def _moved_arm() -> MujocoArm:
    arm = MujocoArm(get_task("lift"))
    arm.reset(np.array([0.42, 0.08, 0.12]), 0.6)
    arm.move_to(np.array([0.38, -0.05, 0.08]), 0.2)
    return arm


def test_tf_frames_rebuild_every_body_pose_of_the_simulation() -> None:
    arm = _moved_arm()
    transforms = {child: (parent, _matrix(t, q)) for parent, child, t, q in arm.link_transforms()}
    assert set(transforms) == {"link1", "link2", "link3", "link4", "link5", "link6", "link_eef",
                               "left_finger", "right_finger", "link_tcp"}
    tcp = _chain(transforms, "link_tcp")
    np.testing.assert_allclose(tcp[:3, 3], arm.ee_position(), atol=1e-9)
    for body in ("link3", "left_finger"):
        pose = _chain(transforms, body)
        np.testing.assert_allclose(pose[:3, 3], arm.data.xpos[arm.model.body(body).id],
                                   atol=1e-9)
        np.testing.assert_allclose(pose[:3, :3],
                                   arm.data.xmat[arm.model.body(body).id].reshape(3, 3),
                                   atol=1e-9)


def test_the_installed_urdf_is_the_model_and_its_kinematics_match_the_simulation() -> None:
    """urdf/tdmpc_xarm_sim.urdf is what the generator writes from today's scene, and forward
    kinematics through its joints (origin, axis, the simulator's joint values) lands the TCP
    where MuJoCo has it."""
    arm = _moved_arm()
    text = frames.build_urdf(arm.model)
    assert frames.URDF_PATH.read_text() == text, "run `python -m tdmpc_ros.sim.frames`"
    root = ET.fromstring(text)
    joints = {j.find("child").get("link"): j for j in root.findall("joint")}
    links = {link.get("name") for link in root.findall("link")}
    assert links == {frames.BASE_FRAME, *joints}
    assert len(root.findall(".//visual")) >= 10  # shapes for rviz's RobotModel

    def joint_pose(link: str) -> tuple[str, np.ndarray]:
        joint = joints[link]
        origin = joint.find("origin")
        xyz = [float(v) for v in origin.get("xyz").split()]
        rpy = [float(v) for v in origin.get("rpy").split()]
        pose = np.eye(4)
        pose[:3, :3] = _rpy(*rpy)
        pose[:3, 3] = xyz
        motion = np.eye(4)
        if joint.get("type") != "fixed":
            axis = np.array([float(v) for v in joint.find("axis").get("xyz").split()])
            value = arm.data.qpos[arm.model.jnt_qposadr[arm.model.joint(joint.get("name")).id]]
            if joint.get("type") == "revolute":
                motion[:3, :3] = _axis_angle(axis, value)
            else:
                motion[:3, 3] = axis * value
        return joint.find("parent").get("link"), pose @ motion

    pose, link = np.eye(4), "link_tcp"
    while link != frames.BASE_FRAME:
        link, relative = joint_pose(link)
        pose = relative @ pose
    np.testing.assert_allclose(pose[:3, 3], arm.ee_position(), atol=1e-5)


def test_the_simulated_cameras_optical_frame_looks_at_the_table() -> None:
    translation, rotation = frames.camera_optical_transform()
    axes = _rotation(rotation)
    look = np.asarray(scene.CAMERA_LOOK_AT) - translation
    np.testing.assert_allclose(axes[:, 2], look / np.linalg.norm(look), atol=1e-9)  # z forward
    assert axes[2, 1] < 0  # optical y points down in the world
    assert abs(frames.camera_focal_px(84) - 42 / np.tan(np.radians(22.5))) < 1e-9
    model = mujoco.MjModel.from_xml_string(scene.build_scene_xml(get_task("reach")))
    np.testing.assert_allclose(model.cam_pos[0], translation)
