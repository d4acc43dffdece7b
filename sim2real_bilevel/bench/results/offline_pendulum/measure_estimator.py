"""Measure the robot offline estimator on pendulum nominal data: gradient, coverage/ESS of step candidates, refusals."""
import sys, time, json
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))   # sim2real_bilevel/ (bench and the package)
from bench.offline import dataset_of
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.offline import make_offline_run, OfflineSettings
N = int(sys.argv[1]); behaviour = sys.argv[2]; iters = int(sys.argv[3])
t0 = time.time()
problem = load_problem(builtin_config('pendulum'))
data = dataset_of(problem, N, behaviour, 0)
print('data', time.time() - t0, flush=True)
run = make_offline_run(problem, 'bilevel', data, 0, iterations=iters, evaluate=False)
est = run.estimator
def progress(r):
    print(f'it {r.iteration} est {r.real_return_estimate if hasattr(r, "real_return_estimate") else None} event {run.__dict__.get("event")} cov {run.coverage:.4f} theta {np.round(run.theta, 3)} t {time.time()-t0:.0f}', flush=True)
run.progress = progress
start = run.start(); progress(start)
phi0 = run.phi.copy()
g = est.gradient(phi0)
print('|g|', np.linalg.norm(g), 'coverage(phi0)', est.coverage(phi0), 'value', est.value(phi0), flush=True)
if hasattr(est, '_weights'):
    import torch
    w = est._weights(torch.as_tensor(phi0)).detach().numpy()
    ess = w.sum(0) ** 2 / (w ** 2).sum(0)
    print('ESS/n at t=0,10,50,99 (phi0):', [round(ess[t] / w.shape[0], 3) for t in (0, 10, 50, 99)])
outer = run.outer_gradient(phi0, run.theta, g)
direction = run.step_direction(np.where(run.learn_mask, outer, 0.0))
print('outer grad', outer, 'direction', direction, flush=True)
for h in range(5):
    cand = np.clip(run.theta + direction * 0.5 ** h, run.lower, run.upper)
    res = run.solve_inner(cand, phi0)
    c = est.coverage(res.phi)
    line = f'halving {h}: coverage {c:.4f} value {est.value(res.phi):.4f} |dphi| {np.linalg.norm(res.phi - phi0):.3f}'
    if hasattr(est, '_weights'):
        w = est._weights(torch.as_tensor(res.phi)).detach().numpy()
        ess = w.sum(0) ** 2 / (w ** 2).sum(0)
        line += f' ESS/n t=10,50,99: {[round(ess[t] / w.shape[0], 3) for t in (10, 50, 99)]} clipped {np.mean(w >= 10):.3f}'
    print(line, flush=True)
if iters:
    from sim2real_bilevel.core.evaluation import oracle_evaluator
    run.evaluator = oracle_evaluator(problem)
    print('start normalized', problem.normalized_return(phi0), 'true start return', problem.real_return(phi0), flush=True)
    run.run()
    rep = run.final_report()
    print('final', {k: rep[k] for k in ('normalized_return', 'real_return', 'real_return_estimate', 'real_return_ci_low', 'real_return_ci_high', 'coverage', 'refused_steps', 'halved_steps')}, flush=True)
