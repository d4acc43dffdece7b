"""Hardware-bridge safety on the real node processes (tabular problem, batched transport):
the latched e-stop, lifecycle gating and the episode cap.  Each refusal must be visible to
the caller (goal rejected / aborted) and in the bridge's log."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from sim2real_bilevel_interfaces.action import RunEpisodes  # noqa: E402

from sim2real_bilevel.core.problems import load_problem  # noqa: E402
from sim2real_bilevel.nodes import conversions  # noqa: E402
from sim2real_bilevel.nodes.runtime import ROBOT_STREAM  # noqa: E402
from test_nodes import PACKAGE_ROOT, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros

PROBLEM = 'discrete_3s2a'


def goal(size: int, version: int = 1, n_episodes: int = 1) -> RunEpisodes.Goal:
    policy = conversions.policy_to_msg(np.zeros(size), version, 0, 0.0)
    return RunEpisodes.Goal(policy=policy, n_episodes=n_episodes)


def run(ros, client, request, timeout=30.0):
    handle = ros.send_goal(client, request, timeout)
    if not handle.accepted:
        return None
    future = handle.get_result_async()
    ros.spin_until(future.done, timeout, 'the run_episodes result')
    return future.result()


def test_estop_latches_until_reset_and_zeroes_the_command(ros):
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true')
    ros.start('robot_emulator', problem=PROBLEM)
    size = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml').phi_size()
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    estop = ros.node.create_client(Trigger, 'hardware_bridge/estop')
    reset = ros.node.create_client(Trigger, 'hardware_bridge/reset_estop')
    change_state = ros.node.create_client(ChangeState, 'hardware_bridge/change_state')
    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    ros.spin_until(estop.service_is_ready, 30.0, 'the e-stop service')

    assert run(ros, episodes, goal(size)).result.success                        # works before the e-stop
    assert ros.call(estop, Trigger.Request()).success
    ros.spin_until(lambda: [0.0] in commands, 10.0, 'the zero command of the e-stop')
    assert not ros.send_goal(episodes, goal(size, version=1), 30.0).accepted      # latched
    # a lifecycle cycle does not clear it
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
        assert ros.call(change_state, ChangeState.Request(transition=Transition(id=transition))).success
    assert not ros.send_goal(episodes, goal(size, version=1), 30.0).accepted
    assert 'E-STOP latched' in bridge.log()
    # only the explicit reset does
    assert ros.call(reset, Trigger.Request()).message == 'e-stop cleared'
    assert run(ros, episodes, goal(size, version=1)).result.success
    assert bridge.alive()


def test_no_goal_runs_unless_active_and_deactivation_sends_a_zero_command(ros):
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='false')
    ros.start('robot_emulator', problem=PROBLEM)
    size = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml').phi_size()
    change_state = ros.node.create_client(ChangeState, 'hardware_bridge/change_state')
    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    ros.spin_until(change_state.service_is_ready, 60.0, 'the bridge lifecycle service')
    assert ros.call(change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))).success
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(episodes.server_is_ready, 30.0, 'the bridge action server')
    assert not ros.send_goal(episodes, goal(size), 30.0).accepted                 # configured, not active
    assert 'not active' in bridge.log()
    assert ros.call(change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))).success
    assert not ros.send_goal(episodes, goal(size, n_episodes=10 ** 6 + 1), 30.0).accepted   # over max_episodes
    assert run(ros, episodes, goal(size)).result.success
    commands.clear()
    assert ros.call(change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))).success
    ros.spin_until(lambda: [0.0] in commands, 10.0, 'the zero command on deactivate')
    assert not ros.send_goal(episodes, goal(size), 30.0).accepted
    assert bridge.alive()
