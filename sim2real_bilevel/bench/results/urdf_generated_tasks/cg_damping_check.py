"""Follow-up of sensitivity_check.py on generated task 5: is the motor gain's sensitivity column
S[:, gain] = (A + lambda I)^-1 M[:, gain] (A = -dF/dphi, M = dF/dtheta at the nominal policy)
orthogonal to the re-solved policies' change only because of the default solve (CG, ridge
lambda = 1.0, 10 iterations)?  The column by CG at smaller ridges and more iterations, against
the finite difference of the warm re-solves at theta +- 0.1 (cosine, norm ratio).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python \\
        bench/results/urdf_generated_tasks/estimator_check.py --cache DIR     # writes the policies
    OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/urdf_generated_tasks/cg_damping_check.py --cache DIR
"""
import argparse
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

parser = argparse.ArgumentParser()
parser.add_argument('--cache', required=True, help="estimator_check.py's --cache folder")
cache = Path(parser.parse_args().cache)
torch.set_num_threads(1)
problem = load_problem(here / 'problems' / 'task-005.yaml')
theta = problem.theta0()
phi = np.load(cache / 'phi_nominal.npy')
names = list(problem.theta_names)
phi_t = torch.tensor(phi, requires_grad=True)
(residual,) = torch.autograd.grad(problem.sim_objective(phi_t, torch.as_tensor(theta), None), phi_t)
report = {'inner_grad_norm': float(residual.norm()), 'inner_tolerance': problem.inner_tolerance(),
          'phi_size': int(phi.size), 'columns': []}
print(json.dumps(report), flush=True)
ops = implicit.operators(problem.sensitivity_terms(phi, theta, method='exact'))
for name, variants in (('log_motor_gain', ((1.0, 10), (0.1, 40), (0.01, 100), (0.0, 100))),
                       ('log_w_effort', ((1.0, 10), (0.01, 100)))):
    fd = np.load(cache / f'dphi_{name}.npy')
    column = ops.m_matvec(torch.eye(ops.theta_size, dtype=torch.float64)[names.index(name)])
    for damping, maxiter in variants:
        started = time.perf_counter()
        s, info = implicit.conjugate_gradient(lambda v: ops.a_matvec(v) + damping * v, column, maxiter, 1e-6)
        s = s.numpy()
        row = {'theta': name, 'damping': damping, 'maxiter': maxiter,
               'cosine(S column, finite-difference dphi)': float(s @ fd / np.linalg.norm(s) / np.linalg.norm(fd)),
               '|S column| / |finite-difference dphi|': float(np.linalg.norm(s) / np.linalg.norm(fd)),
               'cg': info, 'seconds': time.perf_counter() - started}
        report['columns'].append(row)
        print(json.dumps(row), flush=True)
(here / 'cg_damping_check.json').write_text(json.dumps(report, indent=1) + '\n')
