import math

import numpy as np
import pytest

from sim2real_bilevel.nodes.safety import CommandFilter, JointBounds, state_violation


def test_effort_clamp_and_rate_limit_are_applied_and_counted():
    f = CommandFilter(effort_limit=2.0, max_effort_rate=0.5)
    assert f([0.3]).tolist() == [0.3]                    # inside both limits: untouched
    assert f([5.0]).tolist() == [0.8]                    # clamped to 2.0, then rate-limited from 0.3
    assert f.counts() == {'clamped': 1, 'rate_limited': 1, 'non_finite': 0}
    for _ in range(10):
        out = f([5.0])
    assert out.tolist() == [2.0]                          # never beyond the effort limit
    assert f([-5.0]).tolist() == [1.5]                    # a reversal is rate-limited too
    assert f([math.nan]).tolist() == [1.0]                # NaN -> 0 requested, approached at the rate limit
    assert f.non_finite == 1
    f.reset()
    assert f([1.0]).tolist() == [0.5]                     # a new episode starts from zero


@pytest.mark.parametrize('requested', [np.linspace(-10, 10, 41), np.random.default_rng(0).normal(0, 5, 200)])
def test_filtered_commands_always_respect_both_limits(requested):
    f = CommandFilter(effort_limit=1.5, max_effort_rate=0.3)
    previous = 0.0
    for value in requested:
        out = float(f([value])[0])
        assert abs(out) <= 1.5 + 1e-12 and abs(out - previous) <= 0.3 + 1e-12
        previous = out


def test_limits_must_be_positive_numbers():
    for bad in (0.0, -1.0, math.nan, 'x'):
        with pytest.raises(ValueError, match='effort_limit'):
            CommandFilter(effort_limit=bad, max_effort_rate=1.0)


def test_state_bounds():
    assert state_violation(['j'], [0.1], [1.0], 1.0, 5.0) is None
    assert 'position' in state_violation(['j'], [1.2], [0.0], 1.0, 5.0)
    assert 'velocity' in state_violation(['j'], [0.0], [-6.0], 1.0, 5.0)
    assert 'position' in state_violation(['j'], [math.nan], [0.0], 1.0, 5.0)


def test_effort_limits_below_the_simulators_actuator_range_are_named():
    from sim2real_bilevel.nodes.safety import effort_below_actuator
    bounds = JointBounds(('shoulder', 'elbow'), np.array([3.0, 1.0]), np.array([1.0, 1.0]), np.array([-3.0, -3.0]),
                         np.array([3.0, 3.0]), np.array([10.0, 10.0]))
    assert effort_below_actuator(bounds, (3.0, 1.5)) == 'elbow 1 < 1.5'
    assert effort_below_actuator(bounds, (4.0, 1.5)) == 'shoulder 3 < 4, elbow 1 < 1.5'
    assert effort_below_actuator(bounds, (3.0, 1.0)) is None          # equal: nothing the policy uses is cut
    assert effort_below_actuator(bounds, None) is None                # a simulator without an actuator limit
    assert effort_below_actuator(bounds, (3.0,)) is None              # not one value per joint: not compared
