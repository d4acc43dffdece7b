"""The bi-level loop on a real robot: simulator, inner trainer, sensitivity, outer optimizer
and the hardware bridge, which starts unconfigured -- activate it deliberately
(``ros2 lifecycle set /hardware_bridge configure`` then ``activate``); no command leaves it
before.  The robot's ros2_control stack provides ``joint_states`` and
``<controller>/commands``.

    ros2 launch sim2real_bilevel hardware.launch.py problem:=... params_file:=...

Built from ``sim2real_bilevel.graph``, like ``sim2real-bilevel launch hardware``.
"""
from sim2real_bilevel.graph import launch_description


def generate_launch_description():
    return launch_description('hardware')
