"""A candidate definition of the oracle, tried on 2026-11-30 and NOT adopted: the better by J_sim at the
true theta of the cold solve (``RobotProblem.oracle_phi``) and a solve continued from the nominal
solution, oracle_iterations each.  For a gap run's saved policies (``bench/urdf_tasks.py gap``'s
policies.npz, same code path and seed) this computes the continued candidate from the saved nominal
policy (the cold candidate is the saved oracle: the same deterministic computation), chooses the
better, and prints every saved policy's real return normalised by the cold and the chosen oracle.
Result (README.md here): the cold solve won on the iiwa, the swing-up and the pendulum, so the
extra solve (about 3x the oracle's cost on the pendulum) bought nothing and was reverted.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 10 ../.venv/bin/python \
        bench/results/urdf_tasks/oracle/continued_oracle.py config/iiwa_payload.yaml bench/results/urdf_tasks/iiwa_payload 0
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from urdf_tasks import evaluate, load  # noqa: E402

torch.set_num_threads(1)
task, gap_dir, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
problem = load(task, seed)
policies = np.load(gap_dir / 'policies.npz')
truth = torch.as_tensor(problem.oracle_theta_full())


def j_sim(phi) -> float:
    with torch.no_grad():
        return float(problem.sim_objective(torch.as_tensor(phi), truth, problem._crn, full=True))


started = time.perf_counter()
continued = problem._solve(truth, policies[f'nominal_seed{seed}'], method='exact', rng=None,
                           max_iterations=problem.inner.oracle_iterations)
seconds = time.perf_counter() - started
candidates = {'cold': policies[f'oracle_seed{seed}'], 'continued from the nominal solution': continued.phi}
objectives = {name: j_sim(phi) for name, phi in candidates.items()}
chosen = max(objectives, key=objectives.get)
report = {'task': task, 'seed': seed, 'J_sim at the true theta': objectives, 'chosen': chosen,
          'continued solve': {'seconds': seconds, 'evaluations': continued.iterations,
                              'grad_norm': continued.grad_norm, 'non_finite': continued.info.get('non_finite')}}
print(json.dumps(report, indent=1, default=str), flush=True)
returns = {name: evaluate(problem, phi) for name, phi in candidates.items()}
old, new = returns['cold']['real_return'], returns[chosen]['real_return']
rows = []
for key in policies.files:
    if not key.endswith(f'_seed{seed}'):
        continue
    result = returns['cold'] if key.startswith('oracle') else evaluate(problem, policies[key])
    rows.append({'policy': key, **result, 'normalised, cold oracle': result['real_return'] / old,
                 'normalised, new oracle': result['real_return'] / new})
rows.append({'policy': 'continued from the nominal solution', **returns['continued from the nominal solution'],
             'normalised, cold oracle': returns['continued from the nominal solution']['real_return'] / old,
             'normalised, new oracle': returns['continued from the nominal solution']['real_return'] / new})
for row in rows:
    print(json.dumps(row), flush=True)
out = Path(__file__).resolve().parent / f'{Path(task).stem}_seed{seed}.json'
out.write_text(json.dumps({**report, 'rows': rows}, indent=1, default=str) + '\n')
