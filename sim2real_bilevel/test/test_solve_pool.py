"""Solver 'resolve''s inner solves in worker processes (``core/solve_pool.py``): the same gradient as
in one process, errors that name the solve, a dead worker reported and replaced, and what cannot be
pickled kept in process.  Real subprocesses (``python -m sim2real_bilevel.core.solve_pool``)."""
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sim2real_bilevel.core import outer, solve_pool
from sim2real_bilevel.core.outer import resolve_processes, resolve_steps, resolved_outer_gradient
from sim2real_bilevel.core.problems import load_problem
from toy_problem import SlowToy

CONFIG = Path(__file__).resolve().parents[1] / 'config'


@pytest.fixture
def lqr():
    problem = load_problem(CONFIG / 'lqr.yaml')
    theta = problem.theta0()
    return problem, theta, problem.inner_solve(theta).phi


@pytest.fixture
def pool():
    pool = solve_pool.SolvePool(2)
    yield pool
    pool.close()


def test_solves_in_worker_processes_give_the_in_process_gradient(lqr, pool, monkeypatch):
    problem, theta, phi = lqr
    monkeypatch.setattr(solve_pool, 'shared_pool', lambda size: pool)
    g = np.random.default_rng(1).standard_normal(problem.phi_size())
    steps = resolve_steps(problem, 0.01)
    alone, info_alone = resolved_outer_gradient(problem, phi, theta, g, steps, workers=1)
    spread, info_spread = resolved_outer_gradient(problem, phi, theta, g, steps, workers=2)
    assert info_alone['processes'] == 1 and info_spread['processes'] == 2
    assert info_spread['solves'] == 2 * theta.size
    reported = []
    resolved_outer_gradient(problem, phi, theta, g, steps, workers=2,
                            progress=lambda done, total: reported.append((done, total)))
    assert reported == [(k, 2 * theta.size) for k in range(1, 2 * theta.size + 1)]
    assert len(pool._workers) == 2
    np.testing.assert_allclose(spread, alone, rtol=1e-12, atol=1e-14)
    assert np.linalg.norm(alone) > 0


def test_resolve_progress_in_the_sensitivity_node_log_is_throttled():
    from sim2real_bilevel.nodes.sensitivity import ResolveProgress

    class Logger:
        lines = []

        def info(self, text):
            self.lines.append(text)
    logger = Logger()
    progress = ResolveProgress(logger, 7, period_s=0.0)
    progress(3, 12)
    progress(12, 12)                            # the last one: the node's own summary line says it
    assert logger.lines == ['policy version 7: 3 of 12 inner solves done (0 s)']
    quiet = ResolveProgress(logger, 8, period_s=3600.0)
    quiet(1, 12)
    assert len(logger.lines) == 1


def test_auto_sends_only_slow_solves_to_processes(monkeypatch):
    monkeypatch.setattr(solve_pool, 'affordable_workers', lambda: 6)
    assert resolve_processes(0, 11, first_solve_s=0.01) == 1
    assert resolve_processes(0, 11, first_solve_s=outer.RESOLVE_POOL_ABOVE_S) == 6
    assert resolve_processes(0, 3, first_solve_s=60.0) == 3
    assert resolve_processes(4, 2, first_solve_s=0.0) == 2        # never more processes than solves
    assert resolve_processes(1, 11, first_solve_s=60.0) == 1


def test_a_solve_that_fails_in_a_worker_names_it_and_the_worker_serves_on(lqr, pool):
    problem, theta, phi = lqr
    with pytest.raises(RuntimeError, match=r'(?s)continued solve for Q\[0\]\[0\] = 2 failed.*Traceback.*einsum'):
        pool.continued_solves(problem, [(theta[:-1], phi)], names=['Q[0][0] = 2'])
    [again] = pool.continued_solves(problem, [(theta, phi)])
    np.testing.assert_allclose(again, problem.continued_solve(theta, phi).phi, rtol=1e-12)


def test_a_worker_that_dies_is_reported_and_replaced(lqr):
    problem, theta, phi = lqr
    pool = solve_pool.SolvePool(1)
    try:
        pool.continued_solves(problem, [(theta, phi)])
        [worker] = pool._workers
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        with pytest.raises(solve_pool.WorkerDied, match=rf'solve worker \(pid {worker.process.pid}\) exited with status -9'):
            pool.continued_solves(problem, [(theta, phi)])
        [answer] = pool.continued_solves(problem, [(theta, phi)])
        assert pool._workers[0].process.pid != worker.process.pid
        np.testing.assert_allclose(answer, problem.continued_solve(theta, phi).phi, rtol=1e-12)
    finally:
        pool.close()


def test_the_sensitivity_survives_a_worker_that_dies(lqr, monkeypatch, caplog):
    """A worker killed mid-sensitivity (out of memory, say) costs no outer iteration: the solves
    run in the caller, with a warning, and the gradient is the in-process one."""
    problem, theta, phi = lqr
    pool = solve_pool.SolvePool(2)
    monkeypatch.setattr(solve_pool, 'shared_pool', lambda size: pool)
    original = solve_pool._Worker.ask

    def ask_then_die(worker, message):
        if message[0] == 'solve':
            os.kill(worker.process.pid, signal.SIGKILL)
        return original(worker, message)
    monkeypatch.setattr(solve_pool._Worker, 'ask', ask_then_die)
    g = np.ones(problem.phi_size())
    steps = resolve_steps(problem, 0.01)
    try:
        gradient, info = resolved_outer_gradient(problem, phi, theta, g, steps, workers=2)
    finally:
        pool.close()
    expected, _ = resolved_outer_gradient(problem, phi, theta, g, steps, workers=1)
    assert info['processes'] == 1
    np.testing.assert_array_equal(gradient, expected)
    assert 'the remaining solves run in this process' in caplog.text


def test_a_problem_that_cannot_be_pickled_stays_in_process_under_auto(lqr, monkeypatch):
    problem, theta, phi = lqr
    problem.not_picklable = threading.Lock()
    with pytest.raises(TypeError):
        pickle.dumps(problem)
    g = np.ones(problem.phi_size())
    steps = resolve_steps(problem, 0.01)
    expected, _ = resolved_outer_gradient(problem, phi, theta, g, steps, workers=1)
    monkeypatch.setattr(outer, 'RESOLVE_POOL_ABOVE_S', 0.0)          # auto would use processes
    gradient, info = resolved_outer_gradient(problem, phi, theta, g, steps, workers=0)
    assert info['processes'] == 1
    np.testing.assert_array_equal(gradient, expected)
    with pytest.raises(solve_pool.ProblemNotPicklable, match='LQRProblem'):
        resolved_outer_gradient(problem, phi, theta, g, steps, workers=2)


def test_auto_runs_no_more_workers_than_cpus_or_memory_allow(monkeypatch):
    monkeypatch.setattr(solve_pool, 'usable_cpus', lambda: 8)
    sizes = {'/proc/meminfo': {'MemAvailable': 3 * 2 ** 30}, '/proc/self/status': {'VmRSS': 2 ** 30}}
    monkeypatch.setattr(solve_pool, '_meminfo_bytes', lambda path, key: sizes[path][key])
    assert solve_pool.affordable_workers() == 3                     # memory for 3 copies of this process
    sizes['/proc/meminfo']['MemAvailable'] = 64 * 2 ** 30
    assert solve_pool.affordable_workers() == 8                     # then the CPUs
    sizes['/proc/meminfo']['MemAvailable'] = 2 ** 29
    assert solve_pool.affordable_workers() == 1
    sizes['/proc/meminfo']['MemAvailable'] = None                   # no /proc: the CPUs alone
    assert solve_pool.affordable_workers() == 8


def test_the_memory_figures_are_read_from_proc():
    if not Path('/proc/meminfo').is_file():
        pytest.skip('no /proc on this platform')
    assert solve_pool._meminfo_bytes('/proc/meminfo', 'MemAvailable') > 0
    assert solve_pool._meminfo_bytes('/proc/self/status', 'VmRSS') > 0
    assert 1 <= solve_pool.affordable_workers() <= solve_pool.usable_cpus()


def test_closing_ends_a_busy_worker_at_once_and_ctrl_c_is_left_to_the_caller(lqr, tmp_path):
    """A node that stops (SIGINT, SIGTERM) closes its pool: a worker in the middle of a long solve is
    ended within seconds, not after the solve; a SIGINT to the worker alone (Ctrl-C reaches the whole
    process group) does not end it."""
    problem, theta, phi = lqr
    pool = solve_pool.SolvePool(1)
    pool.continued_solves(problem, [(theta, phi)])
    [worker] = pool._workers
    os.kill(worker.process.pid, signal.SIGINT)
    [again] = pool.continued_solves(problem, [(theta, phi)])            # still serving
    assert worker.process.poll() is None
    marker = tmp_path / 'solving'
    failed = []

    def call():
        try:
            pool.continued_solves(SlowToy(str(marker)), [(np.zeros(2), np.zeros(2))])
        except Exception as error:                      # noqa: BLE001 -- the worker is ended under it
            failed.append(error)
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 60.0
    while not marker.exists():                          # the worker has begun the 600 s solve
        assert time.monotonic() < deadline, 'the slow solve never started'
        time.sleep(0.02)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 10.0
    assert worker.process.returncode == -signal.SIGTERM
    caller.join(timeout=10.0)
    assert not caller.is_alive() and failed and isinstance(failed[0], solve_pool.WorkerDied)


def test_a_closed_pool_leaves_no_process(lqr):
    problem, theta, phi = lqr
    pool = solve_pool.SolvePool(2)
    pool.continued_solves(problem, [(theta, phi), (theta, phi)])
    processes = [worker.process for worker in pool._workers]
    pool.close()
    assert [p.returncode for p in processes] == [0, 0]
