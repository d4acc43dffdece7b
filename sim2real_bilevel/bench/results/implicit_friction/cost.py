"""One J_sim (the CRN set: 32 rollouts of 25 steps) and its gradient in phi on the iiwa task at its nominal
theta, implicit friction (config/iiwa_payload.yaml) against explicit (iiwa_payload_explicit.yaml, the same file
plus `implicit_friction: false`); best of 2 each.  From sim2real_bilevel/:

    OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/implicit_friction/cost.py
"""
import sys, time, numpy as np, torch
from sim2real_bilevel.core.problems import load_problem
torch.set_num_threads(1)
rows = []
for label, path in [('implicit', 'config/iiwa_payload.yaml'), ('explicit', 'bench/results/implicit_friction/iiwa_payload_explicit.yaml')]:
    p = load_problem(path)
    phi = torch.as_tensor(p.policy.init_params(np.random.default_rng(0)))
    theta = torch.as_tensor(p.theta0())
    with torch.no_grad():
        p.sim_objective(phi, theta)
    times = []
    for _ in range(2):
        t = time.perf_counter(); 
        with torch.no_grad(): p.sim_objective(phi, theta)
        times.append(time.perf_counter() - t)
    g = []
    for _ in range(2):
        t = time.perf_counter(); p.inner_gradient(phi, theta); g.append(time.perf_counter() - t)
    rows.append((label, min(times), min(g)))
for r in rows: print(f'{r[0]}: J_sim {r[1]:.2f} s, grad {r[2]:.2f} s')
