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
from sensor_msgs.msg import JointState  # noqa: E402
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

    assert ros.run_goal(episodes, goal(size)).result.success                        # works before the e-stop
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
    assert ros.run_goal(episodes, goal(size, version=1)).result.success
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
    assert ros.run_goal(episodes, goal(size)).result.success
    commands.clear()
    assert ros.call(change_state, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))).success
    ros.spin_until(lambda: [0.0] in commands, 10.0, 'the zero command on deactivate')
    assert not ros.send_goal(episodes, goal(size), 30.0).accepted
    assert bridge.alive()


# --- continuous robot on the ros2_control topics -------------------------------------------------------
PENDULUM = str(PACKAGE_ROOT / 'config' / 'pendulum.yaml')


def pendulum_goal(n_episodes=1, version=1):
    problem = load_problem(PENDULUM)
    phi = problem.policy.init_params(np.random.default_rng(0))
    return RunEpisodes.Goal(policy=conversions.policy_to_msg(phi, version, 0, 0.0), n_episodes=n_episodes), problem


def start_pendulum(ros, emulator_parameters=None, **bridge_parameters):
    parameters = dict(problem=PENDULUM, autostart='true', transport='topics', position_limit='100.0')
    parameters.update(bridge_parameters)
    bridge = ros.start('hardware_bridge', **parameters)
    emulator = ros.start('robot_emulator', problem=PENDULUM, **(emulator_parameters or {}))
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    reset = ros.node.create_client(Trigger, 'robot_emulator/reset')
    ros.spin_until(reset.service_is_ready, 60.0, 'the emulator')
    return bridge, emulator, episodes, commands


def test_pendulum_episode_on_topics_with_effort_clamp_and_rate_limit(ros):
    bridge, _, episodes, commands = start_pendulum(ros, effort_limit='0.05', max_effort_rate='0.02')
    request, problem = pendulum_goal()
    response = ros.run_goal(episodes, request, timeout=120.0)
    assert response.result.success, response.result.message
    batch = conversions.trajectories_from_msg(response.result.trajectories)
    assert batch.states.shape == (1, problem.horizon + 1, 2) and batch.actions.shape == (1, problem.horizon, 1)
    assert np.abs(batch.actions).max() <= 0.05 + 1e-12
    assert np.abs(np.diff(batch.actions[0, :, 0], prepend=0.0)).max() <= 0.02 + 1e-12
    assert 'clamped' in response.result.message and "'clamped': 0," not in response.result.message
    # the zero command is published before the result, but on another topic: DDS does not order
    # the two for this process, so wait for every command of the episode, then for the zero one
    ros.spin_until(lambda: len(commands) >= problem.horizon + 1, 10.0, "the episode's commands and the zero command")
    ros.spin_until(lambda: commands[-1] == [0.0], 10.0, 'the zero command after the episode')
    sent = np.array([c[0] for c in commands])
    assert np.abs(sent).max() <= 0.05 + 1e-12
    assert bridge.alive()


def test_state_bounds_abort_the_episode_with_a_zero_command(ros):
    bridge, _, episodes, commands = start_pendulum(ros, position_limit='0.0001')
    request, _ = pendulum_goal()
    response = ros.run_goal(episodes, request, timeout=60.0)
    assert not response.result.success and 'state bounds' in response.result.message
    ros.spin_until(lambda: commands and commands[-1] == [0.0], 10.0, 'the zero command')
    assert 'episode discarded' in response.result.message and bridge.alive()


def test_watchdog_zeroes_the_command_and_aborts_when_joint_states_go_stale(ros):
    import os
    import signal
    import threading
    bridge, emulator, episodes, commands = start_pendulum(ros, watchdog_timeout_s='0.3')
    request, _ = pendulum_goal(n_episodes=50)
    # stall the robot (SIGSTOP) once the episodes are under way, resume it later
    def stall():
        while len(commands) < 20:
            threading.Event().wait(0.01)
        os.killpg(emulator.process.pid, signal.SIGSTOP)
        threading.Event().wait(1.5)
        os.killpg(emulator.process.pid, signal.SIGCONT)
    staller = threading.Thread(target=stall, daemon=True)
    staller.start()
    response = ros.run_goal(episodes, request, timeout=120.0)
    staller.join(5.0)
    assert not response.result.success and 'watchdog' in response.result.message, response.result.message
    ros.spin_until(lambda: commands and commands[-1] == [0.0], 10.0, 'the zero command')
    assert bridge.alive() and emulator.alive()


def test_emulator_publishes_clock_and_link_pose_in_lockstep(ros):
    from geometry_msgs.msg import PoseStamped
    from rosgraph_msgs.msg import Clock
    from sim2real_bilevel.core.robots.pendulum import BASE_FRAME, tip_pose
    from sim2real_bilevel.nodes.robot_emulator import pose_stamped

    def link_pose(angle, length, stamp):
        return pose_stamped(*tip_pose(angle, length), BASE_FRAME, stamp)
    ros.start('robot_emulator', problem=PENDULUM, publish_clock='true', commanders='[test_client]')  # the test commands
    clocks, poses, states = [], [], []
    ros.node.create_subscription(Clock, '/clock', lambda m: clocks.append(m.clock.sec * 10**9 + m.clock.nanosec), 10)
    ros.node.create_subscription(PoseStamped, 'robot_emulator/link_pose', poses.append, 10)
    ros.node.create_subscription(JointState, 'joint_states', states.append, ROBOT_STREAM)
    reset = ros.node.create_client(Trigger, 'robot_emulator/reset')
    ros.spin_until(reset.service_is_ready, 60.0, 'the emulator')
    publisher = ros.node.create_publisher(Float64MultiArray, 'forward_command_controller/commands', ROBOT_STREAM)
    ros.spin_until(lambda: publisher.get_subscription_count() > 0, 30.0, 'the command subscription')
    assert ros.call(reset, Trigger.Request()).success
    ros.spin_until(lambda: len(states) >= 1, 10.0, 'joint_states after reset')
    for step in range(5):
        publisher.publish(Float64MultiArray(data=[0.1]))
        ros.spin_until(lambda s=step: len(states) >= s + 2, 10.0, 'joint_states after a command')
    ros.spin_until(lambda: len(clocks) >= 6 and len(poses) >= 6, 10.0, '/clock and link_pose')
    assert np.diff(clocks[-6:]).tolist() == [20_000_000] * 5                  # one 20 ms control period per step
    last = states[-1]
    assert last.header.stamp.sec * 10**9 + last.header.stamp.nanosec == clocks[-1]   # stamped with sim time
    expected = link_pose(last.position[0], 0.5, last.header.stamp).pose
    got = poses[-1].pose
    assert [got.orientation.w, got.orientation.y] == pytest.approx([expected.orientation.w, expected.orientation.y])
    assert got.position.x == pytest.approx(0.5 * np.sin(last.position[0]))


def test_link_pose_quaternion_is_the_rotation_about_the_joint_axis():
    from sim2real_bilevel.core.robots.pendulum import BASE_FRAME, tip_pose
    from sim2real_bilevel.nodes.robot_emulator import pose_stamped
    from transforms3d.quaternions import quat2mat
    from builtin_interfaces.msg import Time

    def link_pose(angle, length, stamp):
        return pose_stamped(*tip_pose(angle, length), BASE_FRAME, stamp)
    pose = link_pose(0.7, 0.5, Time()).pose
    rotation = quat2mat([pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z])
    tip = rotation @ np.array([0.0, 0.0, 0.5])                                  # the upright link, rotated
    assert tip == pytest.approx([pose.position.x, pose.position.y, pose.position.z])


def _fake_pendulum_robot(ros, states_of):
    """The test as a pendulum robot on the topics: ``states_of(q)`` is the list of joint_states
    messages it publishes after its reset (q = 0.1) and after each command (q += 0.001).  A
    bridge on the topics with reset_service fake_robot/reset is started; returns (bridge,
    episodes client, the commands it received)."""
    bridge = ros.start('hardware_bridge', problem=PENDULUM, autostart='true', transport='topics',
                       joints='[pendulum_joint]', reset_service='fake_robot/reset')
    states = ros.node.create_publisher(JointState, 'joint_states', ROBOT_STREAM)
    robot = {'q': 0.1}
    commands = []

    def publish():
        for message in states_of(robot['q']):
            states.publish(message)

    def on_reset(request, response):
        robot['q'] = 0.1
        publish()
        response.success = True
        return response

    def on_command(msg):
        commands.append(list(msg.data))
        robot['q'] += 0.001
        publish()

    ros.node.create_service(Trigger, 'fake_robot/reset', on_reset)
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands', on_command, ROBOT_STREAM)
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    return bridge, episodes, commands


def _ramp_episode(ros, episodes, goal, problem):
    """Runs ``goal``; asserts it succeeded on the fake robot's states (0.1 rising by 0.001 a step)."""
    response = ros.run_goal(episodes, goal, timeout=120.0)
    assert response.result.success, response.result.message
    batch = conversions.trajectories_from_msg(response.result.trajectories)
    assert batch.states[0, :, 0] == pytest.approx(0.1 + 0.001 * np.arange(problem.horizon + 1))


def test_joints_are_mapped_by_name_and_shutdown_sends_a_zero_command(ros):
    """The test is the robot: its joint_states carry an extra joint first and the pendulum's
    joint second; the bridge must read the named joint (the extra one's wild values would
    trip the state bounds) and command it.  SIGINT (shutdown) while active: zero command."""
    bridge, episodes, commands = _fake_pendulum_robot(ros, lambda q: [JointState(
        name=['gripper', 'pendulum_joint'], position=[1e6, q], velocity=[-1e6, 0.0], effort=[0.0, 0.0])])
    _ramp_episode(ros, episodes, *pendulum_goal())
    assert all(len(c) == 1 for c in commands)
    # shutdown while active
    commands.clear()
    bridge.stop()
    ros.spin_until(lambda: commands and commands[-1] == [0.0], 10.0, 'the zero command on shutdown')


def test_another_sources_joint_states_on_the_topic_are_ignored_and_named_when_nothing_else_comes(ros):
    """A second publisher on joint_states (a gripper's broadcaster: it names none of the
    controlled joints) sends before every state of the arm: the episode runs on the arm's states.
    A robot that sends only the gripper's: the episode fails saying what came."""
    arm = {'on': True}

    def states_of(q):
        gripper = JointState(name=['finger_left', 'finger_right'], position=[0.01, 0.01], velocity=[0.0, 0.0])
        return [gripper] + ([JointState(name=['pendulum_joint'], position=[q], velocity=[0.0])] if arm['on'] else [])
    bridge, episodes, _ = _fake_pendulum_robot(ros, states_of)
    goal, problem = pendulum_goal()
    _ramp_episode(ros, episodes, goal, problem)
    assert 'ignored joint_states' not in bridge.log()

    arm['on'] = False
    goal.policy.version += 1
    response = ros.run_goal(episodes, goal, timeout=120.0)
    assert not response.result.success
    assert ("joint_states message(s) named none of the controlled joints ['pendulum_joint'] (the last named "
            "['finger_left', 'finger_right'])") in response.result.message, response.result.message
    assert bridge.alive()


def test_joint_states_without_velocities_abort_a_velocity_limited_episode(ros):
    """A robot whose joint_states carry positions only: the velocity limit cannot be checked, so
    the episode is aborted with the reason and a zero command -- the missing velocity is never
    taken for zero."""
    bridge = ros.start('hardware_bridge', problem=PENDULUM, autostart='true', transport='topics',
                       joints='[pendulum_joint]', reset_service='fake_robot/reset')
    goal, _ = pendulum_goal()
    states = ros.node.create_publisher(JointState, 'joint_states', ROBOT_STREAM)
    commands = []

    def on_reset(request, response):
        states.publish(JointState(name=['pendulum_joint'], position=[0.1]))
        response.success = True
        return response

    ros.node.create_service(Trigger, 'fake_robot/reset', on_reset)
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    response = ros.run_goal(episodes, goal, timeout=120.0)
    assert not response.result.success
    assert 'joint_states without velocities' in response.result.message, response.result.message
    assert 'zero command sent' in response.result.message
    ros.spin_until(lambda: commands == [[0.0]], 10.0, 'the zero command')       # nothing else was sent
    assert bridge.alive()


@pytest.mark.parametrize('effort_limit, warns', [('2.0', True), ('4.0', False)], ids=['below', 'at'])
def test_a_bridge_clamping_below_the_simulators_actuator_range_says_so(ros, effort_limit, warns):
    """The pendulum's simulator saturates commands at 4: a bridge clamping at 2 changes the task the
    policy was trained for (bench/results/pendulum_command_filter), and sim-only batched runs never
    show it, so the bridge warns at configure; at 4 it does not."""
    bridge, _, _, _ = start_pendulum(ros, effort_limit=effort_limit)
    assert ros.wait_for_log(bridge, 'active: policies may now be deployed', timeout=30.0), bridge.log()[-2000:]
    warning = "effort limits below the simulator's actuator range (pendulum_joint 2 < 4)"
    assert (warning in bridge.log()) is warns, bridge.log()[-2000:]


@pytest.mark.parametrize('limits, binds', [(dict(effort_limit='0.05'), True),
                                           (dict(effort_limit='100.0', max_effort_rate='100.0',
                                                 velocity_limit='1000.0'), False)], ids=['tight', 'wide'])
def test_the_batched_transport_says_what_its_unapplied_checks_would_have_changed(ros, limits, binds):
    """The emulator runs batched episodes whole, without the bridge's filter and bounds: the bridge
    replays them through both and says, in the result, the log and /diagnostics, what the topic
    transport (hardware) would have changed; the data stay the emulator's, unfiltered."""
    from diagnostic_msgs.msg import DiagnosticArray
    bridge, _, episodes, _ = start_pendulum(ros, transport='batched', **limits)
    diagnostics = []
    ros.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    request, problem = pendulum_goal(n_episodes=2)
    response = ros.run_goal(episodes, request, timeout=120.0)
    assert response.result.success, response.result.message
    batch = conversions.trajectories_from_msg(response.result.trajectories)
    message = response.result.message
    said = 'Not applied on this transport: the command filter would have changed commands ('
    assert (said in message) is binds, message
    if binds:
        assert np.abs(batch.actions).max() > 0.05                    # the emulator's commands, not clamped
        assert "of 200 commands)" in message and "'clamped': 0," not in message, message
        assert ros.wait_for_log(bridge, 'sim-only episodes ran without the bridge\'s checks (transport batched): '
                                        'the command filter would have changed commands', timeout=10.0)

    def counted():
        values = [kv.value for array in diagnostics for status in array.status for kv in status.values
                  if kv.key == 'unapplied_checks' and 'commands' in kv.value]
        return values[-1] if values else None
    ros.spin_until(counted, 10.0, 'the unapplied checks on /diagnostics')
    assert "'commands': 200" in counted() and ("'clamped': 0," not in counted()) is binds, counted()
    assert bridge.alive()
