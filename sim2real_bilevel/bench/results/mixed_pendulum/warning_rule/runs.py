"""Offline phase of mixed N SEED (the same dataset, seed and 15 iterations as bench/mixed.py), step by step:
every iteration's policy phi, its true normalised return (evaluator: reporting only) and the estimator's
report saved to records/N{N}_seed{SEED}.npz|json, for diagnose.py.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/runs.py N SEED
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from offline import dataset_of  # noqa: E402
from sim2real_bilevel.core.config import builtin_config  # noqa: E402
from sim2real_bilevel.core.offline import make_offline_run  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

torch.set_num_threads(1)
n_episodes, seed = int(sys.argv[1]), int(sys.argv[2])
extra = sys.argv[3:]                     # key=value OfflineSettings overrides (e.g. start_check=...)
problem = load_problem(builtin_config('pendulum'))
dataset = dataset_of(problem, n_episodes, 'nominal', seed)
settings = None
tag = ''
if extra:
    from sim2real_bilevel.core.offline import OfflineSettings
    settings = OfflineSettings(**{k: type(getattr(OfflineSettings(), k))(v) if getattr(OfflineSettings(), k) is not None
                                  else float(v) for k, v in (e.split('=') for e in extra)})
    tag = '_' + '_'.join(e.replace('=', '') for e in extra)
t0 = time.perf_counter()
run = make_offline_run(problem, 'bilevel', dataset, seed, iterations=15, evaluate=True, settings=settings)
run.start()
phis = [run.phi.copy()]
while run.iteration < 15:
    run.step()
    phis.append(run.phi.copy())
run.settle()
report = run.final_report()
out = HERE / 'records'
out.mkdir(exist_ok=True)
np.savez(out / f'N{n_episodes}_seed{seed}{tag}.npz', phis=np.array(phis))
document = {'N': n_episodes, 'seed': seed, 'settings': extra, 'seconds': time.perf_counter() - t0,
            'max_action_change': getattr(run, 'max_action_change', None),   # None: code before the bound
            'history': [r.to_json() for r in run.history],
            'report': {k: v for k, v in report.items() if k != 'theta'}}
(out / f'N{n_episodes}_seed{seed}{tag}.json').write_text(json.dumps(document, indent=1) + '\n')
print(n_episodes, seed, extra, 'normalised', [round(r.normalized_return, 3) for r in run.history],
      'estimate', report['real_return_estimate'], 'warning', repr(report['warning']), flush=True)
