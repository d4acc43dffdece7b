"""Issue 11 item 3, estimator lock-in on thin real data (the optimistic real critic,
``TabularProblem.critic_from_statistics(..., optimism)``, ``real_gradient.optimism``).

Failure class reproduced by generated problems 20 (5 states x 3 actions, logits and rewards
learnable) and 29 (4 x 4): the exact real gradient reaches 1.0 on every run seed, bi-level
stopped at 0.909 (problem 20, seeds 1 and 2) and 0.92 (problem 29, seeds 0-2), flat from about
iteration 20.  Diagnosis (sampled against exact real gradient along the run: cosine > 0.9
throughout, so not noise): the policy had turned away from the real optimal action in one state
while that pair had only a handful of real transitions (problem 20: (2, 2), 6 transitions plus the
nominal prior; problem 29: (0, 1), none), the critic's advantage for it had the wrong sign
(-0.30 against +0.16 true), and the policy, no longer choosing it, never collected the data that
would correct it.  Fix: the real critic is optimistic where its data is thin (an
empirical-Bernstein bonus on each pair's reward, vanishing as the pair's transitions grow)."""
import numpy as np
import pytest

from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.generators import generate, load_text
from sim2real_bilevel.core.problems.tabular import evaluate_policy
from sim2real_bilevel.core.problems.tabular.config import DEFAULT_CRITIC_OPTIMISM


OLD_TEMPERATURE_20 = 0.5
"""Problem 20's temperature under the previous default rule (reward spread / 40), at which the
suite measured the lock-in; the current rule (spread / 20) gives 1.0, where run seed 1 happens to
get past it without optimism, while problem 29 run seed 0 still locks in (0.9186)."""


def _generated(seed: int, optimism=None, temperature=None):
    problem = load_text(generate('tabular', seed).text)
    if optimism is not None:
        problem.critic_optimism = optimism
    if temperature is not None:
        problem.temperature = temperature
    return problem


def _run(problem, seed: int, iterations: int):
    run = make_run(problem, 'bilevel', seed, iterations=iterations, evaluate=True)
    run.run(iterations)
    return run


def _advantages(q, v):
    return q - v[:, None]


def test_without_optimism_problem_20_locks_in_on_a_thin_pair():
    """The mechanism, at the point where the plain critic leaves the run: state 2's real optimal
    action 2 has a positive true advantage, a few real transitions, a negative plain-critic
    advantage -- and a positive optimistic one."""
    problem = _generated(20, optimism=0.0, temperature=OLD_TEMPERATURE_20)
    assert problem.critic_optimism == 0.0 and DEFAULT_CRITIC_OPTIMISM > 0
    run = _run(problem, seed=1, iterations=40)
    assert run.history[-1].normalized_return < 0.95                   # measured 0.9086
    pi, log_pi = problem.policy_table(run.phi)
    assert pi[2, 2] < 1e-3                                            # the policy left (2, 2)
    q_true, v_true = evaluate_policy(pi, log_pi, problem.real_transitions, problem.real_rewards, problem.gamma, 0.0)
    counts, rewards = problem.real_statistics(run.real_batches)
    plain = _advantages(*problem.critic_from_statistics(pi, counts, rewards))
    optimistic = _advantages(*problem.critic_from_statistics(pi, counts, rewards, optimism=DEFAULT_CRITIC_OPTIMISM))
    assert counts[2, 2].sum() < 30                                    # measured 6
    assert counts[2, 0].sum() > 1000                                  # the action it takes instead
    assert _advantages(q_true, v_true)[2, 2] > 0.1                    # measured +0.164
    assert plain[2, 2] < 0                                            # measured -0.299: the wrong sign
    assert optimistic[2, 2] > 0                                       # measured +0.264


def test_the_bonus_vanishes_as_the_data_grows():
    """With n transitions per pair drawn from the real model, the optimistic critic approaches
    the plain one (the bonus falls like 1/sqrt(n)); with few, it is above it everywhere."""
    problem = _generated(20)
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.ones(problem.n_actions), size=problem.n_states)
    gaps = []
    for n in (10, 1000, 100000):
        counts = np.zeros_like(problem.real_transitions)
        for s in range(problem.n_states):
            for a in range(problem.n_actions):
                counts[s, a] = rng.multinomial(n, problem.real_transitions[s, a])
        rewards = problem.real_rewards * n
        q0, v0 = problem.critic_from_statistics(pi, counts, rewards)
        q1, v1 = problem.critic_from_statistics(pi, counts, rewards, optimism=1.0)
        assert np.all(q1 >= q0 - 1e-12) and np.all(v1 >= v0 - 1e-12)
        gaps.append(float(np.abs(q1 - q0).max()))
    assert gaps[0] > 10 * gaps[1] > 100 * gaps[2] > 0, gaps           # ~ 1/sqrt(n) per factor 100
    q_exact, v_exact = evaluate_policy(pi, np.log(pi), problem.real_transitions, problem.real_rewards,
                                       problem.gamma, 0.0)
    assert np.abs(q1 - q_exact).max() < 0.05 * (v_exact.max() - v_exact.min())


def test_zero_optimism_is_the_plain_critic():
    problem = _generated(29)
    pi = np.full((problem.n_states, problem.n_actions), 1.0 / problem.n_actions)
    counts = problem.real_transitions * 3.0
    rewards = problem.real_rewards * 3.0
    q0, v0 = problem.critic_from_statistics(pi, counts, rewards)
    q1, v1 = problem.critic_from_statistics(pi, counts, rewards, optimism=0.0)
    assert np.array_equal(q0, q1) and np.array_equal(v0, v1)


def test_default_optimism_gets_past_the_lock_in_of_problem_20():
    """The same problem, temperature and run seed as the mechanism test, default optimism."""
    problem = _generated(20, temperature=OLD_TEMPERATURE_20)
    assert problem.critic_optimism == DEFAULT_CRITIC_OPTIMISM
    assert max(r.normalized_return for r in _run(problem, 1, 60).history) >= 0.95


def test_problem_29_at_default_settings_needs_the_optimism():
    """Current defaults throughout; only the optimism differs (run seed 0)."""
    plain = _run(_generated(29, optimism=0.0), 0, 60).history
    assert max(r.normalized_return for r in plain) < 0.95             # 200 iterations: 0.9186
    optimistic = _run(_generated(29), 0, 60).history
    assert max(r.normalized_return for r in optimistic) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize('seed', [20, 29])
def test_lock_in_problems_reach_095_on_every_run_seed(seed):
    """The full default runs of the suite (200 iterations, run seeds 0-2): all end >= 0.95."""
    finals = [_run(_generated(seed), run_seed, 200).history[-1].normalized_return for run_seed in range(3)]
    assert min(finals) >= 0.95, finals
