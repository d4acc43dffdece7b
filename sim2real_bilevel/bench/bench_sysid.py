"""Benchmark: the LQR sysid baseline, incremental least squares against the batch refit, side by side.

The sysid baseline refits the learnable A, B entries after every real batch.  The batch refit
(``LQRProblem.system_identification`` on every kept batch) costs time that grows with the data;
the incremental one (``system_identification_statistics``: a QR factor updated batch by batch)
does not.  Both runs use the same problem, seed and real batches; the table gives the fit's time
per iteration at the end of the run, the whole run's time, and the largest theta difference.

    python sim2real_bilevel/bench/bench_sysid.py [--problem-seed 6] [--iterations 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim2real_bilevel.core.experiments import make_run  # noqa: E402
from sim2real_bilevel.core.generators import generate, load_text  # noqa: E402


class BatchRefit:
    """The problem without its sufficient statistics: the sysid run then refits on all batches."""

    def __init__(self, problem):
        self._problem = problem

    def __getattr__(self, name):
        if name == 'system_identification_statistics':
            raise AttributeError(name)
        return getattr(self._problem, name)


def timed_run(problem, iterations: int, seed: int) -> tuple[np.ndarray, float, float]:
    run = make_run(problem, 'sysid', seed, iterations=iterations)
    start = time.perf_counter()
    records = run.run(iterations)
    total = time.perf_counter() - start
    last = np.mean([r.timing.get('sysid_s', np.nan) for r in records[-10:]])
    return np.array([r.theta for r in records]), total, float(last)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--problem-seed', type=int, default=6, help='generated LQR problem (default 6: 6 x 1)')
    parser.add_argument('--iterations', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    problem = load_text(generate('lqr', args.problem_seed).text)
    theta_inc, total_inc, last_inc = timed_run(problem, args.iterations, args.seed)
    theta_batch, total_batch, last_batch = timed_run(BatchRefit(problem), args.iterations, args.seed)
    print(f'generated LQR problem {args.problem_seed}, sysid, {args.iterations} iterations, seed {args.seed}')
    print(f'{"":12s} {"fit s/iteration (last 10)":>26s} {"run s":>8s}')
    print(f'{"batch refit":12s} {last_batch:26.4f} {total_batch:8.2f}')
    print(f'{"incremental":12s} {last_inc:26.4f} {total_inc:8.2f}')
    print(f'ratio batch / incremental: fit {last_batch / last_inc:.1f}x, run {total_batch / total_inc:.2f}x; '
          f'max |theta difference| {np.abs(theta_inc - theta_batch).max():.2e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
