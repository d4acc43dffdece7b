"""The benchmark suite (bench/suite.py): the quick suite runs in parallel processes and writes
its files, the table has one row per (kind, method), an injected failing job is recorded as an
abort without stopping the suite, a second invocation skips the recorded jobs; and the
exact-real-gradient reference uses the exact gradient of the hidden real objective."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

# bench/ by its package name (pytest.ini's pythonpath holds its parent): the pool's forkserver workers
# import the jobs' functions by that name
suite = importlib.import_module('bench.suite')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    """The quick suite through the command line, into a fresh folder: (out, exit code, stdout)."""
    out = tmp_path_factory.mktemp('suite') / 'quick'
    import contextlib
    import io
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = suite.main(['--quick', '--workers', '2', '--out', str(out)])
    return out, code, stdout.getvalue()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_quick_suite_writes_its_files(quick):
    out, code, printed = quick
    assert code == 0
    for name in ('suite.json', 'suite.md', 'suite.png', 'jobs.jsonl'):
        assert (out / name).stat().st_size > 0, name
    problems = sorted(p.name for p in (out / 'problems').iterdir())
    assert problems == [f'{kind}-{seed:03d}.yaml' for kind in ('lqr', 'tabular') for seed in range(4)]
    assert '# Benchmark suite' in printed
    jobs = [r for r in map(json.loads, _lines(out / 'jobs.jsonl')) if r['type'] == 'job']
    assert len(jobs) == 2 * 4 * len(suite.QUICK['methods'])
    assert all(r['status'] == 'ok' for r in jobs), [r.get('error') for r in jobs]
    assert {r['iterations'] for r in jobs} == {suite.QUICK['iterations']}
    assert all(r['outer_iterations'] == (0 if r['method'] == 'nominal' else suite.QUICK['iterations']) for r in jobs)


def test_quick_table_has_one_row_per_kind_and_method(quick):
    out = quick[0]
    document = json.loads((out / 'suite.json').read_text())
    pairs = [(r['kind'], r['method']) for r in document['rows']]
    assert pairs == [(kind, method) for kind in ('tabular', 'lqr') for method in suite.QUICK['methods']]
    markdown = (out / 'suite.md').read_text()
    for kind, method in pairs:
        assert f'| {kind} | {method} | 4 |' in markdown
    for row in document['rows']:
        assert row['finished'] == row['jobs'] == 4 and row['aborts'] == 0
        if row['method'] == 'nominal':       # generated problems: nominal reaches at most 0.9 by design
            assert row['successes'] == 0
    # every finished job is either a success or a listed failure
    failed = {(f['kind'], f['problem_seed'], f['method'], f['run_seed']) for f in document['failures']}
    assert sum(r['jobs'] - r['successes'] for r in document['rows']) == len(failed)
    for kind, comparison in document['bilevel_vs_reference'].items():
        assert comparison['pairs'] == 4
        assert sum(comparison[k] for k in ('both', 'bilevel_only', 'estimator_failures',
                                           'landscape_failures')) == 4


def test_injected_failure_is_an_abort_and_resume_skips_done_jobs(quick):
    out = quick[0]
    before = _lines(out / 'jobs.jsonl')
    heard = []
    # run seed 1 of tabular problem 0 is new (the quick suite ran seed 0 only): only it runs
    document = suite.run_suite(out, kinds=('tabular',), problems=1, seeds=2, methods=('bilevel', 'nominal'),
                               iterations=suite.QUICK['iterations'], workers=2, progress=heard.append,
                               inject_failure={'tabular/000/bilevel/1'})
    assert sorted(r['key'] for r in heard) == ['tabular/000/bilevel/1', 'tabular/000/nominal/1']
    aborted = next(r for r in heard if r['method'] == 'bilevel')
    assert aborted['status'] == 'abort' and 'injected failure' in aborted['error']
    assert next(r for r in heard if r['method'] == 'nominal')['status'] == 'ok'    # the suite went on
    assert len(_lines(out / 'jobs.jsonl')) == len(before) + 2
    listed = [f for f in document['failures'] if f['status'] == 'abort']
    assert [(f['problem_seed'], f['method'], f['run_seed']) for f in listed] == [(0, 'bilevel', 1)]
    assert listed[0]['reason'].startswith('abort: RuntimeError: injected failure')
    row = next(r for r in document['rows'] if r['method'] == 'bilevel')
    assert row['aborts'] == 1 and row['finished'] == 2
    assert 'injected failure' in (out / 'suite.md').read_text()

    # the same quick suite again: everything is recorded, nothing runs, the table is the same
    heard.clear()
    again = suite.run_suite(out, kinds=('tabular', 'lqr'), problems=4, seeds=1, methods=suite.QUICK['methods'],
                            iterations=suite.QUICK['iterations'], workers=2, progress=heard.append)
    assert heard == []
    first = json.loads((out / 'suite.json').read_text())
    assert again['rows'] == first['rows']
    # a line cut by a kill: the next record still gets a line of its own
    with open(out / 'jobs.jsonl', 'a') as log:
        log.write('{"type": "job", "key": "tabular/000/bil')
    # --retry-aborts runs the aborted job again (without the injected failure now)
    suite.run_suite(out, kinds=('tabular',), problems=1, seeds=2, methods=('bilevel', 'nominal'),
                    iterations=suite.QUICK['iterations'], workers=1, progress=heard.append, retry_aborts=True)
    assert [(r['key'], r['status']) for r in heard] == [('tabular/000/bilevel/1', 'ok')]
    assert suite.read_records(out / 'jobs.jsonl')[-1]['key'] == 'tabular/000/bilevel/1'


def test_a_cut_line_is_skipped_and_other_caps_are_not_done(quick, tmp_path):
    out = quick[0]
    copy = tmp_path / 'jobs.jsonl'
    copy.write_text((out / 'jobs.jsonl').read_text() + '{"type": "job", "key": "tab')
    records = suite.read_records(copy)
    assert records == suite.read_records(out / 'jobs.jsonl')         # the cut line is skipped
    specs = suite.job_specs(out, ('tabular',), 1, 1, ('bilevel',), suite.QUICK['iterations'])
    assert list(suite.latest_jobs(records, specs)) == ['tabular/000/bilevel/0']
    other_cap = suite.job_specs(out, ('tabular',), 1, 1, ('bilevel',), suite.QUICK['iterations'] + 1)
    assert suite.latest_jobs(records, other_cap) == {}


def test_reused_problem_gives_the_same_run(quick):
    """A worker reuses a loaded problem across jobs: the result equals a fresh load's."""
    out = quick[0]
    spec = suite.job_specs(out, ('tabular',), 1, 1, ('bilevel',), 5)[0]
    suite._PROBLEMS.clear()
    first = suite.run_job(spec)
    second = suite.run_job(spec)          # the same problem object, already used
    assert first['load_s'] > 0 and second['load_s'] == 0
    assert first['status'] == second['status'] == 'ok'
    assert first['curve'] == second['curve'] and first['real_transitions'] == second['real_transitions']


def test_exact_real_gradient_reference(quick):
    from sim2real_bilevel.core import experiments
    from sim2real_bilevel.core.gradcheck import real_objective_gradient
    from sim2real_bilevel.core.problems import load_problem

    problem = load_problem(out_path := quick[0] / 'problems' / 'tabular-000.yaml')
    reference = experiments.make_run(problem, suite.REFERENCE, seed=3, iterations=4)
    bilevel = experiments.make_run(problem, 'bilevel', seed=3, iterations=4)
    reference.start()
    expected = real_objective_gradient(problem, reference.phi)
    np.testing.assert_allclose(reference.problem.real_policy_gradient(reference.phi, []), expected, rtol=1e-12)
    reference.run()
    bilevel.run()
    # the same real episodes are collected (accounting and random stream), only g differs
    assert [r.real_transitions for r in reference.history] == [r.real_transitions for r in bilevel.history]
    assert reference.problem.source == str(out_path)


def test_bad_options_are_refused(tmp_path, capsys):
    assert suite.main(['--methods', 'bilevel,nope', '--out', str(tmp_path / 'x')]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert suite.main(['--problems', '0', '--out', str(tmp_path / 'x')]) == 2


def test_failed_generation_makes_its_jobs_aborts(tmp_path):
    heard = []
    document = suite.run_suite(tmp_path, kinds=('tabular',), problems=1, seeds=1, methods=('nominal', 'bilevel'),
                               workers=1, progress=heard.append, inject_failure={'generate:tabular/000'})
    assert sorted((r['method'], r['status']) for r in heard) == [('bilevel', 'abort'), ('nominal', 'abort')]
    assert all(f['reason'] == 'abort: problem generation failed: GenerationFailed: injected failure: no tabular '
                             'candidate for seed 0' for f in document['failures'])
    assert len(document['failures']) == 2 and not (tmp_path / 'problems' / 'tabular-000.yaml').exists()


def test_deployed_drop_reads_the_policies_a_run_deployed():
    """curve[k] is the policy held after iteration k (deployed at k + 1); the last is never deployed."""
    assert suite.deployed_drop([0.5, 0.6, 0.3, 0.9]) == pytest.approx(-0.2)
    assert suite.deployed_drop([0.5, 0.7, 0.1]) == pytest.approx(0.0)      # 0.1 was never deployed
    assert suite.deployed_drop([0.5]) is None                             # nothing deployed
    rows = suite.deployment_row([{'curve': [0.5, 0.6, 0.3, 0.9], 'backtracks': 2},
                                 {'curve': [0.4, 0.42, 0.9], 'backtracks': 0}, {'curve': [0.4]}])
    assert rows['deployed_runs'] == 2 and rows['backtracks'] == 2
    assert rows['worst_deployed_drop'] == pytest.approx(-0.2)
    assert rows['median_deployed_drop'] == pytest.approx(-0.1)
    assert rows['runs_deployed_below_start'] == 1                         # -0.2 < -0.05; 0.0 is not


def test_outcome_counts_safe_improvement_backtracks():
    from sim2real_bilevel.core.outer import IterationRecord

    def record(k, event=''):
        return IterationRecord(iteration=k, normalized_return=0.5, real_transitions=10 * k, grad_norm=0.0,
                               theta=[], wall_time_s=0.0, event=event)
    history = [record(0), record(1, 'backtracked: the deployed policy ...'), record(2),
               record(3, 'refused before deployment: ...'), record(4, 'something else')]
    assert suite.outcome(history)['backtracks'] == 2
