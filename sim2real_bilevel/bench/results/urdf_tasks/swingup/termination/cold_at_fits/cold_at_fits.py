"""Is the swing-up's shortfall the fitted theta or the solve?  A cold solve with the oracle's budget
(inner.oracle_iterations, from the same initial policy as the oracle's) at the theta that sysid and
bi-level-from-sysid reached on gap seed 0 (learning50/seed0_*.json), evaluated on the stand-in
like every record (real return / the oracle's 6.308, the gap run's).  Reporting only: reads the
hidden model's return.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 5 ../.venv/bin/python \
        bench/results/urdf_tasks/swingup/termination/cold_at_fits/cold_at_fits.py [METHOD:ITERATION ...]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
import sim2real_bilevel.core.experiments as experiments  # noqa: E402

torch.set_num_threads(1)
ORACLE_REAL_RETURN = 6.308          # gap.md, seed 0 (the normaliser of learning50's table)
picks = sys.argv[1:] or ['sysid:10', 'sysid:3', 'bilevel-from-sysid:3']
problem = experiments.load_problem('config/swingup.yaml')
out = HERE / 'cold_at_fits.jsonl'
for pick in picks:
    method, iteration = pick.split(':')
    record = json.loads((HERE.parent / 'learning50' / f'seed0_{method}.json').read_text())
    run = record['methods'][method]['seeds'][0]
    row = next(r for r in run['iterations'] if r['iteration'] == int(iteration))
    theta = np.asarray(row['theta'], dtype=np.float64)
    started = time.perf_counter()
    solved = problem.inner_solve(theta, None, max_iterations=problem.inner.oracle_iterations)
    real = problem.real_return(solved.phi)
    line = {'method': method, 'iteration': int(iteration), 'theta': theta.tolist(),
            'warm_normalized_return': row['normalized_return'],
            'cold_real_return': real, 'cold_normalized_return': real / ORACLE_REAL_RETURN,
            'cold_iterations': int(solved.iterations), 'grad_norm': float(solved.grad_norm),
            'seconds': time.perf_counter() - started}
    print(json.dumps(line), flush=True)
    with out.open('a') as stream:
        stream.write(json.dumps(line) + '\n')
