"""Pipelined evaluation in the core loop (``MethodRun.record`` with an evaluator that has
``submit``, as the graph's ``EvaluatorClient``): a record waits for its evaluation while the next
iteration runs, and only then goes into the history, history.jsonl and the progress callback.
Checked against the same run with the evaluator waited for: the same records, every one with its
evaluation, each on disk before it is reported, and a run stopped with a record pending resumes
to the same records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sim2real_bilevel.core import checkpoint
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.evaluation import oracle_evaluator
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.problems import load_problem

PROBLEM = 'discrete_3s2a'
ITERATIONS = 6


class Stop(Exception):
    """Stands for a crash or a signal while the loop waits for an evaluation."""


class DeferredEvaluator:
    """The oracle evaluator with ``submit``: the evaluation is computed when its result is asked
    for, so a record reported before that would carry NaN.  ``stop_at``: the ``result()`` call
    (1-based) that raises ``Stop`` instead."""

    def __init__(self, problem, stop_at: int = 0):
        self.evaluate = oracle_evaluator(problem)
        self.submitted, self.results, self.stop_at = [], 0, stop_at

    def __call__(self, phi):
        return self.evaluate(phi)

    def submit(self, phi):
        evaluator, phi = self, np.array(phi)
        self.submitted.append(phi)

        class Evaluation:
            def result(self):
                evaluator.results += 1
                if evaluator.results == evaluator.stop_at:
                    raise Stop(f'result {evaluator.results}')
                return evaluator.evaluate(phi)
        return Evaluation()


def _records(history) -> str:
    return json.dumps([{k: v for k, v in r.to_json().items() if k not in ('wall_time_s', 'timing')} for r in history])


def _run(evaluator_of=None, run_dir=None, reported=None):
    problem = load_problem(builtin_config(PROBLEM))
    evaluator = None if evaluator_of is None else evaluator_of(problem)
    run = make_run(problem, 'bilevel', seed=5, iterations=ITERATIONS, overrides={'real_episodes': 2},
                   progress=None if reported is None else reported.append)
    run.evaluator = evaluator
    resumed = run.attach_run_dir(run_dir) if run_dir is not None else False
    return run, evaluator, resumed


def test_pipelined_records_equal_the_waited_ones_and_are_on_disk_before_they_are_reported(tmp_path):
    reference, _, _ = _run(oracle_evaluator)
    reference.run()
    reported, on_disk = [], []
    run, evaluator, _ = _run(DeferredEvaluator, tmp_path, reported)
    run.progress = lambda record: (reported.append(record), on_disk.append(
        len((tmp_path / checkpoint.HISTORY).read_text().splitlines())))
    run.start()
    # iteration 0's record waits for its evaluation: not in the history, nor reported, but checkpointed
    assert run.pending is not None and run.pending.record.iteration == 0 and not run.history and not reported
    meta, arrays = checkpoint.load_checkpoint(tmp_path)
    assert meta['pending_record']['iteration'] == 0 and meta['history_length'] == 0
    np.testing.assert_array_equal(arrays['pending.phi'], run.phi)
    run.step()
    assert [r.iteration for r in run.history] == [0] and run.pending.record.iteration == 1
    run.run()
    assert run.pending is None and len(evaluator.submitted) == ITERATIONS + 1
    assert _records(run.history) == _records(reference.history)
    assert all(math.isfinite(r.normalized_return) for r in run.history)
    # each record reported once, in order, after history.jsonl held it
    assert [r.iteration for r in reported] == list(range(ITERATIONS + 1))
    assert on_disk == [r.iteration + 1 for r in reported]
    meta, _ = checkpoint.load_checkpoint(tmp_path)
    assert 'pending_record' not in meta and meta['history_length'] == ITERATIONS + 1


@pytest.mark.parametrize('resume_with', ['pipelined', 'waited'])
def test_a_run_stopped_while_a_record_waits_resumes_to_the_same_records(tmp_path, resume_with):
    reference, _, _ = _run(oracle_evaluator)
    reference.run()
    run, _, _ = _run(lambda problem: DeferredEvaluator(problem, stop_at=4), tmp_path)
    with pytest.raises(Stop):
        run.run()
    # the 4th result (iteration 3's record, asked for at iteration 4's record) never came: the
    # last checkpoint holds iteration 3 with its record pending, the history 0..2
    meta, _ = checkpoint.load_checkpoint(tmp_path)
    assert meta['iteration'] == 3 and meta['history_length'] == 3 and meta['pending_record']['iteration'] == 3
    assert len((tmp_path / checkpoint.HISTORY).read_text().splitlines()) == 3
    resumed, evaluator, was_resumed = _run(DeferredEvaluator if resume_with == 'pipelined' else oracle_evaluator,
                                           tmp_path)
    assert was_resumed and resumed.pending.record.iteration == 3 and resumed.pending.evaluation is None
    resumed.run()
    assert _records(resumed.history) == _records(reference.history)
    assert np.array_equal(resumed.theta, reference.theta)
    lines = [json.loads(line) for line in (tmp_path / checkpoint.HISTORY).read_text().splitlines()]
    assert [r['iteration'] for r in lines] == list(range(ITERATIONS + 1))
    assert all(math.isfinite(r['normalized_return']) for r in lines)


def test_without_submit_the_loop_waits_as_before(tmp_path):
    reported = []
    run, _, _ = _run(oracle_evaluator, tmp_path, reported)
    run.start()
    assert run.pending is None and [r.iteration for r in run.history] == [0] == [r.iteration for r in reported]
    assert 'pending_record' not in checkpoint.load_checkpoint(tmp_path)[0]
