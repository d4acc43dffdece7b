"""Crash-safe runs in process: the checkpoint file format (atomic, checksummed, previous file
as fallback) and resuming an interrupted outer loop bit for bit."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sim2real_bilevel.core import checkpoint
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.cli import main as cli_main
from sim2real_bilevel.core.config import builtin_config

PROBLEM = 'discrete_3s2a'


class Crash(Exception):
    """Stands for SIGKILL inside one of the loop's calls."""


def _problem(name=PROBLEM):
    return load_problem(builtin_config(name))


# --- file format -------------------------------------------------------------------------------------------
def test_round_trip_and_previous_kept(tmp_path):
    checkpoint.save_checkpoint(tmp_path, {'iteration': 1, 'x': float('nan')}, {'theta': np.arange(3.0)})
    checkpoint.save_checkpoint(tmp_path, {'iteration': 2}, {'theta': np.arange(3.0) + 1})
    meta, arrays = checkpoint.load_checkpoint(tmp_path)
    assert meta == {'iteration': 2} and np.array_equal(arrays['theta'], [1.0, 2.0, 3.0])
    previous, _ = checkpoint.read(tmp_path / checkpoint.PREVIOUS)
    assert previous['iteration'] == 1
    # a plain npz: loadable without pickle
    with np.load(tmp_path / checkpoint.CHECKPOINT, allow_pickle=False) as archive:
        assert json.loads(archive['__meta__'].tobytes())['version'] == checkpoint.VERSION
    assert not list(tmp_path.glob('.*tmp'))


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'garbage'])
def test_damaged_newest_falls_back_to_previous(tmp_path, caplog, damage):
    checkpoint.save_checkpoint(tmp_path, {'iteration': 1}, {'theta': np.full(50, 1.0)})
    checkpoint.save_checkpoint(tmp_path, {'iteration': 2}, {'theta': np.full(50, 2.0)})
    path = tmp_path / checkpoint.CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == 'truncate':
        data = data[:len(data) // 2]
    elif damage == 'flip':      # one bit inside the theta member's data (stored, not compressed)
        offset = data.find(np.full(50, 2.0).tobytes())
        assert offset > 0
        data[offset + 17] ^= 0x01
    else:
        data = bytearray(b'not a checkpoint at all')
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.read(path)
    with caplog.at_level(logging.WARNING):
        meta, arrays = checkpoint.load_checkpoint(tmp_path)
    assert meta['iteration'] == 1 and np.all(arrays['theta'] == 1.0)
    assert 'trying the previous checkpoint' in caplog.text


def test_both_damaged_is_an_error_not_a_fresh_start(tmp_path):
    checkpoint.save_checkpoint(tmp_path, {'iteration': 1}, {'theta': np.zeros(2)})
    checkpoint.save_checkpoint(tmp_path, {'iteration': 2}, {'theta': np.zeros(2)})
    for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS):
        (tmp_path / name).write_bytes(b'PK\x03\x04 torn')
    with pytest.raises(checkpoint.CheckpointError, match='no usable checkpoint'):
        checkpoint.load_checkpoint(tmp_path)
    assert checkpoint.load_checkpoint(tmp_path / 'empty') is None


def test_object_arrays_refused(tmp_path):
    with pytest.raises(ValueError, match='object dtype'):
        checkpoint.save_checkpoint(tmp_path, {}, {'bad': np.array([{'a': 1}], dtype=object)})


# --- resuming the outer loop -------------------------------------------------------------------------------
def _trajectory(run):
    """What must match between runs: every record but its wall-clock fields (as JSON text: NaN == NaN,
    floats written exactly)."""
    return json.dumps([{k: v for k, v in r.to_json().items() if k not in ('wall_time_s', 'timing')}
                       for r in run.history])


def _run(method, iterations, run_dir=None, crash_in=None, crash_at=None, seed=3, problem_name=PROBLEM):
    """Run ``method``; with ``crash_in`` (a problem method) raise Crash on its ``crash_at``-th call."""
    problem = _problem(problem_name)
    if crash_in is not None:
        original, calls = getattr(problem, crash_in), [0]

        def crashing(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                raise Crash(f'{crash_in} call {crash_at}')
            return original(*args, **kwargs)
        setattr(problem, crash_in, crashing)
    run = make_run(problem, method, seed=seed, iterations=iterations, overrides={'real_episodes': 2})
    resumed = run.attach_run_dir(run_dir) if run_dir is not None else False
    run.run()
    return run, resumed


@pytest.mark.parametrize('method,crash_in,crash_at,problem_name', [
    ('bilevel', 'real_policy_gradient', 3, PROBLEM),      # after iteration 3's episodes, before its step
    ('bilevel', 'inner_solve', 5, PROBLEM),               # after iteration 4's theta step, before its record
    ('bilevel', 'sample_real', 2, PROBLEM),               # while iteration 2's episodes run
    ('bilevel-sampled', 'sensitivity_terms', 4, PROBLEM),  # RNG-consuming sensitivities after the episodes
    ('sysid', 'system_identification', 3, PROBLEM),
    ('real-rl', 'real_policy_gradient', 4, PROBLEM),      # Adam on phi, created in start()
    ('bilevel', 'real_policy_gradient', 3, 'lqr'),        # continuous states and actions
    ('sysid', 'inner_solve', 4, 'lqr'),                   # incremental least squares rebuilt from the kept batches
    ('bilevel-anchored', 'inner_solve', 5, PROBLEM),      # the offset and every batch for the refit
    ('bilevel-anchored', 'inner_solve', 4, 'lqr'),       # the least squares rebuilt from every batch
    ('bilevel-anchored-auto', 'inner_solve', 5, PROBLEM),  # the first policy the anchored ones are held to
])
def test_interrupted_run_resumes_bit_identical(tmp_path, method, crash_in, crash_at, problem_name):
    iterations = 6
    reference, _ = _run(method, iterations, problem_name=problem_name)
    with pytest.raises(Crash):
        _run(method, iterations, tmp_path, crash_in, crash_at, problem_name=problem_name)
    batches_before = len(list((tmp_path / 'real').glob('batch_*.npz')))
    resumed_run, resumed = _run(method, iterations, tmp_path, problem_name=problem_name)
    assert resumed
    assert _trajectory(resumed_run) == _trajectory(reference)
    assert np.array_equal(resumed_run.theta, reference.theta)
    assert resumed_run.rng.bit_generator.state == reference.rng.bit_generator.state
    # the real data: every batch collected exactly once, the interrupted one reused
    files = sorted((tmp_path / 'real').glob('batch_*.npz'))
    assert len(files) == resumed_run.real_batch_count == reference.real_batch_count == iterations
    assert resumed_run.real_episode_count == reference.real_episode_count == 2 * iterations
    first_policy = make_run(_problem(problem_name), method, seed=3, iterations=iterations)
    first_policy.start()
    assert np.array_equal(checkpoint.load_real_batch(tmp_path, 1)[1]['policy_phi'], first_policy.phi)
    # crashed after collecting the iteration's batch: it is read back; while collecting: none to read
    assert resumed_run.replayed_real_batches == (0 if crash_in == 'sample_real' else 1)
    assert batches_before == crash_at - (1 if crash_in in ('sample_real', 'inner_solve') else 0)


def test_resume_from_previous_checkpoint_reuses_real_data(tmp_path):
    """Newest checkpoint torn: one iteration is recomputed, its real batch is read back, not re-collected."""
    reference, _ = _run('bilevel', 5)
    with pytest.raises(Crash):
        _run('bilevel', 5, tmp_path, 'real_policy_gradient', 4)
    (tmp_path / checkpoint.CHECKPOINT).write_bytes(b'torn')
    run, resumed = _run('bilevel', 5, tmp_path)
    assert resumed and run.replayed_real_batches == 2
    assert _trajectory(run) == _trajectory(reference)
    assert len(list((tmp_path / 'real').glob('batch_*.npz'))) == 5


def test_cli_solve_then_resume(tmp_path, capsys):
    run_dir = tmp_path / 'run'
    assert cli_main(['solve', PROBLEM, '--iterations', '3', '--real-episodes', '2', '--quiet',
                     '--run-dir', str(run_dir)]) == 0
    def records():
        document = json.loads((run_dir / 'results.json').read_text())
        return document['methods']['bilevel']['seeds'][0]['iterations']
    first = records()
    # resuming a finished run changes nothing; raising the iteration count continues it
    assert cli_main(['resume', str(run_dir), '--quiet']) == 0
    assert json.dumps(records(), sort_keys=True) == json.dumps(first, sort_keys=True) and len(first) == 4
    assert cli_main(['solve', PROBLEM, '--run-dir', str(run_dir), '--quiet']) == 2     # never overwritten
    assert cli_main(['resume', str(run_dir), '--iterations', '5', '--quiet']) == 0
    longer = records()
    reference, _ = _run('bilevel', 5, seed=0)     # the command line's first seed
    assert [r['theta'] for r in longer] == [r.theta for r in reference.history]
    assert cli_main(['resume', str(tmp_path / 'nothing-here'), '--quiet']) == 2


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _run('bilevel', 2, tmp_path)
    lqr = make_run(load_problem(builtin_config('lqr')), 'bilevel', seed=0, iterations=2)
    with pytest.raises(checkpoint.CheckpointError, match='checkpoint is of a BilevelOuterLoop run on'):
        lqr.attach_run_dir(tmp_path)
    sysid = make_run(_problem(), 'sysid', seed=0, iterations=2)
    with pytest.raises(checkpoint.CheckpointError, match='this is a SysIdRun run'):
        sysid.attach_run_dir(tmp_path)


# --- the append-only history -------------------------------------------------------------------------------
def test_crash_between_history_append_and_checkpoint_resumes_bit_identical(tmp_path, monkeypatch):
    reference, _ = _run('bilevel', 6)
    original, calls = checkpoint.save_checkpoint, [0]

    def crashing(*args, **kwargs):                 # history.jsonl already holds the new record
        calls[0] += 1
        if calls[0] == 4:
            raise Crash('between history.jsonl and checkpoint.npz')
        return original(*args, **kwargs)
    monkeypatch.setattr(checkpoint, 'save_checkpoint', crashing)
    with pytest.raises(Crash):
        _run('bilevel', 6, tmp_path)
    monkeypatch.setattr(checkpoint, 'save_checkpoint', original)
    lines_at_crash = len((tmp_path / checkpoint.HISTORY).read_text().splitlines())
    assert lines_at_crash == checkpoint.load_checkpoint(tmp_path)[0]['history_length'] + 1   # one uncounted line
    run, resumed = _run('bilevel', 6, tmp_path)
    assert resumed and _trajectory(run) == _trajectory(reference)
    lines = (tmp_path / checkpoint.HISTORY).read_text().splitlines()
    assert [json.loads(line)['iteration'] for line in lines] == list(range(7))          # no duplicate, no gap


def test_checkpoint_size_does_not_grow_with_the_run(tmp_path):
    run = make_run(_problem(), 'bilevel', seed=0, iterations=40)
    run.attach_run_dir(tmp_path)
    sizes = {}
    while run.iteration < 40:
        run.step()
        run.save_checkpoint()
        sizes[run.iteration] = (tmp_path / checkpoint.CHECKPOINT).stat().st_size
    assert abs(sizes[40] - sizes[5]) < 1024, sizes        # the history is no longer copied into every checkpoint
    assert len((tmp_path / checkpoint.HISTORY).read_text().splitlines()) == 41


def test_kept_batch_numbers_are_stored_as_runs():
    numbers = [3, 4, 5, 9, 11, 12]
    assert checkpoint.number_runs(numbers) == [[3, 5], [9, 9], [11, 12]]
    assert checkpoint.numbers_from_runs(checkpoint.number_runs(numbers)) == numbers
    assert checkpoint.number_runs(range(1, 100001)) == [[1, 100000]]


def test_history_of_a_run_that_never_checkpointed_is_replaced(tmp_path):
    (tmp_path / checkpoint.HISTORY).write_text('{"iteration": 99}\n{"iteration": 100}\n{"torn')
    run, resumed = _run('bilevel', 2, tmp_path)
    assert not resumed
    lines = (tmp_path / checkpoint.HISTORY).read_text().splitlines()
    assert [json.loads(line)['iteration'] for line in lines] == [0, 1, 2]


def test_history_shorter_than_the_checkpoint_says_is_an_error(tmp_path):
    _run('bilevel', 3, tmp_path)
    lines = (tmp_path / checkpoint.HISTORY).read_text().splitlines(keepends=True)
    (tmp_path / checkpoint.HISTORY).write_text(''.join(lines[:2]))
    with pytest.raises(checkpoint.CheckpointError, match='holds 2 complete iteration records; the checkpoint counts 4'):
        _run('bilevel', 3, tmp_path)


# --- write-behind ------------------------------------------------------------------------------------------
def _run_dir_files(run_dir):
    """The run dir's files and their bytes, but the checkpoints' (whose metadata holds wall times);
    history.jsonl as its records without their wall-clock fields."""
    files = {path.relative_to(run_dir).as_posix(): path.read_bytes() for path in sorted(run_dir.rglob('*'))
             if path.is_file() and 'checkpoint' not in path.name}
    files[checkpoint.HISTORY] = [{k: v for k, v in json.loads(line).items() if k not in ('wall_time_s', 'timing')}
                                 for line in files[checkpoint.HISTORY].splitlines()]
    return files


def test_write_behind_writes_what_the_synchronous_run_writes(tmp_path):
    synchronous, _ = _run('bilevel', 6, tmp_path / 'sync')
    run = make_run(_problem(), 'bilevel', seed=3, iterations=6, overrides={'real_episodes': 2})
    run.attach_run_dir(tmp_path / 'behind')
    writer = run.write_behind()
    run.run()
    run.close_writer()
    assert writer.written > 0 and run.writer is None
    assert _trajectory(run) == _trajectory(synchronous)
    assert _run_dir_files(tmp_path / 'behind') == _run_dir_files(tmp_path / 'sync')
    meta, arrays = checkpoint.load_checkpoint(tmp_path / 'behind')
    assert meta['iteration'] == 6 and meta['history_length'] == 7 and np.array_equal(arrays['theta'], run.theta)
    # a run stopped after 4 of 6 iterations resumes bit-identically from the files written behind
    stopped = make_run(_problem(), 'bilevel', seed=3, iterations=6, overrides={'real_episodes': 2})
    stopped.attach_run_dir(tmp_path / 'stopped')
    stopped.write_behind()
    stopped.run(4)
    stopped.close_writer()
    resumed, was_resumed = _run('bilevel', 6, tmp_path / 'stopped')
    assert was_resumed and resumed.replayed_real_batches == 0
    assert _trajectory(resumed) == _trajectory(synchronous)


def test_write_behind_is_bounded_ordered_and_flushed_at_close(tmp_path, monkeypatch):
    """A disk slower than the loop: the loop waits once max_pending writes are queued, and close
    returns only when every write is on disk, in the order asked."""
    import threading
    import time
    gate, order, original = threading.Event(), [], checkpoint.atomic_write_bytes

    def slow(path, data, sync=True):
        gate.wait()
        order.append(path.name)
        original(path, data, sync)
    monkeypatch.setattr(checkpoint, 'atomic_write_bytes', slow)
    writer = checkpoint.WriteBehind(max_pending=2)
    for index in range(1, 4):          # one taken by the writer (held at the gate), two queued
        checkpoint.save_pending_request(tmp_path, {'index': index}, writer)
    fourth = threading.Thread(target=checkpoint.save_pending_request, args=(tmp_path, {'index': 4}, writer))
    fourth.start()
    fourth.join(timeout=0.5)
    assert fourth.is_alive() and writer.pending() == 3          # blocked: the queue is full
    assert not (tmp_path / checkpoint.REAL_DIR / checkpoint.PENDING).exists()
    gate.set()
    fourth.join(timeout=10.0)
    assert not fourth.is_alive()
    checkpoint.save_checkpoint(tmp_path, {'iteration': 9}, {'theta': np.zeros(2)}, writer)
    writer.close()
    assert writer.pending() == 0 and writer.written == 5
    assert order == [checkpoint.PENDING] * 4 + [checkpoint.CHECKPOINT]
    assert checkpoint.load_pending_request(tmp_path) == {'index': 4}
    assert checkpoint.load_checkpoint(tmp_path)[0] == {'iteration': 9}
    start = time.monotonic()
    checkpoint.save_pending_request(tmp_path, {'index': 5}, writer)   # closed: written in the caller's thread
    assert checkpoint.load_pending_request(tmp_path) == {'index': 5} and time.monotonic() - start < 5.0


def test_a_failed_write_behind_is_raised_and_nothing_after_it_written(tmp_path, monkeypatch):
    original = checkpoint.atomic_write_bytes

    def failing(path, data, sync=True):
        if path.name.startswith('batch_'):
            raise OSError(28, 'No space left on device')
        original(path, data, sync)
    monkeypatch.setattr(checkpoint, 'atomic_write_bytes', failing)
    run = make_run(_problem(), 'bilevel', seed=3, iterations=3, overrides={'real_episodes': 2})
    run.attach_run_dir(tmp_path)
    run.write_behind()
    with pytest.raises(checkpoint.CheckpointError, match=r'batch_000001\.npz: OSError.*No space left'):
        try:
            run.run()            # raises at a later write, or not (the writer may not have reached it yet)
        finally:
            run.close_writer()   # raises in any case: the failure is never lost
    # the checkpoint of iteration 0 (before the failed batch) is there; nothing queued after the batch is
    meta, _ = checkpoint.load_checkpoint(tmp_path)
    assert meta['iteration'] == 0
    assert not (tmp_path / checkpoint.REAL_DIR).exists() or not list((tmp_path / checkpoint.REAL_DIR).glob('*'))
