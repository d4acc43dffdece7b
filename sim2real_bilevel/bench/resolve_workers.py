"""Solver 'resolve''s sensitivity in one process against its solves spread over worker processes
(``core/solve_pool.py``), side by side in one run, with the gradients compared.

    OMP_NUM_THREADS=1 .venv/bin/python sim2real_bilevel/bench/resolve_workers.py [--problem pendulum]
        [--workers 1 2 4] [--repeat 1]

For each problem (a shipped name or a problem file): the policy the inner solve reaches from the
problem's start (not timed), then one 'resolve' sensitivity at theta0 with each --workers count
(1 = every solve in this process; N = the first here, the others on N processes, started and
loaded once, before timing, by a warm-up call), interleaved --repeat times.  Prints seconds per
sensitivity (best of the repeats), the speed-up against 1, the maximum relative difference of the
gradient against the in-process one, and the CPUs this process may use.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim2real_bilevel.core import solve_pool  # noqa: E402
from sim2real_bilevel.core.outer import resolve_steps, resolved_outer_gradient  # noqa: E402
from sim2real_bilevel.nodes.runtime import load_problem  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--problem', nargs='+', default=['pendulum'])
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--repeat', type=int, default=1)
    parser.add_argument('--step', type=float, default=0.05, help='resolve_step (fraction of each range)')
    args = parser.parse_args()
    if any(w < 1 for w in args.workers):
        parser.error(f'--workers {args.workers}: expected counts >= 1')
    import torch
    torch.set_num_threads(1)
    print(f'usable CPUs: {solve_pool.usable_cpus()}; load average {os.getloadavg()[0]:.1f}', flush=True)
    for name in args.problem:
        problem = load_problem(name)
        theta = problem.theta0()
        started = time.perf_counter()
        phi = problem.inner_solve(theta).phi
        print(f'{name}: {theta.size} theta entries, {2 * theta.size} solves per sensitivity; start policy '
              f'solved in {time.perf_counter() - started:.1f} s', flush=True)
        g = np.random.default_rng(0).standard_normal(problem.phi_size())
        steps = resolve_steps(problem, args.step)
        pool_workers = max(args.workers)
        if pool_workers > 1:            # start and load the workers before timing
            solve_pool.shared_pool(pool_workers).continued_solves(problem, [(theta, phi)] * pool_workers)
        seconds = {w: [] for w in args.workers}
        gradients = {}
        for _ in range(args.repeat):
            for workers in args.workers:
                gradient, info = resolved_outer_gradient(problem, phi, theta, g, steps, workers=workers)
                seconds[workers].append(info['seconds'])
                gradients[workers] = gradient
                print(f'  workers {workers}: {info["seconds"]:.1f} s ({info["processes"]} processes)', flush=True)
        reference = gradients[args.workers[0]]
        print(f'| {name} | workers | s per sensitivity (best of {args.repeat}) | speed-up vs {args.workers[0]} '
              f'| max relative gradient difference |')
        print('|---|---|---|---|---|')
        base = min(seconds[args.workers[0]])
        for workers in args.workers:
            difference = np.max(np.abs(gradients[workers] - reference)) / max(np.max(np.abs(reference)), 1e-300)
            print(f'| {name} | {workers} | {min(seconds[workers]):.1f} | {base / min(seconds[workers]):.2f}x '
                  f'| {difference:.1e} |', flush=True)


if __name__ == '__main__':
    main()
