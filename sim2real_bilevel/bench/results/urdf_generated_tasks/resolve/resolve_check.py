"""Solver 'resolve' at generated task 5's nominal policy: per theta coordinate, the policy re-solved
(continued from the nominal policy) at theta - h, theta and theta + h (h = 0.05 of the coordinate's
range, the outer step's size), what the real gradient predicts for the central and the forward
differences (g . column) and what they really do to the real return (the task's fixed evaluation
seeds, hidden model: a diagnosis, reporting only); beside the default CG outer gradient.  Same real batch as
``../hypergradient_check.py`` (10 episodes, rng [0, 5]); g from the default estimator (pathwise
through the identified model).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python \
        bench/results/urdf_generated_tasks/resolve/resolve_check.py [TASK.yaml] [OUT.json]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[3]))
from sim2real_bilevel.core import implicit  # noqa: E402
from sim2real_bilevel.core.outer import resolve_steps  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

torch.set_num_threads(1)
path = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / 'problems' / 'task-005.yaml'
out = Path(sys.argv[2]) if len(sys.argv) > 2 else here / 'resolve_check.json'
problem = load_problem(path)
started = time.perf_counter()
theta = problem.theta0()
names = list(problem.theta_names)
phi = problem.inner_solve(theta, None).phi
print(f'nominal solved ({time.perf_counter() - started:.0f} s)', flush=True)
batch = problem.sample_real(phi, 10, np.random.default_rng([0, 5]))
g = problem.real_policy_gradient(phi, [batch], theta)
cg = np.asarray(implicit.outer_gradient(problem.sensitivity_terms(phi, theta, method='exact'), g,
                                        implicit.cg_solver(damping=1.0, maxiter=10, tol=1e-3)))
steps = resolve_steps(problem, 0.05)
base = problem.continued_solve(theta, phi)
j0 = problem.real_return(base.phi)
lower, upper = problem.theta_bounds()
rows = []
for i, name in enumerate(names):
    ends = {}
    for side, value in (('low', max(theta[i] - steps[i], lower[i])), ('high', min(theta[i] + steps[i], upper[i]))):
        moved = theta.copy()
        moved[i] = value
        solved = problem.continued_solve(moved, phi).phi
        ends[side] = (value - theta[i], solved, problem.real_return(solved))
    (a, phi_low, j_low), (b, phi_high, j_high) = ends['low'], ends['high']
    row = {'name': name, 'offsets': [float(a), float(b)], 'real_return': [j_low, j0, j_high],
           'central_prediction': float(g @ (phi_high - phi_low)) / (b - a), 'central_real': (j_high - j_low) / (b - a),
           'forward_prediction': float(g @ (phi_high - base.phi)) / b, 'forward_real': (j_high - j0) / b,
           'cg_gradient': float(cg[i])}
    rows.append(row)
    print(f"{name}: J {j_low:.3f} / {j0:.3f} / {j_high:.3f} at {a:+.3f} / 0 / {b:+.3f}; central g.column "
          f"{row['central_prediction']:+.4f} real {row['central_real']:+.4f}; forward {row['forward_prediction']:+.4f} "
          f"real {row['forward_real']:+.4f}; cg {row['cg_gradient']:+.4f}  ({time.perf_counter() - started:.0f} s)",
          flush=True)
report = {'task': str(path), 'theta0': theta.tolist(), 'real_return_base': j0, 'rows': rows,
          'seconds': time.perf_counter() - started}
out.write_text(json.dumps(report, indent=1) + '\n')
