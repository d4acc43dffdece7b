"""Multi-joint robots through the node graph: the problem contract's joints and limits, the
by-name mapping and per-joint limits (free of ROS), and a two-joint URDF robot (acrobot) through
real node processes: an episode on the topics in a command order other than the problem's,
per-joint clamps, a missing joint refused by name."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim2real_bilevel.core.problem import JointLimits
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.nodes.joints import (controlled_joints, from_command_order, joint_bounds, parse_joint_limits,
                                           read_joint_state, to_command_order)
from sim2real_bilevel.nodes.safety import CommandFilter
from test_nodes import ros  # noqa: F401 (the fixture: node processes on a private ROS domain)

PACKAGE = Path(__file__).resolve().parents[1]
# the elbow of the shipped acrobot, made a revolute joint with limits (the shoulder keeps none)
ELBOW_LIMITS = '<limit lower="-2.5" upper="2.0" effort="0.02" velocity="15.0"/>'


def acrobot_problem_file(folder: Path, horizon: int = 5) -> Path:
    """A two-joint URDF problem (the acrobot, the elbow limited in its URDF) written to ``folder``."""
    urdf = (PACKAGE / 'urdf' / 'acrobot.urdf').read_text()
    start = urdf.index('<joint name="elbow" type="continuous">')
    elbow = urdf[start:urdf.index('</joint>', start)]
    urdf = urdf.replace(elbow, elbow.replace('type="continuous"', 'type="revolute"')
                        .replace('<dynamics', ELBOW_LIMITS + '\n    <dynamics'))
    (folder / 'acrobot_limited.urdf').write_text(urdf)
    data = yaml.safe_load((PACKAGE / 'config' / 'pendulum_urdf.yaml').read_text())
    data = copy.deepcopy(data)
    data.update(horizon=horizon, robot={'urdf': 'acrobot_limited.urdf', 'joints': ['shoulder', 'elbow']})
    data['inner'] = dict(data['inner'], episodes=2)
    data['evaluation'] = {'episodes': 2, 'seed': 5}
    # hanging down (0 is upright): a real-time robot keeps moving while nobody commands it
    data['initial_state'] = {'position_range': [[math.pi - 0.2, math.pi + 0.2], [-0.2, 0.2]],
                             'velocity_range': [[0, 0], [0, 0]]}
    data['task'] = {'targets': [math.pi, 0.0], 'reward_weights': {'angle': 5.0, 'effort': 0.1}}
    data['real'] = {'damping': [0.02, 0.03], 'coulomb_friction': 0.01, 'motor_gain': 0.8, 'effort_limit': 3.0,
                    'sensor_noise': {'position': 0.001, 'velocity': 0.01}}
    data['simulator'] = {
        'effort_limit': [4.0, 4.0], 'transition_noise_std': [0.002, 0.002, 0.05, 0.05],
        'parameters': {'damping@elbow': {'value': 0.01, 'learn': True, 'bounds': [0.001, 0.5]}},
        'reward_weights': {'angle': {'value': 5.0}, 'effort': {'value': 0.1, 'learn': True, 'bounds': [0.01, 1.0]}}}
    path = folder / 'acrobot_limited.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


# --- the contract --------------------------------------------------------------------------------------
def test_every_kind_says_which_joints_it_controls(tmp_path):
    acrobot = load_problem(acrobot_problem_file(tmp_path))
    shoulder, elbow = acrobot.joints()
    assert shoulder == JointLimits('shoulder')                      # continuous, no <limit>: no limits
    assert (elbow.name, elbow.lower, elbow.upper, elbow.effort, elbow.velocity) == ('elbow', -2.5, 2.0, 0.02, 15.0)
    assert 'name="acrobot"' in acrobot.robot_description()
    assert [j.name for j in load_problem(PACKAGE / 'config' / 'pendulum.yaml').joints()] == ['pendulum_joint']
    # tabular and LQR have no joints (the nodes then use their joints parameter, default [state])
    assert load_problem(PACKAGE / 'config' / 'discrete_3s2a.yaml').joints() is None
    assert load_problem(PACKAGE / 'config' / 'lqr.yaml').joints() is None


# --- names and order -----------------------------------------------------------------------------------------
def test_command_order_is_a_permutation_of_the_problems_joints():
    limits = (JointLimits('shoulder'), JointLimits('elbow'))
    assert controlled_joints([], limits) == (['shoulder', 'elbow'], [0, 1])
    assert controlled_joints(['elbow', 'shoulder'], limits) == (['shoulder', 'elbow'], [1, 0])
    assert to_command_order([1.0, 2.0], [1, 0]) == [2.0, 1.0]
    assert from_command_order(to_command_order([1.0, 2.0], [1, 0]), [1, 0]) == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"lacks the controlled joint\(s\) \['elbow'\]"):
        controlled_joints(['shoulder'], limits)
    with pytest.raises(ValueError, match=r"lacks the controlled joint\(s\) \['elbow'\] and names joint\(s\) "
                                         r"\['wrist'\] the problem does not control"):
        controlled_joints(['shoulder', 'wrist'], limits)
    assert controlled_joints(None, None) == (['state'], [0])       # a problem without joints
    assert controlled_joints(['x0', 'x1'], None) == (['x0', 'x1'], [0, 1])


def test_joint_states_are_read_by_name_in_any_order_with_other_joints():
    position, velocity = read_joint_state(['gripper', 'elbow', 'shoulder'], [9.0, 2.0, 1.0], [-9.0, 0.2, 0.1],
                                          ['shoulder', 'elbow'])
    assert position.tolist() == [1.0, 2.0] and velocity.tolist() == [0.1, 0.2]
    assert read_joint_state(['elbow', 'shoulder'], [2.0, 1.0], [], ['shoulder', 'elbow'])[1].size == 0
    with pytest.raises(ValueError, match=r"lacks the controlled joint\(s\) \['elbow'\] \(it names \['shoulder'\]\)"):
        read_joint_state(['shoulder'], [1.0], [0.0], ['shoulder', 'elbow'])
    with pytest.raises(ValueError, match='2 joints .* 1 position'):
        read_joint_state(['shoulder', 'elbow'], [1.0], [], ['shoulder', 'elbow'])


# --- per-joint limits ----------------------------------------------------------------------------------
def test_the_problems_limits_tighten_the_blanket_ones_and_overrides_replace_them():
    problem_joints = (JointLimits('shoulder'), JointLimits('elbow', effort=0.5, lower=-1.0, upper=4.0, velocity=30))
    blanket = dict(effort_limit=2.0, max_effort_rate=1.0, position_limit=3.2, velocity_limit=20.0)
    bounds = joint_bounds(['shoulder', 'elbow'], problem_joints, **blanket)
    assert bounds.effort.tolist() == [2.0, 0.5] and bounds.velocity.tolist() == [20.0, 20.0]
    assert bounds.lower.tolist() == [-3.2, -1.0] and bounds.upper.tolist() == [3.2, 3.2]
    overrides = parse_joint_limits('elbow.effort=3, shoulder.effort_rate=0.25, elbow.upper=5', ['shoulder', 'elbow'])
    bounds = joint_bounds(['shoulder', 'elbow'], problem_joints, overrides=overrides, **blanket)
    assert bounds.effort.tolist() == [2.0, 3.0] and bounds.effort_rate.tolist() == [0.25, 1.0]
    assert bounds.upper.tolist() == [3.2, 5.0]
    assert bounds.violation([0.0, -1.5], [0.0, 0.0]) == "joint 'elbow' position -1.5 outside [-1, 5]"
    assert bounds.violation([0.0, 4.5], [0.0, -19.0]) is None
    assert bounds.violation([3.3, 0.0], [0.0, 0.0]) == "joint 'shoulder' position 3.3 outside +-3.2"
    assert bounds.violation([0.0, 0.0], [0.0, math.nan]).startswith("joint 'elbow' velocity nan")
    with pytest.raises(ValueError, match=r"position limits \[4, 3.2\] are empty"):
        joint_bounds(['shoulder'], None, overrides={('shoulder', 'lower'): 4.0}, **blanket)


@pytest.mark.parametrize('text, message', [
    ('elbow=1', "'elbow=1': expected 'JOINT.FIELD=VALUE"),
    ('elbow.effort', "'elbow.effort': expected 'JOINT.FIELD=VALUE"),
    ('wrist.effort=1', "'wrist' is not one of the joints"),
    ('elbow.torque=1', "field 'torque' is not one of"),
    ('elbow.effort=x', "value 'x' is not a number"),
    ('elbow.upper=inf', "value 'inf' is not finite"),
    ('elbow.effort=0', 'expected a number > 0 for effort'),
    ('elbow.lower=1, elbow.upper=0', 'elbow.lower = 1 > elbow.upper = 0'),
])
def test_bad_joint_limits_are_refused_naming_the_entry(text, message):
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace('.', r'\.')):
        parse_joint_limits(text, ['shoulder', 'elbow'])


def test_the_command_filter_clamps_each_joint_by_its_own_limits():
    command_filter = CommandFilter([2.0, 0.5], [1.0, 0.2], joints=2)
    assert command_filter([3.0, 3.0]).tolist() == [1.0, 0.2]                  # rate-limited from zero
    for _ in range(10):
        command = command_filter([3.0, -3.0])
    assert command.tolist() == [2.0, -0.5]
    assert command_filter.counts()['clamped'] == 22
    with pytest.raises(ValueError, match=r'effort_limit = \[2.0, 0.0\]: expected a number > 0, or 2'):
        CommandFilter([2.0, 0.0], 1.0, joints=2)
    with pytest.raises(ValueError, match='max_effort_rate'):
        CommandFilter(1.0, [1.0, 1.0, 1.0], joints=2)


# --- through real node processes ------------------------------------------------------------------------
def acrobot_goal(problem_file: Path, n_episodes: int = 1):
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel_interfaces.action import RunEpisodes
    problem = load_problem(problem_file)
    phi = problem.policy.init_params(np.random.default_rng(0))
    return RunEpisodes.Goal(policy=conversions.policy_to_msg(phi, 1, 0, 0.0), n_episodes=n_episodes), problem


def command_log(ros):
    from std_msgs.msg import Float64MultiArray
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM
    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    return commands


@pytest.mark.ros
@pytest.mark.parametrize('mode', ['lockstep', 'realtime'])
def test_a_two_joint_robot_runs_episodes_on_the_topics_with_per_joint_limits(ros, tmp_path, mode):
    """The acrobot's emulator and bridge, both commanding in the order [elbow, shoulder] (the
    problem's is [shoulder, elbow]); joint_states lists an extra joint first.  The elbow's effort
    is capped by its URDF limit (0.02), the shoulder's by the joint_limits override (0.04) under
    the blanket effort_limit (0.05): each command slot stays within its own joint's limit."""
    from rclpy.action import ActionClient
    from std_srvs.srv import Trigger
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel_interfaces.action import RunEpisodes
    problem_file = acrobot_problem_file(tmp_path, horizon=20)
    order = '[elbow,shoulder]'
    bridge_parameters = dict(problem=str(problem_file), autostart='true', transport='topics', joints=order,
                             effort_limit='0.05', joint_limits='shoulder.effort=0.04', position_limit='100.0')
    if mode == 'realtime':    # lenient abort limits: a loaded test machine holds nodes off the CPU
        bridge_parameters.update(loop='timer', max_state_age_s='1.0', max_deadline_misses='1000000')
    bridge = ros.start('hardware_bridge', **bridge_parameters)
    emulator = ros.start('robot_emulator', problem=str(problem_file), joints=order, mode=mode,
                         state_joints='[camera_pan,shoulder,elbow]')
    joint_states = []
    from sensor_msgs.msg import JointState
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM, SENSOR
    ros.node.create_subscription(JointState, 'joint_states', joint_states.append,
                                 SENSOR if mode == 'realtime' else ROBOT_STREAM)
    commands = command_log(ros)
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    ros.spin_until(ros.node.create_client(Trigger, 'robot_emulator/reset').service_is_ready, 60.0, 'the emulator')
    goal, problem = acrobot_goal(problem_file)
    response = ros.run_goal(episodes, goal, timeout=120.0)
    assert response.result.success, response.result.message
    batch = conversions.trajectories_from_msg(response.result.trajectories)
    assert batch.states.shape == (1, problem.horizon + 1, 4) and batch.actions.shape == (1, problem.horizon, 2)
    # the controller's actions are in the problem's order: shoulder, elbow
    assert np.abs(batch.actions[0, :, 0]).max() <= 0.04 + 1e-12 and np.abs(batch.actions[0, :, 1]).max() <= 0.02 + 1e-12
    assert np.abs(batch.actions[0, :, 0]).max() > 0.02          # the shoulder is not held to the elbow's limit
    assert "'clamped': 0," not in response.result.message, response.result.message
    ros.spin_until(lambda: len(commands) >= problem.horizon + 1 and commands[-1] == [0.0, 0.0], 10.0,
                   "the episode's commands and the zero command")
    sent = np.array(commands[:-1])
    assert sent.shape[1] == 2
    # on the wire, in the controller's order [elbow, shoulder]: the episode's commands, swapped
    assert sent[-problem.horizon:] == pytest.approx(batch.actions[0][:, ::-1])
    # the robot's joint_states: the names it was given, in that order, the extra joint at 0
    assert joint_states and all(list(m.name) == ['camera_pan', 'shoulder', 'elbow'] for m in joint_states)
    assert all(m.position[0] == 0.0 for m in joint_states)
    # the states the bridge recorded are the robot's, read by name (shoulder, elbow): every one
    # (reliable joint_states in lockstep), most of them (best effort in real time)
    published = np.array([[m.position[1], m.position[2]] for m in joint_states])
    seen = [any(np.array_equal(state, row) for row in published) for state in batch.states[0, :, :2]]
    assert all(seen) if mode == 'lockstep' else np.mean(seen) > 0.5, seen
    assert bridge.alive() and emulator.alive()
    assert "limits shoulder: effort +-0.04" in bridge.log() and 'elbow: effort +-0.02' in bridge.log()


@pytest.mark.ros
def test_a_missing_controlled_joint_is_refused_by_name(ros, tmp_path):
    """At configure: a joints parameter without the elbow.  During an episode: a robot whose
    joint_states lack the elbow (the test is the robot) -- the goal fails naming it, zero command."""
    from rclpy.action import ActionClient
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM
    from sim2real_bilevel_interfaces.action import RunEpisodes
    problem_file = acrobot_problem_file(tmp_path)
    misconfigured = ros.start('hardware_bridge', problem=str(problem_file), autostart='true', transport='topics',
                              joints='[shoulder,wrist]')
    assert ros.wait_for_log(misconfigured, "configure failed: joints = ['shoulder', 'wrist']: lacks the controlled "
                                           "joint(s) ['elbow'] and names joint(s) ['wrist']", timeout=60.0), \
        misconfigured.log()
    misconfigured.stop()
    bridge = ros.start('hardware_bridge', problem=str(problem_file), autostart='true', transport='topics',
                       reset_service='fake_robot/reset')
    states = ros.node.create_publisher(JointState, 'joint_states', ROBOT_STREAM)

    def on_reset(request, response):
        states.publish(JointState(name=['shoulder'], position=[0.1], velocity=[0.0]))
        response.success = True
        return response

    ros.node.create_service(Trigger, 'fake_robot/reset', on_reset)
    commands = command_log(ros)
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    ros.spin_until(lambda: states.get_subscription_count() >= 1, 30.0, "the bridge's joint_states subscription")
    goal, _ = acrobot_goal(problem_file)
    response = ros.run_goal(episodes, goal, timeout=120.0)
    assert not response.result.success
    assert "joint_states lacks the controlled joint(s) ['elbow'] (it names ['shoulder'])" in response.result.message, \
        response.result.message
    assert 'zero command sent' in response.result.message
    ros.spin_until(lambda: commands == [[0.0, 0.0]], 10.0, 'the zero command')      # nothing else was sent
    assert bridge.alive()
