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

from sim2real_bilevel.nodes.runtime import READY_LOG  # noqa: E402
from test_nodes import PROBLEM, ros  # noqa: E402,F401 (ros: the fixture)

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
    for name in PLAIN_NODES:          # each one is built and on its executor (its parameter service
        # appears before its constructor ends: a signal then met a half-built node, seen under load)
        client = ros.node.create_client(GetParameters, f'/{name}/get_parameters')
        ros.spin_until(client.service_is_ready, 60.0, f'{name} up')
        assert ros.wait_for_log(processes[name], f'[{name}]: {READY_LOG}', timeout=60.0), processes[name].log()[-2000:]
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
    from lifecycle_msgs.srv import ChangeState, GetState
    from diagnostic_msgs.msg import DiagnosticArray
    from sim2real_bilevel.nodes.runtime import EVENTS, ROBOT_STREAM

    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    readers = []

    def diagnostics_callback(msg):
        for status in msg.status:
            readers.extend(int(v.value) for v in status.values if v.key == 'command_readers')
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics_callback, EVENTS)
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true' if state == 'active' else 'false',
                       transport='topics')
    get_state = ros.node.create_client(GetState, '/hardware_bridge/get_state')
    ros.spin_until(get_state.service_is_ready, 60.0, 'the bridge up')
    # the state is confirmed from the bridge's own log: a service answer can be lost before DDS
    # has matched its response writer with this client (seen under load)
    if state == 'inactive':
        change = ros.node.create_client(ChangeState, '/hardware_bridge/change_state')
        ros.spin_until(change.service_is_ready, 30.0, 'the change_state service')
        for _ in range(12):           # a request sent again to a configured bridge is refused, harmlessly
            change.call_async(ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
            if ros.wait_for_log(bridge, 'configured:', timeout=5.0):
                break
        assert 'configured:' in bridge.log(), bridge.log()[-2000:]
    if state == 'active':
        assert ros.wait_for_log(bridge, 'active: policies may now be deployed', timeout=60.0), bridge.log()[-2000:]
        # the bridge's command publisher has matched this test's reader (the bridge says so on
        # /diagnostics): a zero command it sends will arrive
        ros.spin_until(lambda: readers and max(readers) >= 1, 30.0, 'the bridge matched with the test reader')
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


@pytest.mark.parametrize('node', ['hardware_bridge', 'sensitivity', 'container'])
def test_a_node_stopped_while_it_imports_exits_quietly(tmp_path, node):
    """A launch stops the whole graph when one node fails at start-up, often while the others still
    import: each must exit at once with 128 + SIGINT and no KeyboardInterrupt traceback, which would
    bury the failing node's message.  The signal goes in once torch's library is mapped into the
    process: past the package's own start, well before any node is built."""
    import sys
    from sim2real_bilevel.nodes import NODE_MODULES
    assert node in NODE_MODULES
    members = ['sensitivity', 'outer_optimizer'] if node == 'container' else []
    environment = dict(os.environ, ROS_LOG_DIR=str(tmp_path), ROS_DOMAIN_ID='232')
    process = subprocess.Popen([sys.executable, '-m', f'sim2real_bilevel.nodes.{node}', *members, '--ros-args',
                                '-p', f'problem:={PROBLEM}'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=environment)
    deadline = time.monotonic() + 60.0
    try:
        while 'libtorch' not in open(f'/proc/{process.pid}/maps').read():
            assert process.poll() is None and time.monotonic() < deadline, 'torch never loaded'
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert READY_LOG not in output                       # stopped before it built a node
    assert process.returncode == 128 + signal.SIGINT, (process.returncode, output[-3000:])
    assert 'Traceback' not in output and 'KeyboardInterrupt' not in output, output[-3000:]


def test_only_the_graphs_node_executables_take_the_quiet_start_up_signal_handler():
    import ast
    from pathlib import Path
    from sim2real_bilevel.nodes import NODE_MODULES, started_as_node
    setup = ast.parse((Path(__file__).resolve().parents[1] / 'setup.py').read_text())
    scripts = next(ast.literal_eval(node.value) for node in ast.walk(setup) if isinstance(node, ast.Assign)
                   and any(getattr(target, 'id', None) == 'NODES' for target in node.targets))
    assert sorted(scripts) == sorted(NODE_MODULES)      # setup.py's console scripts, one per node module
    assert started_as_node(['/venv/bin/python', '-m', 'sim2real_bilevel.nodes.hardware_bridge', '--ros-args'])
    assert started_as_node(['python3', '-u', '-m', 'sim2real_bilevel.nodes.container', 'sensitivity'])
    assert started_as_node(['/usr/bin/python3', '/ws/install/lib/sim2real_bilevel/outer_optimizer', '--ros-args'])
    for argv in (['python', '-m', 'pytest', 'test'], ['/venv/bin/python', '/venv/bin/sim2real-bilevel', 'launch'],
                 ['python', '-c', 'import sim2real_bilevel.nodes'], ['python', '-m', 'sim2real_bilevel.cli', 'bridge'],
                 ['python', 'sim2real_bilevel/bench/soak.py']):
        assert not started_as_node(argv), argv
    # this (pytest) process kept Python's own handler
    assert signal.getsignal(signal.SIGINT) is not None
    import sim2real_bilevel.nodes as nodes
    assert signal.getsignal(signal.SIGINT) is not nodes._exit_quietly
