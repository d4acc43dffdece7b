"""Hostile input to the running graph: the real node processes (tabular problem) get batches
of malformed goals, service requests, topic messages and ``set_parameters`` calls through
rclpy clients.  Each must be refused (goal rejected, service success = false, parameter
result successful = false, message ignored with a logged reason), no node may die, and
every node must still serve a valid request afterwards (nothing already held -- theta, its
version, the latest policy -- is lost or replaced by garbage).  The counts of tried and
refused inputs per category are printed for the closing note."""
from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from sim2real_bilevel_interfaces.action import ComputeSensitivity, RunEpisodes, TrainPolicy  # noqa: E402
from sim2real_bilevel_interfaces.msg import PolicyParameters, SimParameters  # noqa: E402
from sim2real_bilevel_interfaces.srv import SimulateRollouts  # noqa: E402

from sim2real_bilevel.core.problems import load_problem  # noqa: E402
from sim2real_bilevel.nodes import conversions  # noqa: E402
from sim2real_bilevel.nodes.runtime import LATCHED, ROBOT_STREAM  # noqa: E402
from test_nodes import PACKAGE_ROOT, _parameter, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros

PROBLEM = 'discrete_3s2a'
NODES = ('differentiable_simulator', 'inner_trainer', 'sensitivity', 'robot_emulator', 'hardware_bridge')


class Tally:
    """Tried / refused inputs by category."""

    def __init__(self):
        self.tried, self.refused = Counter(), Counter()

    def record(self, category: str, refused: bool, what: str) -> None:
        self.tried[category] += 1
        self.refused[category] += bool(refused)
        assert refused, f'{category}: accepted hostile input {what}'

    def report(self) -> str:
        lines = [f'[hostile nodes] {c}: {self.tried[c]} tried, {self.refused[c]} refused' for c in sorted(self.tried)]
        lines.append(f'[hostile nodes] total: {sum(self.tried.values())} tried, {sum(self.refused.values())} refused')
        return '\n'.join(lines)


def policy(phi, version=1, theta_version=0, grad_norm=0.0, **raw):
    msg = conversions.policy_to_msg(np.asarray(phi, dtype=np.float64), version, theta_version, grad_norm)
    for field, value in raw.items():
        setattr(msg, field, value)
    return msg


def hostile_policies(size: int, version: int, theta_version: int) -> dict:
    """Malformed PolicyParameters that pass the generated setters' type checks."""
    good = np.zeros(size)
    return {
        'nan': policy(np.where(np.arange(size) == 1, math.nan, 0.0), version, theta_version),
        'inf': policy(np.full(size, -math.inf), version, theta_version),
        'huge': policy(np.full(size, 1e200), version, theta_version),
        'short': policy(good[:-1], version, theta_version),
        'long': policy(np.zeros(size + 4), version, theta_version),
        'empty': policy([], version, theta_version),
        'shape mismatch': policy(good, version, theta_version, shape=[size, 2]),
        'unknown kind': policy(good, version, theta_version, kind='mlp'),
        'negative grad norm': policy(good, version, theta_version, grad_norm=-1.0),
        'nan grad norm': policy(good, version, theta_version, grad_norm=math.nan),
    }


def hostile_thetas(problem, version: int) -> dict:
    names, theta0 = problem.theta_names, problem.theta0()
    lower, upper = problem.theta_bounds()
    outside = theta0.copy()
    outside[0] = upper[0] + 5.0
    nan = theta0.copy()
    nan[-1] = math.nan
    return {
        'wrong names': conversions.theta_to_msg(['x'] * 1, [0.0], [-1.0], [1.0], version),
        'reordered names': conversions.theta_to_msg(names[::-1], theta0[::-1], lower[::-1], upper[::-1], version),
        'missing entry': conversions.theta_to_msg(names[:-1], theta0[:-1], lower[:-1], upper[:-1], version),
        'nan value': conversions.theta_to_msg(names, nan, lower, upper, version),
        'outside the problem bounds (message bounds +-inf)': conversions.theta_to_msg(
            names, outside, np.full_like(lower, -np.inf), np.full_like(upper, np.inf), version),
        'huge value': conversions.theta_to_msg(names, np.full_like(theta0, 1e300), np.full_like(lower, -np.inf),
                                               np.full_like(upper, np.inf), version),
        'value outside its own bounds': conversions.theta_to_msg(names, theta0, theta0 + 1.0, theta0 + 2.0, version),
        'far-future version': conversions.theta_to_msg(names, theta0, lower, upper, 2 ** 63),
    }


HOSTILE_PARAMETERS = {
    'differentiable_simulator': [('max_episodes', 0), ('max_episodes', -5), ('max_episodes', 'many'),
                                 ('max_horizon', 10 ** 12), ('max_steps', 1.5), ('max_episodes', True)],
    'inner_trainer': [('inner_method', 'magic'), ('inner_method', 3), ('warm_start', 'yes'), ('warm_start', 1)],
    'sensitivity': [('damping', math.nan), ('damping', math.inf), ('damping', -1.0), ('cg_tol', 0.0),
                    ('cg_maxiter', 0), ('solver', ''), ('simulate_service', ''), ('simulate_timeout_s', 1e300),
                    ('sim_episodes', -1), ('precompute', 'no')],
    'robot_emulator': [('max_episodes', 0), ('max_episodes', 2 ** 62), ('max_episodes', 2.5)],
    'hardware_bridge': [('step_timeout_s', math.nan), ('step_timeout_s', -1.0), ('transport', 'carrier pigeon'),
                        ('autostart', 'maybe')],
}
EVERY_NODE_PARAMETERS = [('problem', 'lqr'), ('seed', 5), ('no_such_parameter', 1.0)]


ABORTED_NOT_REJECTED: list[str] = []      # refused only after acceptance (reported, not an error)


def goal_refused(ros, client, goal, what: str, process) -> bool:
    """True when the goal is rejected and ``process`` logs why (the action protocol carries
    no reason), or accepted but ends without success and with a reason."""
    logged = f'rejected {client._action_name.split("/")[-1]} goal'
    before = process.log().count(logged)
    handle = ros.send_goal(client, goal, 30.0)
    if not handle.accepted:
        return ros.wait_for_log(process, logged, before + 1)
    future = handle.get_result_async()
    ros.spin_until(future.done, 30.0, 'the result of an accepted hostile goal')
    result = future.result().result
    if not result.success:
        ABORTED_NOT_REJECTED.append(f'{client._action_name}: {what} ({result.message})')
    return not result.success and bool(result.message)


def parameter_refused(result) -> bool:
    """SetParametersResult: refused, with a reason."""
    return not result.successful and bool(result.reason)


def test_hostile_inputs_are_refused_and_every_node_survives(ros):
    started = time.monotonic()
    problem = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml')
    size = problem.phi_size()
    extra = {'hardware_bridge': {'autostart': 'true'},
             'robot_emulator': {'commanders': '[hardware_bridge, test_client]'}}   # the test sends commands too
    processes = {name: ros.start(name, problem=PROBLEM, **extra.get(name, {})) for name in NODES}
    tally = Tally()
    simulate = ros.node.create_client(SimulateRollouts, '/differentiable_simulator/simulate')
    train = ActionClient(ros.node, TrainPolicy, 'train_policy')
    sensitivity = ActionClient(ros.node, ComputeSensitivity, 'compute_sensitivity')
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    emulator_episodes = ActionClient(ros.node, RunEpisodes, '/robot_emulator/run_episodes')
    reset = ros.node.create_client(Trigger, '/robot_emulator/reset')
    theta_publisher = ros.node.create_publisher(SimParameters, 'theta', LATCHED)
    policy_publisher = ros.node.create_publisher(PolicyParameters, 'policy', LATCHED)
    theta0 = conversions.theta_to_msg(problem.theta_names, problem.theta0(), *problem.theta_bounds(), 0)
    valid_request = SimulateRollouts.Request(policy=policy(np.zeros(size)), n_episodes=2, horizon=3)

    def valid_simulation() -> bool:
        return ros.call(simulate, valid_request, 60.0).success

    assert valid_simulation()                       # the baseline (also waits for the simulator)

    # --- set_parameters on every node ---------------------------------------------------------------------
    for name in NODES:
        setter = ros.node.create_client(SetParameters, f'/{name}/set_parameters')
        for parameter, value in HOSTILE_PARAMETERS[name] + EVERY_NODE_PARAMETERS:
            result = ros.call(setter, SetParameters.Request(parameters=[_parameter(parameter, value)]), 60.0)
            tally.record('set_parameters', parameter_refused(result.results[0]), f'{name}.{parameter} = {value!r}')

    # --- simulator: SimulateRollouts requests ----------------------------------------------------------
    requests = {f'policy {k}': SimulateRollouts.Request(policy=p, n_episodes=2, horizon=3)
                for k, p in hostile_policies(size, 1, 0).items()}
    requests.update({
        'future theta version': SimulateRollouts.Request(policy=policy(np.zeros(size), 1, 7), n_episodes=2, horizon=3),
        'zero episodes': SimulateRollouts.Request(policy=policy(np.zeros(size)), n_episodes=0, horizon=3),
        'zero horizon': SimulateRollouts.Request(policy=policy(np.zeros(size)), n_episodes=2, horizon=0),
        'too many steps in all': SimulateRollouts.Request(policy=policy(np.zeros(size)), n_episodes=100000,
                                                          horizon=100000),
        'max uint32 episodes': SimulateRollouts.Request(policy=policy(np.zeros(size)), n_episodes=2 ** 32 - 1,
                                                        horizon=1),
    })
    for what, request in requests.items():
        response = ros.call(simulate, request, 30.0)
        tally.record('SimulateRollouts request', not response.success and response.message, what)

    # --- the theta topic (simulator and sensitivity subscribe) -----------------------------------------
    for index, (what, msg) in enumerate(hostile_thetas(problem, 1).items(), start=1):
        theta_publisher.publish(msg)
        ignored = all(ros.wait_for_log(processes[name], 'ignored theta message', index)
                      for name in ('differentiable_simulator', 'sensitivity'))
        tally.record('theta message', ignored, what)
    theta_publisher.publish(theta0)                 # the genuine theta, version 0, latched again
    assert valid_simulation(), 'a hostile theta replaced the simulator\'s theta or its version'

    # --- inner trainer: TrainPolicy goals --------------------------------------------------------------
    goals = {f'theta {k}': TrainPolicy.Goal(theta=msg) for k, msg in hostile_thetas(problem, 0).items()}
    goals.update({f'warm start {k}': TrainPolicy.Goal(theta=theta0, warm_start=p)
                  for k, p in hostile_policies(size, 1, 0).items() if k != 'empty'})
    for what, goal in goals.items():
        refused = goal_refused(ros, train, goal, what, processes['inner_trainer'])
        tally.record('TrainPolicy goal', refused, what)
    trained = ros.send_goal(train, TrainPolicy.Goal(theta=theta0), 30.0)
    assert trained.accepted
    future = trained.get_result_async()
    ros.spin_until(future.done, 30.0, 'the valid training')
    trained = future.result().result
    assert trained.success and trained.policy.theta_version == 0
    phi, policy_version, _ = conversions.policy_from_msg(trained.policy, size)

    # --- sensitivity: ComputeSensitivity goals -------------------------------------------------------
    good_gradient = conversions.vector_to_field(np.ones(size))
    goals = {f'theta {k}': ComputeSensitivity.Goal(theta=msg, policy=trained.policy, real_gradient=good_gradient)
             for k, msg in hostile_thetas(problem, 0).items()}
    goals.update({f'policy {k}': ComputeSensitivity.Goal(theta=theta0, policy=p, real_gradient=good_gradient)
                  for k, p in hostile_policies(size, policy_version, 0).items()})
    goals.update({
        'policy trained on another theta version': ComputeSensitivity.Goal(
            theta=theta0, policy=policy(phi, policy_version, 3), real_gradient=good_gradient),
        'real gradient nan': ComputeSensitivity.Goal(theta=theta0, policy=trained.policy,
                                                     real_gradient=conversions.vector_to_field([math.nan] * size)),
        'real gradient huge': ComputeSensitivity.Goal(theta=theta0, policy=trained.policy,
                                                      real_gradient=conversions.vector_to_field([1e300] * size)),
        'real gradient wrong length': ComputeSensitivity.Goal(theta=theta0, policy=trained.policy,
                                                              real_gradient=conversions.vector_to_field([1.0])),
    })
    for what, goal in goals.items():
        refused = goal_refused(ros, sensitivity, goal, what, processes['sensitivity'])
        tally.record('ComputeSensitivity goal', refused, what)
    valid = ros.send_goal(sensitivity, ComputeSensitivity.Goal(theta=theta0, policy=trained.policy,
                                                               real_gradient=good_gradient), 30.0)
    future = valid.get_result_async()
    ros.spin_until(future.done, 30.0, 'the valid sensitivity')
    assert future.result().result.success

    # --- emulator: RunEpisodes goals, commands, reset -----------------------------------------------------
    emulator_goals = {f'policy {k}': RunEpisodes.Goal(policy=p, n_episodes=1)
                      for k, p in hostile_policies(size, policy_version, 0).items()}
    emulator_goals.update({'zero episodes': RunEpisodes.Goal(policy=trained.policy, n_episodes=0),
                           'max uint32 episodes': RunEpisodes.Goal(policy=trained.policy, n_episodes=2 ** 32 - 1)})
    for what, goal in emulator_goals.items():
        refused = goal_refused(ros, emulator_episodes, goal, what, processes['robot_emulator'])
        tally.record('emulator RunEpisodes goal', refused, what)

    # --- hardware bridge: RunEpisodes goals --------------------------------------------------------------
    policy_publisher.publish(trained.policy)        # what the trainer latched; the bridge knows its version
    bridge_goals = {f'policy {k}': RunEpisodes.Goal(policy=p, n_episodes=1)
                    for k, p in hostile_policies(size, policy_version, 0).items()}
    bridge_goals.update({
        'zero episodes': RunEpisodes.Goal(policy=trained.policy, n_episodes=0),
        'max uint32 episodes': RunEpisodes.Goal(policy=trained.policy, n_episodes=2 ** 32 - 1),
        'stale version': RunEpisodes.Goal(policy=policy(phi, 0, 0), n_episodes=1),
        'far-future version': RunEpisodes.Goal(policy=policy(phi, 2 ** 63, 0), n_episodes=1),
    })
    for what, goal in bridge_goals.items():
        refused = goal_refused(ros, episodes, goal, what, processes['hardware_bridge'])
        tally.record('bridge RunEpisodes goal', refused, what)
    valid = ros.send_goal(episodes, RunEpisodes.Goal(policy=trained.policy, n_episodes=2), 30.0)
    assert valid.accepted
    future = valid.get_result_async()
    ros.spin_until(future.done, 30.0, 'the valid real episodes')
    batch = conversions.trajectories_from_msg(future.result().result.trajectories, problem.n_states,
                                              problem.n_actions)
    assert batch.rewards.shape[0] == 2 and batch.policy_version == policy_version

    # --- emulator: commands (the bridge sees a second commander and latches its e-stop) ------------------
    command_publisher = ros.node.create_publisher(Float64MultiArray, 'forward_command_controller/commands',
                                                  ROBOT_STREAM)
    ros.spin_until(lambda: command_publisher.get_subscription_count() > 0, 30.0, 'the emulator\'s commands')
    assert ros.call(reset, Trigger.Request(), 30.0).success
    commands = [[math.nan], [math.inf], [1e300], [], [0.0, 1.0], [-1.0], [0.5], [float(problem.n_actions)]]
    for index, data in enumerate(commands, start=1):
        command_publisher.publish(Float64MultiArray(data=data))
        tally.record('emulator command', ros.wait_for_log(processes['robot_emulator'], 'ignored command', index),
                     f'command {data}')
    assert ros.wait_for_log(processes['hardware_bridge'], 'another node publishes on', 1)

    # --- every node alive, the held state intact, valid requests still served -------------------------
    dead = [name for name, process in processes.items() if not process.alive()]
    assert not dead, f'nodes died: {dead}\n' + '\n'.join(processes[n].log()[-2000:] for n in dead)
    assert valid_simulation()
    again = ros.send_goal(train, TrainPolicy.Goal(theta=theta0), 30.0)
    assert again.accepted, 'the trainer lost its theta version to a hostile goal'
    for name, process in processes.items():
        assert 'Traceback' not in process.log(), f'{name} raised:\n{process.log()[-3000:]}'
    print(f'\n{tally.report()}\n[hostile nodes] {time.monotonic() - started:.1f} s')
    for line in ABORTED_NOT_REJECTED:
        print(f'[hostile nodes] accepted, then aborted: {line}')
    assert tally.tried == tally.refused


OUTER_OPTIMIZER_PARAMETERS = [('iterations', -1), ('iterations', 'many'), ('step_size', 0.0), ('step_size', math.nan),
                              ('step_size', 1e300), ('real_episodes', 0), ('optimizer', 'sgd'), ('learn', 'none'),
                              ('action_timeout_s', -1.0), ('progress_period_s', math.inf), ('record_bag', False)]


def test_outer_optimizer_refuses_hostile_parameters_while_waiting_for_the_graph(ros, tmp_path):
    """The outer optimizer's only inputs besides action results (checked by conversions)
    are its parameters; it serves them while it waits for the other nodes."""
    outer = ros.start('outer_optimizer', problem=PROBLEM, run_dir=str(tmp_path / 'run'), record_bag='false',
                      server_timeout_s=60.0)
    setter = ros.node.create_client(SetParameters, '/outer_optimizer/set_parameters')
    tally = Tally()
    for parameter, value in OUTER_OPTIMIZER_PARAMETERS + EVERY_NODE_PARAMETERS:
        result = ros.call(setter, SetParameters.Request(parameters=[_parameter(parameter, value)]), 60.0)
        tally.record('outer_optimizer set_parameters', parameter_refused(result.results[0]), f'{parameter} = {value!r}')
    valid = ros.call(setter, SetParameters.Request(parameters=[_parameter('step_size', 0.1)]), 30.0)
    assert valid.results[0].successful, valid.results[0].reason
    assert outer.alive() and 'Traceback' not in outer.log()
    print(f'\n{tally.report()}')
    assert tally.tried == tally.refused


def test_bridge_keeps_its_policy_version_after_a_hostile_policy_message(ros):
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true')
    ros.start('robot_emulator', problem=PROBLEM)
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    publisher = ros.node.create_publisher(PolicyParameters, 'policy', LATCHED)
    ros.spin_until(episodes.server_is_ready, 60.0, 'the bridge')
    size = load_problem(PACKAGE_ROOT / 'config' / f'{PROBLEM}.yaml').phi_size()
    publisher.publish(policy(np.full(size, math.nan), 2 ** 63, 0))         # malformed and from the future
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        ros.executor.spin_once(timeout_sec=0.05)
    handle = ros.send_goal(episodes, RunEpisodes.Goal(policy=policy(np.zeros(size), 1, 0), n_episodes=1), 30.0)
    assert bridge.alive()
    assert handle.accepted, 'the genuine policy version 1 was refused after the hostile message'
