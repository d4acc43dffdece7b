"""The inner problem at the TRUE theta warm-started from the gap run's sysid and nominal policies
(inner.max_iterations), against the cold oracle (inner.oracle_iterations): real returns."""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
task, gap_dir = sys.argv[1], sys.argv[2]
p = load_problem(task)
policies = np.load(f'{gap_dir}/policies.npz')
truth = p.oracle_theta_full()[p.learn_index]
g = p.gamma ** np.arange(p.horizon)
for key in ('sysid_seed0', 'oracle_seed0', 'nominal_seed0'):
    sim = p.simulate(policies[key], truth, 32, p.horizon, np.random.default_rng(7)).rewards @ g
    print(f'{key}: real return {p.real_return(policies[key]):.3f}, sim return at the true theta {sim.mean():.3f}', flush=True)
t = time.perf_counter()
result = p.inner_solve(truth, policies['sysid_seed0'])
sim = p.simulate(result.phi, truth, 32, p.horizon, np.random.default_rng(7)).rewards @ g
print(f'true theta, warm from sysid ({result.iterations} iterations, {time.perf_counter() - t:.0f} s): real return '
      f'{p.real_return(result.phi):.3f}, sim return at the true theta {sim.mean():.3f}', flush=True)
