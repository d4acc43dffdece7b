"""container: several nodes of the graph in one process, on one SingleThreadedExecutor.

The rclpy counterpart of a component container: ``python -m sim2real_bilevel.nodes.container
differentiable_simulator inner_trainer sensitivity outer_optimizer --ros-args ...`` builds those
nodes, each under its own name with its own parameters (the params file's ``/**/<name>``
sections; ``-p`` overrides apply to every member that declares them), topics, services and
actions, and spins them together.  The launch argument ``containers:=learning[,robot]`` starts
the graph's sides this way (``graph.CONTAINERS``).  Nothing changes for a peer: the members
still talk over DDS, but no message crosses a process, and one executor wakes once for what
would be a wake-up in each of several processes.

With the outer optimizer a member, its loop drives the executor (its waits spin it), so the
other members are served between and during its calls; the inner trainer's and sensitivity's
long solves run in their worker threads as in their own processes.  With the hardware bridge
a member, SIGINT and SIGTERM are handled as in the bridge's own process (its last zero
command goes out before the context goes down).
"""
from __future__ import annotations

import importlib
import sys

from .runtime import run_nodes

MEMBERS = {
    'differentiable_simulator': 'DifferentiableSimulator',
    'inner_trainer': 'InnerTrainer',
    'sensitivity': 'Sensitivity',
    'outer_optimizer': 'OuterOptimizer',
    'hardware_bridge': 'HardwareBridge',
    'robot_emulator': 'RobotEmulator',
}
"""Node module (its executable) -> node class."""


def member_names(argv: list[str]) -> list[str]:
    """The executables named before ``--ros-args``, validated; the outer optimizer last (its
    loop is the body that spins the executor)."""
    from rclpy.utilities import remove_ros_args
    names = remove_ros_args(argv)[1:]
    unknown = [name for name in names if name not in MEMBERS]
    if not names or unknown or len(set(names)) != len(names):
        raise SystemExit(f'container: nodes {names!r}: expected distinct names of {sorted(MEMBERS)}'
                         + (f' (unknown: {unknown})' if unknown else ''))
    return sorted(names, key=lambda name: name == 'outer_optimizer')


def main(args=None) -> int:
    argv = list(sys.argv if args is None else args)
    names = member_names(argv)
    classes = [getattr(importlib.import_module(f'.{name}', __package__), MEMBERS[name]) for name in names]
    body = None
    if names[-1] == 'outer_optimizer':
        def body(nodes, executor):
            return nodes[-1].run(executor)
    return run_nodes(classes, argv, body=body, own_signals='hardware_bridge' in names)


if __name__ == '__main__':
    raise SystemExit(main())
