"""Robot stand-ins for sim-only loops (the "physical" robots with hidden parameters).

No rclpy here: the ``robot_emulator`` node wraps these classes.
"""
from .pendulum import (BASE_FRAME, JOINT_NAME, JointStateSample, PendulumEmulator, PendulumParameters,
                       SensorNoise, angle_about_y, pendulum_urdf, tip_pose)

__all__ = ['BASE_FRAME', 'JOINT_NAME', 'JointStateSample', 'PendulumEmulator', 'PendulumParameters',
           'SensorNoise', 'angle_about_y', 'pendulum_urdf', 'tip_pose']
