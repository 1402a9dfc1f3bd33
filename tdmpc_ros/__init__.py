"""tdmpc_ros: finetune offline TD-MPC world models on a robot, in ROS 2."""
