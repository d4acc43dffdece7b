"""No oracle in the loop (records without an evaluator) and safe improvement on the real system
(backtracking to the best deployed policy, the pre-deployment check, the best policy as result)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sim2real_bilevel.core.evaluation import ReturnEstimate, oracle_evaluator
from sim2real_bilevel.core.experiments import (format_summary, make_run, method_entry, plot_results,
                                               results_document, seed_entry, summarize)
from sim2real_bilevel.core.outer import BilevelOuterLoop, OuterConfig
from sim2real_bilevel.core.problem import Trajectories

from toy_problem import ToyProblem


class NoisyToy(ToyProblem):
    """The toy problem with noisy episode returns (reward = J_real(phi) + noise), so estimates
    have intervals of non-zero width."""

    def __init__(self, reward_noise: float = 0.05, **kwargs):
        rng = np.random.default_rng(3)
        super().__init__(coupling=rng.standard_normal((3, 4)), phi_real=np.array([1.0, -0.6, 1.2]), **kwargs)
        self.reward_noise = reward_noise

    def sample_real(self, phi, n_episodes, rng):
        batch = super().sample_real(phi, n_episodes, rng)
        rewards = batch.rewards + self.reward_noise * rng.standard_normal(batch.rewards.shape)
        return Trajectories(states=batch.states, actions=batch.actions, rewards=rewards, dones=batch.dones,
                            log_probs=batch.log_probs, source='real')


class WrongWay(BilevelOuterLoop):
    """From iteration ``turn`` on, the outer gradient points the wrong way: every step makes the
    real return worse (a biased real-gradient estimator or sensitivity would do this)."""
    turn = 6

    def outer_gradient(self, phi, theta, real_gradient):
        gradient = super().outer_gradient(phi, theta, real_gradient)
        return -gradient if self.iteration + 1 >= self.turn else gradient


def config(**overrides) -> OuterConfig:
    values = dict(iterations=20, step_size=0.3, real_episodes=8)
    values.update(overrides)
    return OuterConfig(**values)


def exact_return(problem, phi) -> float:
    return float(problem.real_objective(torch.as_tensor(phi)))


def test_return_estimate_is_the_student_t_interval():
    returns = np.array([1.0, 2.0, 4.0, 3.5, 2.5])
    estimate = ReturnEstimate.of(returns, 0.9)
    half = stats.t.ppf(0.95, 4) * returns.std(ddof=1) / math.sqrt(5)
    assert estimate.mean == pytest.approx(returns.mean())
    assert (estimate.low, estimate.high) == pytest.approx((returns.mean() - half, returns.mean() + half))
    assert math.isnan(ReturnEstimate.of([1.0], 0.9).low) and math.isnan(ReturnEstimate.of([], 0.9).mean)
    assert ReturnEstimate(0.0, -1.0, 1.0, 5).significantly_below(ReturnEstimate(3.0, 1.5, 4.0, 5))
    assert not ReturnEstimate(0.0, -1.0, 2.0, 5).significantly_below(ReturnEstimate(3.0, 1.5, 4.0, 5))
    assert not ReturnEstimate(0.0, math.nan, math.nan, 1).significantly_below(ReturnEstimate(3.0, 1.5, 4.0, 5))


def test_without_an_evaluator_records_carry_the_estimate_and_its_interval_only():
    problem = NoisyToy()
    run = BilevelOuterLoop(problem, config(iterations=4), seed=0)
    history = run.run()
    assert all(math.isnan(r.normalized_return) and math.isnan(r.real_return) for r in history)
    assert math.isnan(history[0].real_return_estimate) and math.isnan(history[0].real_return_ci_low)
    for record in history[1:]:
        assert record.real_return_ci_low < record.real_return_estimate < record.real_return_ci_high
    # the same run with the evaluator: the same theta, plus the exact values
    evaluated = BilevelOuterLoop(problem, config(iterations=4), seed=0, evaluator=oracle_evaluator(problem)).run()
    assert [r.theta for r in evaluated] == [r.theta for r in history]
    assert [r.real_return_ci_low for r in evaluated[1:]] == [r.real_return_ci_low for r in history[1:]]
    assert all(0 < r.normalized_return <= 1 for r in evaluated)


def test_summary_and_plot_without_an_evaluator_show_the_best_policy_estimate(tmp_path):
    problem = NoisyToy()
    run = make_run(problem, 'bilevel', seed=1, iterations=5)
    run.run()
    document = results_document('<toy>', problem, {'bilevel': method_entry(run, [seed_entry(run, 1, 0.0)])})
    summary = document['summary']['bilevel']
    assert summary['evaluated'] is False and summary['final_mean'] is None
    best = document['methods']['bilevel']['seeds'][0]['best']
    assert best['real_return_ci_low'] <= best['real_return_estimate'] <= best['real_return_ci_high']
    assert math.isnan(best['normalized_return'])
    text = format_summary(document['summary'])
    assert 'not evaluated' in text and f'{best["real_return_estimate"]:.4g} [' in text
    plot_results(json.loads(json.dumps(document)), tmp_path / 'results.png')
    assert (tmp_path / 'results.png').stat().st_size > 0


def test_a_worsening_update_is_backtracked_to_the_best_policy_with_a_smaller_step():
    problem = NoisyToy()
    loop = WrongWay(problem, config(safe_improvement=True), seed=0)
    history = loop.run()
    events = [(r.iteration, r.event) for r in history if r.event]
    assert events and all(event.startswith('backtracked') for _, event in events), events
    assert loop.backtracks == len(events) and loop.step_scale < 1.0
    first = events[0][0]
    best = loop.best
    # the record of a backtrack holds the best's theta; phi is the best's again
    assert history[first].theta == best.theta.tolist() or loop.backtracks > 1
    # the best is never worse (exactly) than the policies deployed after the turn, and clearly
    # better than where the unsafe loop ends
    unsafe = WrongWay(problem, config(safe_improvement=False), seed=0)
    unsafe.run()
    assert exact_return(problem, best.phi) > exact_return(problem, unsafe.phi) + 0.5
    assert exact_return(problem, loop.phi) > exact_return(problem, unsafe.phi) + 0.5
    # its episodes were pooled over its redeployments: more than one batch
    assert best.returns.size > loop.config.real_episodes


def test_the_off_switch_leaves_the_trajectory_untouched():
    problem = NoisyToy()
    default = WrongWay(problem, config(), seed=2).run()
    off = WrongWay(problem, config(safe_improvement=False), seed=2).run()
    on = WrongWay(problem, config(safe_improvement=True), seed=2).run()
    assert [r.theta for r in off] == [r.theta for r in default]
    assert not any(r.event for r in off)
    assert [r.theta for r in on] != [r.theta for r in off]


class Predicting(NoisyToy):
    """A problem that predicts a candidate's change of real return against the best before it is
    deployed (here exactly)."""

    def predict_improvement(self, phi, baseline_phi, batches, confidence):
        value = exact_return(self, phi) - exact_return(self, baseline_phi)
        return ReturnEstimate(value, value - 1e-3, value + 1e-3, 100)


def test_a_candidate_predicted_worse_is_refused_before_it_is_deployed():
    problem = Predicting()
    deployed = []

    class Watched(WrongWay):
        def sample_real_batch(self, phi):
            deployed.append(exact_return(problem, phi))
            return super().sample_real_batch(phi)

    loop = Watched(problem, config(safe_improvement=True, iterations=14), seed=0)
    history = loop.run()
    refusals = [r for r in history if r.event.startswith('refused before deployment')]
    assert refusals, [r.event for r in history]
    best = exact_return(problem, loop.best.phi)
    # after the turn no deployed policy is much worse than the best (none of the refused ones ran)
    assert min(deployed[WrongWay.turn:]) > best - 0.05


def test_results_report_the_best_deployed_policy_and_safe_state_survives_a_resume(tmp_path):
    problem = NoisyToy()
    whole = WrongWay(problem, config(safe_improvement=True, iterations=14), seed=4)
    whole.run()
    first = WrongWay(problem, config(safe_improvement=True, iterations=9), seed=4)
    first.attach_run_dir(tmp_path)
    first.run()
    second = WrongWay(problem, config(safe_improvement=True, iterations=14), seed=4)
    assert second.attach_run_dir(tmp_path)
    second.config.iterations = 14
    second.run()
    assert [r.theta for r in second.history] == [r.theta for r in whole.history]
    assert [r.event for r in second.history] == [r.event for r in whole.history]
    assert second.backtracks == whole.backtracks and second.step_scale == whole.step_scale
    np.testing.assert_array_equal(second.best.returns, whole.best.returns)
    entry = seed_entry(second, 4, 0.0)['best']
    assert entry['theta'] == whole.best.theta.tolist() and entry['backtracks'] == whole.backtracks
    summary = summarize({'methods': {'bilevel': {'seeds': [seed_entry(second, 4, 0.0)]}}})
    assert summary['bilevel']['best'][0][0] == pytest.approx(whole.best.returns.mean())


def test_tabular_prediction_tells_a_worse_policy_from_the_real_episodes_already_collected():
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.problems import load_problem
    problem = load_problem(builtin_config('discrete_3s2a'))
    rng = np.random.default_rng(0)
    nominal = problem.inner_solve(problem.theta0()).phi
    batches = [problem.sample_real(rng.normal(scale=1.0, size=problem.phi_size()), 1, rng) for _ in range(30)]
    returns = {}
    for actions in ((0, 0, 0), (1, 1, 1), (0, 1, 0), (1, 0, 1)):
        phi = np.zeros(problem.phi_size())
        table = phi.reshape(problem.n_states, problem.n_actions - 1)
        table[:, 0] = [6.0 if a == 0 else -6.0 for a in actions]
        returns[actions] = phi
    exact = {k: problem.normalized_return(v) for k, v in returns.items()}
    best, worst = max(exact, key=exact.get), min(exact, key=exact.get)
    down = problem.predict_improvement(returns[worst], returns[best], batches, 0.95)
    up = problem.predict_improvement(returns[best], returns[worst], batches, 0.95)
    assert down.high < 0 < up.low and down.mean == pytest.approx(-up.mean)
    same = problem.predict_improvement(nominal, nominal, batches, 0.95)
    assert same.mean == 0 and same.low == 0 == same.high
    assert problem.predict_improvement(nominal, nominal, batches[:1], 0.95) is None
    # deterministic: a function of the data only
    again = problem.predict_improvement(returns[worst], returns[best], batches, 0.95)
    assert (again.low, again.high) == (down.low, down.high)


def test_tabular_bilevel_refuses_worse_candidates_before_deploying_them():
    """From iteration 10 on every update sends theta back to the nominal simulator (whose policy
    is clearly worse on the real MDP): the safe loop refuses each such candidate from the real
    data it has and never deploys it; without safe improvement it is deployed."""
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.problems import load_problem
    problem = load_problem(builtin_config('discrete_3s2a'))
    nominal = problem.normalized_return(problem.inner_solve(problem.theta0()).phi)
    deployed = []

    class JumpBack(BilevelOuterLoop):
        turn = 10

        def apply_step(self, gradient):
            theta = super().apply_step(gradient)
            return np.array(self.problem.theta0()) if self.iteration + 1 >= self.turn else theta

        def sample_real_batch(self, phi):
            deployed.append(problem.normalized_return(phi))
            return super().sample_real_batch(phi)

    safe = JumpBack(problem, make_run(problem, 'bilevel', 0, 16, {'safe_improvement': True}).config, seed=0)
    history = safe.run()
    assert all(r.event.startswith('refused before deployment') for r in history[JumpBack.turn:]), \
        [r.event for r in history]
    assert min(deployed[JumpBack.turn:]) > nominal + 0.1
    assert safe.backtracks == len(history) - JumpBack.turn and safe.step_scale == 0.5 ** safe.backtracks
    deployed.clear()
    JumpBack(problem, make_run(problem, 'bilevel', 0, 16).config, seed=0).run()
    assert min(deployed[JumpBack.turn:]) == pytest.approx(nominal)


def test_over_ros_a_backtrack_re_registers_the_best_policy_with_the_graph():
    """GraphBilevelLoop.restore_policy: the best phi goes to the inner_trainer as the warm start
    of one inner solve at the best theta (new versions the bridge accepts), and later batches of
    the re-registered policy pool with the best's."""
    pytest.importorskip('rclpy')
    pytest.importorskip('sim2real_bilevel_interfaces')
    from sim2real_bilevel.core.problem import InnerResult
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel.nodes.outer_optimizer import GraphBilevelLoop

    problem = NoisyToy()

    class Node:
        theta_version = 4
        policy = conversions.policy_to_msg(np.zeros(3), 7, 4, 0.0)
        warm_starts = []

        def train_policy(self, theta, phi_init):
            self.warm_starts.append((conversions.policy_from_msg(self.policy)[0], np.array(theta)))
            self.theta_version += 1
            self.policy = conversions.policy_to_msg(phi_init + 1e-13, self.policy.version + 1, self.theta_version, 0.0)
            return InnerResult(phi=phi_init + 1e-13, grad_norm=0.0, iterations=1)

    node = Node()
    loop = GraphBilevelLoop(node, problem, config(safe_improvement=True), 0, None)
    loop.phi = np.array([0.5, -0.1, 0.9])
    loop.note_deployed(loop.phi, loop.theta, np.array([1.0, 1.2, 0.8]))
    best_phi, best_theta = loop.best.phi.copy(), loop.best.theta.copy()
    loop.theta, loop.phi = loop.theta + 1.0, np.zeros(3)
    loop.backtrack('test')
    (warm, theta), = node.warm_starts
    np.testing.assert_array_equal(warm, best_phi)
    np.testing.assert_array_equal(theta, best_theta)
    assert node.policy.version == 8 and node.theta_version == 5
    np.testing.assert_array_equal(loop.best.phi, loop.phi)
    loop.note_deployed(loop.phi, loop.theta, np.array([1.1, 0.9]))
    assert loop.best.returns.size == 5
