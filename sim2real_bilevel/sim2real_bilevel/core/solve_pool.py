"""Inner solves in worker processes, for solver 'resolve'.

The 2 d continued solves of one 'resolve' sensitivity (``outer.resolved_outer_gradient``) are
independent of each other and deterministic functions of (theta, phi)
(``BilevelProblem.continued_solve``), so they can run side by side, one per core.  ``SolvePool``
keeps ``python -m sim2real_bilevel.core.solve_pool`` processes alive between calls; each holds the
last problem it was sent (pickled; a problem is sent again only when its pickle changed) and
answers one solve at a time over a pair of pipes of its own (not stdin/stdout: libraries print
there).  Plain subprocesses rather than ``multiprocessing``: its spawn start method imports the
caller's ``__main__`` again in every worker, which re-runs any script without a main guard, and
fork is unsafe in processes with DDS and OpenMP threads (every node process).

A worker exits when its input pipe closes: at ``close()`` (which ends a worker still busy with a
solve after 1 s), at interpreter exit, or when the process that started it dies (after the solve
it is running).  It ignores SIGINT: Ctrl-C reaches the whole process group, and the caller decides.  Each worker runs torch on one thread (OMP_NUM_THREADS=1): the
parallelism is across processes.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from typing import Callable, Optional, Sequence

import numpy as np

_HEADER = struct.Struct('<Q')


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def _meminfo_bytes(path: str, key: str) -> Optional[int]:
    try:
        with open(path) as stream:
            for line in stream:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024         # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def affordable_workers() -> int:
    """Worker processes this machine can run side by side: one per usable CPU, and no more than the
    available memory holds if each needs as much as this process has resident now (a worker
    loads the same problem and libraries; the swing-up's ~1 GiB each).  Where /proc is missing,
    the CPUs alone."""
    cpus = usable_cpus()
    available = _meminfo_bytes('/proc/meminfo', 'MemAvailable')
    resident = _meminfo_bytes('/proc/self/status', 'VmRSS')
    if available is None or not resident:
        return cpus
    return max(1, min(cpus, available // resident))


def _write(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read(stream):
    """The next message, or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size, = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class ProblemNotPicklable(TypeError):
    """The problem cannot be sent to a worker process (it holds something pickle cannot copy)."""


class WorkerDied(RuntimeError):
    """A worker process ended without answering (killed, out of memory, crashed)."""


class _Worker:
    def __init__(self):
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'sim2real_bilevel.core.solve_pool', str(to_child_read), str(from_child_write)],
            pass_fds=(to_child_read, from_child_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=env)
        os.close(to_child_read)
        os.close(from_child_write)
        self.send = os.fdopen(to_child_write, 'wb')
        self.receive = os.fdopen(from_child_read, 'rb')
        self.problem_digest: Optional[bytes] = None

    def ask(self, message):
        try:
            _write(self.send, message)
            answer = _read(self.receive)
        except (OSError, ValueError):         # broken pipe; a stream closed by close()
            answer = None
        if answer is None:
            raise WorkerDied(f'solve worker (pid {self.process.pid}) exited with status {self.process.wait()}')
        return answer

    def close(self) -> None:
        """End the worker: its input closed, then (busy with a solve nobody will wait for) SIGTERM after
        1 s.  The output is closed last: a thread blocked reading it holds its lock until the process
        is gone."""
        try:
            self.send.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            self.receive.close()
        except OSError:
            pass


class SolvePool:
    """Continued inner solves in up to ``size`` worker processes (started on first use, kept)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f'SolvePool size={size}: expected >= 1')
        self.size = int(size)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def continued_solves(self, problem, jobs: Sequence[tuple[np.ndarray, np.ndarray]],
                         names: Optional[Sequence[str]] = None,
                         progress: Optional[Callable[[int], None]] = None) -> list[np.ndarray]:
        """``problem.continued_solve(theta, phi).phi`` for each (theta, phi) of ``jobs``, in order,
        on min(size, len(jobs)) workers.  A solve that raises in a worker raises RuntimeError here,
        naming the job (``names[k]`` where given) and carrying the worker's traceback; a worker that
        dies raises ``WorkerDied`` (the next call starts a new one).  ``progress(done)`` after each
        solve, from the thread that serves its worker."""
        if not jobs:
            return []
        with self._lock:
            try:
                blob = pickle.dumps(problem, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError) as error:
                raise ProblemNotPicklable(f'{type(problem).__name__} {getattr(problem, "source", "")} cannot be '
                                          f'sent to a solve worker: {error}') from error
            digest = hashlib.sha256(blob).digest()
            count = min(self.size, len(jobs))
            while len(self._workers) < count:
                self._workers.append(_Worker())
            pending: queue.Queue = queue.Queue()
            for k in range(len(jobs)):
                pending.put(k)
            results: list = [None] * len(jobs)
            failures: list[Exception] = []
            finished = [0]
            count_lock = threading.Lock()

            def serve(worker: _Worker) -> None:
                try:
                    if worker.problem_digest != digest:
                        worker.problem_digest = None
                        status, detail = worker.ask(('problem', blob))
                        if status != 'ok':
                            failures.append(RuntimeError(f'the problem did not load in a solve worker:\n{detail}'))
                            return
                        worker.problem_digest = digest
                    while not failures:
                        try:
                            k = pending.get_nowait()
                        except queue.Empty:
                            return
                        theta, phi = jobs[k]
                        status, value = worker.ask(('solve', (np.asarray(theta, dtype=np.float64),
                                                              np.asarray(phi, dtype=np.float64))))
                        if status != 'ok':
                            name = names[k] if names is not None else f'job {k}'
                            failures.append(RuntimeError(f'the continued solve for {name} failed in a solve worker:'
                                                         f'\n{value}'))
                            return
                        results[k] = value
                        if progress is not None:
                            with count_lock:            # one call at a time, in order
                                finished[0] += 1
                                progress(finished[0])
                except WorkerDied as error:
                    failures.append(error)

            threads = [threading.Thread(target=serve, args=(worker,), daemon=True)
                       for worker in self._workers[:count]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                self._drop_dead_workers()
                raise failures[0]
            return results

    def _drop_dead_workers(self) -> None:
        alive = []
        for worker in self._workers:
            if worker.process.poll() is None:
                alive.append(worker)
            else:
                worker.close()
        self._workers = alive

    def close(self) -> None:
        """End every worker, also one busy with a solve (not under the call's lock: a stopping node
        closes the pool while a sensitivity is running; that call then raises ``WorkerDied``)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()


_POOL: Optional[SolvePool] = None
_POOL_LOCK = threading.Lock()


def shared_pool(size: int) -> SolvePool:
    """The process's pool, grown to ``size`` workers if it had fewer (kept until exit)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = SolvePool(size)
            atexit.register(_POOL.close)
        elif _POOL.size < size:
            _POOL.size = size
        return _POOL


def _serve(read_fd: int, write_fd: int) -> None:
    """A worker: answer ('problem', pickle) and ('solve', (theta, phi)) until the input closes.  Ctrl-C
    in a terminal reaches the whole process group: the worker leaves it to its caller, which ends
    it (``close``) or whose death closes its input."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch
    torch.set_num_threads(1)
    problem = None
    with os.fdopen(read_fd, 'rb') as receive, os.fdopen(write_fd, 'wb') as send:
        while True:
            message = _read(receive)
            if message is None:
                return
            kind, payload = message
            try:
                if kind == 'problem':
                    problem = pickle.loads(payload)
                    answer = None
                elif kind == 'solve':
                    theta, phi = payload
                    answer = np.asarray(problem.continued_solve(theta, phi).phi, dtype=np.float64)
                else:
                    raise ValueError(f'unknown request {kind!r}')
                _write(send, ('ok', answer))
            except Exception:                               # reported to the caller, which raises
                _write(send, ('error', traceback.format_exc()))


if __name__ == '__main__':
    _serve(int(sys.argv[1]), int(sys.argv[2]))
