"""The generic outer loop and baselines on a bi-level problem with a closed form."""
import json
import re

import numpy as np
import pytest
import torch

from sim2real_bilevel.core.experiments import format_summary, plot_results, summarize
from sim2real_bilevel.core.outer import (Adam, BilevelOuterLoop, OuterConfig, absorbed_offset, discounted_returns,
                                         resolve_steps, resolved_outer_gradient, sensing_to_command, sensitivity_solver)
from sim2real_bilevel.core.problem import InnerResult, Trajectories
from sim2real_bilevel.core import baselines
from sim2real_bilevel.core.evaluation import oracle_evaluator

from toy_problem import ToyProblem


def toy():
    rng = np.random.default_rng(3)
    return ToyProblem(coupling=rng.standard_normal((3, 4)), phi_real=np.array([1.0, -0.6, 1.2]))


def test_bilevel_converges_and_accounts_real_data():
    problem = toy()
    loop = BilevelOuterLoop(problem, OuterConfig(iterations=60, step_size=0.1, real_episodes=4), seed=1,
                            evaluator=oracle_evaluator(problem))
    history = loop.run()
    assert len(history) == 61
    assert history[0].real_transitions == 0 and history[0].iteration == 0
    assert [r.real_transitions for r in history[1:4]] == [4, 8, 12]
    assert history[0].normalized_return < 0.5
    assert history[-1].normalized_return > 0.99
    # theta stays inside its bounds and the record holds it
    assert np.all(np.abs(history[-1].theta) <= 10)


def test_outer_gradient_is_the_implicit_pullback():
    problem = toy()
    loop = BilevelOuterLoop(problem, OuterConfig(solver='dense', damping=0.0), seed=0)
    loop.start()
    g = np.array([1.0, 2.0, -1.0])
    # d phi*/d theta = C, so the pull-back is C^T g
    np.testing.assert_allclose(loop.outer_gradient(loop.phi, loop.theta, g), problem.coupling.T @ g, rtol=1e-10)


def test_learn_mask_freezes_entries():
    problem = toy()
    loop = BilevelOuterLoop(problem, OuterConfig(iterations=5, learn='reward'), seed=0)
    loop.run()
    frozen = problem.theta_groups()['dynamics']
    assert np.all(np.asarray(loop.theta)[frozen] == 0.0)
    assert np.any(np.asarray(loop.theta)[~frozen] != 0.0)


@pytest.mark.parametrize('field,value', [('iterations', -1), ('step_size', 0.0), ('solver', 'lu'),
                                         ('real_episodes', 0), ('learn', 'everything'),
                                         ('first_order_above', -1.0), ('theta_start', 'identified'), ('anchor', 'refit'),
                                         ('normalize_gradient', 'false'), ('step_reset_on_reversal', 'false'),
                                         ('resolve_step', 0.0),
                                         ('far_from_stationary', 'cg'), ('resolve_workers', -1),
                                         ('resolve_workers', 1.5),
                                         ('resolve_step', 1.5)])
def test_config_rejects_bad_values_with_their_name(field, value):
    with pytest.raises(ValueError, match=field):
        OuterConfig.from_mapping({field: value})


def test_resolve_refuses_a_stochastic_inner_solve():
    with pytest.raises(ValueError, match="solver = 'resolve'.*exact"):
        OuterConfig.from_mapping({'solver': 'resolve', 'inner_method': 'sampled'})


class BudgetedToy(ToyProblem):
    """The toy whose inner solve is ``steps`` gradient-ascent steps of size ``rate`` from phi_init
    (phi* = C theta only in the limit): phi_K = (1 - rate)^K phi_0 + (1 - (1 - rate)^K) C theta, so
    the solve the outer step will trigger moves phi by (1 - (1 - rate)^K) C per unit of theta, where
    the implicit-function theorem says C."""

    def __init__(self, *args, steps=3, rate=0.25, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps, self.rate, self.solves = steps, rate, []

    def inner_solve(self, theta, phi_init=None, *, method='exact', rng=None, **options):
        self.solves.append(np.array(theta, dtype=np.float64))
        phi = np.zeros(self.phi_size()) if phi_init is None else np.array(phi_init, dtype=np.float64)
        for _ in range(self.steps):
            phi = phi + self.rate * (self.coupling @ theta - phi)
        return InnerResult(phi=phi, grad_norm=float(np.linalg.norm(self.coupling @ theta - phi)), iterations=self.steps)

    def inner_tolerance(self):
        return 1e-3


def test_resolve_differentiates_the_solve_that_the_step_will_run():
    """Solver 'resolve' on an inner solve that stops short of stationarity: its gradient is the
    pull-back through the budgeted solve's own map, (1 - (1 - rate)^K) C^T g, where the implicit-
    function solve gives C^T g whatever the budget (the map is linear in theta: finite
    differences are exact to rounding)."""
    base = toy()
    problem = BudgetedToy(coupling=base.coupling, phi_real=base.phi_real, steps=3, rate=0.25)
    g = np.array([1.0, 2.0, -1.0])
    phi, theta = np.array([0.3, -0.2, 0.5]), np.array([0.4, -1.0, 2.0, 0.1])
    loop = BilevelOuterLoop(problem, OuterConfig(solver='resolve', first_order_above=0.0))
    resolved = loop.outer_gradient(phi, theta, g)
    np.testing.assert_allclose(resolved, (1 - 0.75 ** 3) * problem.coupling.T @ g, rtol=1e-8)
    implicit_loop = BilevelOuterLoop(problem, OuterConfig(solver='dense', damping=0.0, first_order_above=0.0))
    np.testing.assert_allclose(implicit_loop.outer_gradient(phi, theta, g), problem.coupling.T @ g, rtol=1e-12)


def test_far_from_stationary_resolve_replaces_the_implicit_solve_by_the_solves_own_derivative():
    """``far_from_stationary: resolve``: a policy whose inner solve ended above ``first_order_above`` x
    the tolerance gets the re-solved sensitivity ((1 - (1 - rate)^K) C^T g on the budgeted toy) instead
    of the first-order step, and the record says why; near stationary the configured solve; with a
    stochastic inner solve (nothing deterministic to differentiate) the first-order step."""
    base = toy()
    problem = BudgetedToy(coupling=base.coupling, phi_real=base.phi_real, steps=3, rate=0.25)
    g = np.array([1.0, 2.0, -1.0])
    phi, theta = np.array([0.3, -0.2, 0.5]), np.array([0.4, -1.0, 2.0, 0.1])

    def gradient(inner_grad_norm, **settings):
        loop = BilevelOuterLoop(problem, OuterConfig(solver='dense', damping=0.0, first_order_step=0.5, **settings))
        loop.inner_grad_norm = inner_grad_norm
        problem.solves.clear()
        return loop.outer_gradient(phi, theta, g), loop.event, len(problem.solves)

    value, event, solves = gradient(1.0, far_from_stationary='resolve')        # 1000 x the tolerance
    np.testing.assert_allclose(value, (1 - 0.75 ** 3) * problem.coupling.T @ g, rtol=1e-8)
    assert event.startswith('sensitivity by re-solving: the inner solve ended at ||F|| 1') and solves == 8
    value, event, solves = gradient(0.01, far_from_stationary='resolve')       # 10 x: the configured solve
    np.testing.assert_allclose(value, problem.coupling.T @ g, rtol=1e-12)
    assert event == '' and solves == 0
    value, event, _ = gradient(1.0, far_from_stationary='first_order')
    np.testing.assert_allclose(value, 0.5 * problem.coupling.T @ g, rtol=1e-12)
    assert event.startswith('first-order sensitivity')
    config = OuterConfig(solver='dense', far_from_stationary='resolve', inner_method='sampled')
    solver, why = sensitivity_solver(config, problem, 1.0)
    assert solver is not None and solver.name == 'first_order' and why.startswith('first-order sensitivity')


def test_resolve_steps_inside_the_bounds_and_only_along_learned_coordinates():
    base = toy()
    problem = BudgetedToy(coupling=base.coupling, phi_real=base.phi_real)
    g = np.array([1.0, 2.0, -1.0])
    theta = np.array([10.0, -10.0, 0.0, 0.0])          # coordinate 0 at its upper bound, 1 at its lower
    mask = np.array([True, True, False, True])
    steps = resolve_steps(problem, 0.05)
    np.testing.assert_allclose(steps, 0.05 * 20.0)
    gradient, info = resolved_outer_gradient(problem, np.zeros(3), theta, g, steps, mask)
    assert info['solves'] == 6 and len(problem.solves) == 6
    lower, upper = problem.theta_bounds()
    assert all(np.all(t >= lower) and np.all(t <= upper) for t in problem.solves)
    # central differences cut at the bounds: [9, 10] at the upper bound, [-10, -9] at the lower, then [-1, 1]
    assert [t[0] for t in problem.solves[:2]] == [9.0, 10.0] and [t[1] for t in problem.solves[2:4]] == [-10.0, -9.0]
    assert [t[3] for t in problem.solves[4:]] == [-1.0, 1.0]
    assert gradient[2] == 0.0 and info['column_norms'][2] == 0.0
    np.testing.assert_allclose(gradient[mask], ((1 - 0.75 ** 3) * problem.coupling.T @ g)[mask], rtol=1e-8)


def test_resolve_steps_name_a_coordinate_without_a_finite_range():
    problem = toy()
    problem.theta_bounds = lambda: (np.array([-1.0, 0.0, -np.inf, 0.0]), np.ones(4))
    with pytest.raises(ValueError, match=r"coordinate t2 of <toy> has bounds \[-inf, 1\]"):
        resolve_steps(problem, 0.05)


def test_config_rejects_unknown_field():
    with pytest.raises(ValueError, match='stepsize'):
        OuterConfig.from_mapping({'stepsize': 0.1})


@pytest.mark.parametrize('run_class', [baselines.SPSARun, baselines.CMAESRun, baselines.RealRLRun])
def test_baselines_improve_on_the_toy_problem(run_class):
    problem = toy()
    config = OuterConfig(iterations=40, real_episodes=4, spsa_a=0.1, spsa_c=0.2, cma_sigma=0.1,
                         real_rl_step_size=0.1)
    history = run_class(problem, config, seed=0, evaluator=oracle_evaluator(problem)).run()
    assert history[-1].normalized_return > history[0].normalized_return + 0.2
    assert history[-1].real_transitions > 0


def test_nominal_uses_no_real_data():
    history = baselines.NominalRun(toy(), OuterConfig(iterations=0)).run()
    assert len(history) == 1 and history[0].real_transitions == 0


def test_adam_first_step_has_step_size_magnitude():
    adam = Adam(3, step_size=0.1)
    np.testing.assert_allclose(np.abs(adam.direction(np.array([1e-3, -5.0, 2.0]))), 0.1, rtol=1e-4)


def test_discounted_returns_stop_at_first_done():
    rewards = np.ones((2, 4))
    dones = np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    batch = Trajectories(states=np.zeros((2, 5)), actions=np.zeros((2, 4)), rewards=rewards,
                         dones=dones, log_probs=np.zeros((2, 4)))
    np.testing.assert_allclose(discounted_returns(batch, 0.5), [1.5, 1.875])


def test_sensing_to_command_covers_the_steps_that_ran_and_needs_timestamps():
    dones = np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    sensed = 50.0 + 0.02 * np.arange(5) + np.zeros((2, 5))
    commanded = sensed[:, :-1] + np.array([[0.001, 0.002, 0.1, 0.1], [0.003, np.nan, 0.004, 0.005]])
    batch = Trajectories(states=np.zeros((2, 5)), actions=np.zeros((2, 4)), rewards=np.ones((2, 4)), dones=dones,
                         log_probs=np.zeros((2, 4)), state_times=sensed, command_times=commanded)
    # episode 0 ends at its step 1: its held steps after it (0.1 s) are not delays the robot had
    np.testing.assert_allclose(np.sort(sensing_to_command(batch)), [0.001, 0.002, 0.003, 0.004, 0.005], atol=1e-9)
    batch.command_times = None
    assert sensing_to_command(batch).size == 0


class TimedToy(ToyProblem):
    """Real episodes whose commands left 1, 2, 3, ... ms after their states were sensed."""

    def sample_real(self, phi, n_episodes, rng):
        batch = super().sample_real(phi, n_episodes, rng)
        sensed = 1.8e9 + np.arange(n_episodes)[:, None] + np.zeros((n_episodes, 2))
        batch.state_times, batch.command_times = sensed, sensed[:, :1] + 1e-3 * (1 + np.arange(n_episodes))[:, None]
        return batch


def test_each_record_holds_the_loop_delay_of_its_real_episodes():
    problem = toy()
    timed = TimedToy(coupling=problem.coupling, phi_real=problem.phi_real)
    history = BilevelOuterLoop(timed, OuterConfig(iterations=2, step_size=0.1, real_episodes=4), seed=1).run()
    assert np.isnan(history[0].loop_delay_p50_ms)          # no real episode yet
    for record in history[1:]:
        np.testing.assert_allclose([record.loop_delay_p50_ms, record.loop_delay_p99_ms],
                                   np.percentile([1.0, 2.0, 3.0, 4.0], [50, 99]), atol=1e-3)   # 1 us: seconds since 1970 in float64
        assert json.loads(json.dumps(record.to_json()))['loop_delay_p50_ms'] == record.loop_delay_p50_ms
    plain = BilevelOuterLoop(problem, OuterConfig(iterations=1, step_size=0.1, real_episodes=4), seed=1).run()
    assert np.isnan(plain[-1].loop_delay_p50_ms) and np.isnan(plain[-1].loop_delay_p99_ms)


@pytest.mark.parametrize('period, modelled, warned', [(0.004, False, True), (0.004, True, False),
                                                     (0.02, False, False)])
def test_a_loop_delay_the_simulator_family_does_not_model_is_warned_about_once(caplog, period, modelled, warned):
    problem = toy()
    timed = TimedToy(coupling=problem.coupling, phi_real=problem.phi_real)
    timed.source, timed.control_period = 'timed_toy.yaml', period       # median delay 2.5 ms
    timed.models_actuation_delay = lambda: modelled
    with caplog.at_level('WARNING', logger='sim2real_bilevel.core.outer'):
        BilevelOuterLoop(timed, OuterConfig(iterations=3, step_size=0.1, real_episodes=4), seed=1).run()
    messages = [r.getMessage() for r in caplog.records if 'actuation delay' in r.getMessage()]
    assert len(messages) == int(warned)
    if warned:
        assert messages[0].startswith('timed_toy.yaml: on the real robot, commands left 2.5 ms (median; p99 3.97 ms)')
        assert re.search(r': 0\.6[23] control periods of 4 ms', messages[0])      # 2.5 / 4


def test_summary_and_plot(tmp_path):
    problem = toy()
    document = {'config': 'toy.yaml', 'target': 0.95, 'methods': {}}
    for method, cls in [('bilevel', BilevelOuterLoop), ('nominal', baselines.NominalRun)]:
        seeds = []
        for seed in range(2):
            run = cls(problem, OuterConfig(iterations=40 if method == 'bilevel' else 0,
                                           step_size=0.1, real_episodes=4), seed=seed,
                      evaluator=oracle_evaluator(problem))
            seeds.append({'seed': seed, 'iterations': [r.to_json() for r in run.run()]})
        document['methods'][method] = {'seeds': seeds}
    summary = summarize(document)
    assert summary['bilevel']['seeds_reaching_target'] == 2
    assert summary['bilevel']['real_transitions_to_target_median'] % 4 == 0
    assert summary['nominal']['iterations_to_target_max'] is None
    assert 'never' in format_summary(summary)
    # at equal real data: the nominal policy at any budget, bi-level's last policy within it
    nominal_start = [seed['iterations'][0]['normalized_return'] for seed in document['methods']['nominal']['seeds']]
    assert summary['nominal']['return_at_episodes']['300'][0] == pytest.approx(np.mean(nominal_start))
    bilevel_seeds = document['methods']['bilevel']['seeds']
    at_ten = [[r for r in seed['iterations'] if r['real_episodes'] <= 10][-1]['normalized_return']
              for seed in bilevel_seeds]
    assert summary['bilevel']['return_at_episodes']['10'] == pytest.approx(
        [np.mean(at_ten), np.min(at_ten), np.max(at_ten)])
    assert set(summary['bilevel']['seconds_by_phase']) >= {'real_s', 'sensitivity_s', 'inner_s'}
    assert 'N=30' in format_summary(summary)
    plot_results(json.loads(json.dumps(document)), tmp_path / 'r.png')
    assert (tmp_path / 'r.png').stat().st_size > 10_000


def test_theta_start_sysid_fits_the_dynamics_to_the_first_batch_then_follows_the_outer_gradient():
    from pathlib import Path
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    problem = load_problem(Path(__file__).resolve().parents[1] / 'config' / 'discrete_3s2a.yaml')
    run = make_run(problem, 'bilevel-from-sysid', seed=0, iterations=3)
    assert run.config.theta_start == 'sysid'
    run.start()
    theta0 = run.theta.copy()
    first = run.step()
    dynamics = np.asarray(problem.theta_groups()['dynamics'], dtype=bool)
    lower, upper = problem.theta_bounds()
    fitted = np.clip(problem.system_identification(run.real_batches, theta0), lower, upper)
    assert not np.allclose(fitted[dynamics], theta0[dynamics])          # the fit moved theta
    np.testing.assert_array_equal(run.theta[dynamics], fitted[dynamics])
    np.testing.assert_array_equal(run.theta[~dynamics], theta0[~dynamics])
    assert 'sysid_s' in first.timing and 'sensitivity_s' not in first.timing
    second = run.step()                                                  # an outer-gradient step from there
    assert 'sensitivity_s' in second.timing and 'sysid_s' not in second.timing
    assert not np.array_equal(run.theta, fitted)


@pytest.mark.parametrize('name', ['discrete_3s2a', 'lqr'])
def test_anchor_sysid_refits_on_all_real_data_and_adds_the_offset_the_outer_steps_learned(name):
    from pathlib import Path
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    problem = load_problem(Path(__file__).resolve().parents[1] / 'config' / f'{name}.yaml')
    run = make_run(problem, 'bilevel-anchored', seed=0, iterations=4, overrides={'real_history': 1})
    assert run.config.anchor == 'sysid'
    dynamics = np.asarray(problem.theta_groups()['dynamics'], dtype=bool)
    lower, upper = (np.asarray(b) for b in problem.theta_bounds())
    run.start()
    theta0 = run.theta.copy()
    first = run.step()                                   # the fit alone, as theta_start: sysid
    assert 'sysid_s' in first.timing and 'sensitivity_s' not in first.timing
    fit_one = np.clip(problem.system_identification(run.real_batches, theta0), lower, upper)
    np.testing.assert_allclose(run.theta[dynamics], fit_one[dynamics], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(run.offset, 0.0)
    for k in (2, 3):
        before = run.theta.copy()
        record = run.step()
        assert 'sensitivity_s' in record.timing
        assert len(run.real_batches) == k                # every batch kept for the fit
        assert run.real_data() == run.real_batches[-1:]       # the gradient sees the newest (real_history 1)
        fit = np.clip(problem.system_identification(run.real_batches, theta0), lower, upper)
        np.testing.assert_allclose(run.theta[dynamics], np.clip(fit + run.offset, lower, upper)[dynamics],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(run.offset[~dynamics], 0.0)
        if (~dynamics).any():                            # reward entries: the outer step alone
            assert not np.array_equal(run.theta[~dynamics], before[~dynamics])
    assert np.any(run.offset[dynamics] != 0.0)          # the outer steps moved the offset
    assert not np.allclose(fit[dynamics], fit_one[dynamics])     # and the refit moved the anchor


def test_anchor_offset_travels_with_the_optimiser_state_for_backtracks():
    loop = BilevelOuterLoop(toy(), OuterConfig(anchor='sysid'))
    loop.offset = np.array([0.5, -0.25, 0.0, 1.0])
    saved = loop.optimizer_state()
    loop.offset = np.zeros(4)
    loop.restore_optimizer_state(saved)
    np.testing.assert_array_equal(loop.offset, [0.5, -0.25, 0.0, 1.0])
    assert 'anchor.offset' not in BilevelOuterLoop(toy(), OuterConfig()).optimizer_state()


class FittedToy(ToyProblem):
    """The toy whose sysid fit is a given theta (the fit's quality chosen by the test)."""

    def __init__(self, fit, **kwargs):
        super().__init__(**kwargs)
        self.fit = np.asarray(fit, dtype=np.float64)

    def system_identification(self, batches, theta_init):
        return self.fit.copy()


def _fitted_toy(helps: bool) -> FittedToy:
    base = toy()
    dynamics = base.theta_groups()['dynamics']
    fit = np.zeros(base.coupling.shape[1])
    # the least-squares fit of the policy to the real optimum through the dynamics entries (helps), or
    # its opposite, four times as far (hurts)
    best, *_ = np.linalg.lstsq(base.coupling[:, dynamics], base.phi_real, rcond=None)
    fit[dynamics] = best if helps else -4.0 * best
    return FittedToy(fit, coupling=base.coupling, phi_real=base.phi_real)


def test_anchor_auto_is_released_when_the_fit_policy_is_significantly_worse_than_the_first():
    problem = _fitted_toy(helps=False)
    config = dict(real_episodes=2, real_history=2)
    run = BilevelOuterLoop(problem, OuterConfig(anchor='auto', **config), seed=0)
    plain = BilevelOuterLoop(problem, OuterConfig(**config), seed=0)
    run.start(), plain.start()
    theta0, phi0 = run.theta.copy(), run.phi.copy()
    first = run.step()                                     # the nominal policy's episodes; the fit
    assert run.anchored and 'sysid_s' in first.timing
    np.testing.assert_array_equal(run.theta, np.clip(problem.fit, *problem.theta_bounds()))
    assert float(problem.real_objective(torch.as_tensor(run.phi))) < float(problem.real_objective(torch.as_tensor(phi0)))
    second = run.step()                                    # the fit's policy on the robot: worse
    assert second.event.startswith('anchor released') and 'first policy' in second.event
    assert not run.anchored and run.anchor_released
    np.testing.assert_array_equal(run.offset, 0.0)
    # the bi-level step from the first policy at once, from its own batch: plain bi-level's first step
    assert 'sensitivity_s' in second.timing and np.isfinite(second.grad_norm)
    plain.step()
    np.testing.assert_array_equal(run.theta, plain.theta)
    np.testing.assert_array_equal(run.phi, plain.phi)
    assert not np.array_equal(run.theta, theta0)
    third = run.step()                                     # bi-level on: an outer step, no refit
    assert 'sensitivity_s' in third.timing and 'sysid_s' not in third.timing and not third.event
    assert len(run.real_batches) == 2                      # no anchor: only real_history batches kept


def test_over_ros_the_release_re_registers_the_first_policy_and_steps_as_the_core():
    """GraphBilevelLoop (the optimizer node's loop): the release sends the first policy to the
    inner_trainer as the warm start of one solve at its theta (new versions the bridge accepts), the
    sensitivity goal that follows carries that policy, and theta and phi are the core's. The node's
    actions are replaced by in-process calls here (the action plumbing is test_launch.py's)."""
    pytest.importorskip('rclpy')
    pytest.importorskip('sim2real_bilevel_interfaces')
    from sim2real_bilevel.nodes import conversions
    from sim2real_bilevel.nodes.outer_optimizer import GraphBilevelLoop

    problem = _fitted_toy(helps=False)
    config = OuterConfig(anchor='auto', real_episodes=5, real_history=2)

    class Node:
        """The optimizer node's calls, as its action servers would answer them."""
        theta_version = 0
        policy = None

        def __init__(self):
            self.calls = []

        def train_policy(self, theta, phi_init):
            warm = None if self.policy is None else conversions.policy_from_msg(self.policy)[0]
            self.calls.append(('train', warm, np.array(theta)))
            result = problem.inner_solve(theta, None if self.policy is None else warm)
            version = 1 if self.policy is None else self.policy.version + 1
            self.theta_version += self.policy is not None
            self.policy = conversions.policy_to_msg(result.phi, version, self.theta_version, result.grad_norm)
            return result

        def run_episodes(self, n):
            return problem.sample_real(self.loop.phi, n, self.loop.rng)

        def compute_sensitivity(self, real_gradient):
            phi = conversions.policy_from_msg(self.policy)[0]
            self.calls.append(('sensitivity', phi, np.array(self.loop.theta)))
            return BilevelOuterLoop.outer_gradient(self.loop, phi, self.loop.theta, real_gradient)

        def apply_live_parameters(self, loop):
            pass

    node = Node()
    graph = node.loop = GraphBilevelLoop(node, problem, config, 0, None)
    core = BilevelOuterLoop(problem, config, seed=0)
    for loop in (graph, core):
        loop.start()
        loop.step()                                       # the first policy's batch; the fit
    first_theta = core.history[0].theta
    node.calls.clear()
    record = graph.step()                                 # the fit's policy is worse: released
    assert record.event.startswith('anchor released') and core.step().event == record.event
    (kind, warm, theta), (step, phi, at), (_, _, solved_at) = node.calls
    assert (kind, step) == ('train', 'sensitivity')
    first = core.anchor_reference.phi
    np.testing.assert_array_equal(warm, first)            # re-registered: the first policy, warm, at its theta
    np.testing.assert_array_equal(theta, first_theta)
    np.testing.assert_allclose(phi, first, rtol=0, atol=1e-12)    # the sensitivity of that policy, there
    np.testing.assert_array_equal(at, first_theta)
    assert node.policy.version == 4 and node.theta_version == 3   # start, fit, re-registration, step
    np.testing.assert_array_equal(graph.theta, core.theta)
    np.testing.assert_array_equal(solved_at, core.theta)
    np.testing.assert_allclose(graph.phi, core.phi, rtol=0, atol=1e-12)


def test_anchor_auto_release_survives_a_resume(tmp_path):
    problem = _fitted_toy(helps=False)
    run = BilevelOuterLoop(problem, OuterConfig(anchor='auto', real_episodes=2, iterations=2), seed=0)
    run.attach_run_dir(tmp_path)
    run.run()                                              # the fit, then the release and a step
    assert run.anchor_released and run.history[-1].event.startswith('anchor released')
    resumed = BilevelOuterLoop(problem, OuterConfig(anchor='auto', real_episodes=2, iterations=2), seed=0)
    assert resumed.attach_run_dir(tmp_path)
    assert resumed.anchor_released and not resumed.anchored
    for name in ('theta', 'phi', 'returns'):
        np.testing.assert_array_equal(getattr(resumed.anchor_reference, name), getattr(run.anchor_reference, name))
    assert resumed.anchor_reference.iteration == run.anchor_reference.iteration == 1
    np.testing.assert_array_equal(resumed.theta, run.theta)

def test_anchor_auto_warns_when_its_batches_are_too_small_to_release(caplog):
    import logging
    from sim2real_bilevel.core.outer import AUTO_ANCHOR_MIN_EPISODES, separable_gap
    with caplog.at_level(logging.WARNING, logger='sim2real_bilevel.core.outer'):
        BilevelOuterLoop(toy(), OuterConfig(anchor='auto', real_episodes=2))
    assert 'anchor: auto with 2 real episode(s) per iteration' in caplog.text and '18 standard deviations' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='sim2real_bilevel.core.outer'):
        BilevelOuterLoop(toy(), OuterConfig(anchor='auto', real_episodes=1))
    assert 'one episode has no interval: it never releases' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='sim2real_bilevel.core.outer'):
        BilevelOuterLoop(toy(), OuterConfig(anchor='auto', real_episodes=AUTO_ANCHOR_MIN_EPISODES))
        BilevelOuterLoop(toy(), OuterConfig(anchor='sysid', real_episodes=2))
    assert 'anchor: auto' not in caplog.text
    # the separation the warning quotes: two means that far apart have just-touching intervals
    from sim2real_bilevel.core.evaluation import ReturnEstimate
    gap = separable_gap(5, 0.95)
    spread = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    sd = float(np.std(spread, ddof=1))
    low = ReturnEstimate.of(spread, 0.95)
    assert not ReturnEstimate.of(spread - 0.99 * gap * sd, 0.95).significantly_below(low)
    assert ReturnEstimate.of(spread - 1.01 * gap * sd, 0.95).significantly_below(low)


class UnconvergedFit(FittedToy):
    """The fitted toy whose exact solves have a tolerance (so ``inner_grad_norm`` can be far above it)."""

    def inner_tolerance(self):
        return 0.01


def test_anchor_auto_takes_no_step_from_a_policy_far_from_stationary_until_released():
    """While anchored, 'auto' skips as ``far_from_stationary: skip`` does (the file's default says
    'first_order'); once released, the first-order step is back."""
    for helps in (True, False):
        base = _fitted_toy(helps=helps)
        problem = UnconvergedFit(base.fit, coupling=base.coupling, phi_real=base.phi_real)
        run = BilevelOuterLoop(problem, OuterConfig(anchor='auto', real_episodes=2, real_history=2), seed=0)
        assert run.config.far_from_stationary == 'first_order'
        run.start()
        run.step()                                         # the first policy's batch; the fit
        run.inner_grad_norm = 2.0                          # 200 x the tolerance
        record = run.step()
        if helps:                                          # anchored: the refit alone, no offset step
            assert run.anchored and 'no outer step' in record.event and '||F|| 2' in record.event
            assert run.adam.t == 0 and np.isnan(record.grad_norm)
            np.testing.assert_array_equal(run.offset, 0.0)
            sysid = BilevelOuterLoop(problem, OuterConfig(anchor='sysid', real_episodes=2), seed=0)
            sysid.start(), sysid.step()
            sysid.inner_grad_norm = 2.0                    # anchor: sysid keeps its file's 'first_order'
            assert 'no outer step' not in sysid.step().event and sysid.adam.t == 1
        else:                                              # released: bi-level's step from the first policy
            assert record.event.startswith('anchor released') and not run.anchored
            t = run.adam.t
            run.inner_grad_norm = 2.0
            record = run.step()
            assert 'no outer step' not in record.event and 'first-order' in record.event
            assert run.adam.t == t + 1 and np.isfinite(record.grad_norm)


def test_anchor_auto_stays_anchored_while_the_fit_policy_is_not_worse():
    problem = _fitted_toy(helps=True)
    run = BilevelOuterLoop(problem, OuterConfig(anchor='auto', real_episodes=2), seed=0)
    run.start()
    phi0 = run.phi.copy()
    for _ in range(4):
        record = run.step()
        assert not record.event and run.anchored
    assert float(problem.real_objective(torch.as_tensor(run.phi))) > float(problem.real_objective(torch.as_tensor(phi0)))
    dynamics = problem.theta_groups()['dynamics']
    np.testing.assert_allclose(run.theta[dynamics], np.clip(problem.fit + run.offset, -10, 10)[dynamics])
    assert len(run.real_batches) == 4                      # anchored: every batch kept for the fit


def test_skip_takes_no_outer_step_from_a_policy_far_from_stationary():
    class Unconverged(ToyProblem):
        def inner_tolerance(self):
            return 0.01

    problem = Unconverged(coupling=toy().coupling, phi_real=toy().phi_real)
    loop = BilevelOuterLoop(problem, OuterConfig(far_from_stationary='skip', real_episodes=2), seed=0)
    loop.start()
    theta = loop.theta.copy()
    asked = []
    loop.outer_gradient = lambda *args: asked.append(args) or np.ones(theta.size)
    loop.inner_grad_norm = 2.0                          # 200 x the tolerance: no step
    record = loop.step()
    assert asked == [] and loop.adam.t == 0
    np.testing.assert_array_equal(loop.theta, theta)
    assert 'no outer step' in record.event and '||F|| 2' in record.event
    assert np.isnan(record.grad_norm) and 'inner_s' in record.timing
    assert record.real_episodes == 2                    # the real batch was still collected
    loop.inner_grad_norm = 0.5                          # 50 x: the outer step
    loop.step()
    assert len(asked) == 1 and loop.adam.t == 1
    assert not np.array_equal(loop.theta, theta)


def test_anchored_skip_moves_theta_by_the_refit_alone():
    from pathlib import Path
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    problem = load_problem(Path(__file__).resolve().parents[1] / 'config' / 'lqr.yaml')
    problem.inner_tolerance = lambda: 1e-12             # every exact solve "far": never a step
    run = make_run(problem, 'bilevel-anchored', seed=0, iterations=3,
                   overrides={'first_order_above': 1.0, 'solver': 'dense'})
    assert run.config.far_from_stationary == 'skip'
    sysid = make_run(problem, 'sysid', seed=0, iterations=3)
    run.start(), sysid.start()
    for _ in range(3):
        run.inner_grad_norm = 1.0
        record = run.step()
        sysid.step()
        np.testing.assert_allclose(run.theta, sysid.theta, rtol=1e-10, atol=1e-12)
    assert 'no outer step' in record.event and run.adam.t == 0
    np.testing.assert_array_equal(run.offset, 0.0)


def test_a_policy_far_from_stationary_gets_the_first_order_sensitivity():
    class Unconverged(ToyProblem):
        def inner_tolerance(self):
            return 0.01

    problem = Unconverged(coupling=toy().coupling, phi_real=toy().phi_real)
    g = np.array([1.0, 2.0, -1.0])
    exact, first_order = problem.coupling.T @ g, 0.5 * problem.coupling.T @ g     # the toy's Hessian is -I

    def gradient(inner_grad_norm, **settings):
        loop = BilevelOuterLoop(problem, OuterConfig(solver='dense', damping=0.0, first_order_step=0.5, **settings))
        loop.start()
        loop.inner_grad_norm = inner_grad_norm
        return loop.outer_gradient(loop.phi, loop.theta, g), loop.event

    value, event = gradient(0.5)                       # 50 x the tolerance: the configured solve
    np.testing.assert_allclose(value, exact, rtol=1e-12)
    assert event == ''
    value, event = gradient(2.0)                       # 200 x: the first-order step, and the record says why
    np.testing.assert_allclose(value, first_order, rtol=1e-12)
    assert 'first-order sensitivity' in event and '||F|| 2' in event and '0.01' in event
    value, event = gradient(2.0, first_order_above=0.0)     # 0: never
    np.testing.assert_allclose(value, exact, rtol=1e-12)
    value, event = gradient(2.0, first_order_above=1000.0)
    np.testing.assert_allclose(value, exact, rtol=1e-12)


def test_absorbed_offset_shrinks_entries_the_refit_moved_the_same_way_and_keeps_the_rest():
    offset = np.array([0.3, 0.3, -0.2, 0.1, 0.0, 0.4])
    moved = np.array([0.1, 0.5, -0.05, -0.2, 0.3, 0.0])
    # same way: 0.3 - 0.1; 0.3 - 0.5 stops at 0; -0.2 + 0.05; other way, no offset, no move: kept
    np.testing.assert_allclose(absorbed_offset(offset, moved), [0.2, 0.0, -0.15, 0.1, 0.0, 0.4], rtol=0, atol=1e-15)


class MovingFitToy(ToyProblem):
    """The toy whose sysid fit moves by ``move`` with every call (a fit that more data shift)."""

    def __init__(self, move, **kwargs):
        super().__init__(**kwargs)
        self.move, self.calls = np.asarray(move, dtype=np.float64), 0

    def system_identification(self, batches, theta_init):
        self.calls += 1
        return np.asarray(theta_init, dtype=np.float64) + self.calls * self.move


@pytest.mark.parametrize('rule', ['add', 'absorb'])
def test_anchor_offset_absorb_lets_a_refit_that_moves_with_the_offset_take_its_place(rule, tmp_path):
    base = toy()
    dynamics = np.asarray(base.theta_groups()['dynamics'], dtype=bool)
    problem = MovingFitToy(np.where(dynamics, 1.5, 0.0), coupling=base.coupling, phi_real=base.phi_real)
    config = OuterConfig(anchor='sysid', anchor_offset=rule, real_episodes=2)
    run = BilevelOuterLoop(problem, config)
    assert np.all(config.step_size * run.step_units < 1.5)   # each refit moves further than any step
    lower, upper = problem.theta_bounds()
    run.attach_run_dir(tmp_path)
    run.start()
    run.step()                                            # the fit alone: offset 0
    np.testing.assert_array_equal(run.offset, 0.0)
    positive = []
    for _ in range(3):
        fit_before = run.last_fit.copy()
        run.step()
        np.testing.assert_allclose((run.last_fit - fit_before)[dynamics], 1.5, rtol=1e-12)   # the anchor moved
        np.testing.assert_allclose(run.theta[dynamics], np.clip(run.last_fit + run.offset, lower, upper)[dynamics],
                                   rtol=0, atol=1e-12)
        positive.append(bool(np.any(run.offset[dynamics] > 0)))
    assert np.any(run.offset[dynamics] != 0.0)            # the outer steps moved the offset
    # 'add': a step the way the fit went stays in the offset; 'absorb': the refit takes its place
    assert any(positive) if rule == 'add' else not any(positive)
    run.close_writer()
    resumed = BilevelOuterLoop(problem, config)           # a checkpoint keeps the fit the next refit is compared with
    assert resumed.attach_run_dir(tmp_path)
    np.testing.assert_array_equal(resumed.last_fit, run.last_fit)
    np.testing.assert_array_equal(resumed.offset, run.offset)


def test_anchor_offset_names_a_bad_value():
    with pytest.raises(ValueError, match=r"anchor_offset = 'sum'.*'add', 'absorb'"):
        OuterConfig(anchor_offset='sum').validate()


class DelayedFitToy(FittedToy):
    """A fitted toy whose real data do (or do not) say that the robot's commands act a step late:
    the loop's side of ``actuation_delay_evidence`` (the robot problems compute it from their
    transitions: test_robot_problem.py, test_urdf_problem.py)."""

    control_period = 0.04

    def __init__(self, fit, delayed: bool, **kwargs):
        super().__init__(fit, **kwargs)
        self.delayed, self.asked = delayed, []

    def actuation_delay_evidence(self, batches, theta_init, confidence=0.95):
        from sim2real_bilevel.core.problems.robot.problem import DelayEvidence
        episodes = sum(b.dones.shape[0] for b in batches)
        self.asked.append(episodes)
        gain = 2.0 if self.delayed else -2.0
        return DelayEvidence(steps=1, gain=gain, low=gain - 1.0, high=gain + 1.0, episodes=episodes,
                             favouring=episodes if self.delayed else 0, confidence=confidence)


def _delayed_toy(delayed: bool) -> DelayedFitToy:
    fitted = _fitted_toy(helps=True)
    return DelayedFitToy(fitted.fit, delayed, coupling=fitted.coupling, phi_real=fitted.phi_real)


@pytest.mark.parametrize('anchor', ['auto', 'sysid'])
def test_anchored_runs_warn_once_when_the_data_say_the_commands_act_late_and_keep_the_fit(anchor, caplog):
    """The first batch says the commands act a step late: one warning that names the delay entry,
    the iteration's event says it, and the run stays anchored on the fit (a delayed robot's fit
    helped on some generated tasks: anchor: auto judges it by real returns, not by this)."""
    problem = _delayed_toy(delayed=True)
    run = BilevelOuterLoop(problem, OuterConfig(anchor=anchor, real_episodes=4), seed=0)
    run.start()
    with caplog.at_level('WARNING', logger='sim2real_bilevel.core.outer'):
        first, second = run.step(), run.step()
    assert first.event.startswith('the real data say commands act 1 control period(s) late')
    assert 'sysid_s' in first.timing and run.anchored and 'commands act' not in second.event
    assert first.timing['delay_check_s'] >= 0 and 'delay_check_s' not in second.timing
    np.testing.assert_array_equal(first.theta, np.clip(problem.fit, *problem.theta_bounds()))
    warnings = [r.getMessage() for r in caplog.records if 'act 1 control period (40 ms) late' in r.getMessage()]
    assert len(warnings) == 1 and 'simulator.parameters.delay' in warnings[0]
    assert problem.asked == [4]                          # found: not asked again


@pytest.mark.parametrize('episodes, asked', [(8, [8, 16]), (5, [5, 10, 20]), (2, [2, 4, 8, 16])])
def test_without_a_delay_in_the_data_the_evidence_is_asked_as_the_episodes_double(episodes, asked, caplog):
    """No warning, nothing in the events; asked at the fits where the real episodes have doubled
    since the last time, up to DELAY_EVIDENCE_EPISODES (20)."""
    problem = _delayed_toy(delayed=False)
    run = BilevelOuterLoop(problem, OuterConfig(anchor='sysid', real_episodes=episodes), seed=0)
    run.start()
    with caplog.at_level('WARNING', logger='sim2real_bilevel.core.outer'):
        events = [run.step().event for _ in range(24 // episodes + 1)]
    assert problem.asked == asked and not any('commands act' in event for event in events)
    assert not any('simulator.parameters.delay' in r.getMessage() for r in caplog.records)


def test_sysid_warns_when_the_data_say_the_commands_act_late(caplog):
    problem = _delayed_toy(delayed=True)
    run = baselines.SysIdRun(problem, OuterConfig(real_episodes=4), seed=0)
    run.start()
    with caplog.at_level('WARNING', logger='sim2real_bilevel.core.outer'):
        first, second = run.step(), run.step()
    assert 'commands act 1 control period' in first.event and 'commands act' not in second.event
    assert problem.asked == [4]
    assert sum('simulator.parameters.delay' in r.getMessage() for r in caplog.records) == 1
