"""Tabular real side: episodes, the exact real return and its normalisation, the real policy
gradient estimators (mean over many batches against the exact gradient, within a tolerance
set by the standard error), and system identification."""
import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sim2real_bilevel.core.policies import tabular_softmax as policy
from sim2real_bilevel.core.problem import Trajectories
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.tabular import TabularProblem, evaluate_policy

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'discrete_3s2a.yaml'


@pytest.fixture(scope='module')
def shipped():
    return load_problem(CONFIG)


def deterministic_returns(problem):
    """J(pi) from the initial distribution for every deterministic policy (brute force)."""
    returns = {}
    for actions in itertools.product(range(problem.n_actions), repeat=problem.n_states):
        pi = np.eye(problem.n_actions)[list(actions)]
        _, value = evaluate_policy(pi, np.zeros_like(pi), problem.real_transitions, problem.real_rewards,
                                   problem.gamma, 0.0)
        returns[actions] = float(problem.initial_distribution @ value)
    return returns


def phi_of_deterministic(problem, actions, margin=60.0):
    """A phi whose policy takes ``actions`` with probability 1 - O(exp(-margin))."""
    z = np.full((problem.n_states, problem.n_actions), -margin)
    z[np.arange(problem.n_states), actions] = margin
    return (z[:, :-1] - z[:, -1:]).reshape(-1)


def exact_real_gradient(problem, phi):
    phi_t = torch.tensor(phi, requires_grad=True)
    (gradient,) = torch.autograd.grad(problem.real_objective(phi_t), phi_t)
    return gradient.numpy()


def test_normalized_return_spans_the_deterministic_policies(shipped):
    returns = deterministic_returns(shipped)
    worst, best = shipped.real_return_range()
    assert worst == pytest.approx(min(returns.values()), abs=1e-12)
    assert best == pytest.approx(max(returns.values()), abs=1e-12)
    for actions, value in returns.items():
        normalized = shipped.normalized_return(phi_of_deterministic(shipped, actions))
        assert normalized == pytest.approx((value - worst) / (best - worst), abs=1e-9)
    assert max(returns, key=returns.get) == (0, 1, 0)        # safe, climb, stay (the YAML comment)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert 0.0 <= shipped.normalized_return(rng.normal(scale=3.0, size=shipped.phi_size())) <= 1.0


def test_real_objective_is_exact_and_differentiable(shipped):
    phi = np.array([0.4, -1.0, 2.0])
    pi, _ = shipped.policy_table(phi)
    _, value = evaluate_policy(pi, np.zeros_like(pi), shipped.real_transitions, shipped.real_rewards,
                               shipped.gamma, 0.0)
    assert float(shipped.real_objective(torch.tensor(phi))) == pytest.approx(
        float(shipped.initial_distribution @ value), rel=1e-12)
    step = 1e-6
    objective = lambda p: float(shipped.real_objective(torch.tensor(p)))  # noqa: E731
    differences = np.array([(objective(phi + e) - objective(phi - e)) / (2 * step) for e in np.eye(3) * step])
    np.testing.assert_allclose(exact_real_gradient(shipped, phi), differences, rtol=1e-7)


def test_real_episodes_sample_the_real_mdp(shipped):
    phi = np.zeros(shipped.phi_size())           # uniform policy
    batch = shipped.sample_real(phi, 2000, np.random.default_rng(0))
    horizon = shipped.real_horizon
    assert batch.states.shape == (2000, horizon + 1) and batch.actions.shape == (2000, horizon)
    assert batch.n_transitions == 2000 * horizon and batch.source == 'real' and batch.score_theta is None
    np.testing.assert_array_equal(batch.rewards, shipped.real_rewards[batch.states[:, :-1], batch.actions])
    np.testing.assert_allclose(batch.log_probs, np.log(0.5))
    first = np.bincount(batch.states[:, 0], minlength=3) / 2000
    assert np.all(np.abs(first - shipped.initial_distribution) < 5 * np.sqrt(0.25 / 2000))
    counts = np.zeros((3, 2, 3))
    np.add.at(counts, (batch.states[:, :-1], batch.actions, batch.states[:, 1:]), 1.0)
    frequencies = counts / counts.sum(axis=2, keepdims=True)
    standard_error = np.sqrt(0.25 / counts.sum(axis=2, keepdims=True))
    assert np.all(np.abs(frequencies - shipped.real_transitions) < 5 * standard_error)


def truncated_gradient_given_critic(problem, phi, q, v, horizon):
    """E[critic estimator | critic] = d_H(s) pi (Q_hat - V_hat), d_H = sum_{k<H} gamma^k rho0 P_pi^k."""
    pi, _ = problem.policy_table(phi)
    transition = np.einsum('sa,sat->st', pi, problem.real_transitions)
    visitation, marginal = np.zeros(problem.n_states), problem.initial_distribution.copy()
    for k in range(horizon):
        visitation += problem.gamma ** k * marginal
        marginal = marginal @ transition
    return (visitation[:, None] * pi * (q - v[:, None]))[:, :-1].reshape(-1)


def batch_mean_and_standard_error(estimates):
    estimates = np.asarray(estimates)
    return estimates.mean(axis=0), estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))


def test_critic_gradient_is_unbiased_given_its_critic_and_its_critic_is_consistent(shipped):
    phi = np.array([0.5, -1.0, 1.5])
    rng = np.random.default_rng(1)
    history = [shipped.sample_real(phi, 8000, rng)]            # 80000 older transitions for the critic
    pi, _ = shipped.policy_table(phi)
    q, v = shipped.real_critic(pi, history)
    _, v_true = evaluate_policy(pi, np.zeros_like(pi), shipped.real_transitions, shipped.real_rewards,
                                shipped.gamma, 0.0)
    assert np.abs(v - v_true).max() < 0.05 * np.abs(v_true).max()
    # the newest batch only sets the visitation: fix the critic by feeding the same history
    # and a small newest batch (2 episodes) whose 20 transitions barely move it
    estimates = [shipped.real_policy_gradient(phi, history + [shipped.sample_real(phi, 2, rng)])
                 for _ in range(600)]
    mean, standard_error = batch_mean_and_standard_error(estimates)
    expected = truncated_gradient_given_critic(shipped, phi, q, v, shipped.real_horizon)
    # 4.5 standard errors per component, plus the critic's movement by the newest 20 transitions
    assert np.all(np.abs(mean - expected) <= 4.5 * standard_error + 0.01 * np.abs(expected).max())
    # the critic is consistent: with the true Q the same truncated visitation gives nearly the same
    q_true = shipped.real_rewards + shipped.gamma * shipped.real_transitions @ v_true
    with_true_critic = truncated_gradient_given_critic(shipped, phi, q_true, v_true, shipped.real_horizon)
    assert np.linalg.norm(expected - with_true_critic) / np.linalg.norm(with_true_critic) < 0.05
    # and over an unlimited horizon that is the exact gradient (the estimator's truncation bias
    # is the visitation mass after H steps, gamma^H / (1 - gamma))
    exact = exact_real_gradient(shipped, phi)
    unlimited = truncated_gradient_given_critic(shipped, phi, q_true, v_true, 400)
    np.testing.assert_allclose(unlimited, exact, rtol=1e-10)


def test_doubly_robust_gradient_is_unbiased_from_one_batch_at_a_time(shipped):
    problem = copy.copy(shipped)
    problem.real_gradient_estimator = 'doubly_robust'
    problem.real_horizon = 150                 # truncation terms ~ H gamma^H r_max / (1 - gamma) < 1e-3
    phi = np.array([0.5, -1.0, 1.5])
    rng = np.random.default_rng(2)
    estimates = [problem.real_policy_gradient(phi, [problem.sample_real(phi, 10, rng)]) for _ in range(300)]
    mean, standard_error = batch_mean_and_standard_error(estimates)
    exact = exact_real_gradient(problem, phi)
    assert np.all(np.abs(mean - exact) <= 4.5 * standard_error + 1e-3), (mean, exact, standard_error)
    # it is a useful estimator, not only an unbiased one: each batch points the right way
    cosines = [e @ exact / (np.linalg.norm(e) * np.linalg.norm(exact)) for e in estimates]
    assert np.median(cosines) > 0.5


def test_critic_without_data_or_prior_gives_zero_advantage(shipped):
    problem = copy.copy(shipped)
    problem.critic_prior_transitions = 0.0
    pi = np.full((3, 2), 0.5)
    empty = Trajectories(states=np.zeros((1, 1), dtype=np.int64), actions=np.zeros((1, 0), dtype=np.int64),
                         rewards=np.zeros((1, 0)), dones=np.zeros((1, 0), bool), log_probs=np.zeros((1, 0)))
    q, v = problem.real_critic(pi, [empty])
    np.testing.assert_array_equal(q, 0.0)
    np.testing.assert_array_equal(v, 0.0)
    # with the prior, the critic of no data is the nominal simulator's value of pi
    q_prior, _ = shipped.real_critic(pi, [empty])
    f, rewards = shipped.simulator_model(shipped.theta0())
    q_nominal, _ = evaluate_policy(pi, np.log(pi), f, rewards, shipped.gamma, 0.0)
    np.testing.assert_allclose(q_prior, q_nominal, atol=1e-12)


def exact_count_batch(counts: np.ndarray) -> Trajectories:
    """One single-step episode per transition, with exactly ``counts[s, a, s']`` of each."""
    s, a, t = np.nonzero(counts)
    repeats = counts[s, a, t].astype(int)
    states = np.stack([np.repeat(s, repeats), np.repeat(t, repeats)], axis=1)
    actions = np.repeat(a, repeats)[:, None]
    n = len(actions)
    return Trajectories(states=states, actions=actions, rewards=np.zeros((n, 1)), dones=np.zeros((n, 1), bool),
                        log_probs=np.zeros((n, 1)), source='real')


def test_system_identification_recovers_the_truth_when_the_family_contains_it():
    transitions = np.array([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],
                            [[0.2, 0.2, 0.6], [0.7, 0.2, 0.1]],
                            [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]])
    true_logits = np.log(transitions)
    mask = np.ones_like(transitions, dtype=int)
    mask[..., -1] = 0                     # the last logit of each row is fixed (at its true value)
    nominal = true_logits + np.where(mask == 1, 1.5, 0.0)
    problem = TabularProblem.from_dict({
        'kind': 'tabular', 'gamma': 0.9, 'initial_distribution': [1.0, 0.0, 0.0],
        'real': {'transitions': transitions.tolist(), 'rewards': np.zeros((3, 2)).tolist()},
        'simulator': {'transition_logits': nominal.tolist(), 'learn_transition_logits': mask.tolist(),
                      'rewards': [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], 'learn_rewards': [[1, 0], [0, 0], [0, 1]]},
    }, '<sysid>')
    theta_init = problem.theta0()
    fitted = problem.system_identification([exact_count_batch(10 * transitions)], theta_init)
    logit_part = problem.theta_groups()['dynamics']
    np.testing.assert_allclose(fitted[logit_part], true_logits[mask == 1], atol=1e-5)
    np.testing.assert_array_equal(fitted[~logit_part], theta_init[~logit_part])      # rewards stay nominal
    f, _ = problem.simulator_model(fitted)
    np.testing.assert_allclose(f, transitions, atol=1e-5)


def test_real_statistics_of_a_growing_list_equal_the_sum_from_scratch_bit_for_bit():
    """The prefix cache (one new batch per call) must not change a single bit."""
    import copy
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.problems import load_problem
    problem = load_problem(builtin_config('discrete_3s2a'))
    fresh = copy.deepcopy(problem)
    rng = np.random.default_rng(0)
    phi = np.zeros(problem.phi_size())
    batches = []
    for step in range(30):
        batches.append(problem.sample_real(phi, 2, rng))
        window = batches[-20:]                               # the front is cut once past 20
        for view in (window, window[:-1], window[-1:]):
            got = problem.real_statistics(view)
            fresh.__dict__.pop('_statistics_prefixes', None)
            expected = fresh.real_statistics(view)
            assert all(np.array_equal(g, e) for g, e in zip(got, expected)), step
    assert len(problem._statistics_prefixes) <= 4
