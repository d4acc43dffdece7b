"""Node processes over real DDS on loopback: parameters set and rejected across processes,
the hardware bridge's lifecycle, malformed goals rejected with a logged reason.

Each test gets its own ROS_DOMAIN_ID and log folder (conftest's ``ros_env``); nodes are started as separate
processes (``python -m sim2real_bilevel.nodes.<name>``), the test talks to them from an
rclpy node in its own context.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from sim2real_bilevel.tools.launcher import die_with_parent  # noqa: E402

pytestmark = pytest.mark.ros

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PROBLEM = 'discrete_3s2a'


class NodeProcess:
    """One node in its own process, output captured to a file."""

    def __init__(self, executable: str, environment: dict, log_dir: Path, parameters: dict | None = None):
        self.name = executable
        self.output = log_dir / f'{executable}.out'
        command = [sys.executable, '-m', f'sim2real_bilevel.nodes.{executable}', '--ros-args',
                   '-r', f'__node:={executable}']
        parameters = dict(parameters or {})
        if 'params_file' in parameters:                  # a file first; the -p values override it
            command += ['--params-file', str(parameters.pop('params_file'))]
        for key, value in parameters.items():
            command += ['-p', f'{key}:={value}']
        with open(self.output, 'w') as stream:
            # a test process killed without its teardown must not leave nodes behind on its
            # ROS_DOMAIN_ID (the next test to claim it would meet them): they die with it
            self.process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=environment,
                                            process_group=0, preexec_fn=die_with_parent)

    def log(self) -> str:
        return self.output.read_text(errors='replace')

    def alive(self) -> bool:
        return self.process.poll() is None

    def stacks(self, timeout: float = 5.0) -> str:
        """The node's Python stacks, dumped by the node on SIGUSR1 (``runtime.run_nodes``), with
        its log's tail: what a test that timed out on this node says about it."""
        if not self.alive():
            return f'{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}'
        before = len(self.log())
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        # the dump is whole once the main thread's outermost frame (the module) is in
        while not ('most recent call first' in self.log()[before:] and ' in <module>' in self.log()[before:]) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        return f'{self.name} (alive):\n{self.log()[-6000:]}'

    def stop(self) -> int:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


class RosSession:
    """Node processes on this test's private domain (conftest's ``ros_env``) and a client
    node in this process (on ``ros_context``)."""

    def __init__(self, environment: dict, context):
        self.environment = environment
        self.log_dir = Path(environment['ROS_LOG_DIR'])
        self.context = context
        self.node = rclpy.create_node('test_client', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.processes: list[NodeProcess] = []
        self.settled: set = set()          # action clients given time to be matched both ways

    def start(self, executable: str, **parameters) -> NodeProcess:
        process = NodeProcess(executable, self.environment, self.log_dir, parameters)
        self.processes.append(process)
        return process

    def spin_until(self, predicate, timeout: float = 20.0, what: str = 'condition') -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f'timed out waiting for {what}' + ''.join(
                f'\n--- {process.name} ---\n{process.log()[-1500:]}' for process in self.processes)
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client, request, timeout: float = 20.0):
        self.spin_until(client.service_is_ready, timeout, f'service {client.srv_name}')
        self.settle(client)
        future = client.call_async(request)
        self.spin_until(future.done, timeout, f'answer of {client.srv_name}')
        return future.result()

    def settle(self, client) -> None:
        """Ready means the server's readers see this client; its answers need the other
        direction matched too, or they are dropped ("failed to send response (timeout)"): give
        discovery a moment before a client's first request."""
        if id(client) in self.settled:
            return
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            self.executor.spin_once(timeout_sec=0.05)
        self.settled.add(id(client))

    def send_goal(self, client: ActionClient, goal, timeout: float = 20.0):
        self.spin_until(client.server_is_ready, timeout, 'action server')
        self.settle(client)
        future = client.send_goal_async(goal)
        self.spin_until(future.done, timeout, 'goal response')
        return future.result()

    def run_goal(self, client: ActionClient, goal, timeout: float = 30.0):
        """Send a goal and wait for its result response; None when the goal is rejected."""
        from sim2real_bilevel.nodes.action_calls import wait_for_result
        handle = self.send_goal(client, goal, timeout)
        if not handle.accepted:
            return None
        try:
            return wait_for_result(self.executor, handle, timeout, 'the goal\'s result')
        except TimeoutError as err:
            raise AssertionError(f'{err}' + ''.join(f'\n--- {process.name} ---\n{process.log()[-1500:]}'
                                                    for process in self.processes)) from None

    def wait_for_log(self, process, text: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Spin until ``text`` appears ``count`` times in a node process's output; False on timeout."""
        deadline = time.monotonic() + timeout
        while process.log().count(text) < count:
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=0.05)
        return True

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.executor.shutdown()
        self.node.destroy_node()


def close_in_process_nodes(executor, nodes) -> None:
    """End nodes a test built in its own process: the context's shutdown leaves their DDS entities
    in the graph, ``destroy_node`` leaves their action servers and clients, and a lifecycle node's
    services live as long as its state machine, while the next test in this process may get the
    same ROS_DOMAIN_ID (seen: a leftover /hardware_bridge there is a second commander, a leftover
    run_episodes server left the next test's goal unanswered, a leftover get_state answered for a
    bridge process still importing, which a signal then killed)."""
    executor.shutdown()
    for node in nodes:
        for waitable in list(node.waitables):
            if hasattr(waitable, 'destroy'):
                waitable.destroy()
        machine = getattr(node, '_state_machine', None)      # rclpy LifecycleNode (private: no public API)
        node.destroy_node()
        if machine is not None:
            machine.destroy_when_not_in_use()


@pytest.fixture
def ros(ros_env, ros_context):
    session = RosSession(ros_env, ros_context)
    yield session
    session.close()


def _parameter(name: str, value) -> ParameterMsg:
    if isinstance(value, bool):
        return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value))
    if isinstance(value, float):
        return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))
    if isinstance(value, int):
        return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value))
    return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))


# --- parameters ------------------------------------------------------------------------------------------
def test_parameters_are_set_and_rejected_with_a_reason_across_processes(ros):
    node = ros.start('sensitivity', problem=PROBLEM)
    setter = ros.node.create_client(SetParameters, '/sensitivity/set_parameters')
    getter = ros.node.create_client(GetParameters, '/sensitivity/get_parameters')

    def set_one(name, value):
        return ros.call(setter, SetParameters.Request(parameters=[_parameter(name, value)]), 60.0).results[0]

    accepted = set_one('damping', 1e-6)
    assert accepted.successful, accepted.reason
    values = ros.call(getter, GetParameters.Request(names=['damping', 'solver'])).values
    assert values[0].double_value == 1e-6

    negative = set_one('damping', -1.0)
    assert not negative.successful and 'damping' in negative.reason
    unknown_solver = set_one('solver', 'gauss_seidel')
    assert not unknown_solver.successful and "expected one of ['dense', 'cg', 'first_order', 'resolve']" in unknown_solver.reason
    wrong_type = set_one('cg_maxiter', 'many')
    assert not wrong_type.successful
    read_only = set_one('problem', 'lqr')
    assert not read_only.successful
    values = ros.call(getter, GetParameters.Request(names=['damping', 'solver'])).values
    assert values[0].double_value == 1e-6 and values[1].string_value == 'dense'
    assert node.alive()
    assert "rejected parameter change: solver = 'gauss_seidel'" in node.log()


def test_the_sensitivity_node_takes_the_first_order_step_for_a_policy_far_from_stationary(ros):
    """outer.first_order_above in the node (the rule ``outer.sensitivity_solver``): a goal whose policy
    ended its inner solve above 100x the pendulum's tolerance gets the first-order sensitivity, logged
    with the reason; below it the file's solve (CG); ``first_order_above`` 0, set live, turns it off."""
    from sim2real_bilevel_interfaces.action import ComputeSensitivity
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel.nodes.runtime import load_problem, outer_config_defaults

    problem = load_problem('pendulum')
    configured = outer_config_defaults(problem)['solver']
    assert configured in ('dense', 'cg')          # the file's implicit-function solve, not the fallback's
    node = ros.start('sensitivity', problem='pendulum')
    client = ActionClient(ros.node, ComputeSensitivity, 'compute_sensitivity')
    setter = ros.node.create_client(SetParameters, '/sensitivity/set_parameters')
    lower, upper = problem.theta_bounds()
    theta = conversions.theta_to_msg(problem.theta_names, problem.theta0(), lower, upper, 0)
    phi = problem.policy.init_params(np.random.default_rng(0))
    gradient = np.linspace(-1.0, 1.0, problem.phi_size())
    tolerance = problem.inner_tolerance()

    def solved_with(grad_norm):
        goal = ComputeSensitivity.Goal(theta=theta, policy=conversions.policy_to_msg(phi, 1, 0, grad_norm),
                                       real_gradient=gradient.tolist())
        result = ros.run_goal(client, goal, 60.0).result
        assert result.success, result.message
        return result.gradient.solver, np.asarray(result.gradient.gradient)

    near_solver, near = solved_with(10 * tolerance)
    far_solver, far = solved_with(1000 * tolerance)
    assert (near_solver, far_solver) == (configured, 'first_order')
    assert not np.allclose(near, far)
    assert ros.wait_for_log(node, f'first-order sensitivity: the inner solve ended at ||F|| {1000 * tolerance:.3g}',
                            timeout=10.0), node.log()[-2000:]
    changed = ros.call(setter, SetParameters.Request(parameters=[_parameter('first_order_above', 0.0)]), 60.0)
    assert changed.results[0].successful, changed.results[0].reason
    off_solver, off = solved_with(1000 * tolerance)
    assert off_solver == configured and np.allclose(off, near)
    assert node.alive()


def test_the_sensitivity_node_re_solves_for_a_policy_far_from_stationary_when_asked(ros, tmp_path):
    """``far_from_stationary: resolve``, set live: a goal whose policy ended its inner solve above
    ``first_order_above`` x the tolerance gets the re-solved sensitivity (the core's, logged with the
    reason and the solves); near stationary the file's implicit-function solve."""
    import yaml
    from sim2real_bilevel_interfaces.action import ComputeSensitivity
    from test_robot_problem import TINY
    from sim2real_bilevel.core.outer import resolve_steps, resolved_outer_gradient
    from sim2real_bilevel.core.problems import load_problem
    from sim2real_bilevel.nodes import conversions

    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(dict(TINY, inner=dict(TINY['inner'], max_iterations=5))))
    problem = load_problem(path)
    node = ros.start('sensitivity', problem=str(path))
    client = ActionClient(ros.node, ComputeSensitivity, 'compute_sensitivity')
    setter = ros.node.create_client(SetParameters, '/sensitivity/set_parameters')
    changed = ros.call(setter, SetParameters.Request(parameters=[_parameter('far_from_stationary', 'resolve'),
                                                                 _parameter('resolve_workers', 1)]), 60.0)
    assert all(result.successful for result in changed.results), changed.results
    lower, upper = problem.theta_bounds()
    theta = problem.theta0()
    phi = problem.policy.init_params(np.random.default_rng(0))
    g = np.linspace(-1.0, 1.0, problem.phi_size())
    tolerance = problem.inner_tolerance()

    def solved_with(grad_norm):
        goal = ComputeSensitivity.Goal(theta=conversions.theta_to_msg(problem.theta_names, theta, lower, upper, 0),
                                       policy=conversions.policy_to_msg(phi, 1, 0, grad_norm), real_gradient=g.tolist())
        result = ros.run_goal(client, goal, 120.0).result
        assert result.success, result.message
        return result.gradient.solver, np.asarray(result.gradient.gradient)

    far_solver, far = solved_with(1000 * tolerance)
    assert far_solver == 'resolve'
    expected, _ = resolved_outer_gradient(problem, phi, theta, g, resolve_steps(problem, 0.05))
    np.testing.assert_allclose(far, expected, rtol=1e-9, atol=1e-12)
    assert ros.wait_for_log(node, f'sensitivity by re-solving: the inner solve ended at ||F|| {1000 * tolerance:.3g}',
                            timeout=10.0), node.log()[-2000:]
    assert ros.wait_for_log(node, f'{2 * theta.size} inner solves continued from it', timeout=10.0), node.log()[-2000:]
    near_solver, _ = solved_with(10 * tolerance)
    assert near_solver in ('dense', 'cg')
    assert node.alive()


def test_the_sensitivity_node_re_solves_the_inner_problem_when_the_solver_is_resolve(ros):
    """solver 'resolve', set live: the node runs the inner solves itself, continued from the goal's
    policy, and answers the core's ``resolved_outer_gradient`` for the goal's (phi, theta, g)."""
    from sim2real_bilevel_interfaces.action import ComputeSensitivity
    from sim2real_bilevel.core.outer import resolve_steps, resolved_outer_gradient
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel.nodes.runtime import load_problem

    problem = load_problem(PROBLEM)
    node = ros.start('sensitivity', problem=PROBLEM)
    client = ActionClient(ros.node, ComputeSensitivity, 'compute_sensitivity')
    setter = ros.node.create_client(SetParameters, '/sensitivity/set_parameters')
    changed = ros.call(setter, SetParameters.Request(parameters=[_parameter('solver', 'resolve'),
                                                                 _parameter('resolve_step', 1e-3)]), 60.0)
    assert all(result.successful for result in changed.results), changed.results
    lower, upper = problem.theta_bounds()
    theta = problem.theta0()
    phi = problem.inner_solve(theta).phi
    g = np.linspace(-1.0, 1.0, problem.phi_size())
    goal = ComputeSensitivity.Goal(theta=conversions.theta_to_msg(problem.theta_names, theta, lower, upper, 0),
                                   policy=conversions.policy_to_msg(phi, 1, 0, 0.0), real_gradient=g.tolist())
    result = ros.run_goal(client, goal, 60.0).result
    assert result.success, result.message
    expected, _ = resolved_outer_gradient(problem, phi, theta, g, resolve_steps(problem, 1e-3))
    assert result.gradient.solver == 'resolve'
    np.testing.assert_allclose(np.asarray(result.gradient.gradient), expected, rtol=1e-9, atol=1e-12)
    assert np.linalg.norm(expected) > 0
    assert ros.wait_for_log(node, f'{2 * theta.size} inner solves continued from it', timeout=10.0), node.log()[-2000:]
    # the optimizer's learn mask: solves along the learned entries only, 0 elsewhere
    learn = np.arange(theta.size) % 2 == 0
    goal.learn = learn.tolist()
    masked = ros.run_goal(client, goal, 60.0).result
    assert masked.success, masked.message
    expected_masked, _ = resolved_outer_gradient(problem, phi, theta, g, resolve_steps(problem, 1e-3), learn)
    np.testing.assert_allclose(np.asarray(masked.gradient.gradient), expected_masked, rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(masked.gradient.gradient)[~learn] == 0.0)
    assert ros.wait_for_log(node, f'{2 * learn.sum()} inner solves continued from it', timeout=10.0), node.log()[-2000:]
    goal.learn = [True]
    refused = ros.send_goal(client, goal, 30.0)
    assert not refused.accepted
    assert ros.wait_for_log(node, f'ComputeSensitivity.learn: 1 values, expected {theta.size}', timeout=10.0), \
        node.log()[-2000:]


# --- the hardware bridge -----------------------------------------------------------------------------------
def _policy(version: int, values=None):
    from sim2real_bilevel.nodes import conversions
    phi = np.zeros(3) if values is None else np.asarray(values, dtype=np.float64)
    return conversions.policy_to_msg(phi, version, 0, 0.0)


def _change_state(ros, transition_id: int) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    client = ros.node.create_client(ChangeState, '/hardware_bridge/change_state')
    return ros.call(client, ChangeState.Request(transition=Transition(id=transition_id)), 60.0).success


def test_bridge_sends_nothing_unless_active_and_zero_on_deactivate(ros):
    from lifecycle_msgs.msg import Transition
    from sim2real_bilevel_interfaces.action import RunEpisodes
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM

    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='false', transport='topics')
    commands = []
    ros.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                 lambda msg: commands.append(list(msg.data)), ROBOT_STREAM)
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')

    assert _change_state(ros, Transition.TRANSITION_CONFIGURE)
    handle = ros.send_goal(episodes, RunEpisodes.Goal(policy=_policy(1), n_episodes=1))
    assert not handle.accepted
    ros.spin_until(lambda: 'not active' in bridge.log(), 10.0, 'the logged reason')

    assert _change_state(ros, Transition.TRANSITION_ACTIVATE)
    assert _change_state(ros, Transition.TRANSITION_DEACTIVATE)
    ros.spin_until(lambda: commands, 10.0, 'the zero command')
    assert commands == [[0.0]]
    handle = ros.send_goal(episodes, RunEpisodes.Goal(policy=_policy(1), n_episodes=1))
    assert not handle.accepted
    ros.spin_until(lambda: bridge.log().count('not active') >= 2, 10.0, 'the second refusal')
    # a round trip through the bridge's executor after the refusal: a command it had sent
    # meanwhile would be here by the time the transition's answer is
    assert _change_state(ros, Transition.TRANSITION_CLEANUP)
    ros.executor.spin_once(timeout_sec=0.1)
    assert commands == [[0.0]], 'a command left the inactive bridge'
    assert bridge.alive()


def test_malformed_goals_are_rejected_with_a_logged_reason_and_no_crash(ros):
    from sim2real_bilevel_interfaces.action import RunEpisodes, TrainPolicy
    from sim2real_bilevel_interfaces.msg import PolicyParameters
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel.nodes.runtime import LATCHED

    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='true')
    emulator = ros.start('robot_emulator', problem=PROBLEM)
    trainer = ros.start('inner_trainer', problem=PROBLEM)
    publisher = ros.node.create_publisher(PolicyParameters, 'policy', LATCHED)
    publisher.publish(_policy(5))
    episodes = ActionClient(ros.node, RunEpisodes, 'run_episodes')
    ros.spin_until(lambda: 'active' in bridge.log() or episodes.server_is_ready(), 60.0, 'the bridge')

    cases = {
        'non-finite': (_policy(5, [0.0, math.nan, 1.0]), 'non-finite'),
        'wrong length': (_policy(5, [0.0, 1.0]), 'expected 3'),
        'stale': (_policy(3), 'stale policy version 3'),
        'future': (_policy(9), 'from the future'),
    }
    newest = []
    ros.node.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda msg: newest.extend(kv.value for status in msg.status for kv in status.values
                                  if kv.key == 'newest_policy_version'), 10)
    deadline = time.monotonic() + 60.0
    while '5' not in newest:       # the bridge reports each policy it receives in its diagnostics
        assert time.monotonic() < deadline, 'the bridge never reported the latched policy version 5'
        publisher.publish(_policy(5))
        for _ in range(5):
            ros.executor.spin_once(timeout_sec=0.05)
    for name, (policy, reason) in cases.items():
        handle = ros.send_goal(episodes, RunEpisodes.Goal(policy=policy, n_episodes=1))
        assert not handle.accepted, name
        ros.spin_until(lambda: reason in bridge.log(), 10.0, f'the logged reason for {name}')
    good = ros.send_goal(episodes, RunEpisodes.Goal(policy=_policy(6), n_episodes=2))
    assert good.accepted
    result_future = good.get_result_async()
    ros.spin_until(result_future.done, 30.0, 'episodes')
    batch = conversions.trajectories_from_msg(result_future.result().result.trajectories)
    assert batch.rewards.shape[0] == 2 and batch.policy_version == 6

    train = ActionClient(ros.node, TrainPolicy, 'train_policy')
    theta = conversions.theta_to_msg(['x'], [0.0], [-1.0], [1.0], 0)
    handle = ros.send_goal(train, TrainPolicy.Goal(theta=theta), 60.0)
    assert not handle.accepted
    ros.spin_until(lambda: 'rejected train_policy goal' in trainer.log(), 10.0, 'the trainer\'s reason')
    assert bridge.alive() and emulator.alive() and trainer.alive()


def test_a_node_dumps_its_threads_stacks_on_sigusr1_and_keeps_running(ros):
    """What docs/hardware.md tells an operator whose node stops answering: kill -USR1 PID."""
    node = ros.start('sensitivity', problem=PROBLEM)
    assert ros.wait_for_log(node, 'ready', timeout=60.0), node.log()[-2000:]
    dump = node.stacks()
    assert 'most recent call first' in dump and 'run_nodes' in dump, dump[-3000:]
    getter = ros.node.create_client(GetParameters, '/sensitivity/get_parameters')
    assert ros.call(getter, GetParameters.Request(names=['solver']), 60.0).values[0].string_value   # still serving
    assert node.alive()


def test_a_long_inner_solve_keeps_the_trainer_answering_and_its_client_waiting(ros, tmp_path):
    """A robot's exact inner solve takes minutes (the iiwa's cold solve ~20 min here).  It ran on
    the trainer's executor, so goals went unanswered meanwhile, and a client that waited longer
    than action_timeout_s gave up and sent it again, in vain: the Franka Panda through one
    process per node (hardware's layout) with action_timeout_s 8 stopped at iteration 0 after 3
    retries.  Now a long solve runs in the trainer's worker with feedback every few seconds, and
    the client counts silence, not work: here a pendulum cold solve longer than action_timeout_s,
    with no retry allowed."""
    import yaml
    from rclpy.action import ActionClient
    from sim2real_bilevel_interfaces.action import TrainPolicy
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.problems import load_problem
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel.nodes.action_calls import ActionCaller
    from sim2real_bilevel.nodes.runtime import BackgroundWork

    document = yaml.safe_load(builtin_config('pendulum').read_text())
    # one solve (cold_restarts 0: a tolerance no solve reaches would triple it) of 240 evaluations:
    # 80 took 5.3-9 s here, too close to 1.5 x timeout = 6 s on an idle machine
    document['inner'].update(warmup_iterations=10, cold_iterations=240, tolerance=1e-12, cold_restarts=0)
    problem_file = tmp_path / 'pendulum_long.yaml'
    problem_file.write_text(yaml.safe_dump(document))
    problem = load_problem(problem_file)
    timeout = 2 * BackgroundWork.HEARTBEAT_S
    trainer = ros.start('inner_trainer', problem=str(problem_file))
    client = ActionClient(ros.node, TrainPolicy, 'train_policy')
    caller = ActionCaller(ros.node, {'goal_timeout_s': 10.0, 'action_timeout_s': timeout, 'action_retries': 0,
                                     'server_timeout_s': 60.0, 'intra_process_actions': False})
    caller.executor = ros.executor
    ros.spin_until(lambda: 'ready' in trainer.log() and client.server_is_ready(), 60.0, 'the trainer')
    ros.settle(client)                 # no retry here: a goal sent before discovery settled is lost
    theta = problem.theta0()
    lower, upper = problem.theta_bounds()
    goal = TrainPolicy.Goal(theta=conversions.theta_to_msg(problem.theta_names, theta, lower, upper, 1))
    started = time.monotonic()
    result = caller.call(client, goal, 'train_policy')
    took = time.monotonic() - started
    assert result.success and result.iterations > 0
    assert took > 1.5 * timeout, f'the solve took {took:.1f} s: too short to show anything'
    assert caller.retries == 0
    assert 'Traceback' not in trainer.log()
