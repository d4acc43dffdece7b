"""Termination as data (``task.termination`` of a ``kind: urdf`` file): an episode ends at its first
state outside the task's position or speed bounds.  The simulator's rollouts hold the state and
zero the rewards after the end, simulated and real batches carry the same dones, real rewards after
the end are zero, J_sim's gradient still matches float64 finite differences, and every file error
names the field and the value."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sim2real_bilevel.core.config import ProblemConfigError
from sim2real_bilevel.core.problems.robot.estimators import alive_mask
from sim2real_bilevel.core.problems.robot.simulator import CommonNoise
from sim2real_bilevel.core.problems.urdf import UrdfProblem

CONFIG = Path(__file__).resolve().parents[1] / 'config'
FELL = {'position_range': {'pendulum_joint': [-1.0, 1.0]}}        # the balanced pendulum fell over


def pendulum(termination=None, horizon=30, episodes=8, urdf=None) -> UrdfProblem:
    data = yaml.safe_load((CONFIG / 'pendulum_urdf.yaml').read_text())
    if urdf is not None:
        data['robot'] = dict(data['robot'], urdf=str(urdf))
    data['horizon'] = horizon
    data['inner'] = dict(data['inner'], episodes=episodes)
    data['evaluation'] = {'episodes': 4, 'seed': 5}
    if termination is not None:
        data['task'] = dict(data['task'], termination=copy.deepcopy(termination))
    return UrdfProblem.from_dict(data, str(CONFIG / 'pendulum_urdf.yaml'))


def falling_policy(problem):
    """The initial policy with its output scaled down: too weak to hold the pendulum, so it falls."""
    phi = problem.policy.init_params(np.random.default_rng(0))
    return phi * 0.1


def test_rollout_holds_the_state_and_zeroes_the_rewards_after_the_end():
    ending, endless = pendulum(FELL), pendulum()
    phi = torch.as_tensor(falling_policy(ending))
    theta = ending.full_theta(torch.as_tensor(ending.theta0()))
    states, _, rewards = ending.rollout(phi, theta, ending._crn)
    free_states, _, free_rewards = endless.rollout(phi, theta, endless._crn)
    outside = states[1:, :, 0].abs() > 1.0                         # (T, N): s_1..s_T beyond the bounds
    ended = outside.any(0)
    assert 0 < int(ended.sum()) < states.shape[1], 'some episodes, not all, should fall over in 30 steps'
    for n in range(states.shape[1]):
        if not ended[n]:
            torch.testing.assert_close(rewards[:, n], free_rewards[:, n], rtol=0, atol=0)
            continue
        end = int(torch.nonzero(outside[:, n])[0])                  # step whose next state is the first outside
        torch.testing.assert_close(states[:end + 2, n], free_states[:end + 2, n], rtol=0, atol=0)
        torch.testing.assert_close(rewards[:end + 1, n], free_rewards[:end + 1, n], rtol=0, atol=0)
        assert bool((rewards[end + 1:, n] == 0).all())
        assert bool((states[end + 1:, n] == states[end + 1, n]).all())       # held at the terminal state
    trajectories = ending.simulate(phi.numpy(), ending.theta0(), 8, 30, np.random.default_rng(3))
    dones = trajectories.dones
    assert dones.sum(1).tolist() == [1] * 8
    for n in range(8):
        first = np.flatnonzero(np.abs(trajectories.states[n, 1:, 0]) > 1.0)
        assert dones[n].argmax() == (first[0] if first.size else 29)
        assert np.all(trajectories.rewards[n][~alive_mask(dones)[n]] == 0)


def test_sim_objective_gradient_with_termination_matches_float64_finite_differences():
    problem = pendulum(FELL, horizon=20, episodes=4)
    phi = falling_policy(problem)
    theta = problem.theta0()
    noise = problem._crn
    short = CommonNoise(noise.initial_states, noise.action_noise[:20], noise.transition_noise[:20])
    states = problem.rollout(torch.as_tensor(phi), problem.full_theta(torch.as_tensor(theta)), short)[0]
    assert bool((states[1:, :, 0].abs() > 1.0).any()), 'the check needs an episode that ends'
    phi_t = torch.tensor(phi, requires_grad=True)
    theta_t = torch.tensor(theta, requires_grad=True)
    grad_phi, grad_theta = torch.autograd.grad(problem.sim_objective(phi_t, theta_t, short), (phi_t, theta_t))
    rng = np.random.default_rng(4)
    for analytic, point, vary in ((grad_phi, phi, 'phi'), (grad_theta, theta, 'theta')):
        direction = rng.standard_normal(point.size)
        eps = 1e-6

        def value(x):
            args = (torch.as_tensor(x), torch.as_tensor(theta)) if vary == 'phi' else (torch.as_tensor(phi), torch.as_tensor(x))
            return float(problem.sim_objective(*args, short))
        numeric = (value(point + eps * direction) - value(point - eps * direction)) / (2 * eps)
        assert abs(float(analytic @ torch.as_tensor(direction)) - numeric) <= 1e-6 * max(1.0, abs(numeric)), vary


def test_real_episodes_end_at_the_first_measured_state_beyond_the_bounds():
    problem = pendulum(FELL)
    phi = falling_policy(problem)
    batch = problem.sample_real(phi, 6, np.random.default_rng(8))
    outside = np.abs(batch.states[:, 1:, 0]) > 1.0
    assert 0 < outside.any(1).sum(), 'some real episodes should fall over'
    for n in range(6):
        first = np.flatnonzero(outside[n])
        end = first[0] if first.size else batch.dones.shape[1] - 1
        assert np.flatnonzero(batch.dones[n]).tolist() == [end]
        assert np.all(batch.rewards[n, end + 1:] == 0) and np.all(batch.rewards[n, :end + 1] > 0)
    # the bridge's controller scores a measured episode the same way
    controller = problem.controller(phi, np.random.default_rng(0))
    for n in range(2):
        controller.start_episode()
        for t in range(problem.horizon):
            controller.observe(batch.states[n, t, :1], batch.states[n, t, 1:])
            controller.command()
            controller.record(batch.actions[n, t], None)
        controller.observe(batch.states[n, -1, :1], batch.states[n, -1, 1:])
    scored = controller.batch(0)
    np.testing.assert_array_equal(scored.dones, batch.dones[:2])
    np.testing.assert_allclose(scored.rewards, batch.rewards[:2])


def test_speed_bound_and_joint_limits(tmp_path):
    problem = pendulum({'max_speed': 3.0})
    states = np.zeros((2, 4, 2))
    states[0, 2, 1] = -3.5                              # too fast at s_2: ends at step 1
    np.testing.assert_array_equal(problem.episode_dones(states), [[False, True, False], [False, False, True]])
    # the URDF's own position limits, intersected with a narrower position_range
    text = (Path(__file__).resolve().parents[1] / 'urdf' / 'pendulum.urdf').read_text()
    limited = tmp_path / 'limited.urdf'
    limited.write_text(text.replace('type="continuous">', 'type="revolute">\n    <limit lower="-1.2" upper="0.9" '
                                    'effort="5" velocity="10"/>'))
    rule = pendulum({'joint_limits': True}, urdf=limited).model.settings.termination
    assert (rule.position_low, rule.position_high) == ((-1.2,), (0.9,))
    rule = pendulum({'joint_limits': True, 'position_range': {'pendulum_joint': [-2.0, 0.8]}},
                    urdf=limited).model.settings.termination
    assert (rule.position_low, rule.position_high) == ((-1.2,), (0.8,))


@pytest.mark.parametrize('termination, message', [
    ({'joint_limit': True}, 'joint_limit'),
    ({'joint_limits': 'yes'}, "task.termination.joint_limits.*'yes'.*true or false"),
    ({'position_range': {'elbow': [-1, 1]}}, r"elbow.*a controlled joint \(one of \['pendulum_joint'\]\)"),
    ({'position_range': {'pendulum_joint': [1, -1]}}, r'\[1.0, -1.0\].*low < high'),
    ({'max_speed': -2}, 'max_speed.*> 0'),
    ({'joint_limits': True}, 'at least one bound'),
    ({'position_range': {'pendulum_joint': [-0.3, 0.3]}}, r'pendulum_joint starts in position \[-0.5, 0.5\]'),
    ({'max_speed': 0.4}, 'speed up to 0.5'),
])
def test_termination_errors_name_the_field_and_the_value(termination, message):
    with pytest.raises(ProblemConfigError, match=message):
        pendulum(termination)


# --- where episodes stop: the stand-in, the bridge's controller, the words for the operator ----------------
HANGING = Path(__file__).resolve().parent / 'pendulum_hanging.yaml'


def constant_effort_policy(problem, effort: float) -> np.ndarray:
    """A policy whose mean is ``effort`` everywhere (zero weights, that output bias), std 0.01."""
    phi = np.zeros(problem.phi_size())
    phi[-2], phi[-1] = effort, np.log(0.01)
    return phi


def hanging():
    from sim2real_bilevel.core.problems import load_problem
    return load_problem(HANGING)


def test_termination_reason_names_the_joint_the_bound_and_the_value():
    problem = hanging()
    assert problem.termination_reason([3.15, 0.0]) is None
    assert problem.termination_reason([3.52, 0.0]) == ('joint pendulum_joint position 3.52 > 3.5 (task.termination '
                                                       'position bounds [2.8, 3.5])')
    assert 'position 2.7 < 2.8' in problem.termination_reason([2.7, 0.0])
    fast = pendulum({'max_speed': 3.0})
    assert fast.termination_reason([0.0, -3.25]) == 'joint pendulum_joint speed |-3.25| > 3 (task.termination max_speed)'
    assert fast.termination_reason([0.0, 2.9]) is None
    assert pendulum().termination_reason([5.0, 50.0]) is None                 # no termination: never
    # the same rule as the dones: a state ends an episode exactly when termination_reason says why
    states = np.random.default_rng(0).uniform([2.6, -4.0], [3.7, 4.0], size=(200, 2))
    ends = problem.terminal_states(torch.as_tensor(states)).numpy()
    assert 0 < ends.sum() < 200
    assert ends.tolist() == [problem.termination_reason(state) is not None for state in states]


def test_real_episodes_stop_at_the_terminal_state_and_hold_it_with_zero_commands():
    problem = hanging()
    pushed = problem.sample_real(constant_effort_policy(problem, 2.0), 4, np.random.default_rng(1))
    still = problem.sample_real(constant_effort_policy(problem, 0.0), 4, np.random.default_rng(1))
    assert still.dones.sum(1).tolist() == [1] * 4 and still.dones[:, -1].all()      # never reached: full length
    ends = pushed.dones.argmax(1) + 1                               # the terminal state s_end
    assert np.all(ends < problem.horizon), ends
    for n, end in enumerate(ends):
        assert problem.termination_reason(pushed.states[n, end]) is not None
        assert all(problem.termination_reason(s) is None for s in pushed.states[n, 1:end])
        assert np.all(pushed.states[n, end:] == pushed.states[n, end])           # held
        assert np.all(pushed.actions[n, end:] == 0.0) and np.all(pushed.actions[n, :end] != 0.0)
        assert np.all(pushed.rewards[n, end:] == 0.0) and np.all(pushed.rewards[n, :end] > 0.0)
    # the bridge's controller, told the same states, stops at the same step and builds the same batch
    controller = problem.controller(constant_effort_policy(problem, 2.0), np.random.default_rng(0))
    for n, end in enumerate(ends):
        controller.start_episode()
        for t in range(end + 1):
            controller.observe(pushed.states[n, t, :1], pushed.states[n, t, 1:])
            assert (controller.terminal() is not None) == (t == end)
            if t < end:
                controller.command()
                controller.record(pushed.actions[n, t], None)
    batch = controller.batch(0)
    for field in ('states', 'actions', 'rewards', 'dones', 'log_probs'):
        np.testing.assert_array_equal(getattr(batch, field), getattr(pushed, field), err_msg=field)


def test_system_identification_ignores_what_a_batch_holds_after_the_end():
    problem = hanging()
    batch = problem.sample_real(constant_effort_policy(problem, 2.0), 3, np.random.default_rng(2))
    end = int(batch.dones[0].argmax()) + 1
    assert end < problem.horizon
    altered = copy.deepcopy(batch)
    altered.states[0, end + 1:] += 0.7                             # after the end: not measured, must not count
    altered.actions[0, end:] = 1.5
    theta = problem.theta0()
    np.testing.assert_array_equal(problem.system_identification([altered], theta),
                                  problem.system_identification([batch], theta))
    altered.states[0, end] += 0.01                                 # the terminal state itself does count
    assert not np.array_equal(problem.system_identification([altered], theta),
                              problem.system_identification([batch], theta))
