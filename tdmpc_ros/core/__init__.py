"""The pure-PyTorch core: world model, planner, learner, replay and episodes. No ROS here."""
