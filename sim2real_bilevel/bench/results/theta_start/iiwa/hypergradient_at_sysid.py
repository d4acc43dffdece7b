"""Is the outer gradient right on the iiwa after sysid's fit?  (issue 12; theta_start/README.md)

The run `bilevel_from.py ... method=bilevel-from-sysid` is replayed to its first iteration (sysid's fit
to 5 real episodes: theta_1, phi_1), the next real batch is collected as that run collects it, and at
(phi_1, theta_1), per dynamics coordinate i:
- the outer gradient  g^T dphi_i  (g: the pathwise real-gradient estimate on that batch; dphi_i: column i
  of d phi*/d theta by the file's CG solve; and by the first-order step);
- the real return's slope along dphi_i in phi (central difference, eps 0.1): what g^T dphi_i estimates
  if the sensitivity is right -- a gap here is the real-gradient estimator's;
- the real return's slope in theta (warm re-solves at theta_1 +- 0.1 e_i): what the outer gradient
  estimates -- a gap here beyond the first one is the sensitivity's.
Real returns: the hidden model on the file's 16 fixed evaluation episodes (reporting only).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 8 ../.venv/bin/python \
        bench/results/theta_start/iiwa/hypergradient_at_sysid.py [WARM_ITERATIONS]   # -> hypergradient_at_sysid[_warmW].json

WARM_ITERATIONS: phi_1 is first solved further at theta_1 (WARM_ITERATIONS more warm iterations, closer to
stationary), and the re-solves at theta_1 +- 0.1 run that many (default: the file's inner.max_iterations, 20).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sim2real_bilevel.core import implicit
from sim2real_bilevel.core.outer import make_solver
from sysid_fit import replay_to_sysid_fit

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
started = time.perf_counter()
warm = {'max_iterations': int(sys.argv[1])} if len(sys.argv) > 1 else {}
problem, run = replay_to_sysid_fit(warm.get('max_iterations'))
phi, theta = run.phi.copy(), run.theta.copy()
names = problem.theta_names
report = {'theta_names': names, 'theta_1': theta.tolist(), 'inner_grad_norm_1': run.inner_grad_norm,
          'real_return_1': problem.real_return(phi)}
print(f'theta_1 {np.exp(theta).round(3).tolist()}, real return {report["real_return_1"]:.3f}, '
      f'||F|| {run.inner_grad_norm:.3g} ({time.perf_counter() - started:.0f} s)', flush=True)
batch = run.collect_real(phi)
g = problem.real_policy_gradient(phi, [batch], theta)
terms = problem.sensitivity_terms(phi, theta, method='exact')
solvers = {'cg (the file)': make_solver(run.config), 'first-order': implicit.first_order(run.config.first_order_step)}
coordinates = [i for i in range(len(names)) if problem.theta_groups()['dynamics'][i]]
columns = {label: implicit.sensitivity_matrix(terms, solver) for label, solver in solvers.items()}
eps = 0.1
for i in coordinates:
    entry = {}
    for label, matrix in columns.items():
        direction = matrix[:, i]
        plus, minus = problem.real_return(phi + eps * direction), problem.real_return(phi - eps * direction)
        entry[label] = {'outer_gradient': float(g @ direction), 'real_slope_along_dphi': (plus - minus) / (2 * eps),
                        'dphi_norm': float(np.linalg.norm(direction))}
    values = {}
    for sign in (+1, -1):
        shifted = theta.copy()
        shifted[i] += sign * eps
        solved = problem.inner_solve(shifted, phi, **warm)
        values[sign] = problem.real_return(solved.phi)
    entry['real_slope_in_theta (warm re-solves)'] = (values[1] - values[-1]) / (2 * eps)
    report[names[i]] = entry
    print(names[i], json.dumps(entry), f'({time.perf_counter() - started:.0f} s)', flush=True)
(HERE / f'hypergradient_at_sysid{"_warm" + sys.argv[1] if warm else ""}.json').write_text(json.dumps(report, indent=1) + '\n')
