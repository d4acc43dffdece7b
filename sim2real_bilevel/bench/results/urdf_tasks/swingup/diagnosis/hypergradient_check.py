"""Why bi-level does not learn on the swing-up (issue 12): at the nominal policy (seed 0 of the gap run),
is the implicit-function outer gradient's sign right?  Against a finite difference of the quantity it
estimates: the real return of the policy re-solved (warm, inner.max_iterations) at theta +- delta along
each coordinate, on the file's fixed evaluation seeds.  Also prints the conjugate-gradient solver's
iterations.  Run once before config/swingup.yaml had its termination (..._no_termination.json/.log)
and once after (hypergradient_check.json/.log).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 10 ../.venv/bin/python \
        bench/results/urdf_tasks/swingup/diagnosis/hypergradient_check.py [COORDINATES...]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[3]))
from urdf_tasks import load  # noqa: E402
from sim2real_bilevel.core import implicit  # noqa: E402

torch.set_num_threads(1)
problem = load('config/swingup.yaml', 0)
phi = np.load(here.parent / 'policies.npz')['nominal_seed0']
theta = problem.theta0()
names = problem.theta_names
coordinates = [int(c) for c in sys.argv[1:]] or [names.index('log_motor_gain'), names.index('log_payload_mass@lower_link')]
report = {'theta_names': names, 'theta0': theta.tolist()}
started = time.perf_counter()
batch = problem.sample_real(phi, 5, np.random.default_rng([0, 21]))
g = problem.real_policy_gradient(phi, [batch], theta)
terms = problem.sensitivity_terms(phi, theta, method='exact')
for label, solver in (('cg 10, damping 1 (the file)', implicit.cg_solver(damping=1.0, maxiter=10, tol=1e-3)),
                      ('cg 40, damping 1', implicit.cg_solver(damping=1.0, maxiter=40, tol=1e-6)),
                      ('cg 40, damping 10', implicit.cg_solver(damping=10.0, maxiter=40, tol=1e-6))):
    report[f'outer gradient, {label}'] = np.asarray(implicit.outer_gradient(terms, g, solver)).tolist()
    report[f'solver, {label}'] = dict(solver.info)
    print(label, np.round(report[f'outer gradient, {label}'], 4).tolist(), solver.info,
          f'{time.perf_counter() - started:.0f} s', flush=True)
report['first-order outer gradient (step 1)'] = np.asarray(
    implicit.outer_gradient(terms, g, implicit.first_order(1.0))).tolist()
report['real return at the nominal policy'] = base = problem.real_return(phi)
delta = 0.1
for i in coordinates:
    values = {}
    for sign in (+1, -1):
        shifted = theta.copy()
        shifted[i] += sign * delta
        solved = problem.inner_solve(shifted, phi)
        values[sign] = problem.real_return(solved.phi)
        print(f'{names[i]} {sign * delta:+.2f}: warm solve ||F|| {solved.grad_norm:.3g}, real return {values[sign]:.4f} '
              f'({time.perf_counter() - started:.0f} s)', flush=True)
    report[f'finite difference, {names[i]}'] = {'plus': values[1], 'minus': values[-1],
                                                 'slope': (values[1] - values[-1]) / (2 * delta)}
report['task termination'] = str(problem.model.settings.termination)
name = 'hypergradient_check' + ('' if problem.model.settings.termination else '_no_termination')
(here / f'{name}.json').write_text(json.dumps(report, indent=1) + '\n')
print(json.dumps({k: v for k, v in report.items() if k.startswith('finite')}, indent=1))
