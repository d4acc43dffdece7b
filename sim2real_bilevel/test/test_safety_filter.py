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


def test_a_command_within_both_limits_passes_exactly_and_is_not_counted():
    f = CommandFilter(effort_limit=100.0, max_effort_rate=100.0)
    requested = np.random.default_rng(1).normal(0.0, 1.0, 500)
    out = [float(f([value])[0]) for value in requested]
    assert out == requested.tolist()               # 0.1 + (0.3 - 0.1) is not 0.3: no rounding on the way
    assert f.counts() == {'clamped': 0, 'rate_limited': 0, 'non_finite': 0}


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


def test_the_checks_replayed_on_unchecked_episodes_count_what_the_topic_transport_would_change():
    from sim2real_bilevel.core.problem import alive_mask
    from sim2real_bilevel.nodes.safety import checks_on_episodes
    bounds = JointBounds(('a', 'b'), np.array([1.0, 2.0]), np.array([0.5, 10.0]), np.array([-1.0, -1.0]),
                         np.array([1.0, 1.0]), np.array([5.0, 5.0]))
    horizon = 4
    states = np.zeros((3, horizon + 1, 4))
    actions = np.zeros((3, horizon, 2))
    dones = np.zeros((3, horizon), dtype=bool)
    dones[:, -1] = True
    # episode 0: joint a asks 0.4 then 1.5 (rate-limited from 0.4: 0.9), 1.5 (clamped at 1, reached), 1.0
    actions[0, :, 0] = [0.4, 1.5, 1.5, 1.0]
    # episode 1: ends at step 1 (a terminal state); what follows is the emulator's padding, never commanded
    actions[1, :, 1] = [3.0, 9.0, 9.0, 9.0]
    dones[1] = [False, True, False, False]
    # episode 2: joint b's velocity crosses its bound at step 2: the topic transport aborts there
    states[2, 2, 3] = 6.0
    actions[2, :, 0] = 0.1
    checks = checks_on_episodes(bounds, states, actions, alive_mask(dones))
    # ep 0: 1.5 clamped twice, rate-limited once (0.4 -> 0.9); ep 1: 3.0 clamped to 2 (rate 10 free), then 9.0
    # clamped; ep 2: two commands before the crossing, neither changed
    assert checks.filter_counts == {'clamped': 4, 'rate_limited': 1, 'non_finite': 0}
    assert checks.commands == 4 + 2 + 2
    assert checks.crossings == ["episode 2, step 2: joint 'b' velocity 6 outside +-5"]
    words = checks.describe(3)
    assert "the command filter would have changed commands ({'clamped': 4, 'rate_limited': 1, 'non_finite': 0} " \
           'of 8 commands)' in words and '1 of 3 episode(s) cross the state bounds' in words, words
    inside = checks_on_episodes(bounds, np.zeros_like(states), np.full_like(actions, 0.2), alive_mask(dones))
    assert inside.filter_counts == {'clamped': 0, 'rate_limited': 0, 'non_finite': 0} and inside.crossings == []
    assert inside.describe(3) == ''


@pytest.mark.parametrize('seed', range(40))
def test_the_replay_of_checks_agrees_with_a_step_by_step_filter_whether_or_not_anything_binds(seed):
    """``checks_on_episodes`` skips its loop when nothing would change: the same answer as the
    filter and the bounds applied step by step, on episodes near the limits (some bind, some not)."""
    from sim2real_bilevel.core.problem import alive_mask
    from sim2real_bilevel.nodes.safety import checks_on_episodes
    rng = np.random.default_rng(seed)
    n, horizon, joints = 3, 6, 2
    bounds = JointBounds(('a', 'b'), np.array([1.0, 2.0]), np.array([0.8, 1.5]), np.array([-1.0, -2.0]),
                         np.array([1.0, 2.0]), np.array([3.0, 3.0]))
    scale = rng.choice([0.15, 0.5])                       # 0.15: nothing binds (most seeds), 0.5: some do
    actions = rng.normal(0.0, scale, (n, horizon, joints)) * [1.0, 2.0]
    states = rng.normal(0.0, scale, (n, horizon + 1, 2 * joints)) * [1.0, 2.0, 3.0, 3.0]
    dones = np.zeros((n, horizon), dtype=bool)
    dones[np.arange(n), rng.integers(1, horizon, n)] = True
    alive = alive_mask(dones)
    got = checks_on_episodes(bounds, states, actions, alive)
    command_filter, crossings, commands = bounds.command_filter(), 0, 0
    for e in range(n):
        command_filter.reset()
        steps = int(alive[e].sum())
        for t in range(steps + 1):
            if bounds.violation(states[e, t, :joints], states[e, t, joints:]) is not None:
                crossings += 1
                break
            if t < steps:
                command_filter(actions[e, t])
                commands += 1
    assert (got.filter_counts, got.commands, len(got.crossings)) == (command_filter.counts(), commands, crossings)
