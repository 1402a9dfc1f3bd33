"""MuJoCo tabletop tasks for an xArm-like arm, and scripted experts for offline data."""
