"""Which real-gradient estimate points the right way on the iiwa at sysid's fit?  (theta_start/README.md)

At the point of `hypergradient_at_sysid.py 80` (phi_1 solved 80 more warm iterations at sysid's theta_1,
||F|| 0.26), per dynamics coordinate i, the projection g^T dphi_i of the real-gradient estimates
- pathwise (the iiwa file's estimator) and likelihood-ratio ('reinforce'), each on 5 and on 50 real
  episodes of phi_1 (fresh batches, fixed seeds),
against the real return's slope along dphi_i (central difference, eps 0.1, the file's 16 evaluation
episodes of the hidden model: reporting only).  dphi_i: the file's CG sensitivity.  The sign is what
the outer step uses.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 8 ../.venv/bin/python \
        bench/results/theta_start/iiwa/real_gradient_at_sysid.py        # -> real_gradient_at_sysid.json
"""
import json
import time

import numpy as np
import torch

from sim2real_bilevel.core import implicit
from sim2real_bilevel.core.outer import make_solver
from sysid_fit import LABEL, OUT, replay_to_sysid_fit

torch.set_num_threads(1)
started = time.perf_counter()
problem, run = replay_to_sysid_fit()
theta = run.theta.copy()
solved = problem.inner_solve(theta, run.phi, max_iterations=80)
phi = solved.phi.copy()
print(f'||F|| {solved.grad_norm:.3g}, real return {problem.real_return(phi):.3f} ({time.perf_counter() - started:.0f} s)',
      flush=True)
print('theta_1', dict(zip(problem.theta_names, np.exp(theta).round(4).tolist())), flush=True)
matrix = implicit.sensitivity_matrix(problem.sensitivity_terms(phi, theta, method='exact'), make_solver(run.config))
coordinates = [i for i in range(len(problem.theta_names)) if problem.theta_groups()['dynamics'][i]]
eps = 0.1
slopes = {}
for i in coordinates:
    direction = matrix[:, i]
    slopes[i] = (problem.real_return(phi + eps * direction) - problem.real_return(phi - eps * direction)) / (2 * eps)
report = {'theta_names': problem.theta_names, 'grad_norm': solved.grad_norm,
          'real_slope_along_dphi': {problem.theta_names[i]: slopes[i] for i in coordinates}}
for episodes in (5, 50):
    batch = problem.sample_real(phi, episodes, np.random.default_rng([7, episodes]))
    estimates = {'pathwise': problem.pathwise_real_gradient(phi, batch, theta),
                 'likelihood ratio': problem.likelihood_ratio_real_gradient(phi, [batch])}
    for label, g in estimates.items():
        projections = {problem.theta_names[i]: float(g @ matrix[:, i]) for i in coordinates}
        agree = sum(np.sign(projections[problem.theta_names[i]]) == np.sign(slopes[i]) for i in coordinates)
        report[f'{label}, {episodes} episodes'] = {'projections': projections, 'signs_agree': int(agree)}
        print(f'{label}, {episodes} episodes: signs agree {agree} of {len(coordinates)}; {projections} '
              f'({time.perf_counter() - started:.0f} s)', flush=True)
print('slopes along dphi', report['real_slope_along_dphi'], flush=True)
(OUT / f'real_gradient_at_sysid{LABEL}.json').write_text(json.dumps(report, indent=1) + '\n')
