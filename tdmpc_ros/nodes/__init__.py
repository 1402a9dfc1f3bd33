"""The ROS 2 nodes: thin wrappers that translate messages, parameters and timing."""
