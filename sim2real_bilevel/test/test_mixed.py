"""Mixed mode (issue 14 item 3): the offline phase on a dataset, then online bi-level iterations with
safe improvement until a budget of new real episodes is spent; the real critic keeps the dataset."""
import json
import subprocess
import sys

import numpy as np
import pytest

from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.mixed import make_mixed_run
from sim2real_bilevel.core.offline import generate_dataset, make_offline_run
from sim2real_bilevel.core.problems import load_problem


@pytest.fixture(scope='module')
def shipped():
    """The shipped problems by name (``discrete_3s2a``, ``lqr``), each loaded once for the module."""
    loaded = {}
    return lambda name: loaded.setdefault(name, load_problem(builtin_config(name)))


def spy(monkeypatch, problem, name, calls):
    """Record the arguments of ``problem.name`` (still calling it)."""
    original = getattr(problem, name)

    def wrapped(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(problem, name, wrapped)


@pytest.mark.parametrize('name', ['discrete_3s2a', 'lqr'])
def test_the_online_phase_starts_from_the_offline_policy_and_keeps_the_dataset(name, shipped, monkeypatch):
    problem = shipped(name)
    dataset, _ = generate_dataset(problem, 20, np.random.default_rng(1))
    offline = make_offline_run(problem, 'bilevel', dataset, seed=2, iterations=6)
    offline.run()
    deployed, seen = [], []
    spy(monkeypatch, problem, 'sample_real', deployed)
    spy(monkeypatch, problem, 'real_policy_gradient', seen)
    run = make_mixed_run(problem, 'bilevel', dataset, seed=2, online_episodes=4, iterations=6)
    assert run.config.safe_improvement                 # on by default in mixed mode
    run.run()
    # the offline phase is the offline run's, to the bit; the first deployed policy is its result
    assert [r.theta for r in run.history[:7]] == [r.theta for r in offline.history]
    np.testing.assert_array_equal(deployed[0][0], offline.phi)
    assert run.history[7].event.startswith('online phase: from the offline policy')
    # every online real gradient saw the dataset's episodes first, then the new ones (newest last)
    assert len(seen) >= 1
    prior = len(run.dataset.batches)
    for args in seen:
        batches = args[1]
        assert all(a is b for a, b in zip(batches[:prior], run.dataset.batches))
        new = batches[prior:]
        assert 1 <= len(new) and all(a is b for a, b in zip(new, run.real_batches))
    phases = run.phase_reports()
    assert phases['offline']['iterations'] == 6 and 0.0 <= phases['offline']['coverage'] <= 1.0
    assert phases['online']['episodes'] == 4 and phases['online']['budget'] == 4


def test_the_budget_is_never_exceeded(shipped, monkeypatch):
    """3 episodes per iteration, budget 7: iterations of 3, 3, then the 1 left."""
    tabular = shipped('discrete_3s2a')
    dataset, _ = generate_dataset(tabular, 10, np.random.default_rng(3))
    sizes = []
    original = tabular.sample_real
    monkeypatch.setattr(tabular, 'sample_real', lambda phi, n, rng: sizes.append(n) or original(phi, n, rng))
    run = make_mixed_run(tabular, 'bilevel', dataset, seed=0, online_episodes=7, iterations=3,
                         overrides={'real_episodes': 3})
    run.run()
    assert sizes == [3, 3, 1]
    assert run.online_episodes == 7 and run.real_episode_count == 10 + 7
    assert run.iteration == 3 + 3 and run.history[-1].real_episodes == 17
    with pytest.raises(RuntimeError, match='budget of 7 online real episodes is spent'):
        run.step()
    assert sizes == [3, 3, 1]
    with pytest.raises(ValueError, match='online_episodes = 0'):
        make_mixed_run(tabular, 'bilevel', dataset, seed=0, online_episodes=0)


def test_mixed_runs_read_no_oracle_without_an_evaluator(shipped, monkeypatch):
    lqr = shipped('lqr')
    dataset, _ = generate_dataset(lqr, 10, np.random.default_rng(4))

    def forbidden(*args, **kwargs):
        raise AssertionError('mixed mode must not read the real model without --evaluate')

    for name in ('real_objective', 'normalized_return', 'real_cost', 'real_optimum'):
        monkeypatch.setattr(lqr, name, forbidden)
    run = make_mixed_run(lqr, 'bilevel', dataset, seed=0, online_episodes=5, iterations=4)
    run.run()
    assert run.online_episodes == 5
    assert all(np.isnan(r.normalized_return) for r in run.history)
    online = run.history[5:]
    assert all(np.isfinite(r.real_return_estimate) for r in online)
    assert run.phase_reports()['online']['best']['episodes'] >= 1


def test_safe_improvement_can_be_turned_off_and_other_methods_are_refused(shipped):
    tabular = shipped('discrete_3s2a')
    dataset, _ = generate_dataset(tabular, 5, np.random.default_rng(5))
    run = make_mixed_run(tabular, 'bilevel', dataset, seed=0, online_episodes=2, iterations=1,
                         overrides={'safe_improvement': False})
    assert not run.config.safe_improvement
    with pytest.raises(ValueError, match="method 'sysid' has no mixed mode"):
        make_mixed_run(tabular, 'sysid', dataset, seed=0, online_episodes=2)


def test_a_mixed_run_resumes_from_its_run_dir_as_if_never_stopped(shipped, tmp_path):
    tabular = shipped('discrete_3s2a')
    dataset, _ = generate_dataset(tabular, 10, np.random.default_rng(6))
    whole = make_mixed_run(tabular, 'bilevel', dataset, seed=1, online_episodes=4, iterations=3)
    whole.run()
    first = make_mixed_run(tabular, 'bilevel', dataset, seed=1, online_episodes=4, iterations=3)
    assert not first.attach_run_dir(tmp_path / 'run')
    first.run(5)                                     # stops inside the online phase
    second = make_mixed_run(tabular, 'bilevel', dataset, seed=1, online_episodes=4, iterations=3)
    assert second.attach_run_dir(tmp_path / 'run') and second.iteration == 5 and second.online_episodes == 2
    second.run()
    assert [r.theta for r in second.history] == [r.theta for r in whole.history]
    assert second.online_episodes == 4
    saved, uninterrupted = (json.dumps(r.phase_reports()['offline'], sort_keys=True) for r in (second, whole))
    assert saved == uninterrupted
    other = make_mixed_run(tabular, 'bilevel', dataset, seed=1, online_episodes=6, iterations=3)
    with pytest.raises(ValueError, match='online budget of 4 episodes'):
        other.attach_run_dir(tmp_path / 'run')


def test_solve_mixed_from_the_command_line(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', *args], capture_output=True, text=True,
                              timeout=300)
    made = cli('dataset', 'discrete_3s2a', '--episodes', '10', '--out', str(tmp_path / 'data'))
    assert made.returncode == 0, made.stderr
    solved = cli('solve', 'discrete_3s2a', '--real-data', str(tmp_path / 'data'), '--offline', '--online-episodes', '3',
                 '--iterations', '4', '--out', str(tmp_path / 'out'), '--quiet')
    assert solved.returncode == 0, solved.stderr
    assert 'bilevel seed 0 offline phase (4 iterations): estimated real return' in solved.stdout
    assert 'bilevel seed 0 online phase: 3 of 3 real episodes in 3 iterations' in solved.stdout
    document = json.loads((tmp_path / 'out' / 'results.json').read_text())
    seed = document['methods']['bilevel']['seeds'][0]
    assert seed['phases']['offline']['iterations'] == 4 and seed['phases']['online']['episodes'] == 3
    assert seed['iterations'][-1]['real_episodes'] == 13 and document['offline']['online_episodes'] == 3
    assert np.isnan(seed['phases']['online']['final_normalized_return'])     # no --evaluate
    refused = cli('solve', 'discrete_3s2a', '--real-data', str(tmp_path / 'data'), '--offline', '--online-episodes',
                  '3', '--method', 'sysid', '--quiet')
    assert refused.returncode == 2 and 'have no mixed mode' in refused.stderr
    alone = cli('solve', 'discrete_3s2a', '--online-episodes', '3', '--quiet')
    assert alone.returncode == 2 and '--real-data and --offline go together' in alone.stderr


def test_dataset_from_recordings_writes_a_checked_dataset_folder(tmp_path):
    """`dataset CONFIG --from PATH..` (what the outer_optimizer's real_data reads): the same episodes, checked
    against the problem (a tabular problem refuses LQR data, naming the batch and what it expected)."""
    from sim2real_bilevel.core.datasets import load_run_folder

    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', *args], capture_output=True, text=True,
                              timeout=300)
    assert cli('dataset', 'lqr', '--episodes', '4', '--out', str(tmp_path / 'a')).returncode == 0
    converted = cli('dataset', 'lqr', '--from', str(tmp_path / 'a'), '--out', str(tmp_path / 'b'))
    assert converted.returncode == 0, converted.stderr
    np.testing.assert_array_equal(load_run_folder(tmp_path / 'b').batches[0].states,
                                  load_run_folder(tmp_path / 'a').batches[0].states)
    wrong = cli('dataset', 'discrete_3s2a', '--from', str(tmp_path / 'a'), '--out', str(tmp_path / 'c'))
    assert wrong.returncode == 2 and 'batch 1: states: 2 values per step, expected 1' in wrong.stderr
    neither = cli('dataset', 'lqr', '--out', str(tmp_path / 'd'))
    assert neither.returncode == 2 and 'give --episodes N' in neither.stderr


@pytest.mark.slow
def test_the_mixed_bench_runs_its_quick_set(tmp_path, run_quick_bench):
    jobs = run_quick_bench('mixed.py', tmp_path, timeout=900)
    table = (tmp_path / 'mixed_N30.md').read_text()
    assert '| discrete_3s2a |' in table and 'counting the dataset' in table
    assert sorted(job['method'] for job in jobs) == ['mixed', 'online', 'online-safe']
    assert all(job['status'] == 'ok' and job['online_episodes'] <= 20 for job in jobs)
