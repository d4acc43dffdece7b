"""What ``inner.start: best`` would do on the iiwa at sysid's fit (the first outer iteration of the
replayed run in ``theta_start/iiwa/sysid_fit.py``: 5 real episodes of the gap run's nominal policy):
the warm chain's policy there against the cold solve at the same theta, by J_sim on the CRN set (what
``better_start`` compares) and by real return (the hidden model: reporting only).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/inner_start/iiwa_cold_at_sysid.py OUT.json
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'theta_start' / 'iiwa'))
from sysid_fit import replay_to_sysid_fit  # noqa: E402
from sim2real_bilevel.core.problem import InnerResult  # noqa: E402
from sim2real_bilevel.core.problems.robot.problem import better_start  # noqa: E402

torch.set_num_threads(1)
started = time.perf_counter()
problem, run = replay_to_sysid_fit()
theta_full = problem.full_theta(torch.as_tensor(run.theta, dtype=torch.float64)).detach()
phi = torch.as_tensor(run.phi, dtype=torch.float64)
with torch.no_grad():
    warm_objective = float(problem.sim_objective(phi, theta_full, full=True))    # on the CRN set
print(f'replayed to sysid fit in {time.perf_counter() - started:.0f} s; warm chain J_sim {warm_objective:.4f}', flush=True)
started = time.perf_counter()
cold = problem.inner_solve(run.theta, None)
cold_seconds = time.perf_counter() - started
warm_real, cold_real = problem.real_return(run.phi), problem.real_return(cold.phi)
line = {'theta': np.asarray(run.theta).tolist(), 'warm_objective': warm_objective,
        'cold_objective': cold.info['objective'], 'warm_real_return': warm_real, 'cold_real_return': cold_real,
        'cold_seconds': cold_seconds, 'cold_grad_norm': cold.grad_norm,
        'inner_start_best_keeps': better_start(
            InnerResult(phi=run.phi, grad_norm=float('nan'), iterations=0, info={'objective': warm_objective}), cold)}
print(json.dumps(line, indent=1))
Path(sys.argv[1]).write_text(json.dumps(line, indent=1) + '\n')
