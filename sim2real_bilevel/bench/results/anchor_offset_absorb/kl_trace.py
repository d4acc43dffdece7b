"""Diagnostic: the KL between consecutive deployed policies on the real states, per outer iteration.
Usage: kl_trace.py TASK GAP_DIR ITERATIONS REAL_EPISODES OUT.npz [method=NAME] [seed=K] [KEY=VALUE ...]"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.outer import OuterConfig
task, gap_dir, iterations, episodes, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
settings = dict(a.split('=', 1) for a in sys.argv[6:])
method = settings.pop('method', 'bilevel'); run_seed = int(settings.pop('seed', 0))
defaults = OuterConfig()
settings = {k: (v == 'true' if isinstance(getattr(defaults, k, None), bool) else type(getattr(defaults, k, ''))(v)) for k, v in settings.items()}
problem = load_problem(task)
results = json.load(open(f'{gap_dir}/results.json'))['results']
oracle = [r for r in results if r['method'] == 'oracle' and r['seed'] == 0][0]['real_return']
policies = np.load(f'{gap_dir}/policies.npz')
run = make_run(problem, method, seed=run_seed, iterations=iterations, overrides={'real_episodes': episodes, **settings})
run.phi = policies['nominal_seed0']; run.inner_grad_norm = float('nan')
pol = problem.policy
def kl(phi1, phi2, obs):
    p1, p2 = (torch.as_tensor(p, dtype=torch.float64) for p in (phi1, phi2))
    with torch.no_grad():
        m1, m2 = pol.mean(p1, obs), pol.mean(p2, obs)
        s1, s2 = pol.log_std(p1), pol.log_std(p2)
        k = (s2 - s1) + (torch.exp(2 * s1) + (m1 - m2) ** 2) / (2 * torch.exp(2 * s2)) - 0.5
    return float(k.sum(-1).mean()), float(((m1 - m2) ** 2).sum(-1).mean() ** 0.5)
names = [n.removeprefix('log_') for n in problem.theta_names]
phis, thetas, values = [run.phi.copy()], [run.theta.copy()], [problem.real_return(run.phi) / oracle]
print(f'iteration 0: normalised {values[0]:.3f}', flush=True)
for k in range(iterations):
    t0 = time.perf_counter()
    record = run.step()
    phis.append(run.phi.copy()); thetas.append(run.theta.copy()); values.append(problem.real_return(run.phi) / oracle)
    obs = torch.cat([problem.model.observation(torch.as_tensor(b.states[:, :-1], dtype=torch.float64)).reshape(-1, pol.obs_dim)
                     for b in run.real_batches])
    d, rms = kl(phis[-2], phis[-1], obs)
    print(f'iteration {k + 1}: normalised {values[-1]:.3f}; KL(prev||new) on {obs.shape[0]} real states {d:.4g}, '
          f'rms mean change {rms:.4g}, std {np.exp(pol.log_std(torch.as_tensor(run.phi)).numpy()).round(3).tolist()}; '
          f'{time.perf_counter() - t0:.0f} s; {record.event} theta {dict(zip(names, np.exp(run.theta).round(3).tolist()))}', flush=True)
np.savez(out, phis=np.array(phis), thetas=np.array(thetas), values=np.array(values))
