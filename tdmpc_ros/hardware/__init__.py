"""Real hardware: the xArm and the cameras (RealSense, USB), behind small plain classes."""
