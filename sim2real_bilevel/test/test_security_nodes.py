"""The robot channel on real node processes (issue 5, item 5, without DDS-Security -- the
PyPI Fast DDS has none, docs/security.md): only goals signed with the bridge's policy key run
on the robot, a signed goal cannot be replayed or altered, a request that already ran is
answered from the bridge's kept results, and a node other than the bridge that publishes
robot commands is ignored by the robot and latches the bridge's e-stop."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from rclpy.action import ActionClient  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from sim2real_bilevel_interfaces.action import RunEpisodes  # noqa: E402
from sim2real_bilevel_interfaces.msg import PolicyParameters  # noqa: E402

from sim2real_bilevel.core.problems import load_problem  # noqa: E402
from sim2real_bilevel.nodes import conversions  # noqa: E402
from sim2real_bilevel.core.provenance import generate_key_file, load_key
from sim2real_bilevel.nodes.provenance import sign_goal  # noqa: E402
from sim2real_bilevel.nodes.runtime import LATCHED, ROBOT_STREAM  # noqa: E402
from test_nodes import PACKAGE_ROOT, close_in_process_nodes, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros

PROBLEM = 'discrete_3s2a'


def outcome(ros, client, goal, timeout=30.0):
    """None when the goal is rejected, else its result."""
    response = ros.run_goal(client, goal, timeout)
    return None if response is None else response.result


def test_only_fresh_goals_signed_with_the_key_run_on_the_robot(ros, tmp_path):
    key_file = generate_key_file(tmp_path / 'policy.key')
    key = load_key(key_file)
    other_key = load_key(generate_key_file(tmp_path / 'intruder.key'))
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true', policy_key_file=str(key_file),
                       max_goal_age_s=20.0)
    ros.start('robot_emulator', problem=PROBLEM)
    size = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml').phi_size()
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')

    def goal(version=1, n_episodes=2, request_id='') -> RunEpisodes.Goal:
        return RunEpisodes.Goal(policy=conversions.policy_to_msg(np.linspace(-1, 1, size), version, 0, 0.0),
                                n_episodes=n_episodes, request_id=request_id)

    refusals = {
        'unsigned goal': goal(),
        'does not verify': sign_goal(other_key, goal()),                  # another key
        'in the future': sign_goal(key, goal(), now=time.time() + 60.0),
        's ago': sign_goal(key, goal(), now=time.time() - 60.0),
    }
    altered = sign_goal(key, goal())
    altered.n_episodes = 50                                              # changed after signing
    refusals['does not verify '] = altered
    for count, (reason, request) in enumerate(refusals.items(), start=1):
        assert outcome(ros, episodes, request) is None, reason
        assert ros.wait_for_log(bridge, reason.strip()), f'{reason!r} not in the bridge log:\n{bridge.log()[-2000:]}'
    assert bridge.log().count('rejected run_episodes goal') == len(refusals)

    signed = sign_goal(key, goal(request_id='batch-1'))
    first = outcome(ros, episodes, signed)
    assert first is not None and first.success, first
    assert outcome(ros, episodes, signed) is None                       # the same signature again: a replay
    assert ros.wait_for_log(bridge, 'replayed goal')

    # the same request, signed again (what a restarted optimizer sends): the kept result, robot not run
    again = outcome(ros, episodes, sign_goal(key, goal(request_id='batch-1')))
    assert again is not None and again.success
    assert ros.wait_for_log(bridge, "'batch-1' already ran")
    assert list(again.trajectories.rewards) == list(first.trajectories.rewards)
    assert list(again.trajectories.actions) == list(first.trajectories.actions)
    fresh = outcome(ros, episodes, sign_goal(key, goal(request_id='batch-2')))
    assert fresh.success and list(fresh.trajectories.actions) != list(first.trajectories.actions)  # did run

    # a request id cannot be reused for other episodes, and kept_result_only never runs the robot
    assert outcome(ros, episodes, sign_goal(key, goal(request_id='batch-1', n_episodes=3))) is None
    assert ros.wait_for_log(bridge, 'already ran with another policy or episode count')
    only = goal(request_id='never-sent')
    only.kept_result_only = True
    assert outcome(ros, episodes, sign_goal(key, only)) is None
    assert ros.wait_for_log(bridge, "no kept result for request_id 'never-sent'")

    # with a key the unsigned policy topic is not trusted -- the bridge does not even subscribe to it
    # (it has served goals for a while: its endpoints are long discovered) -- and a far-ahead
    # version published there does not lock goals out
    readers = [info.node_name for info in ros.node.get_subscriptions_info_by_topic('/policy')]
    assert 'hardware_bridge' not in readers, readers
    publisher = ros.node.create_publisher(PolicyParameters, 'policy', LATCHED)
    publisher.publish(conversions.policy_to_msg(np.zeros(size), 900, 0, 0.0))
    later = outcome(ros, episodes, sign_goal(key, goal(request_id='batch-3')))
    assert later is not None and later.success
    assert bridge.alive() and 'Traceback' not in bridge.log()


def test_a_bridge_with_an_unusable_key_file_refuses_to_configure(ros, tmp_path):
    key_file = tmp_path / 'policy.key'
    key_file.write_text('ab' * 32)
    key_file.chmod(0o644)
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true', policy_key_file=str(key_file))
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    assert ros.wait_for_log(bridge, 'lets other users read it', timeout=60.0), bridge.log()[-2000:]
    assert 'configure failed' in bridge.log()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        ros.executor.spin_once(timeout_sec=0.1)
    assert not episodes.server_is_ready()                              # never configured: no action server


def test_a_bridge_that_requires_a_key_refuses_to_configure_without_one(ros):
    """What the hardware launch sets (graph.MODE_PARAMETERS): no key, no configured bridge."""
    assert not os.environ.get('SIM2REAL_POLICY_KEY_FILE')
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true', require_policy_key='true')
    assert ros.wait_for_log(bridge, 'configure failed: no policy key', timeout=60.0), bridge.log()[-2000:]
    assert 'sim2real-bilevel keygen' in bridge.log()
    # its lifecycle state, asked as an operator asks it: `sim2real-bilevel bridge status`, a process of
    # its own.  (A client in this pytest process got no answer to get_state nor get_parameters in 2 of
    # ~10 full CI runs while the bridge sat idle in its executor's wait -- its stacks, dumped on
    # SIGUSR1, showed it: the requests did not reach it from this process's participant.)
    result = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'bridge', 'status', '--timeout', '60'],
                            capture_output=True, text=True, env=ros.environment, timeout=120)
    assert result.returncode == 0 and '/hardware_bridge: unconfigured' in result.stdout, (
        result.stdout, result.stderr, bridge.stacks())
    assert bridge.alive()


def test_a_second_commander_is_ignored_by_the_robot_and_latches_the_bridge_estop(ros):
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true', transport='topics')
    emulator = ros.start('robot_emulator', problem=PROBLEM)        # commanders: [hardware_bridge]
    size = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml').phi_size()
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    reset_robot = ros.node.create_client(Trigger, 'robot_emulator/reset')
    reset_estop = ros.node.create_client(Trigger, 'hardware_bridge/reset_estop')
    states = []
    ros.node.create_subscription(JointState, 'joint_states', states.append, ROBOT_STREAM)
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')

    def goal(version):
        return RunEpisodes.Goal(policy=conversions.policy_to_msg(np.zeros(size), version, 0, 0.0), n_episodes=1)

    before = outcome(ros, episodes, goal(1))                          # the bridge alone commands the robot
    assert before is not None and before.success, (before, emulator.log()[-3000:], bridge.log()[-3000:])

    intruder = ros.node.create_publisher(Float64MultiArray, 'forward_command_controller/commands', ROBOT_STREAM)
    ros.spin_until(lambda: intruder.get_subscription_count() > 0, 30.0, 'the robot\'s command subscription')
    assert ros.call(reset_robot, Trigger.Request(), 30.0).success
    ros.spin_until(lambda: len(states) > 0, 10.0, 'joint_states after the reset')
    seen = len(states)
    # the intruder commands until the robot names it: DDS delivers a new writer's data before its
    # node name reaches the ROS graph, and meanwhile the robot refuses it as an unnamed publisher
    # (its log is throttled to one line a second)
    for _ in range(20):
        intruder.publish(Float64MultiArray(data=[1.0]))
        if ros.wait_for_log(emulator, 'ignored command [1.0]: /test_client also publish(es)', timeout=1.0):
            break
    assert 'ignored command [1.0]: /test_client also publish(es)' in emulator.log(), emulator.log()[-2000:]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        ros.executor.spin_once(timeout_sec=0.05)
    assert len(states) == seen                                         # the robot did not move
    assert ros.wait_for_log(bridge, 'E-STOP latched (another node publishes on '
                                     '/forward_command_controller/commands: /test_client')
    assert outcome(ros, episodes, goal(2)) is None                    # refused while latched

    # the intruder leaves; the operator clears the e-stop; the bridge commands the robot again
    ros.node.destroy_publisher(intruder)
    deadline = time.monotonic() + 30.0
    while True:
        assert time.monotonic() < deadline, bridge.log()[-2000:]
        ros.call(reset_estop, Trigger.Request(), 10.0)
        result = outcome(ros, episodes, goal(2))
        if result is not None:
            break
        time.sleep(0.5)                                                # the graph has not seen it leave yet
    assert result.success, result.message
    assert bridge.alive() and emulator.alive()
    assert 'Traceback' not in bridge.log() + emulator.log()


def test_a_request_sent_again_while_it_runs_gets_its_result_without_a_second_run(ros):
    """What a restarted optimizer meets on a real robot, where episodes outlast its restart: the
    robot (emulator) is held with SIGSTOP while the first goal runs."""
    import os
    import signal
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true')
    emulator = ros.start('robot_emulator', problem=PROBLEM)
    size = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml').phi_size()
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    emulator_episodes = ActionClient(ros.node, RunEpisodes, 'robot_emulator/run_episodes')
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    ros.spin_until(emulator_episodes.server_is_ready, 60.0, 'the emulator')
    policy = conversions.policy_to_msg(np.linspace(-1, 1, size), 1, 0, 0.0)

    os.kill(emulator.process.pid, signal.SIGSTOP)
    try:
        first = ros.send_goal(episodes, RunEpisodes.Goal(policy=policy, n_episodes=2, request_id='held'), 30.0)
        assert first.accepted
        again = ros.send_goal(episodes, RunEpisodes.Goal(policy=policy, n_episodes=2, request_id='held',
                                                         kept_result_only=True), 30.0)
        assert again.accepted                                          # it is running: the goal waits for it
        assert ros.wait_for_log(bridge, "run_episodes 'held' is running: this goal waits for its result")
    finally:
        os.kill(emulator.process.pid, signal.SIGCONT)
    results = [handle.get_result_async() for handle in (first, again)]
    ros.spin_until(lambda: all(f.done() for f in results), 30.0, 'both results')
    a, b = (f.result().result for f in results)
    assert a.success and b.success, (a.message, b.message)
    assert list(a.trajectories.actions) == list(b.trajectories.actions)
    assert list(a.trajectories.rewards) == list(b.trajectories.rewards)
    # the emulator ran the episodes once: the next request gets the second batch of its random stream
    problem = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml')
    stream = np.random.default_rng(0)                                  # the emulator's seed
    phi = np.linspace(-1, 1, size)
    expected = [problem.sample_real(phi, 2, stream) for _ in range(2)]
    assert list(a.trajectories.actions) == expected[0].actions.ravel().tolist()
    nxt = ros.send_goal(episodes, RunEpisodes.Goal(policy=policy, n_episodes=2, request_id='next'), 30.0)
    future = nxt.get_result_async()
    ros.spin_until(future.done, 30.0, 'the next result')
    assert list(future.result().result.trajectories.actions) == expected[1].actions.ravel().tolist()
    assert 'Traceback' not in bridge.log() + emulator.log()


@pytest.mark.parametrize('graph, applied', [('named', [[1.0], [0.0]]), ('never named', []), ('intruder', [])])
def test_a_lockstep_command_from_a_writer_the_graph_does_not_name_yet_is_held_until_it_is(ros_env, graph, applied):
    """DDS delivers a writer's data before its node's name reaches the ROS graph, which lists it
    meanwhile as ``_NODE_NAMESPACE_UNKNOWN_/_NODE_NAME_UNKNOWN_``.  The emulator refused such a
    command, and a lockstep bridge, waiting for the answer, aborted (2 of 24 loaded runs of
    test_a_second_commander...).  That moment cannot be provoked over DDS, so the graph's answer
    is scripted here: the emulator node is real (in this process), the publisher names it reads
    are the unknown name for its first reads, then the bridge's, the unknown name for ever, or an
    intruder's.  Held commands are applied in order once the writer is named, refused otherwise."""
    from sim2real_bilevel.nodes import robot_emulator
    from rclpy.executors import SingleThreadedExecutor
    rclpy.init(args=['--ros-args', '-p', f'problem:={PROBLEM}', '-p', 'start_running:=true'],
               domain_id=int(ros_env['ROS_DOMAIN_ID']))
    executor, emulator = SingleThreadedExecutor(), None
    try:
        emulator = robot_emulator.RobotEmulator()
        executor.add_node(emulator)
        reads = []

        def names(fresh=False):
            reads.append(time.monotonic())
            if len(reads) <= 3 or graph == 'never named':
                return ['_NODE_NAMESPACE_UNKNOWN_/_NODE_NAME_UNKNOWN_']
            return ['/ros2cli_intruder'] if graph == 'intruder' else ['/hardware_bridge']
        emulator.command_publisher_names = names
        emulator.command_subscription.get_publisher_count = lambda: 1
        stepped = []
        step = emulator.system.step
        emulator.system.step = lambda command: (stepped.append(list(command)), step(command))[1]
        emulator.command_callback(Float64MultiArray(data=[1.0]))
        emulator.command_callback(Float64MultiArray(data=[0.0]))
        assert stepped == [] and len(emulator.held_commands) == 2
        deadline = time.monotonic() + 10.0
        while emulator.held_commands and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert emulator.held_commands == []
        assert stepped == applied
        assert emulator.refused_commands == (0 if applied else 2)
        if graph == 'never named':
            assert reads[-1] - reads[0] >= robot_emulator.UNNAMED_GRACE_S
    finally:
        close_in_process_nodes(executor, [emulator] if emulator is not None else [])
        rclpy.try_shutdown()
