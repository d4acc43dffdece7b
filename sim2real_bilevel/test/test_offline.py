"""The offline outer loop (issue 14 items 2 and 4): datasets from generated problems, off-policy
gradients and return estimates from a fixed dataset, pessimism on the data's support, the report."""
import json
from dataclasses import replace
import subprocess
import sys

import numpy as np
import pytest
import torch

from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.datasets import Dataset, DatasetError, load_run_folder, save_dataset
from sim2real_bilevel.core.offline import (OfflineSettings, generate_dataset, make_estimator, make_offline_run,
                                           offline_module)
from sim2real_bilevel.core.problems import load_problem


@pytest.fixture(scope='module')
def tabular():
    return load_problem(builtin_config('discrete_3s2a'))


@pytest.fixture(scope='module')
def lqr():
    return load_problem(builtin_config('lqr'))


def test_tabular_offline_gradient_is_the_derivative_of_the_offline_objective(tabular):
    """float64 central differences of the (plain and pessimistic) count-model return against the gradient."""
    dataset, phi = generate_dataset(tabular, 20, np.random.default_rng(3), 'noisy', 2.0)
    point = phi + np.random.default_rng(4).normal(0, 0.5, phi.shape)
    for pessimism in (False, True):
        estimator = make_estimator(tabular, dataset, OfflineSettings(pessimism=pessimism))
        gradient = estimator.gradient(point)
        step = 1e-6
        numeric = np.array([(estimator.objective(point + step * e) - estimator.objective(point - step * e))
                            / (2 * step) for e in np.eye(point.size)])
        np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-9)
        assert np.linalg.norm(gradient) > 1e-3


def test_offline_estimates_cover_the_exact_real_return(tabular, lqr):
    """With plenty of data the estimated return is close to the exact one and its 95 % interval
    holds it (exact values read here only to check the estimators)."""
    for problem, episodes in ((tabular, 200), (lqr, 100)):
        dataset, phi = generate_dataset(problem, episodes, np.random.default_rng(5), 'noisy', 2.0)
        estimator = make_estimator(problem, dataset, OfflineSettings(resamples=100))
        target = phi * 0.7 if problem.kind == 'lqr' else phi + 1.0       # a policy other than the behaviour
        exact = float(problem.real_objective(torch.as_tensor(target)))
        estimate = estimator.interval(target, 0.95)
        assert estimate.low <= exact <= estimate.high, (problem.kind, estimate, exact)
        assert estimate.high - estimate.low < 0.3 * abs(exact)


def test_lqr_offline_gradient_estimates_the_real_policy_gradient(lqr):
    dataset, phi = generate_dataset(lqr, 200, np.random.default_rng(6), 'noisy', 2.0)
    estimator = make_estimator(lqr, dataset, OfflineSettings())
    target = phi * 0.8
    exact = lqr.real_closed_loop(target).gradient.reshape(-1)
    estimated = estimator.gradient(target)
    assert np.linalg.norm(estimated - exact) < 0.1 * np.linalg.norm(exact)


def test_coverage_is_one_on_the_behaviour_and_falls_off_its_support(tabular, lqr):
    dataset, phi = generate_dataset(lqr, 50, np.random.default_rng(7))
    estimator = make_estimator(lqr, dataset, OfflineSettings())
    assert estimator.coverage(phi) > 0.8
    assert estimator.coverage(phi * 3.0) < 0.5 * estimator.coverage(phi)
    # a behaviour that always takes action 0: a policy preferring action 1 is not covered
    greedy = np.full(tabular.phi_size(), 8.0)         # logit of action 0 over action 1 in every state
    batch = tabular.sample_real(greedy, 50, np.random.default_rng(8))
    estimator = make_estimator(tabular, Dataset([batch]), OfflineSettings())
    assert estimator.coverage(greedy) > 0.99
    assert estimator.coverage(-greedy) < 0.05


def test_pessimism_keeps_the_policy_on_the_data(tabular):
    """The behaviour never tries the fast action in state 0; the nominal prior (the simulator,
    optimistic about it) guesses that action is good.  Without pessimism the loop follows the
    prior off the data to a worse real policy; with it (the pessimistic model) it stays on the data,
    which here hold the real optimum.  The exact return is read only to check the outcome."""
    phi = tabular.inner_solve(tabular.theta0()).phi
    safe = phi.copy()
    safe[0] = 30.0                                      # state 0: action 0 (safe) only
    batch = tabular.sample_real(safe, 40, np.random.default_rng(9))
    assert not np.any((batch.states[:, :-1] == 0) & (batch.actions == 1))
    dataset = Dataset([batch], behaviour='never the fast action in state 0')
    outcomes = {}
    for pessimism in (False, True):
        run = make_offline_run(tabular, 'bilevel', dataset, seed=0, iterations=60, evaluate=True,
                               settings=OfflineSettings(min_coverage=0.0, pessimism=pessimism))
        run.run()
        outcomes[pessimism] = run.final_report()
    assert outcomes[False]['coverage'] < 0.8 and outcomes[False]['normalized_return'] < 0.9
    assert outcomes[True]['coverage'] > 0.95 and outcomes[True]['normalized_return'] > 0.95
    assert outcomes[True]['pessimistic_estimate'] <= outcomes[True]['real_return_estimate'] + 1e-9


def test_the_coverage_constraint_refuses_steps_off_the_data(lqr):
    """LQR: a constraint tighter than the final policy's coverage stops the gain where the data end;
    the records say which steps were halved or refused."""
    dataset, phi = generate_dataset(lqr, 30, np.random.default_rng(0))
    run = make_offline_run(lqr, 'bilevel', dataset, seed=0, iterations=30, settings=OfflineSettings(min_coverage=0.5))
    run.run()
    start = run.estimator.coverage(lqr.inner_solve(lqr.theta0()).phi)
    assert run.final_report()['coverage'] >= min(0.5, start) - 1e-12
    assert run.refused_steps + run.halved_steps > 0
    assert any(r.event.startswith(('step refused', 'step halved')) for r in run.history)


def test_offline_runs_collect_no_episode_and_read_no_oracle(tabular, monkeypatch):
    dataset, _ = generate_dataset(tabular, 30, np.random.default_rng(10))

    def forbidden(*args, **kwargs):
        raise AssertionError('the offline loop must not touch the real system or its model')

    for name in ('sample_real', 'real_objective', 'normalized_return'):
        monkeypatch.setattr(tabular, name, forbidden)
    run = make_offline_run(tabular, 'bilevel', dataset, seed=0, iterations=15)
    run.run()
    assert run.real_episode_count == 30 and run.real_transitions == dataset.transitions
    assert all(np.isnan(r.normalized_return) for r in run.history)
    assert np.isfinite(run.history[-1].real_return_ci_low) and np.isnan(run.history[5].real_return_ci_low)


@pytest.mark.parametrize('name', ['discrete_3s2a', 'lqr'])
def test_offline_bilevel_improves_on_the_nominal_policy_from_30_nominal_episodes(name):
    problem = load_problem(builtin_config(name))
    dataset, _ = generate_dataset(problem, 30, np.random.default_rng(0))
    nominal = problem.normalized_return(problem.inner_solve(problem.theta0()).phi)
    run = make_offline_run(problem, 'bilevel', dataset, seed=0, iterations=40, evaluate=True)
    run.run()
    final = run.history[-1].normalized_return
    assert final > nominal + 0.5 * (1.0 - nominal), (nominal, final)


def test_generated_datasets_use_the_chosen_behaviour_and_save_as_run_folders(tabular, lqr, tmp_path):
    dataset, phi = generate_dataset(tabular, 5, np.random.default_rng(11), 'noisy', 3.0)
    nominal = tabular.inner_solve(tabular.theta0()).phi
    np.testing.assert_allclose(phi, nominal / 3.0)
    batch = dataset.batches[0]
    _, log_pi = tabular.policy_table(phi)
    np.testing.assert_allclose(batch.log_probs, log_pi[batch.states[:, :-1], batch.actions])
    save_dataset(dataset, tmp_path / 'tab', policy_phi=phi)
    read = load_run_folder(tmp_path / 'tab')
    np.testing.assert_array_equal(read.batches[0].actions, batch.actions)
    assert read.behaviour == 'nominal policy at temperature x3'
    noisy, gain = generate_dataset(lqr, 200, np.random.default_rng(12), 'noisy', 4.0)
    residual = noisy.batches[0].actions + noisy.batches[0].states[:, :-1] @ lqr.gain(gain).T
    assert np.std(residual) == pytest.approx(4.0 * lqr.std, rel=0.05)
    with pytest.raises(DatasetError, match='noise = 0.5'):
        generate_dataset(lqr, 5, np.random.default_rng(0), 'noisy', 0.5)


def test_robot_residual_model_gradient_coverage_and_unknown_behaviour():
    """Pendulum: the residual model's return (simulator at the sysid fit, the data's residuals replayed)
    has its gradient checked against float64 central differences; on the fitted behaviour it reproduces the
    recorded episodes (the estimate is the data's mean return); coverage 1 there and lower off it; data
    without the behaviour's probabilities (another controller's recording) give the same estimates."""
    problem = load_problem(builtin_config('pendulum'))
    phi = problem.policy.init_params(np.random.default_rng(0))
    sampler, behaviour, words = offline_module(problem).behaviour_sampler(problem, phi, 2.0)
    batch = sampler.sample_real(behaviour, 4, np.random.default_rng(1))
    estimator = make_estimator(problem, Dataset([batch], behaviour=words), OfflineSettings())
    point = behaviour + np.random.default_rng(5).normal(0.0, 0.05, phi.shape)
    gradient = estimator.gradient(point)
    step = 1e-6
    numeric = np.array([(estimator.objective(point + step * e) - estimator.objective(point - step * e)) / (2 * step)
                        for e in np.eye(point.size)])
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-7 * np.abs(gradient).max())
    assert np.linalg.norm(gradient) > 1e-2
    returns = (batch.rewards * problem.gamma ** np.arange(batch.rewards.shape[1])).sum(1)
    assert estimator.value(estimator.behaviour_phi) == pytest.approx(returns.mean(), rel=1e-9)
    assert estimator.value(point) != pytest.approx(returns.mean(), rel=1e-6)
    assert estimator.coverage(estimator.behaviour_phi) == pytest.approx(1.0)
    assert estimator.coverage(behaviour) > 0.8                     # the fit is close to the behaviour
    assert estimator.coverage(phi) < estimator.coverage(behaviour)  # half the behaviour's std
    unknown = Dataset([replace(batch, log_probs=np.full(batch.log_probs.shape, np.nan))], behaviour='a PID controller',
                      behaviour_known=False, sources=['bags/pid'])
    other = make_estimator(problem, unknown, OfflineSettings())
    assert other.value(point) == estimator.value(point) and other.coverage(point) == estimator.coverage(point)


def test_robot_action_change_bound_warns_on_a_policy_faster_than_the_data():
    """Pendulum, 4 episodes of a noisy behaviour: the fitted behaviour re-simulates the data, so its
    action-change ratio is 1; the same policy with its output layer x10 chatters (ratio > 2, the default
    bound): its report warns in words with the numbers, and is silent with the bound off (0); a policy with
    the behaviour's mean and a 30x smaller std (coverage as low, actions as smooth) is not flagged."""
    problem = load_problem(builtin_config('pendulum'))
    phi = problem.policy.init_params(np.random.default_rng(0))
    sampler, behaviour, words = offline_module(problem).behaviour_sampler(problem, phi, 2.0)
    dataset = Dataset([sampler.sample_real(behaviour, 4, np.random.default_rng(1))], behaviour=words)
    run = make_offline_run(problem, 'bilevel', dataset, seed=0, iterations=1)
    estimator, k = run.estimator, problem.model.action_dim
    assert estimator.action_change_ratio(estimator.behaviour_phi) == pytest.approx(1.0, rel=1e-9)
    chattering = estimator.behaviour_phi.copy()
    chattering[-k - 17:-k] *= 10.0                     # the last layer (16 weights, 1 bias) of the mean
    smooth = estimator.behaviour_phi.copy()
    smooth[-k:] -= np.log(30.0)
    assert estimator.action_change_ratio(chattering) > 2.0 * run.max_action_change
    assert estimator.action_change_ratio(smooth) < 1.0 and estimator.coverage(smooth) < 0.3
    assert run.max_action_change == estimator.DEFAULT_MAX_ACTION_CHANGE == 2.0

    def report_for(policy, bound, held=0):
        run.phi, run.iteration, run.max_action_change, run.action_change_held = policy, 1, bound, held
        run.start_objective = estimator.value(policy) - 1.0          # the estimate rose: no other reason to warn
        return run.final_report()

    flagged = report_for(chattering, 2.0)
    ratio = estimator.action_change_ratio(chattering)
    assert flagged['warning'].startswith('the estimate is not supported by the data: the final policy changes its '
                                         f'action between steps {ratio:.3g} times as much as the data')
    assert f"{flagged['real_return_estimate']:.4g} [" in flagged['warning']
    assert flagged['action_change'] == pytest.approx(ratio)
    assert report_for(chattering, 0.0)['warning'] == ''
    assert report_for(smooth, 2.0)['warning'] == ''
    assert report_for(estimator.behaviour_phi, 2.0)['warning'] == ''
    # a run the bound held (a step halved or refused for it) ends within it, and still warns
    assert report_for(smooth, 2.0, held=1)['warning'].startswith('the estimate is not supported by the data: the '
                                                                 'action-change bound held 1 of 1 steps')
    with pytest.raises(ValueError, match='max_action_change = -1'):
        OfflineSettings(max_action_change=-1.0).validate()


def test_robot_action_change_ratio_stays_finite_on_data_whose_commands_never_change():
    """Recorded commands held constant (a held torque): the data's own change is 0, so the ratio
    divides by a thousandth of the commands' rms instead -- large for a policy that varies its command,
    but a number (it was 1e150 with a 1e-12 floor)."""
    problem = load_problem(builtin_config('pendulum'))
    phi = problem.policy.init_params(np.random.default_rng(0))
    sampler, behaviour, words = offline_module(problem).behaviour_sampler(problem, phi, 2.0)
    batch = sampler.sample_real(behaviour, 4, np.random.default_rng(1))
    batch.actions = np.full_like(batch.actions, 0.5)
    run = make_offline_run(problem, 'bilevel', Dataset([batch], behaviour=words), seed=0, iterations=1)
    estimator = run.estimator
    assert estimator.data_action_change == pytest.approx(0.0, abs=1e-12)
    assert estimator.action_change_scale == pytest.approx(1e-3 * 0.5)
    ratio = estimator.action_change_ratio(phi)
    assert np.isfinite(ratio) and 10.0 < ratio < 1e6


@pytest.mark.slow
def test_a_pendulum_offline_run_whose_gradient_speeds_up_the_actions_is_held_at_the_bound_and_warned():
    """The action-change bound in a whole offline run (issue 14; the rule: bench/results/mixed_pendulum/warning_rule/):
    pendulum, 10 nominal-policy episodes (bench dataset seed 4).  The gradient leads to policies that change
    their action between steps faster than the data (unbounded, this run's ratio reaches 1.42 after 15
    iterations here, and every improving run of the bench's table passed 1.33).  With a bound of 1.05 (the data's own
    ratio is 1.0 by definition) a step is halved or refused within 5 iterations, the policy
    it ends with stays within the bound, and the report warns.

    This replaced a replay of the bench's failing run (true return 0.905 -> 0.588 unbounded, held by the
    default 2.0): on later machines the same code and pinned packages start that run at 0.879 (the nominal
    policy itself differs: bench/results/inner_start/ has 0.879 too) and end it at 0.979 with no step held.
    The inner solves' paths move with the platform's floating-point rounding, so the replay tested one
    machine's path, not the rule (~3 min)."""
    problem = load_problem(builtin_config('pendulum'))
    dataset, _ = generate_dataset(problem, 10, np.random.default_rng([4, 10, 0]))   # bench: dataset_of(.., 10, 'nominal', 4)
    bound = 1.05
    run = make_offline_run(problem, 'bilevel', dataset, seed=4, iterations=5, evaluate=True,
                           settings=OfflineSettings(max_action_change=bound))
    run.run()
    report = run.final_report()
    events = [record.event for record in run.history]
    assert run.action_change_held >= 1, events
    assert any('action change' in event or 'changes its action' in event for event in events), events
    assert report['action_change'] <= bound, report
    assert report['warning'].startswith('the estimate is not supported by the data: the action-change bound held'), \
        report['warning']
    assert np.isfinite(report['normalized_return'])


def test_solve_offline_from_the_command_line(tmp_path):
    """dataset -> solve --real-data --offline: results.json holds the final policy's estimate, interval and
    coverage; bad combinations are refused with the reason."""
    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', *args], capture_output=True, text=True,
                              timeout=300)
    made = cli('dataset', 'discrete_3s2a', '--episodes', '20', '--behaviour', 'noisy', '--out', str(tmp_path / 'data'))
    assert made.returncode == 0, made.stderr
    solved = cli('solve', 'discrete_3s2a', '--real-data', str(tmp_path / 'data'), '--offline', '--method', 'bilevel',
                 '--method', 'sysid', '--iterations', '5', '--out', str(tmp_path / 'out'), '--quiet')
    assert solved.returncode == 0, solved.stderr
    assert 'offline, coverage' in solved.stdout
    document = json.loads((tmp_path / 'out' / 'results.json').read_text())
    final = document['methods']['bilevel']['seeds'][0]['best']
    assert final['offline'] and 0.0 <= final['coverage'] <= 1.0
    assert final['real_return_ci_low'] <= final['real_return_estimate'] <= final['real_return_ci_high']
    assert np.isnan(final['normalized_return'])          # no --evaluate: nothing read the real model
    assert 'WARNING' not in solved.stdout and final['warning'] == ''     # it improves: nothing to warn of
    assert document['offline']['behaviour_known'] is True
    refused = cli('solve', 'discrete_3s2a', '--real-data', str(tmp_path / 'data'), '--offline', '--method', 'cmaes',
                  '--quiet')
    assert refused.returncode == 2 and 'need new real episodes' in refused.stderr
    alone = cli('solve', 'discrete_3s2a', '--real-data', str(tmp_path / 'data'), '--quiet')
    assert alone.returncode == 2 and '--real-data and --offline go together' in alone.stderr


def test_an_offline_run_resumes_from_its_run_dir_as_if_never_stopped(tabular, tmp_path):
    dataset, _ = generate_dataset(tabular, 20, np.random.default_rng(13))
    whole = make_offline_run(tabular, 'bilevel', dataset, seed=1, iterations=8)
    whole.run()
    first = make_offline_run(tabular, 'bilevel', dataset, seed=1, iterations=4)
    assert not first.attach_run_dir(tmp_path / 'run')
    first.run()
    second = make_offline_run(tabular, 'bilevel', dataset, seed=1, iterations=8)
    assert second.attach_run_dir(tmp_path / 'run') and second.iteration == 4
    second.run(8)                                       # the saved config says 4 (solve/resume set the count)
    np.testing.assert_array_equal(second.theta, whole.theta)
    assert [r.theta for r in second.history] == [r.theta for r in whole.history]
    other, _ = generate_dataset(tabular, 21, np.random.default_rng(14))
    with pytest.raises(ValueError, match='recorded transitions'):
        make_offline_run(tabular, 'bilevel', other, seed=1, iterations=8).attach_run_dir(tmp_path / 'run')


def test_the_offline_bench_runs_its_quick_set(tmp_path, run_quick_bench):
    jobs = run_quick_bench('offline.py', tmp_path, timeout=600)
    table = (tmp_path / 'offline.md').read_text()
    assert '| discrete_3s2a |' in table and 'problems reach 0.9' in table
    assert len(jobs) == 5 and all(job['status'] == 'ok' for job in jobs)


def test_a_controller_without_action_noise_leaves_the_lqr_gain_where_it_is(lqr):
    """Recorded data of a deterministic controller do not determine the critic's action terms:
    coverage ~0 for every Gaussian policy, every step refused, and the run ends without error."""
    phi = lqr.inner_solve(lqr.theta0()).phi
    sampler, behaviour, words = offline_module(lqr).behaviour_sampler(lqr, phi, 1e-9)
    dataset = Dataset([sampler.sample_real(behaviour, 30, np.random.default_rng(15))], behaviour=words,
                      behaviour_known=False)
    run = make_offline_run(lqr, 'bilevel', dataset, seed=0, iterations=5)
    run.run()
    report = run.final_report()
    assert report['coverage'] < 1e-6 and run.refused_steps == 5
    np.testing.assert_array_equal(run.phi, phi)
    assert all(r.event.startswith('step refused') for r in run.history[1:])
    assert 'refused 5 of 5 steps, the last one included' in report['warning']     # said in words
    assert report['warning'].startswith('no supported improvement: ')
    assert 'did not rise' in report['warning'] and 'more exploratory behaviour policy' in report['warning']


def _generated_tabular(seed: int, tmp_path):
    """bench/offline.py's generated tabular problem ``seed`` (``problem_files``: ``generate('tabular', seed)``)."""
    from sim2real_bilevel.core.generators import generate
    path = tmp_path / f'tabular_{seed:03d}.yaml'
    path.write_text(generate('tabular', seed).text)
    return path


@pytest.mark.parametrize('seed', [1, 3])
def test_offline_says_when_the_data_support_no_improvement(seed, tmp_path):
    """Generated tabular 1 and 3 from 10 nominal-policy episodes (bench/offline.py's dataset, seed 0): the
    pessimistic run ends on a plateau below what the count model sees through actions the data tried
    fewer than 3 times; the report says so in words, and the command line prints it."""
    path = _generated_tabular(seed, tmp_path)
    problem = load_problem(path)
    dataset, _ = generate_dataset(problem, 10, np.random.default_rng([0, 10, 0]))   # bench: dataset_of(.., 10, 'nominal', 0)
    run = make_offline_run(problem, 'bilevel', dataset, seed=0, iterations=100, evaluate=True)
    run.run()
    report = run.final_report()
    assert report['warning'].startswith('no further supported improvement: ')    # it rose, then plateaued
    assert 'tried fewer than 3 times' in report['warning'] and 'more exploratory behaviour policy' in report['warning']
    assert report['normalized_return'] < 0.93                  # it did fail (sim-only reading of the real model)
    if seed == 3:
        def cli(*args):
            return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', *args], capture_output=True,
                                  text=True, timeout=300, cwd=tmp_path)
        assert cli('dataset', str(path), '--episodes', '10', '--out', 'data').returncode == 0
        solved = cli('solve', str(path), '--real-data', 'data', '--offline', '--method', 'bilevel', '--iterations',
                     '100', '--out', 'out', '--quiet')
        assert solved.returncode == 0, solved.stderr
        assert 'WARNING bilevel seed 0 (offline): no further supported improvement' in solved.stdout
        final = json.loads((tmp_path / 'out' / 'results.json').read_text())['methods']['bilevel']['seeds'][0]['best']
        assert final['warning'] in solved.stdout


def test_offline_improving_runs_carry_no_warning(tmp_path):
    """Generated tabular 0 from the same 10 nominal episodes improves to the oracle's return: no warning
    (a run held by the coverage constraint: ``test_a_controller_without_action_noise...``)."""
    problem = load_problem(_generated_tabular(0, tmp_path))
    dataset, _ = generate_dataset(problem, 10, np.random.default_rng([0, 10, 0]))
    run = make_offline_run(problem, 'bilevel', dataset, seed=0, iterations=100, evaluate=True)
    run.run()
    report = run.final_report()
    assert report['normalized_return'] > 0.99 and report['warning'] == ''
