"""Does sysid's fit reproduce the real return of the policy whose episodes it was fitted to?

For a task and a policy (the gap run's nominal policy from POLICIES.npz, or a cold solve at the
nominal theta when no file is given): per run seed, 10 real episodes, sysid's fit on them, and the
policy's discounted return with the task's reward predicted by simulators at the nominal theta, at the
fit and (reporting only) at the true theta, against the episodes' measured mean with its 95 %
t-interval.  Usage: fit_check.py TASK OUT.json [POLICIES.npz] [seeds=0,1,2] [episodes=10] [rollouts=256]"""
import json, sys, time
import numpy as np, torch
from scipy import stats
torch.set_num_threads(1)
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.robot.simulator import CommonNoise

task, out = sys.argv[1], sys.argv[2]
rest = [a for a in sys.argv[3:] if '=' not in a]
options = dict(a.split('=', 1) for a in sys.argv[3:] if '=' in a)
seeds = [int(s) for s in options.get('seeds', '0,1,2').split(',')]
episodes, rollouts = int(options.get('episodes', 10)), int(options.get('rollouts', 256))
problem = load_problem(task)
theta0 = problem.theta0()
t0 = time.perf_counter()
if rest:
    phi = np.load(rest[0])['nominal_seed0']
else:
    phi = problem.inner_solve(theta0, None).phi
solve_s = time.perf_counter() - t0
discounts = problem.gamma ** np.arange(problem.horizon)


def predicted(theta_full: np.ndarray, rng) -> tuple[float, float]:
    """Mean and standard error of the task-reward discounted return in the simulator at theta_full."""
    noise = CommonNoise.draw(rollouts, problem.horizon, problem.initial, rng)
    with torch.no_grad():
        _, _, rewards = problem.rollout(torch.as_tensor(phi, dtype=torch.float64),
                                        torch.as_tensor(theta_full, dtype=torch.float64), noise)
    returns = rewards.numpy().T @ discounts
    return float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(len(returns)))


def with_task_reward(theta: np.ndarray) -> np.ndarray:
    full = problem.full_theta(torch.as_tensor(theta, dtype=torch.float64)).numpy()
    n = problem.model.n_physical
    full[n:] = np.log(problem.task_weights)
    return full


rows = []
truth = problem.oracle_theta_full()
for seed in seeds:
    rng = np.random.default_rng(seed)
    batch = problem.sample_real(phi, episodes, rng)
    measured = batch.rewards @ discounts
    mean, sem = measured.mean(), measured.std(ddof=1) / np.sqrt(len(measured))
    half = stats.t.ppf(0.975, len(measured) - 1) * sem
    fit = np.clip(problem.system_identification([batch], theta0), *problem.theta_bounds())
    row = {'seed': seed, 'measured': [float(mean), float(mean - half), float(mean + half)],
           'fit': dict(zip(problem.theta_names, fit.round(4).tolist()))}
    for name, full in (('nominal', with_task_reward(theta0)), ('fit', with_task_reward(fit)), ('truth', truth)):
        value, error = predicted(full, np.random.default_rng(1000 + seed))
        row[f'predicted_{name}'] = [value, error]
        row[f'z_{name}'] = float((value - mean) / np.hypot(sem, error))
    rows.append(row)
    print(f'{task} seed {seed}: measured {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]; predicted nominal '
          f'{row["predicted_nominal"][0]:.3f} (z {row["z_nominal"]:+.1f}), fit {row["predicted_fit"][0]:.3f} '
          f'(z {row["z_fit"]:+.1f}), truth {row["predicted_truth"][0]:.3f} (z {row["z_truth"]:+.1f})', flush=True)
json.dump({'task': task, 'episodes': episodes, 'rollouts': rollouts, 'solve_s': solve_s, 'rows': rows,
           'nominal_real_return': problem.real_return(phi)}, open(out, 'w'), indent=1)
