"""Does a proximal inner solve make the policy a smooth function of theta on the iiwa, with an
implicit-function response that matches it?  (issue 12; theta_start/README.md)

`solver_response_at_sysid.py` found that the loop's warm inner solve (20 L-BFGS iterations from phi_1) is not a
smooth function of theta at sysid's fit theta_1: its central-difference response changes by up to 10x and in
sign between steps 0.1 and 0.01 in log theta.  Here the warm solve maximises the proximal objective
    J_sim(phi, theta) - rho/2 |phi - phi_1|^2          (iMAML's proximal regularisation)
from phi_1 (same 20 iterations), whose exact implicit-function response is the CG solve the file already makes
with its ridge `damping` = rho.  Per dynamics coordinate i, for DELTA in 0.1 and 0.01:
- the central-difference response dphi_i of that solve, and its cosine with the CG response (file's 10 CG
  iterations, and 50);
- the real return's slope in theta (the solves' real returns) and the projections g^T dphi_i of the pathwise and
  likelihood-ratio real-gradient estimates (5-episode batch of the proximal policy at theta_1).
Real returns: the hidden model on the file's 16 fixed evaluation episodes (reporting only).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 8 ../.venv/bin/python \
        bench/results/theta_start/iiwa/proximal_response_at_sysid.py [RHO]      # -> proximal_response_at_sysid_rhoR.json
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sim2real_bilevel.core import implicit
from sysid_fit import replay_to_sysid_fit

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
started = time.perf_counter()
rho = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
problem, run = replay_to_sysid_fit()
phi_1, theta = run.phi.copy(), run.theta.copy()
plain_objective = problem.sim_objective
center = torch.as_tensor(phi_1, dtype=torch.float64)


def proximal_objective(phi, theta_, noise=None, *, full=False):
    return plain_objective(phi, theta_, noise, full=full) - 0.5 * rho * ((phi - center) ** 2).sum()


def solve(theta_):
    problem.sim_objective = proximal_objective
    try:
        return problem.inner_solve(theta_, phi_1)
    finally:
        problem.sim_objective = plain_objective


def elapsed():
    return f'({time.perf_counter() - started:.0f} s)'


base = solve(theta)
phi = base.phi
names = problem.theta_names
report = {'rho': rho, 'theta_names': names, 'real_return_phi_1': problem.real_return(phi_1),
          'proximal_solve_at_theta_1': {'grad_norm': base.grad_norm, 'iterations': base.iterations,
                                        'step_norm': float(np.linalg.norm(phi - phi_1)),
                                        'real_return': problem.real_return(phi)}}
print('at theta_1:', json.dumps(report['proximal_solve_at_theta_1']), elapsed(), flush=True)
batch = run.collect_real(phi)
estimates = {'pathwise': problem.pathwise_real_gradient(phi, batch, theta),
             'likelihood ratio': problem.likelihood_ratio_real_gradient(phi, [batch])}
terms = problem.sensitivity_terms(phi, theta, method='exact')       # F without the proximal term: its ridge is rho
ift = {f'cg {n}': implicit.sensitivity_matrix(terms, implicit.cg_solver(damping=rho, maxiter=n, tol=1e-6))
       for n in (10, 50)}
print('implicit-function responses', elapsed(), flush=True)
coordinates = [i for i in range(len(names)) if problem.theta_groups()['dynamics'][i]]
for delta in (0.1, 0.01):
    agree = {label: 0 for label in estimates}
    for i in coordinates:
        solved = {}
        for sign in (+1, -1):
            shifted = theta.copy()
            shifted[i] += sign * delta
            solved[sign] = solve(shifted)
        returns = {sign: problem.real_return(s.phi) for sign, s in solved.items()}
        slope = (returns[1] - returns[-1]) / (2 * delta)
        direction = (solved[1].phi - solved[-1].phi) / (2 * delta)
        cosines = {label: float(direction @ m[:, i] / (np.linalg.norm(direction) * np.linalg.norm(m[:, i]) + 1e-300))
                   for label, m in ift.items()}
        entry = {'real_slope_in_theta': slope, 'dphi_norm': float(np.linalg.norm(direction)),
                 'ift_dphi_norms': {label: float(np.linalg.norm(m[:, i])) for label, m in ift.items()},
                 'cosine_with_ift': cosines, 'grad_norms': [solved[1].grad_norm, solved[-1].grad_norm],
                 'projections': {label: float(g @ direction) for label, g in estimates.items()},
                 'projections_on_ift_cg50': {label: float(g @ ift['cg 50'][:, i]) for label, g in estimates.items()}}
        for label in estimates:
            agree[label] += int(np.sign(entry['projections'][label]) == np.sign(slope))
        report[f'{names[i]}, delta {delta:g}'] = entry
        print(names[i], f'delta {delta:g}', json.dumps(entry), elapsed(), flush=True)
    report[f'signs agree, delta {delta:g}'] = agree
    print(f'delta {delta:g}: signs agree with the slope in theta, of {len(coordinates)}:', agree, flush=True)
(HERE / f'proximal_response_at_sysid_rho{rho:g}.json').write_text(json.dumps(report, indent=1) + '\n')
