"""The outer gradient at sysid's iterates: run sysid from the gap run's nominal policy; at each of its
policies, the bi-level outer gradient an anchored run would step on there (the batch collected with that
policy as the newest, the package's default sensitivity settings).  Usage: grad_at_fit.py TASK GAP_DIR
ITERATIONS REAL_EPISODES [seed=K]"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.experiments import make_run
task, gap_dir, iterations, episodes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
settings = dict(a.split('=', 1) for a in sys.argv[5:])
seed = int(settings.pop('seed', 0))
problem = load_problem(task)
results = json.load(open(f'{gap_dir}/results.json'))['results']
oracle = [r for r in results if r['method'] == 'oracle' and r['seed'] == 0][0]['real_return']
policies = np.load(f'{gap_dir}/policies.npz')
sysid = make_run(problem, 'sysid', seed=seed, iterations=iterations, overrides={'real_episodes': episodes})
sysid.phi = policies['nominal_seed0']; sysid.inner_grad_norm = float('nan')
probe = make_run(problem, 'bilevel-anchored-auto', seed=seed, iterations=iterations, overrides={'real_episodes': episodes})
names = [n.removeprefix('log_') for n in problem.theta_names]
iterates = []
for k in range(iterations):
    sysid.step()
    iterates.append((sysid.phi.copy(), sysid.theta.copy(), sysid.inner_grad_norm))
    print(f'iteration {k + 1}: normalised {problem.real_return(sysid.phi) / oracle:.3f}; '
          f'theta {dict(zip(names, np.exp(sysid.theta).round(3).tolist()))}', flush=True)
history = probe.config.real_history
for k, (phi, theta, grad_norm) in enumerate(iterates[:-1]):
    data = sysid.real_batches[:k + 2][-history:]          # batch k + 2 was collected with policy k + 1
    t0 = time.perf_counter()
    probe.inner_grad_norm = grad_norm
    real = problem.real_policy_gradient(phi, data, theta=theta)
    gradient = probe.outer_gradient(phi, theta, real)
    print(f'at sysid iterate {k + 1} (batches 1..{k + 2}): outer gradient '
          + ', '.join(f'{n} {x:.3g}' for n, x in zip(names, gradient)) + f' ({time.perf_counter() - t0:.0f} s) {probe.event}', flush=True)
    probe.event = ''
