"""The MuJoCo tabletop scene, written as MJCF in code: an xArm6-like arm, a gripper, a cube.

The world frame is the robot base frame of ``tdmpc_ros.tasks`` (origin on the table top at the
arm's mount, x over the table, z up, metres). The arm has six hinge joints laid out like an
xArm6 (yaw, shoulder pitch, elbow pitch, forearm roll, wrist pitch, tool roll) and a parallel
two-finger gripper on slide joints. It is driven the way the real arm is in Cartesian servo
mode: a mocap body is welded to the tool centre point (TCP) body, so moving the mocap moves the
TCP (gripper pointing down, fixed yaw) and the joints follow through the physics. Arm links are
gravity compensated (like the real controller) and collide with nothing; the fingers and the
hand collide with the cube and the table, so grasps happen through friction.
"""

from __future__ import annotations

import numpy as np

from tdmpc_ros.tasks import TaskSpec

TIMESTEP_S = 0.002
"""Physics step (s); a 0.04 s control substep is 20 of these."""
CAMERA_NAME = "front"
ARM_JOINTS = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
FINGER_JOINTS = ("left_finger", "right_finger")
TCP_BODY = "tcp"
EE_MOCAP_BODY = "ee_mocap"
OBJECT_BODY = "cube"
TARGET_BODY = "target"

# The camera faces the arm from across the table, high up and looking down at the workspace,
# so the arm rarely hides the cube or target and the gripper stays in view up to z = 0.3 m; in
# an 84x84 frame the 4 cm cube spans about 5 pixels and shadows hint at heights.
CAMERA_POSITION = (0.92, 0.0, 0.8)
CAMERA_LOOK_AT = (0.3, 0.0, 0.1)
CAMERA_FOVY_DEG = 45.0

# Guess of joint angles near the usual home poses, the start of the inverse kinematics.
JOINT_GUESS = (0.0, 0.3, 0.6, 0.0, -0.9, 0.0)


def camera_xyaxes(position: tuple[float, ...], look_at: tuple[float, ...]) -> np.ndarray:
    """The MJCF ``xyaxes`` of a camera at ``position`` looking at ``look_at``, horizon level."""
    forward = np.asarray(look_at, dtype=np.float64) - np.asarray(position, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return np.concatenate([right, up])


def _vec(values: tuple[float, ...] | np.ndarray) -> str:
    return " ".join(f"{value:.6g}" for value in values)


def _target_marker(spec: TaskSpec) -> str:
    """The target as a mocap body with a visual-only geom (it never touches anything)."""
    if not spec.uses_target:
        return ""
    if spec.uses_object:  # a goal on the table: a flat disk the size of the success radius
        # the target point is at the cube's centre height; the disk lies on the table below it
        geom = (f'<geom name="target" type="cylinder" size="{spec.success_distance_m} 0.001" '
                f'pos="0 0 {0.001 - spec.object_half_size_m:.6g}" rgba="0.15 0.75 0.25 0.6" '
                'contype="0" conaffinity="0" group="0"/>')
    else:  # a point in the air
        geom = ('<geom name="target" type="sphere" size="0.025" rgba="0.15 0.8 0.25 1" '
                'contype="0" conaffinity="0" group="0"/>')
    return f'<body name="{TARGET_BODY}" mocap="true" pos="0.4 0 0.1">{geom}</body>'


def _cube(spec: TaskSpec) -> str:
    if not spec.uses_object:
        return ""
    half = spec.object_half_size_m
    return f"""
    <body name="{OBJECT_BODY}" pos="0.4 0 {spec.object_rest_z:.6g}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{half} {half} {half}" mass="0.1" rgba="0.85 0.15 0.1 1"
            friction="1 0.01 0.001" condim="4" priority="1"/>
    </body>"""


# Distractors: visual-only objects (no contact, no mass), each a shape and colour of its own and
# none the red cube's; mocap bodies, so their places travel with the physics state to the camera.
DISTRACTORS = (
    ("sphere", "0.025", "0.15 0.35 0.9 1"),
    ("cylinder", "0.022 0.03", "0.95 0.8 0.1 1"),
    ("box", "0.03 0.015 0.02", "0.2 0.7 0.3 1"),
    ("capsule", "0.015 0.03", "0.6 0.25 0.75 1"),
)
DISTRACTOR_BODY = "distractor{}"


def _distractors(spec: TaskSpec) -> str:
    bodies = []
    for index, (kind, size, rgba) in enumerate(DISTRACTORS[: spec.distractors]):
        bodies.append(
            f'<body name="{DISTRACTOR_BODY.format(index)}" mocap="true" pos="0.3 {0.3 + index} '
            f'{spec.table_height_m + 0.03:.6g}"><geom type="{kind}" size="{size}" rgba="{rgba}" '
            f'contype="0" conaffinity="0"/></body>')
    return "\n    ".join(bodies)


def build_scene_xml(spec: TaskSpec) -> str:
    """The MJCF of ``spec``'s scene: table, arm, gripper, and the cube and target it needs."""
    finger_travel = spec.gripper_stroke_m / 2
    table = spec.table_height_m
    camera_axes = _vec(camera_xyaxes(CAMERA_POSITION, CAMERA_LOOK_AT))
    return f"""
<mujoco model="xarm_{spec.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP_S}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="640" offheight="480"/>
    <quality shadowsize="1024" offsamples="4"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.55 0.6 0.7" rgb2="0.2 0.2 0.25"
             width="64" height="64"/>
    <texture name="wood" type="2d" builtin="flat" rgb1="0.62 0.52 0.4" width="16" height="16"
             mark="edge" markrgb="0.5 0.42 0.32"/>
    <material name="table" texture="wood" texrepeat="1 1" specular="0.1" shininess="0.1"/>
    <material name="arm" rgba="0.88 0.88 0.9 1" specular="0.3" shininess="0.3"/>
    <material name="joint" rgba="0.35 0.35 0.38 1"/>
    <material name="gripper" rgba="0.15 0.15 0.17 1"/>
  </asset>
  <default>
    <default class="arm">
      <joint damping="2" armature="0.05"/>
      <geom contype="0" conaffinity="0" material="arm"/>
    </default>
    <default class="finger">
      <joint type="slide" range="0 {finger_travel:.6g}" damping="15" armature="0.01"/>
      <geom type="box" material="gripper" friction="1.5 0.01 0.001" condim="4" priority="1"
            contype="1" conaffinity="1" solref="0.01 1"/>
    </default>
  </default>
  <worldbody>
    <light name="top" pos="0.5 0.3 1.6" dir="-0.1 -0.2 -1" directional="true" castshadow="true"
           diffuse="0.55 0.55 0.55" specular="0.1 0.1 0.1"/>
    <geom name="floor" type="plane" pos="0 0 {table - 0.75:.6g}" size="3 3 0.1"
          rgba="0.3 0.3 0.32 1"/>
    <geom name="table" type="box" pos="0.35 0 {table - 0.025:.6g}" size="0.45 0.6 0.025"
          material="table" friction="0.6 0.005 0.0001"/>
    <geom name="base" type="cylinder" pos="0 0 {table + 0.06:.6g}" size="0.065 0.06"
          material="joint" contype="0" conaffinity="0"/>
    <camera name="{CAMERA_NAME}" pos="{_vec(CAMERA_POSITION)}" xyaxes="{camera_axes}"
            fovy="{CAMERA_FOVY_DEG}"/>
    <body name="link1" childclass="arm" pos="0 0 {table + 0.12:.6g}" gravcomp="1">
      <joint name="joint1" axis="0 0 1" range="-3.1 3.1"/>
      <geom type="capsule" fromto="0 0 0 0 0 0.147" size="0.05" mass="2"/>
      <body name="link2" pos="0 0 0.147" gravcomp="1">
        <joint name="joint2" axis="0 1 0" range="-1.6 2.2"/>
        <geom type="capsule" fromto="0 0 0 0 0 0.32" size="0.045" mass="2"/>
        <geom type="cylinder" fromto="0 -0.05 0 0 0.05 0" size="0.05" material="joint" mass="0.1"/>
        <body name="link3" pos="0 0 0.32" gravcomp="1">
          <joint name="joint3" axis="0 1 0" range="-1.0 3.0"/>
          <geom type="capsule" fromto="0 0 0 0.18 0 0" size="0.04" mass="1.5"/>
          <geom type="cylinder" fromto="0 -0.045 0 0 0.045 0" size="0.045" material="joint"
                mass="0.1"/>
          <body name="link4" pos="0.18 0 0" gravcomp="1">
            <joint name="joint4" axis="1 0 0" range="-3.1 3.1"/>
            <geom type="capsule" fromto="0 0 0 0.18 0 0" size="0.035" mass="1"/>
            <body name="link5" pos="0.18 0 0" gravcomp="1">
              <joint name="joint5" axis="0 1 0" range="-2.6 2.6"/>
              <geom type="cylinder" fromto="0 -0.04 0 0 0.04 0" size="0.038" material="joint"
                    mass="0.3"/>
              <geom type="capsule" fromto="0 0 0 0 0 -0.06" size="0.033" mass="0.5"/>
              <body name="link6" pos="0 0 -0.07" gravcomp="1">
                <joint name="joint6" axis="0 0 1" range="-3.1 3.1"/>
                <geom type="cylinder" fromto="0 0 0 0 0 -0.02" size="0.035" material="joint"
                      mass="0.2"/>
                <body name="hand" pos="0 0 -0.02" gravcomp="1">
                  <geom name="hand" type="box" pos="0 0 -0.025" size="0.03 0.065 0.025"
                        material="gripper" mass="0.5" contype="1" conaffinity="1"/>
                  <body name="left_finger" childclass="finger" pos="0 0 -0.05" gravcomp="1">
                    <joint name="left_finger" axis="0 1 0"/>
                    <geom name="left_finger" pos="0 0.006 -0.03" size="0.012 0.006 0.03"
                          mass="0.05"/>
                  </body>
                  <body name="right_finger" childclass="finger" pos="0 0 -0.05" gravcomp="1">
                    <joint name="right_finger" axis="0 -1 0"/>
                    <geom name="right_finger" pos="0 -0.006 -0.03" size="0.012 0.006 0.03"
                          mass="0.05"/>
                  </body>
                  <body name="{TCP_BODY}" pos="0 0 -0.095">
                    <site name="tcp" size="0.004" rgba="1 1 0 0" group="3"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    <body name="{EE_MOCAP_BODY}" mocap="true" pos="0.35 0 0.2"/>
    {_target_marker(spec)}
    {_cube(spec)}
    {_distractors(spec)}
  </worldbody>
  <equality>
    <weld name="tcp_servo" body1="{EE_MOCAP_BODY}" body2="{TCP_BODY}" relpose="0 0 0 1 0 0 0"
          solref="0.005 1" solimp="0.95 0.99 0.001"/>
  </equality>
  <contact>
    <exclude body1="left_finger" body2="right_finger"/>
  </contact>
  <actuator>
    <position name="left_finger" joint="left_finger" kp="300" ctrlrange="0 {finger_travel:.6g}"
              forcerange="-15 15"/>
    <position name="right_finger" joint="right_finger" kp="300" ctrlrange="0 {finger_travel:.6g}"
              forcerange="-15 15"/>
  </actuator>
</mujoco>
"""
