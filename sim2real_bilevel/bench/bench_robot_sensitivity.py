"""Benchmark: the pendulum's sensitivity solve vs MLP policy size (CG, first-order, dense).

For each hidden size, builds the shipped pendulum problem with that policy, solves the inner
problem (a capped budget: the solve cost, not the optimum, is measured), then times, side by
side in one run: building F's graph (sensitivity_terms), the outer-gradient solve with CG
(the config's damping and iterations), first-order, and -- up to --dense-max parameters --
the dense solve that forms the P x P Hessian from P Hessian-vector products.

    python sim2real_bilevel/bench/bench_robot_sensitivity.py [--hidden 8 16 32 64]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim2real_bilevel.core import implicit  # noqa: E402
from sim2real_bilevel.core.config import load_yaml  # noqa: E402
from sim2real_bilevel.core.problems.robot import RobotProblem  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'pendulum.yaml'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--hidden', type=int, nargs='+', default=[8, 16, 32, 64],
                        help='width of the two hidden layers')
    parser.add_argument('--inner-iterations', type=int, default=None,
                        help="cap on the cold inner solve (default: the config's; an unconverged "
                             'inner optimum has an indefinite Hessian and CG stops early)')
    parser.add_argument('--dense-max', type=int, default=1500)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data, source = load_yaml(CONFIG)
    damping, maxiter = float(data['outer']['damping']), int(data['outer']['cg_maxiter'])
    print(f'pendulum, horizon {data["horizon"]}, {data["inner"]["episodes"]} CRN episodes; '
          f'CG damping {damping}, {maxiter} iterations; seconds')
    header = f'{"hidden":>8}{"params":>8}{"|F|":>8}{"graph":>8}{"cg":>8}{"cg mv":>7}{"first-ord":>10}{"dense":>9}{"cos cg/dense":>14}'
    print(header)
    print('-' * len(header))
    for width in args.hidden:
        data['policy']['hidden_sizes'] = [width, width]
        if args.inner_iterations is not None:
            data['inner']['cold_iterations'] = args.inner_iterations
            data['inner']['warmup_iterations'] = args.inner_iterations
        problem = RobotProblem.from_dict(data, source)
        theta = problem.theta0()
        inner = problem.inner_solve(theta)
        phi = inner.phi
        g = np.random.default_rng(0).standard_normal(phi.size)
        t0 = time.perf_counter()
        terms = problem.sensitivity_terms(phi, theta)
        graph_s = time.perf_counter() - t0
        cg = implicit.cg_solver(damping=damping, maxiter=maxiter, tol=1e-3)
        t0 = time.perf_counter()
        cg_grad = implicit.outer_gradient(terms, g, cg)
        cg_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        implicit.outer_gradient(terms, g, implicit.first_order())
        fo_s = time.perf_counter() - t0
        dense_s, cosine = float('nan'), float('nan')
        if phi.size <= args.dense_max:
            t0 = time.perf_counter()
            dense_grad = implicit.outer_gradient(terms, g, implicit.dense_solver(damping))
            dense_s = time.perf_counter() - t0
            cosine = float(cg_grad @ dense_grad / (np.linalg.norm(cg_grad) * np.linalg.norm(dense_grad)))
        print(f'{width:>8}{phi.size:>8}{inner.grad_norm:>8.2f}{graph_s:>8.3f}{cg_s:>8.3f}{cg.info.get("matvecs", 0):>7}{fo_s:>10.4f}'
              f'{dense_s:>9.2f}{cosine:>14.4f}')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
