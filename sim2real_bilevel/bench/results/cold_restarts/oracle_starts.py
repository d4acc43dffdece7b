"""The oracle's cold solve (at the true theta, ``inner.oracle_iterations``) from initial policies
0, 1, 2, ... one solve each (restarts off, side by side): J_sim, ||F|| / tolerance, real return.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/cold_restarts/oracle_starts.py \
        config/iiwa_payload.yaml 0,1,2 > OUT.jsonl
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PACKAGE))
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

torch.set_num_threads(1)
problem = load_problem(sys.argv[1])
problem.inner = dataclasses.replace(problem.inner, cold_restarts=0)
theta_full = torch.as_tensor(problem.oracle_theta_full(), dtype=torch.float64)
for start in [int(k) for k in sys.argv[2].split(',')]:
    started = time.time()
    solved = problem._solve(theta_full, None, method='exact', rng=None, max_iterations=problem.inner.oracle_iterations,
                            budget='inner.oracle_iterations', start=start)
    print(json.dumps({'start': start, 'J_sim': solved.info['objective'], 'grad_norm': float(solved.grad_norm),
                      'ratio': float(solved.grad_norm) / problem.inner.tolerance, 'solve_s': time.time() - started,
                      'real_return': float(problem.real_return(solved.phi))}), flush=True)
