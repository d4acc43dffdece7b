"""Follow-up of hypergradient_check.py on generated task 5: which factor of the outer gradient
S^T g is wrong, the sensitivity S = d phi*/d theta or the real policy gradient g?  For the motor
gain and the effort weight (the two largest finite-difference slopes): S's column against the
finite difference of the warm re-solved policies at theta +- 0.1 (cosine, norm ratio), and the
real return's slope along S's column (a finite difference on the policy, fixed evaluation seeds)
against g's prediction g . S[:, i].

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/urdf_generated_tasks/sensitivity_check.py
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[2]))
from sim2real_bilevel.core import implicit  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

torch.set_num_threads(1)
problem = load_problem(here / 'problems' / 'task-005.yaml')
started = time.perf_counter()
theta = problem.theta0()
names = list(problem.theta_names)
phi = problem.inner_solve(theta, None).phi
batch = problem.sample_real(phi, 10, np.random.default_rng([0, 5]))
g = np.asarray(problem.real_policy_gradient(phi, [batch], theta))
terms = problem.sensitivity_terms(phi, theta, method='exact')
S = implicit.sensitivity_matrix(terms, implicit.cg_solver(damping=1.0, maxiter=10, tol=1e-3))
print(f'nominal, g and S ({time.perf_counter() - started:.0f} s)', flush=True)
report = {}
for name in ('log_motor_gain', 'log_w_effort'):
    i = names.index(name)
    solved = {}
    for sign in (+1, -1):
        shifted = theta.copy()
        shifted[i] += sign * 0.1
        solved[sign] = problem.inner_solve(shifted, phi).phi
    fd = (solved[1] - solved[-1]) / 0.2
    column = S[:, i]
    cosine = float(column @ fd / (np.linalg.norm(column) * np.linalg.norm(fd)))
    step = 0.1 / np.linalg.norm(column)                   # a policy change of norm 0.1 along the column
    along = (problem.real_return(phi + step * column) - problem.real_return(phi - step * column)) / (2 * step)
    unit = fd / np.linalg.norm(fd)
    fd_along = (problem.real_return(phi + 0.1 * unit) - problem.real_return(phi - 0.1 * unit)) / 0.2 * np.linalg.norm(fd)
    report[name] = {'cosine(S column, finite-difference dphi)': cosine,
                    '|S column| / |finite-difference dphi|': float(np.linalg.norm(column) / np.linalg.norm(fd)),
                    'g . S column (the outer gradient)': float(g @ column),
                    'real-return slope along S column (finite difference)': float(along),
                    'g . finite-difference dphi': float(g @ fd),
                    'real-return slope along finite-difference dphi, times |dphi|': float(fd_along)}
    print(name, json.dumps(report[name], indent=1), f'({time.perf_counter() - started:.0f} s)', flush=True)
(here / 'sensitivity_check.json').write_text(json.dumps(report, indent=1) + '\n')
