"""Tabular inner level: the reduced softmax policy, the residual F = grad_phi J_sim, the inner
solvers, and the exact and sampled sensitivities dF/dphi, dF/dtheta against torch autograd and
central finite differences in float64."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sim2real_bilevel.core.policies import tabular_softmax as policy
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.tabular import TabularProblem, evaluate_policy

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'discrete_3s2a.yaml'


def random_problem(seed=0, n_states=3, n_actions=3, temperature=0.7) -> TabularProblem:
    """Every logit and reward learnable, full-support real dynamics."""
    rng = np.random.default_rng(seed)
    shape = (n_states, n_actions)
    return TabularProblem.from_dict({
        'kind': 'tabular', 'gamma': 0.85,
        'initial_distribution': rng.dirichlet(np.ones(n_states)).tolist(),
        'real': {'transitions': rng.dirichlet(np.ones(n_states), size=shape).tolist(),
                 'rewards': rng.normal(size=shape).tolist()},
        'simulator': {'transition_logits': rng.normal(size=shape + (n_states,)).tolist(),
                      'learn_transition_logits': True,
                      'rewards': rng.normal(size=shape).tolist(), 'learn_rewards': True},
        'inner': {'temperature': temperature},
    }, f'<random {seed}>')


@pytest.fixture(scope='module')
def shipped():
    return load_problem(CONFIG)


@pytest.fixture(scope='module')
def problems(shipped):
    return {'shipped': shipped, 'random': random_problem()}


def relative_error(estimate, reference):
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def as_tensor(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


# --- policy -------------------------------------------------------------------------------------
def test_reduced_softmax_pins_the_last_logit_and_matches_numpy():
    phi = np.array([0.3, -1.2, 2.0, 0.5, -0.7, 0.1])
    table = policy.probabilities(as_tensor(phi), 3, 3).numpy()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.log(table[:, :2] / table[:, 2:]), phi.reshape(3, 2), atol=1e-12)
    np.testing.assert_allclose(policy.probabilities_np(phi, 3, 3), table, atol=1e-15)
    assert policy.parameter_count(3, 3) == 6


def test_score_matrix_is_the_jacobian_of_log_pi():
    phi = np.array([0.3, -1.2, 2.0, 0.5, -0.7, 0.1])
    pi = policy.probabilities_np(phi, 3, 3)
    jacobian = torch.autograd.functional.jacobian(lambda p: policy.log_probabilities(p, 3, 3), as_tensor(phi))
    np.testing.assert_allclose(policy.score_matrix(pi), jacobian.numpy(), atol=1e-14)


def test_phi_from_action_values_is_the_boltzmann_policy():
    q = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    phi = policy.phi_from_action_values(q, 0.5)
    expected = np.exp(q / 0.5) / np.exp(q / 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(policy.probabilities_np(phi, 2, 3), expected, atol=1e-14)


def test_sampled_actions_follow_the_table():
    pi = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    states = np.repeat([0, 1], 20000)
    actions = policy.sample_actions(pi, states, np.random.default_rng(0))
    for s in (0, 1):
        frequency = np.bincount(actions[states == s], minlength=3) / 20000
        # 5 standard errors of a binomial proportion
        assert np.all(np.abs(frequency - pi[s]) <= 5 * np.sqrt(pi[s] * (1 - pi[s]) / 20000))


# --- residual and inner solvers -------------------------------------------------------------------
@pytest.mark.parametrize('name', ['shipped', 'random'])
def test_inner_gradient_is_the_gradient_of_the_entropy_regularised_sim_return(problems, name):
    problem = problems[name]
    rng = np.random.default_rng(1)
    phi = as_tensor(rng.normal(size=problem.phi_size()), grad=True)
    theta = as_tensor(problem.theta0())
    (autograd,) = torch.autograd.grad(problem.sim_objective(phi, theta), phi)
    residual = problem.inner_gradient(phi, theta)
    np.testing.assert_allclose(residual.detach().numpy(), autograd.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(problem.residual(phi.detach().numpy(), theta.numpy()),
                               residual.detach().numpy(), rtol=1e-10, atol=1e-13)
    # central differences of the objective itself
    step = 1e-6
    objective = lambda p: float(problem.sim_objective(as_tensor(p), theta))  # noqa: E731
    base = phi.detach().numpy()
    differences = [(objective(base + e) - objective(base - e)) / (2 * step) for e in np.eye(base.size) * step]
    assert relative_error(np.array(differences), autograd.numpy()) < 1e-7


@pytest.mark.parametrize('name', ['shipped', 'random'])
def test_exact_inner_solve_is_the_soft_bellman_fixed_point(problems, name):
    problem = problems[name]
    theta = problem.theta0()
    result = problem.inner_solve(theta)
    assert result.grad_norm < 1e-10
    f, rewards = problem.simulator_model(theta)
    pi, log_pi = problem.policy_table(result.phi)
    q, v = evaluate_policy(pi, log_pi, f, rewards, problem.gamma, problem.temperature)
    # pi = softmax(Q^pi / tau) and V = tau logsumexp(Q / tau): the soft-optimality conditions
    soft_greedy = np.exp(q / problem.temperature)
    np.testing.assert_allclose(pi, soft_greedy / soft_greedy.sum(axis=1, keepdims=True), atol=1e-10)
    np.testing.assert_allclose(v, problem.temperature * np.log(soft_greedy.sum(axis=1)), atol=1e-9)
    # warm start from the optimum needs far fewer sweeps
    warm = problem.inner_solve(theta, result.phi)
    assert warm.iterations < result.iterations / 3 and warm.grad_norm < 1e-10


def test_sampled_inner_solve_reaches_its_tolerance_near_the_exact_optimum(shipped):
    theta = shipped.theta0()
    exact = shipped.inner_solve(theta).phi
    result = shipped.inner_solve(theta, np.zeros(shipped.phi_size()), method='sampled',
                                 rng=np.random.default_rng(3))
    assert result.info['converged'] and result.grad_norm < shipped.inner.sampled_tolerance
    assert np.abs(result.phi - exact).max() < 0.1
    # warm-started at the optimum it stops before taking a step
    warm = shipped.inner_solve(theta, exact, method='sampled', rng=np.random.default_rng(3))
    assert warm.iterations == 0
    # the estimated stopping rule converges as well
    estimated = shipped.inner_solve(theta, None, method='sampled', rng=np.random.default_rng(4),
                                    sampled_stop='estimated')
    assert estimated.info['converged'] and estimated.grad_norm < 0.05


def test_simulated_scores_are_gradients_of_log_f(problems):
    problem = problems['random']
    theta = problem.theta0() + 0.1
    batch = problem.simulate(np.zeros(problem.phi_size()), theta, 4, 6, np.random.default_rng(2))
    assert batch.states.shape == (4, 7) and batch.score_theta.shape == (4, 6, theta.size)
    assert batch.n_transitions == 24 and batch.source == 'sim'
    for i, t in [(0, 0), (1, 3), (3, 5)]:
        s, a, s_next = batch.states[i, t], batch.actions[i, t], batch.states[i, t + 1]
        theta_t = as_tensor(theta, grad=True)
        f, rewards = problem.simulator_model_torch(theta_t)
        (gradient,) = torch.autograd.grad(torch.log(f[s, a, s_next]), theta_t)
        np.testing.assert_allclose(batch.score_theta[i, t], gradient.numpy(), atol=1e-14)
        assert batch.rewards[i, t] == pytest.approx(float(rewards[s, a].detach()))


# --- exact sensitivities ------------------------------------------------------------------------------
def autograd_jacobians(problem, phi, theta):
    hessian, mixed = torch.autograd.functional.jacobian(problem.inner_gradient, (as_tensor(phi), as_tensor(theta)))
    return hessian.numpy(), mixed.numpy()


def central_differences(function, x, step):
    return np.stack([(function(x + e) - function(x - e)) / (2 * step) for e in np.eye(x.size) * step], axis=1)


@pytest.mark.parametrize('name', ['shipped', 'random'])
@pytest.mark.parametrize('at_optimum', [True, False])
def test_exact_terms_match_autograd_and_central_differences(problems, name, at_optimum):
    problem = problems[name]
    theta = problem.theta0()
    phi = problem.inner_solve(theta).phi
    if not at_optimum:
        phi = phi + np.random.default_rng(5).normal(scale=0.5, size=phi.size)
    terms = problem.sensitivity_terms(phi, theta, method='exact')
    hessian, mixed = autograd_jacobians(problem, phi, theta)
    assert relative_error(terms.hessian, hessian) < 1e-10
    assert relative_error(terms.mixed, mixed) < 1e-10
    step = 1e-6
    fd_hessian = central_differences(lambda p: problem.residual(p, theta), phi, step)
    fd_mixed = central_differences(lambda t: problem.residual(phi, t), theta, step)
    assert relative_error(terms.hessian, fd_hessian) < 1e-5
    groups = problem.theta_groups()
    for group in ('dynamics', 'reward'):
        columns = groups[group]
        assert relative_error(terms.mixed[:, columns], fd_mixed[:, columns]) < 1e-5, group


@pytest.mark.parametrize('name', ['shipped', 'random'])
def test_exact_hessian_is_symmetric_negative_definite_at_the_optimum(problems, name):
    problem = problems[name]
    theta = problem.theta0()
    hessian = problem.sensitivity_terms(problem.inner_solve(theta).phi, theta).hessian
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-12 * np.abs(hessian).max())
    assert np.linalg.eigvalsh(hessian).max() < 0


def finite_difference_optimum_jacobian(problem, theta, step=1e-5):
    return central_differences(lambda t: problem.inner_solve(t).phi, theta, step)


@pytest.mark.parametrize('name', ['shipped', 'random'])
def test_exact_implicit_jacobian_matches_finite_differences_of_the_optimum(problems, name):
    problem = problems[name]
    theta = problem.theta0()
    terms = problem.sensitivity_terms(problem.inner_solve(theta).phi, theta)
    implicit = -np.linalg.solve(terms.hessian, terms.mixed)
    reference = finite_difference_optimum_jacobian(problem, theta)
    groups = problem.theta_groups()
    for group in ('dynamics', 'reward'):
        columns = groups[group]
        assert relative_error(implicit[:, columns], reference[:, columns]) < 1e-5, group


# --- sampled sensitivities ----------------------------------------------------------------------------
def test_sampled_implicit_jacobian_within_5_percent_at_the_default_sample_size(shipped):
    theta = shipped.theta0()
    phi = shipped.inner_solve(theta).phi
    reference = finite_difference_optimum_jacobian(shipped, theta)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        batch = shipped.simulate(phi, theta, shipped.default_sim_episodes, shipped.default_sim_horizon, rng)
        terms = shipped.sensitivity_terms(phi, theta, method='sampled', trajectories=batch, rng=rng)
        estimate = -np.linalg.solve(terms.hessian, terms.mixed)
        assert relative_error(estimate, reference) < 0.05, seed
        assert terms.info['method'] == 'sampled' and terms.info['unvisited_pairs'] == 0


def test_sampled_terms_converge_to_the_exact_ones(problems):
    """With many trajectories (and the critic topped up generously) the sampled dF/dphi and
    dF/dtheta approach the exact ones, also away from the optimum where the Markov-chain
    (score-weighted) terms do not vanish."""
    problem = problems['random']
    theta = problem.theta0()
    phi = problem.inner_solve(theta).phi + 0.3
    exact = problem.sensitivity_terms(phi, theta)
    errors = []
    for episodes in (200, 3200):
        batch = problem.simulate(phi, theta, episodes, 60, np.random.default_rng(episodes))
        sampled = problem.sensitivity_terms(phi, theta, method='sampled', trajectories=batch,
                                            rng=np.random.default_rng(1))
        errors.append((relative_error(sampled.hessian, exact.hessian), relative_error(sampled.mixed, exact.mixed)))
    # the Markov-chain terms shrink like 1/sqrt(n); the 60-step truncation leaves gamma^60 ~ 6e-5
    assert errors[1][0] < 0.05 and errors[1][1] < 0.05
    assert errors[1][0] < errors[0][0] and errors[1][1] < errors[0][1]


def test_sampled_terms_without_rng_are_reproducible_per_batch(shipped):
    theta = shipped.theta0()
    phi = shipped.inner_solve(theta).phi
    batch = shipped.simulate(phi, theta, 50, 20, np.random.default_rng(0))
    first = shipped.sensitivity_terms(phi, theta, method='sampled', trajectories=batch)
    second = shipped.sensitivity_terms(phi, theta, method='sampled', trajectories=batch)
    np.testing.assert_array_equal(first.mixed, second.mixed)
    with pytest.raises(ValueError, match='method'):
        shipped.sensitivity_terms(phi, theta, method='guess')


def test_sensitivity_table_reports_each_size_and_improves_with_samples(shipped):
    from bench.accuracy_tables import format_top_up_table as format_sensitivity_table
    from bench.accuracy_tables import top_up_sensitivity_table as sampled_sensitivity_table

    configured = shipped.inner.sensitivity_min_pair_samples
    rows = sampled_sensitivity_table(shipped, horizons=(20,), episodes=(25, 1600), min_pair_samples=(0, None),
                                     repeats=3, seed=1)
    assert shipped.inner.sensitivity_min_pair_samples == configured
    assert [(r['min_pair_samples'], r['episodes']) for r in rows] == [(0, 25), (0, 1600),
                                                                     (configured, 25), (configured, 1600)]
    assert all(np.isfinite(r['median_error']) and r['max_error'] >= r['median_error'] for r in rows)
    # trajectories only: 64 times the data cuts the error; the topped-up critic beats both
    assert rows[1]['median_error'] < rows[0]['median_error']
    assert rows[3]['median_error'] < rows[1]['median_error']
    text = format_sensitivity_table(rows)
    assert 'trajectories only' in text and str(configured) in text
