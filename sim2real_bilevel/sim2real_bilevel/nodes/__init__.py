"""The ROS 2 nodes of the graph, one module per executable, each a thin adapter over core/;
``conversions`` is the one place where messages and numpy/core types meet."""
import os
import signal
import sys

NODES_PACKAGE = __name__


def started_as_node(argv: list[str]) -> bool:
    """Whether a process with this command line (``sys.orig_argv``) is one of the graph's node
    executables: ``python -m sim2real_bilevel.nodes.<module>`` (the pip-only launcher) or an installed
    console script named after a node module (``ros2 launch``, ``ros2 run``)."""
    for i, argument in enumerate(argv[:-1]):
        if argument == '-m':
            return argv[i + 1].startswith(f"{NODES_PACKAGE}.")
        if not argument.startswith('-') and i > 0:
            break                        # a script: its name decides
    scripts = [a for a in argv[1:2] + argv[:1] if a and not a.startswith('-')]
    return any(os.path.basename(a) in NODE_MODULES for a in scripts)


NODE_MODULES = ('differentiable_simulator', 'inner_trainer', 'sensitivity', 'outer_optimizer', 'hardware_bridge',
                'robot_emulator', 'container')
"""The node executables (setup.py's console scripts, ``python -m`` modules)."""


def _exit_quietly(signum, frame):
    os._exit(128 + signum)


# A node process asked to stop while it is still importing (a launch stopping the graph because
# another node failed at start-up, or Ctrl-C early) exits at once with 128 + the signal, instead of
# printing a KeyboardInterrupt traceback from whatever module it was importing into the launch's
# output, where it buried the failing node's own message.  It has built no node and opened nothing:
# there is nothing to clean up.  ``runtime.run_nodes`` installs its own handlers before it builds
# anything, so this one is in force only until then.
if started_as_node(list(getattr(sys, 'orig_argv', sys.argv))) \
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _exit_quietly)
