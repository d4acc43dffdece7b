"""Would the response of the solver actually run point the outer step the right way on the iiwa?
(issue 12; theta_start/README.md)

`hypergradient_at_sysid.py` found that at sysid's fit theta_1 the implicit-function response dphi*/dtheta is
not what the loop's warm inner solve does (3 of 4 coordinates move the real return the other way).  Here the
response is that of the warm solve itself, by central differences in theta (common random numbers: the
solve is a deterministic function of theta and its warm start):
    dphi_i = (solve(theta_1 + delta e_i, phi_1) - solve(theta_1 - delta e_i, phi_1)) / (2 delta),
and per dynamics coordinate i:
- the real return's slope in theta (the re-solves' real returns; what the outer gradient estimates);
- the real return's slope along dphi_i in phi (central difference, eps 0.1): the same quantity linearised;
- the projections g^T dphi_i of the real-gradient estimates (pathwise, likelihood ratio) on the run's next
  batch of 5 episodes and on a fresh batch of 50.
Real returns: the hidden model on the file's 16 fixed evaluation episodes (reporting only).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 8 ../.venv/bin/python \
        bench/results/theta_start/iiwa/solver_response_at_sysid.py [WARM_ITERATIONS [DELTA [SOLVER]]]
        # -> solver_response_at_sysid[_warmW | _adamK | _gdK][_deltaD].json

WARM_ITERATIONS as in hypergradient_at_sysid.py (phi_1 first solved that much further; the re-solves run that
many iterations; default and 0: no further solve, and the file's inner.max_iterations, 20).  DELTA: the step in log theta (default 0.1).
SOLVER: 'lbfgs' (the file's warm solve, default); 'adam': that many plain Adam steps (the file's learning
rate) from phi_1 on the same CRN set (no line search), with no further solve first; 'gd': that many plain
gradient-ascent steps of one fixed size (the learning rate over the rms of F at (phi_1, theta_1)), likewise.
"""
import json
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from sysid_fit import LABEL, OUT, replay_to_sysid_fit

torch.set_num_threads(1)
started = time.perf_counter()
warm = {'max_iterations': int(sys.argv[1])} if len(sys.argv) > 1 and int(sys.argv[1]) > 0 else {}
delta = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
solver = sys.argv[3] if len(sys.argv) > 3 else 'lbfgs'
if solver not in ('lbfgs', 'adam', 'gd'):
    sys.exit(f"SOLVER = {solver!r}: expected 'lbfgs', 'adam' or 'gd'")


def adam_solve(theta_, start):
    """Plain Adam ascent on J_sim (no line search), from ``start``: phi and the final ||F||."""
    theta_full = problem.full_theta(torch.as_tensor(theta_, dtype=torch.float64)).detach()
    point = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([point], lr=problem.inner.learning_rate)
    for _ in range(warm.get('max_iterations', problem.inner.max_iterations)):
        optimizer.zero_grad()
        (-problem.sim_objective(point, theta_full, None, full=True)).backward()
        optimizer.step()
    return SimpleNamespace(phi=point.detach().numpy().copy(), grad_norm=problem._crn_grad_norm(point, theta_full))


def gradient_solve(theta_, start):
    """Plain gradient ascent on J_sim with one fixed step (the file's learning rate over the rms of F at
    (phi_1, theta_1), so the first step moves a coordinate by about that rate): a smooth map of theta while
    the iteration is stable (on the iiwa it is not at this step: README)."""
    theta_full = problem.full_theta(torch.as_tensor(theta_, dtype=torch.float64)).detach()
    point = torch.tensor(start, dtype=torch.float64)
    for _ in range(warm.get('max_iterations', problem.inner.max_iterations)):
        point = point + step * problem.inner_gradient(point, torch.as_tensor(theta_, dtype=torch.float64)).detach()
    return SimpleNamespace(phi=point.numpy().copy(), grad_norm=problem._crn_grad_norm(point, theta_full))


def warm_solve(theta_, start):
    if solver == 'gd':
        return gradient_solve(theta_, start)
    return adam_solve(theta_, start) if solver == 'adam' else problem.inner_solve(theta_, start, **warm)


problem, run = replay_to_sysid_fit(warm.get('max_iterations') if solver == 'lbfgs' else None)
phi, theta = run.phi.copy(), run.theta.copy()
if solver == 'gd':
    first = problem.inner_gradient(torch.as_tensor(phi), torch.as_tensor(theta)).detach()
    step = problem.inner.learning_rate / float(first.pow(2).mean().sqrt())
names = problem.theta_names
report = {'theta_names': names, 'theta_1': theta.tolist(), 'inner_grad_norm_1': run.inner_grad_norm,
          'real_return_1': problem.real_return(phi), 'delta': delta, 'warm_iterations': warm.get('max_iterations'),
          'solver': solver}
print(f'theta_1 {np.exp(theta).round(3).tolist()}, real return {report["real_return_1"]:.3f}, '
      f'||F|| {run.inner_grad_norm:.3g} ({time.perf_counter() - started:.0f} s)', flush=True)
batches = {5: run.collect_real(phi), 50: problem.sample_real(phi, 50, np.random.default_rng([7, 50]))}
estimates = {}
for episodes, batch in batches.items():
    estimates[f'pathwise, {episodes} episodes'] = problem.pathwise_real_gradient(phi, batch, theta)
    estimates[f'likelihood ratio, {episodes} episodes'] = problem.likelihood_ratio_real_gradient(phi, [batch])
coordinates = [i for i in range(len(names)) if problem.theta_groups()['dynamics'][i]]
eps = 0.1
agree = {label: 0 for label in estimates}
agree_linear = 0
for i in coordinates:
    solved = {}
    for sign in (+1, -1):
        shifted = theta.copy()
        shifted[i] += sign * delta
        solved[sign] = warm_solve(shifted, phi)
    returns = {sign: problem.real_return(s.phi) for sign, s in solved.items()}
    slope_theta = (returns[1] - returns[-1]) / (2 * delta)
    direction = (solved[1].phi - solved[-1].phi) / (2 * delta)
    slope_along = (problem.real_return(phi + eps * direction) - problem.real_return(phi - eps * direction)) / (2 * eps)
    entry = {'real_slope_in_theta (warm re-solves)': slope_theta, 'real_slope_along_dphi': slope_along,
             'dphi_norm': float(np.linalg.norm(direction)),
             're_solve_grad_norms': [solved[1].grad_norm, solved[-1].grad_norm],
             'projections': {label: float(g @ direction) for label, g in estimates.items()}}
    agree_linear += int(np.sign(slope_along) == np.sign(slope_theta))
    for label, value in entry['projections'].items():
        agree[label] += int(np.sign(value) == np.sign(slope_theta))
    report[names[i]] = entry
    print(names[i], json.dumps(entry), f'({time.perf_counter() - started:.0f} s)', flush=True)
report['signs_agree_with_slope_in_theta'] = {'linearised (slope along dphi)': agree_linear, **agree}
print('signs agree with the slope in theta, of', len(coordinates), json.dumps(report['signs_agree_with_slope_in_theta']),
      flush=True)
suffix = ((f"_{solver}{warm.get('max_iterations', problem.inner.max_iterations)}" if solver != 'lbfgs'
           else '_warm' + sys.argv[1] if warm else '') + (f'_delta{delta:g}' if delta != 0.1 else ''))
(OUT / f'solver_response_at_sysid{suffix}{LABEL}.json').write_text(json.dumps(report, indent=1) + '\n')
