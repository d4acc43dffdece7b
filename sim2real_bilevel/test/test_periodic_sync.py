"""The run dir's periodic sync (``checkpoint.PeriodicSync``, ``MethodRun.sync_periodically``): every
file written and renamed into place at once, the fsyncs made together now and then.  Checked: the
loop makes no fsync between syncs; a crash in process (the kernel keeps every completed write, as
after a SIGKILL) resumes bit for bit from the newest checkpoint as without it; a simulated power
loss -- the run dir as it was at the last sync, plus the later files torn -- resumes from
checkpoint.durable.npz and collects the lost batches again, to the same records."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from sim2real_bilevel.core import checkpoint
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.problems import load_problem

PROBLEM = 'discrete_3s2a'
ITERATIONS = 8


class Crash(Exception):
    """Stands for a SIGKILL or a power loss inside the loop."""


def _records(run) -> str:
    return json.dumps([{k: v for k, v in r.to_json().items() if k not in ('wall_time_s', 'timing')}
                       for r in run.history])


def _run(crash_at=None, reported=None):
    """The bilevel run; ``crash_at``: Crash in the real policy gradient of that iteration (its
    real batch collected and saved, its checkpoint not)."""
    problem = load_problem(builtin_config(PROBLEM))
    if crash_at is not None:
        original, calls = problem.real_policy_gradient, [0]

        def crashing(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                raise Crash(f'iteration {crash_at}')
            return original(*args, **kwargs)
        problem.real_policy_gradient = crashing
    return make_run(problem, 'bilevel', seed=7, iterations=ITERATIONS, overrides={'real_episodes': 2},
                    progress=None if reported is None else reported.append)


@pytest.fixture(scope='module')
def reference():
    run = _run()
    run.run()
    return run


def _fsyncs(monkeypatch) -> list:
    calls, original = [], os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (calls.append(fd), original(fd))[1])
    return calls


def test_no_fsync_between_syncs_and_the_durable_checkpoint_after_close(tmp_path, monkeypatch, reference):
    fsyncs = _fsyncs(monkeypatch)
    each = _run()
    each.attach_run_dir(tmp_path / 'each')
    each.run()
    assert len(fsyncs) >= 5 * ITERATIONS          # per iteration: the batch and its folder, history, checkpoint and folder
    fsyncs.clear()
    run = _run()
    run.attach_run_dir(tmp_path / 'periodic')
    writer = run.sync_periodically(3600.0)
    run.run()
    assert fsyncs == [] and writer.syncs == 0 and writer.pending() > 0
    assert not (tmp_path / 'periodic' / checkpoint.DURABLE).exists()
    run.close_writer()
    assert writer.syncs == 1 and writer.pending() == 0 and len(fsyncs) >= 4
    durable = (tmp_path / 'periodic' / checkpoint.DURABLE).read_bytes()
    assert durable == (tmp_path / 'periodic' / checkpoint.CHECKPOINT).read_bytes()
    assert _records(run) == _records(each) == _records(reference)


def test_a_crash_between_syncs_resumes_from_the_newest_checkpoint_bit_for_bit(tmp_path, reference):
    run = _run(crash_at=6)
    run.attach_run_dir(tmp_path)
    run.sync_periodically(3600.0)
    with pytest.raises(Crash):
        run.run()                                   # nothing synced: the files are the kernel's
    resumed = _run()
    assert resumed.attach_run_dir(tmp_path) and resumed.resumed_from == checkpoint.CHECKPOINT
    assert resumed.iteration == 5
    resumed.sync_periodically(3600.0)
    resumed.run()
    resumed.close_writer()
    assert _records(resumed) == _records(reference)
    assert resumed.replayed_real_batches == 1       # iteration 6's batch, saved before the crash
    assert len(list((tmp_path / checkpoint.REAL_DIR).glob('batch_*.npz'))) == ITERATIONS


def test_a_power_loss_resumes_from_the_durable_checkpoint_and_collects_the_lost_batches_again(
        tmp_path, monkeypatch, reference):
    run_dir, synced = tmp_path / 'run', tmp_path / 'synced'
    now = [0.0]
    original_flush = checkpoint.PeriodicSync.flush

    def flush(self):                                # what a power loss keeps: the run dir as of the last sync
        original_flush(self)
        if run_dir.exists():                        # (the history's first sync flushes before anything is written)
            shutil.rmtree(synced, ignore_errors=True)
            shutil.copytree(run_dir, synced)
    monkeypatch.setattr(checkpoint.PeriodicSync, 'flush', flush)
    run = _run(crash_at=8, reported=[])
    run.progress = lambda record: now.__setitem__(0, now[0] + 1.0)     # one second per iteration
    run.attach_run_dir(run_dir)
    run.writer = checkpoint.PeriodicSync(3.0, clock=lambda: now[0])
    with pytest.raises(Crash):
        run.run()
    # synced at iterations 3 and 6; the newest checkpoint is iteration 7's, batches 7 and 8 were written after
    meta, _ = checkpoint.read(synced / checkpoint.DURABLE)
    assert meta['iteration'] == 6 and meta['real_batch_count'] == 6
    assert checkpoint.read(run_dir / checkpoint.CHECKPOINT)[0]['iteration'] == 7
    lost = tmp_path / 'lost'
    shutil.copytree(synced, lost)
    for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, 'real/batch_000007.npz', 'real/batch_000008.npz'):
        data = (run_dir / name).read_bytes()
        (lost / name).write_bytes(data[:len(data) // 2])               # renamed into place, data torn
    with open(lost / checkpoint.HISTORY, 'ab') as stream:
        stream.write(b'{"iteration": 7, "normalized_ret')
    resumed = _run()
    assert resumed.attach_run_dir(lost)
    assert resumed.resumed_from == checkpoint.DURABLE and resumed.iteration == 6
    assert sorted(p.name for p in (lost / checkpoint.REAL_DIR).glob('*.unsynced')) == [
        'batch_000007.npz.unsynced', 'batch_000008.npz.unsynced']
    resumed.run()
    assert _records(resumed) == _records(reference)
    assert np.array_equal(resumed.theta, reference.theta)
    assert resumed.replayed_real_batches == 0       # batches 7 and 8 collected again
    assert len(list((lost / checkpoint.REAL_DIR).glob('batch_*.npz'))) == ITERATIONS
    assert len((lost / checkpoint.HISTORY).read_text().splitlines()) == ITERATIONS + 1


def test_without_a_usable_checkpoint_the_resume_is_refused_not_restarted(tmp_path):
    run = _run()
    run.attach_run_dir(tmp_path)
    run.sync_periodically(0.0)
    run.run(3)
    run.close_writer()
    for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS, checkpoint.DURABLE):
        (tmp_path / name).write_bytes(b'torn')
    with pytest.raises(checkpoint.CheckpointError, match='no usable checkpoint'):
        _run().attach_run_dir(tmp_path)


@pytest.mark.ros
def test_the_optimizer_refuses_two_durability_rules_at_once(tmp_path, ros_env):
    """write_behind and sync_period_s together: the node exits 2 naming both, before it waits for anyone."""
    import subprocess
    import sys
    pytest.importorskip('rclpy')
    command = [sys.executable, '-m', 'sim2real_bilevel.nodes.outer_optimizer', '--ros-args', '-p', f'problem:={PROBLEM}',
               '-p', f'run_dir:={tmp_path / "run"}', '-p', 'write_behind:=true', '-p', 'sync_period_s:=1.0']
    refused = subprocess.run(command, capture_output=True, text=True, env=ros_env, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert 'write_behind true and sync_period_s 1: two durability rules' in refused.stdout + refused.stderr
    assert not (tmp_path / 'run').exists()
    plain = command[:-4] + ['-p', 'iterations:=0', '-p', 'server_timeout_s:=0.5', '-p', 'sync_period_s:=1.0']
    accepted = subprocess.run(plain, capture_output=True, text=True, env=ros_env, timeout=120)
    output = accepted.stdout + accepted.stderr
    assert 'waiting for the graph' in output and 'two durability rules' not in output, output    # one rule: on it goes
