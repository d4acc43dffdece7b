"""The sim-only evaluator over ROS (``nodes/evaluation.py``) with a slow evaluation, as real node
processes: the robot_emulator keeps serving resets and episode goals while an evaluation runs,
a policy asked again is computed once, and the optimizer's ``EvaluatorClient`` gets its answer
through retries shorter than the evaluation.  The slowness is the emulator's test-only
``evaluation_delay_s`` parameter (a real slow evaluator is the pendulum's oracle, tens of seconds)."""
from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from rclpy.action import ActionClient  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from sim2real_bilevel_interfaces.action import RunEpisodes  # noqa: E402
from sim2real_bilevel_interfaces.srv import EvaluatePolicy  # noqa: E402

from sim2real_bilevel.core.evaluation import oracle_evaluator  # noqa: E402
from sim2real_bilevel.nodes.evaluation import EvaluatorClient  # noqa: E402
from sim2real_bilevel.nodes.runtime import load_problem  # noqa: E402
from test_nodes import PROBLEM, _policy, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros

COMPUTING = 'evaluate: computing policy version'
JOINED = 'is being evaluated: this request waits for that evaluation'
PHI = [0.3, -0.2, 0.1]


def expected(phi) -> dict:
    return oracle_evaluator(load_problem(PROBLEM))(np.asarray(phi, dtype=np.float64))


def test_the_emulator_serves_resets_and_episodes_while_an_evaluation_runs_and_computes_a_policy_once(ros):
    delay = 10.0
    emulator = ros.start('robot_emulator', problem=PROBLEM, evaluation_delay_s=delay)
    evaluate = ros.node.create_client(EvaluatePolicy, '/robot_emulator/evaluate')
    reset = ros.node.create_client(Trigger, '/robot_emulator/reset')
    episodes = ActionClient(ros.node, RunEpisodes, '/robot_emulator/run_episodes')
    for client in (evaluate, reset):
        ros.spin_until(client.service_is_ready, 60.0, f'service {client.srv_name}')
        ros.settle(client)
    ros.spin_until(episodes.server_is_ready, 60.0, 'run_episodes')
    ros.settle(episodes)

    request = EvaluatePolicy.Request(policy=_policy(1, PHI))
    first = evaluate.call_async(request)
    assert ros.wait_for_log(emulator, f'{COMPUTING} 1', timeout=60.0), emulator.log()[-2000:]
    retry = evaluate.call_async(request)             # what a client's retry sends: the same policy
    assert ros.wait_for_log(emulator, JOINED, timeout=20.0), emulator.log()[-2000:]

    # the evaluation runs (>= delay s): the emulator answers a reset and runs an episode meanwhile
    answer = ros.call(reset, Trigger.Request(), 20.0)
    assert answer.success, answer.message
    response = ros.run_goal(episodes, RunEpisodes.Goal(policy=_policy(2), n_episodes=1), timeout=20.0)
    assert response is not None and response.result.success, response
    assert not first.done() and not retry.done(), 'the evaluation ended before the reset and the episode were served'

    ros.spin_until(lambda: first.done() and retry.done(), delay + 120.0, 'the evaluation')
    values = expected(PHI)
    for future in (first, retry):
        result = future.result()
        assert result.success, result.message
        assert result.normalized_return == pytest.approx(values['normalized_return'], rel=1e-12)
        assert result.real_return == pytest.approx(values['real_return'], rel=1e-12)
    assert emulator.log().count(COMPUTING) == 1

    # asked once more after it ended: the kept answer, no computation
    again = ros.call(evaluate, request, 20.0)
    assert again.success and again.normalized_return == first.result().normalized_return
    assert 'policy version 1 was evaluated before: answered again' in emulator.log()
    assert emulator.log().count(COMPUTING) == 1
    # another policy is computed (the count above can grow)
    other = ros.call(evaluate, EvaluatePolicy.Request(policy=_policy(3, [0.0, 0.5, -0.5])), delay + 120.0)
    assert other.success and other.normalized_return == pytest.approx(
        expected([0.0, 0.5, -0.5])['normalized_return'], rel=1e-12)
    assert emulator.log().count(COMPUTING) == 2
    assert emulator.alive()


def test_the_evaluator_client_gets_a_slow_answer_through_its_retries_computed_once(ros):
    delay = 6.0
    emulator = ros.start('robot_emulator', problem=PROBLEM, evaluation_delay_s=delay)
    client = EvaluatorClient(ros.node, '/robot_emulator/evaluate', lambda phi: _policy(4, phi), lambda: ros.executor,
                             timeout_s=60.0, answer_timeout_s=2.5, retries=5)
    ros.spin_until(client.client.service_is_ready, 60.0, 'service /robot_emulator/evaluate')
    ros.settle(client.client)
    values = client(np.asarray(PHI))
    assert client.failures == 0, emulator.log()[-2000:]
    assert values['normalized_return'] == pytest.approx(expected(PHI)['normalized_return'], rel=1e-12)
    # each try waited 2.5 s < the evaluation: the retries reached the one computation in flight
    log = emulator.log()
    assert log.count(COMPUTING) == 1 and log.count(JOINED) >= 1, log[-2000:]

    # an evaluator that is not there: NaN after timeout_s, and the caller goes on
    absent = EvaluatorClient(ros.node, '/nobody/evaluate', lambda phi: _policy(5, phi), lambda: ros.executor,
                             timeout_s=1.0, answer_timeout_s=300.0, retries=2)
    values = absent(np.asarray(PHI))
    assert math.isnan(values['normalized_return']) and math.isnan(values['real_return'])
    assert absent.failures == 1


def test_the_evaluator_client_waits_for_an_evaluation_that_reports_progress_and_not_for_a_frozen_one(ros):
    """A URDF robot's first evaluation solves its oracle policy (minutes): the client's
    answer_timeout_s is the longest silence, not the longest evaluation.  Here an evaluation of
    10 s against a 4 s timeout and no retry is answered (before progress it was NaN); a frozen
    emulator (SIGSTOP: no answer, no progress) is given up on after those 4 s."""
    from diagnostic_msgs.msg import DiagnosticStatus
    delay, silence = 10.0, 4.0
    emulator = ros.start('robot_emulator', problem=PROBLEM, evaluation_delay_s=delay)
    heard: list = []
    ros.node.create_subscription(DiagnosticStatus, '/robot_emulator/evaluate/progress', heard.append, 10)
    client = EvaluatorClient(ros.node, '/robot_emulator/evaluate', lambda phi: _policy(6, phi), lambda: ros.executor,
                             timeout_s=60.0, answer_timeout_s=silence, retries=0)
    ros.spin_until(client.client.service_is_ready, 60.0, 'service /robot_emulator/evaluate')
    ros.settle(client.client)
    started = time.monotonic()
    values = client(np.asarray(PHI))
    waited = time.monotonic() - started
    assert client.failures == 0, emulator.log()[-2000:]
    assert waited >= delay > silence
    assert values['normalized_return'] == pytest.approx(expected(PHI)['normalized_return'], rel=1e-12)
    assert len(heard) >= 2, heard
    assert all(status.message.startswith('evaluating policy version 6: ') for status in heard), heard[0].message
    assert {value.key for value in heard[-1].values} == {'policy_version', 'elapsed_s', 'evaluations_asked'}
    assert emulator.log().count(COMPUTING) == 1

    os.kill(emulator.process.pid, signal.SIGSTOP)        # frozen: neither an answer nor progress comes
    try:
        started = time.monotonic()
        values = client(np.asarray([0.0, 0.5, -0.5]))
        waited = time.monotonic() - started
    finally:
        os.kill(emulator.process.pid, signal.SIGCONT)
    assert math.isnan(values['normalized_return']) and client.failures == 1
    assert silence <= waited < silence + 20.0, waited


def test_the_emulator_stops_on_the_first_signal_while_an_evaluation_runs(ros):
    emulator = ros.start('robot_emulator', problem=PROBLEM, evaluation_delay_s=600.0)
    evaluate = ros.node.create_client(EvaluatePolicy, '/robot_emulator/evaluate')
    ros.spin_until(evaluate.service_is_ready, 60.0, 'service /robot_emulator/evaluate')
    ros.settle(evaluate)
    evaluate.call_async(EvaluatePolicy.Request(policy=_policy(1, PHI)))
    assert ros.wait_for_log(emulator, f'{COMPUTING} 1', timeout=60.0), emulator.log()[-2000:]
    # SIGINT; NodeProcess.stop escalates to SIGKILL (status -9) after 10 s
    assert emulator.stop() == 0, emulator.log()[-2000:]


def test_the_evaluator_client_asks_again_when_an_answer_is_lost(ros):
    """An answer can be lost (the server sends it before DDS has matched its response writer with
    the client: "failed to send response"); the client asks again within seconds instead of
    waiting its whole answer timeout.  The server here never answers its first request."""
    import time

    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.task import Future

    requests = []

    async def serve(request, response):
        requests.append(time.monotonic())
        if len(requests) == 1:
            await Future()                               # the lost answer: never sent
        response.success, response.normalized_return, response.real_return = True, 0.5, 1.5
        return response
    ros.node.create_service(EvaluatePolicy, '/lossy/evaluate', serve, callback_group=ReentrantCallbackGroup())
    client = EvaluatorClient(ros.node, '/lossy/evaluate', lambda phi: _policy(1, phi), lambda: ros.executor,
                             timeout_s=30.0, answer_timeout_s=120.0, retries=0)
    ros.spin_until(client.client.service_is_ready, 30.0, 'service /lossy/evaluate')
    started = time.monotonic()
    values = client(np.asarray(PHI))
    assert client.failures == 0
    assert values == {'normalized_return': 0.5, 'real_return': 1.5}
    assert len(requests) >= 2
    assert time.monotonic() - started < 60.0            # asked again long before the 120 s answer timeout


def _children(pid: int, module: str = 'sim2real_bilevel.nodes.evaluation') -> list[int]:
    """The live processes whose parent is ``pid`` and whose command line runs ``module``."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            stat = open(f'/proc/{entry}/stat').read()
            command = open(f'/proc/{entry}/cmdline').read().split('\0')
        except OSError:
            continue
        parent = int(stat.rsplit(')', 1)[1].split()[1])
        state = stat.rsplit(')', 1)[1].split()[0]
        if parent == pid and module in command and state != 'Z':
            found.append(int(entry))
    return found


def test_a_child_evaluator_answers_as_this_process_does_and_ends_with_its_pipe():
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.problems import load_problem as load_file
    from sim2real_bilevel.nodes.evaluation import ChildEvaluator
    for name in ('lqr', 'discrete_3s2a'):
        path = str(builtin_config(name))
        problem = load_file(path)
        evaluator = ChildEvaluator(path)
        try:
            for seed in range(2):
                phi = np.random.default_rng(seed).normal(size=problem.phi_size()) * 0.1
                assert evaluator(phi) == oracle_evaluator(problem)(phi)       # the same floats
            pid = evaluator.process.pid
            assert _children(os.getpid()) == [pid]                           # one child, kept
        finally:
            evaluator.close()
        assert _children(os.getpid()) == []
    # a file it cannot load: refused with the child's reason; the child is still there for the next
    evaluator = ChildEvaluator('/nonexistent/problem.yaml')
    try:
        with pytest.raises(RuntimeError, match=r"in the evaluation process: ProblemConfigError: .*nonexistent"):
            evaluator(np.zeros(3))
        process = evaluator.process
        assert process.poll() is None
        process.stdin.close()                   # the parent gone: the child ends with its stdin
        assert process.wait(timeout=30) == 0
    finally:
        evaluator.close()


def test_the_real_time_emulator_evaluates_in_a_child_process_that_ends_with_it(ros):
    """mode: realtime: the pendulum's exact evaluation (its oracle first, tens of seconds) runs in a
    child process, not in the interpreter of the robot's physics timer; SIGINT to the emulator
    alone, mid-evaluation, and the child is gone with it."""
    emulator = ros.start('robot_emulator', problem='pendulum', mode='realtime')
    evaluate = ros.node.create_client(EvaluatePolicy, '/robot_emulator/evaluate')
    ros.spin_until(evaluate.service_is_ready, 60.0, 'service /robot_emulator/evaluate')
    ros.settle(evaluate)
    phi = np.zeros(load_problem('pendulum').phi_size())
    evaluate.call_async(EvaluatePolicy.Request(policy=_policy(1, phi)))
    assert ros.wait_for_log(emulator, f'{COMPUTING} 1', timeout=60.0), emulator.log()[-2000:]
    ros.spin_until(lambda: len(_children(emulator.process.pid)) == 1, 30.0, 'the evaluation process')
    child = _children(emulator.process.pid)[0]
    os.kill(emulator.process.pid, signal.SIGINT)            # the emulator only, not its process group
    assert emulator.process.wait(timeout=30) == 0, emulator.log()[-2000:]
    deadline = time.monotonic() + 10.0
    while os.path.exists(f'/proc/{child}') and 'Z' not in open(f'/proc/{child}/stat').read().rsplit(')', 1)[1][:3]:
        assert time.monotonic() < deadline, f'evaluation process {child} outlived the emulator'
        time.sleep(0.05)
