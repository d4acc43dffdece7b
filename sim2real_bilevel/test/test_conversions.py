"""Messages <-> numpy/core types (nodes/conversions.py) with the real generated message
classes: round trips (in memory, through CDR serialisation and between two processes over
DDS), rejection of malformed content with a reason naming the field, and a printout of
what filling a 10k-double field costs."""
from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sim2real_bilevel_interfaces.msg import (OuterGradient, OuterMetrics, PolicyParameters,  # noqa: E402
                                             SimParameters, TrajectoryBatch)

from sim2real_bilevel.core.problem import Trajectories  # noqa: E402
from sim2real_bilevel.nodes import conversions  # noqa: E402
from sim2real_bilevel.nodes.conversions import MessageValidationError  # noqa: E402


def through_cdr(msg):
    """The message as a subscriber gets it: serialised and deserialised by the middleware's
    type support (arrays come back as array.array, bool[] as lists)."""
    return deserialize_message(serialize_message(msg), type(msg))


def make_batch(rng, n=3, horizon=4, state_dim=2, action_dim=1, theta_dim=0, discrete=False, source='sim',
               policy_version=7) -> Trajectories:
    if discrete:
        states = rng.integers(0, 3, size=(n, horizon + 1))
        actions = rng.integers(0, 2, size=(n, horizon))
    else:
        states = rng.normal(size=(n, horizon + 1, state_dim))
        actions = rng.normal(size=(n, horizon, action_dim))
    dones = np.zeros((n, horizon), dtype=bool)
    dones[:, -1] = True
    return Trajectories(states=states, actions=actions, rewards=rng.normal(size=(n, horizon)), dones=dones,
                        log_probs=-rng.random(size=(n, horizon)), source=source, policy_version=policy_version,
                        score_theta=rng.normal(size=(n, horizon, theta_dim)) if theta_dim else None)


def assert_same_batch(received: Trajectories, sent: Trajectories) -> None:
    for field in ('states', 'actions', 'rewards', 'dones', 'log_probs'):
        got, want = getattr(received, field), getattr(sent, field)
        assert got.shape == want.shape and got.dtype.kind == want.dtype.kind, field
        np.testing.assert_array_equal(got, want, err_msg=field)
    assert received.source == sent.source and received.policy_version == sent.policy_version
    if sent.score_theta is None:
        assert received.score_theta is None
    else:
        np.testing.assert_array_equal(received.score_theta, sent.score_theta)


# --- round trips ------------------------------------------------------------------------------------------
def test_theta_round_trip_keeps_names_values_infinite_bounds_and_version():
    names = ['L[0][0][1]', 'mass', 'r[2][1]']
    values = np.array([0.5, -1.25, 3.0])
    lower, upper = np.array([-5.0, -np.inf, 0.0]), np.array([5.0, 2.0, np.inf])
    msg = through_cdr(conversions.theta_to_msg(names, values, lower, upper, 12, problem='discrete_3s2a'))
    received, version = conversions.theta_from_msg(msg, names)
    np.testing.assert_array_equal(received, values)
    assert version == 12 and msg.problem == 'discrete_3s2a'
    np.testing.assert_array_equal(np.asarray(msg.lower), lower)
    np.testing.assert_array_equal(np.asarray(msg.upper), upper)
    received[0] = 99.0                    # the returned array is a copy, not the message's buffer
    assert msg.values[0] == 0.5


def test_policy_round_trip():
    phi = np.linspace(-1.0, 1.0, 6)
    msg = through_cdr(conversions.policy_to_msg(phi, version=4, theta_version=3, grad_norm=2.5e-9))
    assert msg.kind == PolicyParameters.KIND_FLAT and list(msg.shape) == [6]
    received, version, theta_version = conversions.policy_from_msg(msg, 6)
    np.testing.assert_array_equal(received, phi)
    assert (version, theta_version, msg.inner_grad_norm) == (4, 3, 2.5e-9)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), horizon=st.integers(1, 5), state_dim=st.integers(1, 3), action_dim=st.integers(1, 2),
       theta_dim=st.integers(0, 3), discrete=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_trajectory_batches_round_trip_through_cdr(n, horizon, state_dim, action_dim, theta_dim, discrete, seed):
    sent = make_batch(np.random.default_rng(seed), n, horizon, state_dim, action_dim, theta_dim, discrete)
    msg = through_cdr(conversions.trajectories_to_msg(sent))
    assert msg.discrete == discrete and (msg.n_episodes, msg.horizon, msg.theta_dim) == (n, horizon, theta_dim)
    assert_same_batch(conversions.trajectories_from_msg(msg), sent)


def test_real_batch_from_transposed_arrays_round_trips():
    """Core code hands over non-contiguous views (e.g. time-major rollouts transposed)."""
    rng = np.random.default_rng(1)
    sent = make_batch(rng, n=5, horizon=6, state_dim=2, source='real')
    sent.states = np.ascontiguousarray(sent.states.transpose(1, 0, 2)).transpose(1, 0, 2)
    sent.rewards = np.asfortranarray(sent.rewards)
    assert not sent.states.flags.c_contiguous and not sent.rewards.flags.c_contiguous
    assert_same_batch(conversions.trajectories_from_msg(through_cdr(conversions.trajectories_to_msg(sent))), sent)


def test_gradient_and_metrics_messages():
    msg = through_cdr(conversions.gradient_to_msg([3.0, -4.0], [1.0, 2.0, 3.0], 5, 6, sensitivity_method='exact',
                                                  solver='dense'))
    np.testing.assert_array_equal(conversions.gradient_from_msg(msg, 2, 3), [3.0, -4.0])
    assert (msg.theta_version, msg.policy_version, msg.grad_norm, msg.solver) == (5, 6, 5.0, 'dense')

    from sim2real_bilevel.core.outer import IterationRecord
    record = IterationRecord(iteration=3, normalized_return=0.5, real_transitions=40, grad_norm=0.1,
                             theta=[0.25, -0.5], wall_time_s=1.5, real_episodes=4)
    metrics = through_cdr(conversions.metrics_to_msg(record, theta_version=3, policy_version=4,
                                                     theta_names=['a', 'b']))
    assert isinstance(metrics, OuterMetrics)
    assert (metrics.iteration, metrics.real_transitions, metrics.real_episodes) == (3, 40, 4)
    assert metrics.outer_grad_norm == 0.1 and math.isnan(metrics.real_return)
    assert list(metrics.theta_names) == ['a', 'b'] and list(metrics.theta) == [0.25, -0.5]


# --- rejections: each names the field, the bad value or length and what was expected ----------------------------
def good_batch_msg(**changes) -> TrajectoryBatch:
    msg = conversions.trajectories_to_msg(make_batch(np.random.default_rng(0), n=3, horizon=4, theta_dim=2))
    for field, value in changes.items():
        setattr(msg, field, value)
    return msg


@pytest.mark.parametrize('changes, reason', [
    (dict(states=[0.0] * 29), r'TrajectoryBatch\.states: 29 values, expected 30 \(n_episodes\*\(horizon\+1\)'
                              r'\*state_dim = 3\*5\*2\)'),
    (dict(actions=[0.0] * 13), r'TrajectoryBatch\.actions: 13 values, expected 12'),
    (dict(rewards=[0.0] * 11 + [math.nan]), r'TrajectoryBatch\.rewards: non-finite value nan at index 11 '
                                            r'\(1 of 12 non-finite\), expected finite numbers'),
    (dict(log_probs=[-math.inf] * 12), r'TrajectoryBatch\.log_probs: non-finite value -inf at index 0'),
    (dict(dones=[False] * 11), r'TrajectoryBatch\.dones: 11 values, expected 12'),
    (dict(source='simulated'), r"TrajectoryBatch\.source = 'simulated', expected one of \['sim', 'real'\]"),
    (dict(source='real'), r"TrajectoryBatch\.theta_dim = 2 in a 'real' batch, expected 0"),
    (dict(theta_dim=3), r'TrajectoryBatch\.score_theta: 24 values, expected 36'),
    (dict(theta_dim=0), r'TrajectoryBatch\.score_theta: 24 values with theta_dim = 0, expected none'),
    (dict(n_episodes=0), r'TrajectoryBatch\.n_episodes = 0, expected at least 1'),
    (dict(discrete=True), r'TrajectoryBatch\.state_dim, action_dim = 2, 1 in a discrete batch, expected 1, 1'),
])
def test_malformed_trajectory_batches_are_rejected_with_the_reason(changes, reason):
    with pytest.raises(MessageValidationError, match=reason):
        conversions.trajectories_from_msg(through_cdr(good_batch_msg(**changes)))


def test_discrete_batches_need_integer_indices():
    msg = conversions.trajectories_to_msg(make_batch(np.random.default_rng(0), n=2, horizon=3, discrete=True))
    actions = list(msg.actions)
    actions[4] = 0.5
    msg.actions = actions
    with pytest.raises(MessageValidationError, match=r'TrajectoryBatch\.actions\[4\] = 0\.5 in a discrete batch, '
                                                     'expected a non-negative integer index'):
        conversions.trajectories_from_msg(msg)


def test_malformed_theta_is_rejected_with_the_reason():
    names = ['a', 'b']

    def theta(**changes):
        msg = conversions.theta_to_msg(names, [0.0, 1.0], [-1.0, -1.0], [1.0, 1.0], 2)
        for field, value in changes.items():
            setattr(msg, field, value)
        return msg

    with pytest.raises(MessageValidationError, match=r"SimParameters\.names: 1 entries \['x'\], expected the 2 "
                                                     r"entries of this problem \['a', 'b'\]"):
        conversions.theta_from_msg(theta(names=['x']), names)
    with pytest.raises(MessageValidationError, match=r'SimParameters\.values: 3 values, expected 2 \(one per name\)'):
        conversions.theta_from_msg(theta(values=[0.0, 0.0, 0.0]), names)
    with pytest.raises(MessageValidationError, match=r'SimParameters\.values: non-finite value inf at index 1'):
        conversions.theta_from_msg(theta(values=[0.0, math.inf]), names)
    with pytest.raises(MessageValidationError, match=r'SimParameters\.lower: non-finite value nan at index 0 .*'
                                                     r'infinite bounds allowed, nan not'):
        conversions.theta_from_msg(theta(lower=[math.nan, -1.0]), names)
    with pytest.raises(MessageValidationError, match=r"SimParameters\.values\['b'\] = 1\.0, expected a value within "
                                                     r'its bounds \[-1\.0, 0\.5\]'):
        conversions.theta_from_msg(theta(upper=[1.0, 0.5]), names)
    with pytest.raises(MessageValidationError, match='duplicate names'):
        conversions.theta_from_msg(theta(names=['a', 'a']))


def test_malformed_policies_are_rejected_with_the_reason():
    def policy(**changes):
        msg = conversions.policy_to_msg(np.zeros(3), 1, 0, 0.0)
        for field, value in changes.items():
            setattr(msg, field, value)
        return msg

    with pytest.raises(MessageValidationError, match=r'PolicyParameters\.values: 2 values, expected 3'):
        conversions.policy_from_msg(policy(values=[0.0, 0.0], shape=[2]), 3)
    with pytest.raises(MessageValidationError, match=r'PolicyParameters\.values: non-finite value nan at index 1'):
        conversions.policy_from_msg(policy(values=[0.0, math.nan, 0.0]), 3)
    with pytest.raises(MessageValidationError, match=r"PolicyParameters\.kind = 'mlp', expected one of \['flat'\]"):
        conversions.policy_from_msg(policy(kind='mlp'), 3)
    with pytest.raises(MessageValidationError, match=r"PolicyParameters\.shape = \[3, 1\] for 3 values, expected "
                                                     r"\[3\] for kind 'flat'"):
        conversions.policy_from_msg(policy(shape=[3, 1]), 3)
    with pytest.raises(MessageValidationError, match=r'PolicyParameters\.inner_grad_norm = -1\.0, expected a finite '
                                                     r'number >= 0'):
        conversions.policy_from_msg(policy(inner_grad_norm=-1.0), 3)


def test_gradient_lengths_are_checked():
    msg = conversions.gradient_to_msg([1.0, 2.0], [0.0], 1, 1)
    with pytest.raises(MessageValidationError, match=r'OuterGradient\.gradient: 2 values, expected 3 '
                                                     r'\(one per theta entry\)'):
        conversions.gradient_from_msg(msg, 3)
    with pytest.raises(MessageValidationError, match=r'OuterGradient\.real_gradient: 1 values, expected 4'):
        conversions.gradient_from_msg(msg, 2, 4)


def test_inconsistent_core_batches_are_refused_on_the_way_out():
    batch = make_batch(np.random.default_rng(0), n=2, horizon=3)
    batch.log_probs = batch.log_probs[:, :2]
    with pytest.raises(MessageValidationError, match=r'Trajectories\.log_probs: shape \(2, 2\), expected \(2, 3\)'):
        conversions.trajectories_to_msg(batch)
    batch = make_batch(np.random.default_rng(0), n=2, horizon=3, source='robot')
    with pytest.raises(MessageValidationError, match=r"Trajectories\.source = 'robot'"):
        conversions.trajectories_to_msg(batch)
    with pytest.raises(MessageValidationError, match=r'SimParameters\.upper: 1 values for 2 names'):
        conversions.theta_to_msg(['a', 'b'], [0.0, 0.0], [0.0, 0.0], [1.0], 0)


# --- a large field ---------------------------------------------------------------------------------------------
def test_a_10k_double_field_round_trips_exactly():
    """What the nodes use for big float64[] fields (its cost: bench/bench_conversions.py)."""
    values = np.random.default_rng(0).normal(size=10_000)
    msg = TrajectoryBatch()
    msg.rewards = conversions.vector_to_field(values)
    read = conversions.vector_from_field(msg.rewards, 'rewards', 10_000)
    np.testing.assert_array_equal(read, values)
    read[0] += 1.0                      # a copy: the message is not changed through it
    assert msg.rewards[0] == values[0]
    with pytest.raises(MessageValidationError, match=r'rewards'):
        conversions.vector_from_field(msg.rewards, 'rewards', 9_999)


# --- between two processes over DDS -------------------------------------------------------------------------------
PUBLISHER = textwrap.dedent('''
    import sys, numpy as np, rclpy
    from rclpy.qos import QoSProfile, DurabilityPolicy, ReliabilityPolicy
    from sim2real_bilevel_interfaces.msg import TrajectoryBatch
    from sim2real_bilevel.nodes import conversions
    sys.path.insert(0, sys.argv[1])
    from test_conversions import make_batch
    rclpy.init()
    node = rclpy.create_node('batch_publisher')
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    publisher = node.create_publisher(TrajectoryBatch, 'batches', qos)
    publisher.publish(conversions.trajectories_to_msg(
        make_batch(np.random.default_rng(5), n=50, horizon=100, state_dim=2, theta_dim=3)))
    print('published', flush=True)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
''')


@pytest.mark.ros
def test_trajectory_batch_travels_between_two_processes(ros_env, ros_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    output = tmp_path / 'publisher.out'
    with open(output, 'w') as stream:
        publisher = subprocess.Popen([sys.executable, '-c', PUBLISHER, str(Path(__file__).parent)],
                                     stdout=stream, stderr=subprocess.STDOUT, env=ros_env)
    node = None
    try:
        node = rclpy.create_node('batch_subscriber', context=ros_context)
        received = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(TrajectoryBatch, 'batches', received.append, qos)
        executor = SingleThreadedExecutor(context=ros_context)
        executor.add_node(node)
        deadline = time.monotonic() + 60.0
        while not received:
            assert publisher.poll() is None, output.read_text()
            assert time.monotonic() < deadline, 'no TrajectoryBatch within 60 s: ' + output.read_text()
            executor.spin_once(timeout_sec=0.1)
        executor.shutdown()
    finally:
        if node is not None:
            node.destroy_node()
        publisher.send_signal(signal.SIGINT)
        try:
            publisher.wait(timeout=20)
        except subprocess.TimeoutExpired:
            publisher.kill()
            publisher.wait()
    expected = make_batch(np.random.default_rng(5), n=50, horizon=100, state_dim=2, theta_dim=3)
    assert_same_batch(conversions.trajectories_from_msg(received[0]), expected)
