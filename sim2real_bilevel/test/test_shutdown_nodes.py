"""Every node, in every lifecycle state, stops on the first SIGINT or SIGTERM: real node
processes on DDS, the time from the signal to the process's exit, and whether the bridge's last
word to the robot was a zero command.  ``-s`` prints the figures."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from rcl_interfaces.srv import GetParameters  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from test_nodes import PROBLEM, _change_state, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros

EXIT_WITHIN_S = 5.0
"""ros2 launch's grace between SIGINT and SIGTERM; a node must be gone well before."""
PLAIN_NODES = ('differentiable_simulator', 'inner_trainer', 'sensitivity', 'robot_emulator', 'outer_optimizer')


def _stop(process, signum: int) -> tuple[float, int]:
    """Signal the node (its process only) and wait for it to exit: (seconds, exit status)."""
    started = time.monotonic()
    os.kill(process.process.pid, signum)
    try:
        status = process.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f'{process.name} still running 30 s after {signal.Signals(signum).name}:\n'
                             + process.log()[-3000:]) from None
    return time.monotonic() - started, status


def _report(node: str, state: str, signum: int, seconds: float, status: int, zero: str) -> None:
    print(f'[shutdown] {node:25s} {state:13s} {signal.Signals(signum).name:8s} exit {status:4d} after '
          f'{seconds:5.2f} s  zero command: {zero}')


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_every_plain_node_stops_on_the_first_signal(ros, signum):
    processes = {name: ros.start(name, problem=PROBLEM) for name in PLAIN_NODES}
    for name in PLAIN_NODES:          # each one is up and serving its parameters: it is spinning
        client = ros.node.create_client(GetParameters, f'/{name}/get_parameters')
        ros.spin_until(client.service_is_ready, 60.0, f'{name} up')
    # the optimizer is in its wait for the graph (no bridge): a loop of its own, not the executor's spin
    assert ros.wait_for_log(processes['outer_optimizer'], 'waiting for the graph', timeout=30.0)
    for name, process in processes.items():
        seconds, status = _stop(process, signum)
        _report(name, 'running', signum, seconds, status, 'n/a')
        assert seconds < EXIT_WITHIN_S, (name, seconds, process.log()[-2000:])
        # 130: the optimizer's run was interrupted (results written when there are any)
        assert status == (130 if name == 'outer_optimizer' else 0), (name, status, process.log()[-2000:])
        assert 'Traceback' not in process.log(), process.log()[-3000:]


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
@pytest.mark.parametrize('state', ['unconfigured', 'inactive', 'active'])
def test_the_bridge_stops_on_the_first_signal_in_every_lifecycle_state(ros, state, signum):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import GetState
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM

    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true' if state == 'active' else 'false',
                       transport='topics')
    get_state = ros.node.create_client(GetState, '/hardware_bridge/get_state')
    ros.spin_until(get_state.service_is_ready, 60.0, 'the bridge up')
    if state == 'inactive':
        assert _change_state(ros, Transition.TRANSITION_CONFIGURE)
    expected = {'unconfigured': 'unconfigured', 'inactive': 'inactive', 'active': 'active'}[state]
    ros.spin_until(lambda: ros.call(get_state, GetState.Request()).current_state.label == expected, 30.0,
                   f'the bridge {expected}')
    if state == 'active':             # the command publisher is matched: a zero command would arrive
        ros.spin_until(lambda: ros.node.count_publishers('forward_command_controller/commands') > 0, 30.0,
                       'the command publisher')
    seconds, status = _stop(bridge, signum)
    if state == 'active':
        ros.spin_until(lambda: commands, 10.0, 'the zero command')
        zero = 'yes' if commands[-1] == [0.0] else f'no: {commands[-1]}'
        assert commands[-1] == [0.0], commands
    else:
        zero = 'n/a (no command publisher active)'
    _report('hardware_bridge', state, signum, seconds, status, zero)
    assert seconds < EXIT_WITHIN_S, (seconds, bridge.log()[-2000:])
    assert status == 0, (status, bridge.log()[-2000:])
    assert 'Traceback' not in bridge.log(), bridge.log()[-3000:]
