"""Follow-up of sensitivity_check.py on generated task 5: which model should the pathwise real
gradient differentiate through?  At the nominal policy, the real return's slope along three unit
policy directions that matter -- the warm re-solved policies' change for the motor gain and for the
effort weight (theta +- 0.1), and the way to the oracle policy -- (a finite difference on the policy,
fixed evaluation seeds) against each estimator's prediction g . u, on 4 batches of 10 real episodes:

- pathwise through the simulator at the outer loop's theta (here the nominal theta0;
  ``real_gradient.model: simulator``, the default before session 25);
- pathwise through the simulator at the maximum-likelihood fit of its dynamics entries to the batch
  (``real_gradient.model: identified``, ``gradient_model_theta``);
- pathwise through the simulator at the hidden true values (diagnosis only: no run may read them),
  without and with the stand-in's one-step actuation delay (a fixed ``delay`` entry of 0.04 s);
- the likelihood-ratio estimator (``real_gradient.estimator: reinforce``).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python \\
        bench/results/urdf_generated_tasks/estimator_check.py [--cache DIR]

``--cache DIR`` keeps the nominal policy and the re-solved directions there (about 7 minutes of
solves on 2 cores) for a rerun.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[2]))
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument('--cache', default=None)
args = parser.parse_args()
cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp())
cache.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
problems = here / 'problems'
problem = load_problem(problems / 'task-005.yaml')
data = yaml.safe_load((problems / 'task-005.yaml').read_text())
data['simulator']['parameters']['delay'] = {'value': 0.04, 'learn': False, 'bounds': [0.001, 0.08]}
data['robot']['urdf'] = str(problems / 'generated_task_5.urdf')
(cache / 'task5_delay.yaml').write_text(yaml.safe_dump(data))
delayed = load_problem(cache / 'task5_delay.yaml')
started = time.perf_counter()
theta = problem.theta0()
names = list(problem.theta_names)


def cached(name, make):
    path = cache / f'{name}.npy'
    if not path.exists():
        np.save(path, make())
    return np.load(path)


phi = cached('phi_nominal', lambda: problem.inner_solve(theta, None).phi)
print(f'nominal policy ({time.perf_counter() - started:.0f} s)', flush=True)


def resolved_change(name):
    i = names.index(name)
    solved = {}
    for sign in (1, -1):
        shifted = theta.copy()
        shifted[i] += sign * 0.1
        solved[sign] = problem.inner_solve(shifted, phi).phi
    return (solved[1] - solved[-1]) / 0.2


units = {name: cached(f'dphi_{name}', lambda name=name: resolved_change(name)) for name in ('log_motor_gain', 'log_w_effort')}
units['to_oracle'] = np.load(problems / 'task-005.oracle.npy') - phi
units = {name: d / np.linalg.norm(d) for name, d in units.items()}
true_slopes = {name: (problem.real_return(phi + 0.1 * u) - problem.real_return(phi - 0.1 * u)) / 0.2
               for name, u in units.items()}
print('real-return slopes (finite difference):', json.dumps(true_slopes), f'({time.perf_counter() - started:.0f} s)',
      flush=True)
theta_true = problem.oracle_theta_full()[problem.learn_index]      # diagnosis only
rows = []
for b in range(4):
    batch = problem.sample_real(phi, 10, np.random.default_rng([b, 5]))
    fitted = problem.gradient_model_theta([batch], theta)
    estimates = {
        'pathwise, simulator at theta0': problem.pathwise_real_gradient(phi, batch, theta),
        'pathwise, identified': problem.pathwise_real_gradient(phi, batch, fitted),
        'pathwise, true values (no delay)': problem.pathwise_real_gradient(phi, batch, theta_true),
        'pathwise, theta0 + 1-step delay': delayed.pathwise_real_gradient(phi, batch, theta),
        'pathwise, true values + 1-step delay': delayed.pathwise_real_gradient(phi, batch, theta_true),
        'likelihood ratio': problem.likelihood_ratio_real_gradient(phi, [batch]),
    }
    for estimator, g in estimates.items():
        row = {'batch': b, 'estimator': estimator, **{name: float(g @ u) for name, u in units.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print('identified theta', json.dumps(dict(zip(names, np.round(fitted, 3).tolist()))), flush=True)
print('true theta', json.dumps(dict(zip(names, np.round(theta_true, 3).tolist()))))
summary = {}
for estimator in dict.fromkeys(r['estimator'] for r in rows):
    mine = [r for r in rows if r['estimator'] == estimator]
    summary[estimator] = {name: {'mean': float(np.mean([r[name] for r in mine])),
                                 'right sign': f"{sum(np.sign(r[name]) == np.sign(true_slopes[name]) for r in mine)}/{len(mine)}"}
                          for name in units}
print(json.dumps(summary, indent=1))
(here / 'estimator_check.json').write_text(json.dumps({'real_return_slopes': true_slopes, 'summary': summary,
                                                       'rows': rows}, indent=1) + '\n')
print(f'done ({time.perf_counter() - started:.0f} s)')
