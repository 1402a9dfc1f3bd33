"""tdmpc_ros: finetune offline TD-MPC world models on a robot, in ROS 2.

The package is split over two directories once built: the hand-written modules in the source
tree and rosidl's generated ``tdmpc_ros.msg`` in the colcon install space. ``extend_path`` lets
either copy find the other, so ``python -m tdmpc_ros...`` from the repository root (where the
source directory comes first on sys.path) still imports the messages.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
