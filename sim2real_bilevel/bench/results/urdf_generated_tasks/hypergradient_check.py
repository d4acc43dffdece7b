"""Why bi-level loses on generated task 5: at the nominal policy, is the outer gradient's sign right?
Against a finite difference of the quantity it estimates: the real return (the task's fixed
evaluation seeds, hidden model: a diagnosis, reporting only) of the policy re-solved warm at
theta +- 0.1 along each coordinate.  The outer gradient: one real batch of 10 episodes (the default
real_episodes), the exact sensitivities and the default CG solve (damping 1, 10 iterations).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python \
        bench/results/urdf_generated_tasks/hypergradient_check.py [TASK.yaml]   # default problems/task-005.yaml
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
path = Path(sys.argv[1]) if len(sys.argv) > 1 else here / 'problems' / 'task-005.yaml'
problem = load_problem(path)
started = time.perf_counter()
theta = problem.theta0()
names = problem.theta_names
phi = problem.inner_solve(theta, None).phi         # the nominal policy (what bi-level deploys first)
print(f'nominal solved ({time.perf_counter() - started:.0f} s)', flush=True)
batch = problem.sample_real(phi, 10, np.random.default_rng([0, 5]))
g = problem.real_policy_gradient(phi, [batch], theta)
terms = problem.sensitivity_terms(phi, theta, method='exact')
solver = implicit.cg_solver(damping=1.0, maxiter=10, tol=1e-3)
outer = np.asarray(implicit.outer_gradient(terms, g, solver))
report = {'task': str(path), 'theta_names': list(names), 'theta0': theta.tolist(), 'outer_gradient': outer.tolist(),
          'solver': {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in dict(solver.info).items()},
          'real_return_nominal': problem.real_return(phi)}
print('outer gradient', dict(zip(names, np.round(outer, 4).tolist())), solver.info, flush=True)
delta = 0.1
lower, upper = problem.theta_bounds()
slopes = {}
for i, name in enumerate(names):
    values = {}
    for sign in (+1, -1):
        shifted = theta.copy()
        shifted[i] = np.clip(shifted[i] + sign * delta, lower[i], upper[i])
        values[sign] = (shifted[i], problem.real_return(problem.inner_solve(shifted, phi).phi))
    slope = (values[1][1] - values[-1][1]) / (values[1][0] - values[-1][0])
    slopes[name] = slope
    print(f'{name}: finite-difference slope {slope:+.4f}, outer gradient {outer[i]:+.4f} '
          f'({time.perf_counter() - started:.0f} s)', flush=True)
report['finite_difference_slope'] = slopes
report['signs_agree'] = {name: bool(np.sign(slopes[name]) == np.sign(outer[i])) for i, name in enumerate(names)}
report['seconds'] = time.perf_counter() - started
(here / 'hypergradient_check.json').write_text(json.dumps(report, indent=1) + '\n')
print(json.dumps(report['signs_agree'], indent=1))
