"""Sub-commands the ROS layer adds to ``sim2real-bilevel`` (see ``sim2real_bilevel/cli.py``).

Each registrar takes the argparse sub-parsers object and adds one command; the heavy
imports (rclpy, mcap, matplotlib) happen only when that command runs.
"""
from __future__ import annotations

from .bridge_operator import add_bridge_command
from .launcher import add_launch_command
from .params_file import add_params_command
from .report import add_report_command

REGISTRARS = [add_launch_command, add_report_command, add_bridge_command, add_params_command]
