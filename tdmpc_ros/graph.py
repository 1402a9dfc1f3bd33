"""The node graph, defined once: topics with their types and QoS, the nodes, and the launch
arguments. The ``ros2 launch`` files in ``launch/`` and the project's own launcher
(``python -m tdmpc_ros.launcher``, for machines without launch_ros) both read this module, so
the two cannot drift apart. Nodes take their topic names and QoS from here too.

Topic names are relative, so that the ``namespace`` launch argument moves the whole graph
(e.g. two arms in one lab); ``/diagnostics`` stays absolute, as ROS tools expect it there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rclpy is only needed by the nodes, not by whoever reads the graph
    from rclpy.qos import QoSProfile

PACKAGE = "tdmpc_ros"


# How long (s) of a stream its writer keeps for a reader that (re)joins late: a restarted
# recorder or learner catches up on what was sent while it was down. 25 s at the 12.5 Hz
# control rate (a respawn with its backoff takes a few seconds on a busy machine).
CATCH_UP_S = 25.0
CONTROL_HZ = 12.5
CATCH_UP = int(CATCH_UP_S * CONTROL_HZ)


@dataclass(frozen=True)
class Qos:
    """A QoS choice, kept as plain values so this module imports without rclpy.

    Writers offer the most (reliable and transient local where readers may catch up), so that
    any reader's request is compatible; each reader asks for what it needs.
    """

    reliable: bool  # what an ordinary reader asks for
    depth: int  # an ordinary reader's queue
    latched: bool = False  # every reader gets the writer's last `depth` messages on joining
    history: int = 0  # writers keep this many for a reader that asks to catch up
    why: str = ""

    def _profile(self, reliable: bool, depth: int, transient_local: bool) -> QoSProfile:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable
            else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local
            else DurabilityPolicy.VOLATILE,
        )

    def writer(self) -> QoSProfile:
        keeps = bool(self.history)
        return self._profile(self.reliable or keeps, max(self.depth, self.history),
                             self.latched or keeps)

    def reader(self, catch_up: bool = False) -> QoSProfile:
        """``catch_up``: also get what the writers still keep from before this reader joined
        (every message in order, reliably): for the recorder and the learner, which must miss
        no step across a restart."""
        if catch_up and not self.history:
            raise ValueError("this stream's writers keep no history to catch up on")
        if catch_up:
            return self._profile(True, max(self.depth, 2 * self.history), True)
        return self._profile(self.reliable, self.depth, self.latched)


QOS = {
    "sensor": Qos(False, 2, history=CATCH_UP,
                  why="camera frames: the planner wants only the newest (a late one is "
                  "useless), the recorder every one, including those sent while it restarted"),
    "state": Qos(True, 50, history=CATCH_UP,
                 why="robot and world state: small, every sample is used by the recorder, "
                 "which may fall behind while it writes to disk or restarts"),
    "command": Qos(True, 10, history=CATCH_UP,
                   why="actions: the driver acts on the newest only, but must get it; the "
                   "recorder needs every one"),
    "monitor": Qos(True, 5, why="plans and markers for rviz and logs"),
    "data": Qos(True, 200, history=2 * CATCH_UP,
                why="transitions: none may be lost between recorder and learner, a restarted "
                "learner included"),
    "events": Qos(True, 100, latched=True,
                  why="episode events: a node that starts late still sees the trials so far"),
    "weights": Qos(True, 1, latched=True,
                   why="model weights: a planner that starts late gets the latest version"),
    "tf": Qos(True, 100, why="transforms, as tf2's broadcasters send them (reliable, 100)"),
    "tf_static": Qos(True, 1, latched=True,
                     why="fixed transforms, sent once: every late reader gets them (as tf2's "
                     "static broadcaster)"),
}


@dataclass(frozen=True)
class Topic:
    name: str
    type: str  # "package/msg/Type"
    qos: str  # key of QOS
    description: str

    def message_class(self) -> type:
        import importlib

        package, _, name = self.type.split("/")
        return getattr(importlib.import_module(f"{package}.msg"), name)

    def profile(self) -> QoSProfile:
        """The writers' profile, which every reader's request is compatible with."""
        return QOS[self.qos].writer()

    def reader_profile(self, catch_up: bool = False) -> QoSProfile:
        return QOS[self.qos].reader(catch_up)


TOPICS: dict[str, Topic] = {topic.name: topic for topic in (
    Topic("camera/image_raw", "sensor_msgs/msg/Image", "sensor",
          "RGB frames for the model, already at its input size, stamped by the camera clock"),
    Topic("camera/camera_info", "sensor_msgs/msg/CameraInfo", "sensor",
          "the camera's intrinsics for those frames"),
    Topic("camera/depth/image_raw", "sensor_msgs/msg/Image", "sensor",
          "RealSense depth aligned to the colour frames (16UC1, mm), when enable_depth is set"),
    Topic("world/state", "tdmpc_ros/msg/WorldState", "state",
          "the task's object and target; in simulation also the physics state, so that the "
          "simulated camera renders what the simulated arm did"),
    Topic("robot/state", "tdmpc_ros/msg/RobotState", "state",
          "end-effector pose, gripper, joints, ready / stopped / error"),
    Topic("robot/action", "tdmpc_ros/msg/ActionCommand", "command",
          "the action to execute, from the planner"),
    Topic("robot/emergency_stop", "std_msgs/msg/Bool", "command",
          "true stops the arm at once (also a service, robot/emergency_stop)"),
    Topic("planner/plan", "tdmpc_ros/msg/LatentPlan", "monitor",
          "each plan with its uncertainty, for monitoring and analysis"),
    Topic("planner/plan_markers", "visualization_msgs/msg/MarkerArray", "monitor",
          "the planned end-effector path coloured by uncertainty, for rviz"),
    Topic("replay/transitions", "tdmpc_ros/msg/Transition", "data",
          "every executed step, once, for the learner's online buffer"),
    Topic("trial/events", "tdmpc_ros/msg/EpisodeEvent", "events",
          "episode start and end, with return, success and why it ended"),
    Topic("trial/operator", "tdmpc_ros/msg/OperatorCommand", "command",
          "the operator's success / failure marks, pause, resume and abort"),
    Topic("learner/weights", "tdmpc_ros/msg/ModelWeights", "weights",
          "new model weights (safetensors, checked by sha256 before use)"),
    Topic("joint_states", "sensor_msgs/msg/JointState", "monitor",
          "the arm's joint angles (joint1..joint6), for a robot_state_publisher with the "
          "real xArm's URDF (xarm_description)"),
    Topic("/tf", "tf2_msgs/msg/TFMessage", "tf",
          "the arm's links from the base (link_base) to the tool centre point (link_tcp), "
          "stamped as robot/state; global, as tf2 expects"),
    Topic("/tf_static", "tf2_msgs/msg/TFMessage", "tf_static",
          "fixed frames: the camera's optical frame on link_base (simulated camera)"),
    Topic("/robot_description", "std_msgs/msg/String", "tf_static",
          "the simulated arm's URDF (urdf/tdmpc_xarm_sim.urdf), for rviz's RobotModel; a lab's "
          "robot_state_publisher with the xArm's URDF sends it for the real arm"),
    Topic("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "monitor",
          "each node's health, for rqt_robot_monitor and the launcher's summary"),
)}


def topic(name: str) -> Topic:
    """The topic of that name; a KeyError lists the known ones."""
    try:
        return TOPICS[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {sorted(TOPICS)}") from None


@dataclass(frozen=True)
class NodeSpec:
    name: str  # the ROS node name
    executable: str  # installed in lib/tdmpc_ros/ for `ros2 run` and launch_ros
    module: str  # python -m <module> starts it without launch_ros
    parameters: str  # its YAML file in config/
    description: str
    required: bool = False  # when it exits, the whole graph stops (it ends the run)
    respawn: bool = False  # when it dies, it is started again (it resumes where it was)
    subscribes: tuple[str, ...] = ()  # topics it may read (some only in some set-ups)
    publishes: tuple[str, ...] = ()  # topics it may write
    services: tuple[str, ...] = ()  # services it offers


# Respawn (both launchers): the first restart after RESPAWN_DELAY_S; the project's launcher
# doubles the delay at each restart in a row, up to RESPAWN_MAX_DELAY_S (launch_ros keeps it
# fixed). A node that needs more than RESPAWN_MAX restarts (within RESPAWN_WINDOW_S, for the
# project's launcher) stops the graph, with the reason.
RESPAWN_DELAY_S = 1.0
RESPAWN_MAX_DELAY_S = 8.0
RESPAWN_MAX = 5
RESPAWN_WINDOW_S = 300.0
CONFIG_ERROR_EXIT = 2  # a node's exit code for a wrong parameter: restarting cannot help


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("camera", "camera_node", "tdmpc_ros.nodes.camera", "camera.yaml",
             "publishes the model's camera frames from the simulator, a RealSense or a USB "
             "camera",
             subscribes=("world/state",),  # the simulated camera renders the simulated world
             publishes=("camera/image_raw", "camera/camera_info", "camera/depth/image_raw",
                        "/tf_static", "/diagnostics")),
    NodeSpec("robot_driver", "robot_driver_node", "tdmpc_ros.nodes.robot_driver",
             "robot_driver.yaml",
             "moves the arm (MuJoCo, Gazebo or the real xArm) within the workspace and safety "
             "limits",
             subscribes=("robot/action", "trial/events", "robot/emergency_stop"),
             publishes=("robot/state", "world/state", "joint_states", "/tf",
                        "/robot_description",
                        "/diagnostics"),
             services=("robot/emergency_stop",)),
    NodeSpec("planner", "planner_node", "tdmpc_ros.nodes.planner", "planner.yaml",
             "plans each action with the world model and uncertainty-regularised MPPI",
             subscribes=("robot/state", "world/state", "camera/image_raw", "learner/weights"),
             publishes=("robot/action", "planner/plan", "planner/plan_markers",
                        "/diagnostics")),
    NodeSpec("replay_recorder", "replay_recorder_node", "tdmpc_ros.nodes.replay_recorder",
             "replay_recorder.yaml",
             "records every step to the episode store and publishes transitions",
             respawn=True,
             subscribes=("robot/state", "world/state", "camera/image_raw", "robot/action",
                         "trial/events"),
             publishes=("replay/transitions", "/diagnostics")),
    NodeSpec("learner", "learner_node", "tdmpc_ros.nodes.learner", "learner.yaml",
             "finetunes the world model with balanced offline/online sampling, publishes weights",
             respawn=True, subscribes=("replay/transitions",),
             publishes=("learner/weights", "/diagnostics")),
    NodeSpec("trial_supervisor", "trial_supervisor_node", "tdmpc_ros.nodes.trial_supervisor",
             "trial_supervisor.yaml",
             "rewards, success, episode ends, resets, trial count and progress",
             required=True,
             subscribes=("robot/state", "world/state", "robot/action", "planner/plan",
                         "replay/transitions", "trial/operator", "/diagnostics"),
             publishes=("trial/events", "/diagnostics")),
)
# Not launched (it needs the operator's terminal), but part of the graph.
OPERATOR_CONSOLE = NodeSpec("operator_console", "operator_console",
                            "tdmpc_ros.nodes.operator_console", "",
                            "the operator's success / failure marks, pause, resume and abort",
                            subscribes=("trial/events",), publishes=("trial/operator",))


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("backend", "sim", "which robot to drive: the MuJoCo simulator, a Gazebo "
                   "simulation, or the real xArm", ("sim", "gazebo", "real")),
    LaunchArgument("robot_ip", "192.168.1.185", "backend:=real only: the xArm controller's IP "
                   "address (the vendor's default; a direct cable to the control box is best)"),
    LaunchArgument("max_speed_mm_s", "", "backend:=real only: the TCP speed the arm never "
                   "exceeds (mm/s); empty: config/robot_driver.yaml's. Start low (e.g. 50)"),
    LaunchArgument("camera_serial", "", "backend:=real only: the RealSense camera's serial "
                   "number (empty: the only one connected)"),
    LaunchArgument("task", "reach", "the task to run trials of", ("reach", "push", "lift")),
    LaunchArgument("variant", "", "backend:=sim only: a task variant of config/variants.yaml "
                   "(or FILE.yaml:NAME) placing cube and target where the offline data never "
                   "had them, to finetune on (empty: the training distribution)"),
    LaunchArgument("input", "state", "what the model sees: state (the object's position, sim "
                   "only) or pixels (the camera and proprioception; the real arm needs it); "
                   "picks the shipped model and the dataset when those are empty",
                   ("state", "pixels")),
    LaunchArgument("checkpoint", "", "the pretrained checkpoint to finetune (empty: the shipped "
                   "model for the task and input, models/<task>-<input>.safetensors)"),
    LaunchArgument("trials", "20", "how many trials (episodes) to run before stopping"),
    LaunchArgument("device", "auto", "where the planner and learner run: auto (CUDA when "
                   "there is a GPU), cpu, cuda or cuda:N"),
    LaunchArgument("namespace", "", "ROS namespace for every node and topic (one per arm)"),
    LaunchArgument("nodes", "", "the nodes to start on this host, comma-separated (empty: all "
                   "of them). Split a graph over hosts, e.g. the learner on a GPU server "
                   "(nodes:=learner) and nodes:=camera,robot_driver,planner,replay_recorder,"
                   "trial_supervisor on the robot PC"),
    LaunchArgument("run_dir", "runs/stack", "where the run's episodes, checkpoints, summary "
                   "and plots go; a restarted stack with the same run_dir carries on"),
    LaunchArgument("dataset", "", "the offline dataset the learner samples half of each batch "
                   "from (empty: data/<task>, as made by `make demo`, or data/<task>-pixels "
                   "with input:=pixels)"),
    LaunchArgument("rviz", "false", "also start rviz2 with config/tdmpc.rviz: the planned path "
                   "coloured by uncertainty, and the model's camera view", ("true", "false")),
    LaunchArgument("use_sim_time", "false", "take time from /clock (Gazebo) instead of the "
                   "wall clock", ("true", "false")),
)


def launch_argument_defaults() -> dict[str, str]:
    return {argument.name: argument.default for argument in LAUNCH_ARGUMENTS}


def check_launch_arguments(values: dict[str, Any]) -> dict[str, str]:
    """Defaults filled in; an unknown name or a value outside its choices raises ValueError."""
    known = launch_argument_defaults()
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown launch arguments {sorted(unknown)}; known: {sorted(known)}")
    merged = {**known, **{name: str(value) for name, value in values.items()}}
    for argument in LAUNCH_ARGUMENTS:
        if argument.choices and merged[argument.name] not in argument.choices:
            raise ValueError(f"{argument.name}:={merged[argument.name]} is not one of "
                             f"{'|'.join(argument.choices)}")
    unknown_nodes = set(selected_nodes(merged)) - {node.name for node in NODES}
    if unknown_nodes:
        raise ValueError(f"nodes:={merged['nodes']} names no node {sorted(unknown_nodes)}; "
                         f"nodes: {','.join(node.name for node in NODES)}")
    if not merged["trials"].isdigit() or int(merged["trials"]) < 1:
        raise ValueError(f"trials:={merged['trials']} must be a positive whole number")
    speed = merged["max_speed_mm_s"]
    if speed and not (speed.replace(".", "", 1).isdigit() and 0 < float(speed) <= 1000):
        raise ValueError(f"max_speed_mm_s:={speed} must be a speed in (0, 1000] mm/s")
    return merged


def selected_nodes(arguments: dict[str, str]) -> tuple[str, ...]:
    """The names of the nodes that ``nodes:=`` starts on this host, in the graph's order."""
    wanted = [name.strip() for name in arguments.get("nodes", "").split(",") if name.strip()]
    if not wanted:
        return tuple(node.name for node in NODES)
    return tuple(dict.fromkeys(wanted))


# The camera source that goes with each robot backend.
CAMERA_SOURCE = {"sim": "sim", "gazebo": "ros_topic", "real": "realsense"}
# How far (s) a camera frame's stamp may be from its robot state's. The simulated camera stamps
# each frame with its state's own stamp (0: exact match only); a real camera has its own clock,
# and at 30 fps its frames come 33 ms apart. No frame that close (the camera stalled): no
# observation, so nothing is planned or recorded from a stale frame.
IMAGE_SKEW_S = {"sim": "0.0", "gazebo": "0.05", "real": "0.05"}


# Parameters that are text whatever they look like: a RealSense serial is all digits, a path may
# be, and both launchers read a value as YAML, which would make it a number the node refuses.
TEXT_PARAMETERS = frozenset({"serial", "robot_ip", "checkpoint", "dataset", "store", "run_dir",
                             "variant"})


def parameter_yaml(name: str, value: str) -> str:
    """A parameter's value as YAML text (``-p name:=<this>``, or for ros2 launch to parse)."""
    if name in TEXT_PARAMETERS or not value:
        return json.dumps(value)  # a double-quoted YAML string: "" for empty, "0123" stays text
    return value


def node_parameters(node: NodeSpec, arguments: dict[str, str]) -> dict[str, str]:
    """The parameters a node takes from the launch arguments, as strings (both launchers pass
    them as ``name:=value`` overrides on top of the node's YAML file)."""
    backend, run_dir = arguments["backend"], arguments["run_dir"]
    store = f"{run_dir}/episodes"
    parameters = {"task": arguments["task"], "use_sim_time": arguments["use_sim_time"]}
    parameters.update({
        "camera": {"source": CAMERA_SOURCE[backend], "serial": arguments["camera_serial"],
                   "variant": arguments["variant"]},
        "robot_driver": {"backend": backend, "robot_ip": arguments["robot_ip"],
                         "variant": arguments["variant"],
                         # a float's text: "50" would be read as an integer and refused
                         **({"xarm_max_speed_mm_s": str(float(arguments["max_speed_mm_s"]))}
                            if arguments["max_speed_mm_s"] else {})},
        "planner": {"checkpoint": arguments["checkpoint"], "device": arguments["device"],
                    "model_input": arguments["input"],
                    "max_image_skew_s": IMAGE_SKEW_S[backend]},
        "replay_recorder": {"backend": backend, "store": store,
                            "max_image_skew_s": IMAGE_SKEW_S[backend]},
        "learner": {"checkpoint": arguments["checkpoint"], "device": arguments["device"],
                    "model_input": arguments["input"],
                    "dataset": arguments["dataset"] or f"data/{arguments['task']}"
                    + ("-pixels" if arguments["input"] == "pixels" else ""),
                    "store": store, "run_dir": run_dir},
        "trial_supervisor": {"trials": arguments["trials"], "backend": backend,
                             "run_dir": run_dir, "variant": arguments["variant"]},
    }[node.name])
    return parameters
