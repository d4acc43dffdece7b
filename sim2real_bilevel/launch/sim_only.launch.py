"""The sim-only bi-level loop: simulator, inner trainer, sensitivity, outer optimizer,
hardware bridge (autostarted) and the robot emulator with hidden true parameters.

    ros2 launch sim2real_bilevel sim_only.launch.py problem:=discrete_3s2a [namespace:=run1] \
        [params_file:=...] [seed:=0] [run_dir:=...]

The nodes, their parameter files and overrides come from ``sim2real_bilevel.graph`` -- the
same description ``sim2real-bilevel launch sim_only`` starts without ``ros2 launch``.
"""
from sim2real_bilevel.graph import launch_description


def generate_launch_description():
    return launch_description('sim_only')
