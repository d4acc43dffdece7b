"""One J_sim (the CRN set: 32 rollouts of 25 steps) and its gradient in phi on the iiwa task at its nominal
theta, implicit friction (config/iiwa_payload.yaml) against explicit (iiwa_payload_explicit.yaml, the same file
plus `implicit_friction: false`); best of 2 each.  From sim2real_bilevel/:

    OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/implicit_friction/cost.py
"""
import time

import numpy as np
import torch

from sim2real_bilevel.core.problems import load_problem

torch.set_num_threads(1)
TASKS = {'implicit': 'config/iiwa_payload.yaml', 'explicit': 'bench/results/implicit_friction/iiwa_payload_explicit.yaml'}


def best_of_two(call) -> float:
    times = []
    for _ in range(2):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


for label, path in TASKS.items():
    problem = load_problem(path)
    phi = torch.as_tensor(problem.policy.init_params(np.random.default_rng(0)))
    theta = torch.as_tensor(problem.theta0())
    with torch.no_grad():
        problem.sim_objective(phi, theta)              # warm-up

        def objective():
            return problem.sim_objective(phi, theta)
        value_s = best_of_two(objective)
    gradient_s = best_of_two(lambda: problem.inner_gradient(phi, theta))
    print(f'{label}: J_sim {value_s:.2f} s, grad {gradient_s:.2f} s')
