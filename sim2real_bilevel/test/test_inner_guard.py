"""The inner solvers' guard against non-finite values (``core/problems/robot/guard.py``): a
simulator step that returns NaN never produces a NaN policy -- the solve keeps its last finite
iterate and reports the event, or raises when there is none -- and no method deploys a
non-finite policy on the robot."""
import copy

import numpy as np
import pytest
import torch

from sim2real_bilevel.core.baselines import NominalRun
from sim2real_bilevel.core.outer import OuterConfig
from sim2real_bilevel.core.problem import InnerResult
from sim2real_bilevel.core.problems.robot import RobotProblem
from sim2real_bilevel.core.problems.robot.guard import NonFiniteInnerSolve
from test_robot_problem import TINY

HORIZON = 6
SOURCE = 'guard_test.yaml'


def problem(**inner) -> RobotProblem:
    """A tiny robot problem; one solve per cold solve (``cold_restarts`` 0: these tests count and
    corrupt one solve's evaluations; restarts are test_urdf_problem.py's)."""
    data = copy.deepcopy(TINY)
    data['horizon'] = HORIZON
    data['inner'] = dict(data['inner'], **{'episodes': 3, 'warmup_iterations': 6, 'max_iterations': 6,
                                           'cold_iterations': 6, 'sampled_episodes': 3, 'learning_rate': 0.05,
                                           'cold_restarts': 0, **inner})
    return RobotProblem.from_dict(data, SOURCE)


def corrupt(p: RobotProblem, bad_call, gradient_only: bool = False) -> list:
    """Make ``p``'s simulator step return NaN on the calls where ``bad_call(index)`` holds (index:
    0, 1, ... over every step the problem takes), or, with ``gradient_only``, keep its value and
    make only its derivative NaN.  Returns the list of corrupted call indices (filled as it runs)."""
    step = p.model.step_mean_with
    calls, bad = [0], []

    def corrupted(state, action, coefficients, **history):
        index = calls[0]
        calls[0] += 1
        value = step(state, action, coefficients, **history)
        if not bad_call(index):
            return value
        bad.append(index)
        poison = torch.sqrt(action.sum(-1, keepdim=True) * 0.0 - 1.0)        # NaN, differentiable in the action
        if gradient_only:      # the value is the step's, the derivative through the unused branch is NaN
            return torch.where(torch.ones_like(value, dtype=torch.bool), value, poison.expand_as(value))
        return value + poison
    p.model.step_mean_with = corrupted
    return bad


def objective(p: RobotProblem, phi: np.ndarray) -> float:
    theta_full = p.full_theta(torch.as_tensor(p.theta0(), dtype=torch.float64))
    return float(p.sim_objective(torch.as_tensor(phi, dtype=torch.float64), theta_full, full=True))


def adam_iterates(p: RobotProblem, steps: int) -> np.ndarray:
    """The cold solve's Adam warm-up by hand, on the uncorrupted simulator: phi after ``steps``."""
    phi = torch.tensor(p.policy.init_params(np.random.default_rng([p.inner.seed, 2])), requires_grad=True)
    theta_full = p.full_theta(torch.as_tensor(p.theta0(), dtype=torch.float64)).detach()
    optimizer = torch.optim.Adam([phi], lr=p.inner.learning_rate)
    for _ in range(steps):
        optimizer.zero_grad()
        (-p.sim_objective(phi, theta_full, full=True)).backward()
        optimizer.step()
    return phi.detach().numpy()


def test_a_nan_loss_in_the_adam_warm_up_goes_on_from_the_last_finite_iterate():
    """The 4th evaluation's rollout (calls 3T .. 4T-1) goes NaN from its 3rd step, and so does the
    guard's own rollout for the report (calls 4T .. 5T-1): Adam goes back to the iterate of the
    3rd evaluation (2 steps) and goes on from it; the solve ends finite and says what happened."""
    p = problem()
    bad = corrupt(p, lambda i: 3 * HORIZON + 2 <= i < 5 * HORIZON)
    result = p.inner_solve(p.theta0())
    assert bad, 'the corruption never fired'
    assert np.all(np.isfinite(result.phi)) and np.isfinite(result.grad_norm)
    report = result.info['non_finite']
    assert report['solver'] == 'exact, Adam warm-up' and report['iteration'] == 3 and report['what'] == 'loss'
    assert report['kept_last_finite'] and report['events'] == 1 and np.isnan(report['value'])
    assert report['first_non_finite_step'] == 1
    assert report['message'].startswith(f'{SOURCE}: inner solve (exact, Adam warm-up) met a non-finite loss')
    assert 'kept the last finite iterate; Adam goes on from it' in report['message']
    assert 'the simulator diverged' in report['message']
    assert result.iterations > p.inner.warmup_iterations         # L-BFGS ran after the warm-up
    assert objective(p, result.phi) > objective(p, adam_iterates(problem(), 2))


def test_when_every_later_step_diverges_the_solve_returns_the_last_finite_iterate():
    """NaN from the 4th evaluation on: Adam's restarts and L-BFGS's all fail, and the solve
    returns exactly the iterate of the 3rd evaluation (2 Adam steps)."""
    p = problem()
    corrupt(p, lambda i: i >= 3 * HORIZON + 2)
    result = p.inner_solve(p.theta0())
    np.testing.assert_allclose(result.phi, adam_iterates(problem(), 2), rtol=0, atol=1e-12)
    assert result.info['non_finite']['kept_last_finite'] and result.info['non_finite']['events'] >= 2


def test_a_simulator_that_always_diverges_raises_naming_the_file_the_iteration_and_the_cause():
    """NaN from control step 3 of every rollout: there is no finite iterate to keep."""
    p = problem()
    corrupt(p, lambda i: i % HORIZON >= 2)
    with pytest.raises(NonFiniteInnerSolve) as error:
        p.inner_solve(p.theta0())
    message = str(error.value)
    assert message.startswith(f'{SOURCE}: inner solve (exact, Adam warm-up) met a non-finite loss (nan) at iteration 0')
    assert 'no finite iterate to keep' in message
    assert 'the simulator diverged' in message and 'non-finite state from control step 3' in message
    assert f'reduce control_period (now {p.control_period:g} s)' in message


def test_a_nan_gradient_in_l_bfgs_restarts_from_the_best_finite_evaluation():
    """A finite loss with a NaN derivative (the unused branch of a ``where``) at L-BFGS's 3rd
    evaluation of a warm-started solve: L-BFGS restarts from its best finite evaluation and
    finishes its budget; the result is finite and better than the start."""
    p = problem()
    start = p.policy.init_params(np.random.default_rng(3))
    bad = corrupt(p, lambda i: 2 * HORIZON <= i < 3 * HORIZON, gradient_only=True)
    result = p.inner_solve(p.theta0(), start)
    assert bad and np.all(np.isfinite(result.phi))
    report = result.info['non_finite']
    assert report['what'] == 'gradient' and report['iteration'] == 3 and report['solver'].startswith('exact, L-BFGS')
    assert report['kept_last_finite'] and report['events'] == 1 and 'L-BFGS restarts from it' in report['message']
    # the diverged evaluation was a rejected step: L-BFGS went on from the best point to its budget
    assert result.iterations == p.inner.max_iterations
    assert objective(p, result.phi) > objective(p, start)


@pytest.mark.parametrize('method', ['sampled', 'ppo'])
def test_the_sampled_and_ppo_solvers_stop_at_a_finite_policy(method):
    p = problem(tolerance=1e-12)
    bad = corrupt(p, lambda i: 4 * HORIZON <= i < 5 * HORIZON)
    result = p.inner_solve(p.theta0(), p.policy.init_params(np.random.default_rng(3)), method=method,
                           rng=np.random.default_rng(0))
    assert bad and np.all(np.isfinite(result.phi))
    report = result.info['non_finite']
    assert report['solver'] == method and report['kept_last_finite']


def test_a_non_finite_policy_is_never_deployed():
    """Whatever produced it, a NaN policy is refused before the robot sees a command: by the
    outer loop's real-data collection, the problem's real episodes and its controller."""
    p = problem()
    phi = p.policy.init_params(np.random.default_rng(0))
    phi[5] = np.nan

    class NaNSolve(RobotProblem):
        def inner_solve(self, theta, phi_init=None, **options):
            return InnerResult(phi=phi.copy(), grad_norm=float('nan'), iterations=0)

    broken = copy.copy(p)
    broken.__class__ = NaNSolve
    run = NominalRun(broken, OuterConfig(iterations=1, real_episodes=1))
    run.start()
    with pytest.raises(FloatingPointError, match=rf'{SOURCE}: method nominal, iteration 1: refusing to deploy a '
                                                 r'non-finite policy: phi\[5\] = nan \(1 of \d+ entries'):
        run.collect_real(run.phi)
    assert run.real_episode_count == 0 and not p._emulators
    with pytest.raises(FloatingPointError, match=rf'{SOURCE}: real episodes: refusing to deploy'):
        p.real_episodes(phi, [1])
    with pytest.raises(FloatingPointError, match=rf'{SOURCE}: controller: refusing to deploy'):
        p.controller(phi, np.random.default_rng(0))
    assert not p._emulators


def test_a_cold_exact_solve_is_shared_by_the_methods_that_start_at_the_same_theta(monkeypatch):
    """The cold solve at one theta is a deterministic function of it: solved once, every caller
    gets its own copy; another theta, a warm start or another solver solves again."""
    p = problem()
    calls = []
    solve = p._solve
    monkeypatch.setattr(p, '_solve', lambda *a, **k: calls.append(k.get('method')) or solve(*a, **k))
    first, second = p.inner_solve(p.theta0()), p.inner_solve(p.theta0())
    assert len(calls) == 1 and first.phi is not second.phi and np.array_equal(first.phi, second.phi)
    second.phi[0] += 1.0
    assert np.array_equal(p.inner_solve(p.theta0()).phi, first.phi)
    p.inner_solve(p.theta0() + 0.1)
    p.inner_solve(p.theta0(), first.phi)
    p.inner_solve(p.theta0(), method='sampled', rng=np.random.default_rng(0))
    assert calls == ['exact', 'exact', 'exact', 'sampled']


def test_l_bfgs_restarts_are_capped_and_keep_the_start_when_nothing_better_is_finite():
    """Every evaluation after the first is NaN: LBFGS_RESTARTS restarts, then the start is returned."""
    from sim2real_bilevel.core.problems.robot.guard import LBFGS_RESTARTS
    p = problem()
    start = p.policy.init_params(np.random.default_rng(3))
    corrupt(p, lambda i: HORIZON <= i < 100 * HORIZON)
    result = p.inner_solve(p.theta0(), start)
    assert result.info['non_finite']['events'] == 1 + LBFGS_RESTARTS
    np.testing.assert_array_equal(result.phi, start)


def test_start_best_keeps_the_warm_solve_when_the_cold_one_finds_nothing_finite():
    """inner.start: best -- every simulator step after the warm solve's is NaN, so the cold solve
    raises (its starting policy is already non-finite): the warm solve is kept, the cold one's
    error is in info; when both fail, the warm solve's error is raised."""
    start = problem().policy.init_params(np.random.default_rng(3))
    reference, calls = problem(), []
    corrupt(reference, lambda i: calls.append(i) is not None)          # counts the warm solve's steps
    warm = reference.inner_solve(reference.theta0(), start)
    p = problem(start='best')
    bad = corrupt(p, lambda i: i >= len(calls))
    result = p.inner_solve(p.theta0(), start)
    assert bad, 'the cold solve never met the corruption'
    assert result.info['start'] == 'warm' and np.isnan(result.info['cold_objective'])
    assert 'no finite iterate to keep' in result.info['cold_error'] and 'warm_error' not in result.info
    np.testing.assert_array_equal(result.phi, warm.phi)
    assert result.info['warm_objective'] == pytest.approx(warm.info['objective'])
    both = problem(start='best')
    corrupt(both, lambda i: True)
    with pytest.raises(NonFiniteInnerSolve, match='no finite iterate to keep'):
        both.inner_solve(both.theta0(), start)
