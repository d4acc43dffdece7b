"""The default offline run (bound max_action_change 2.0) of mixed N = 10 on data seeds SEED...: the true
normalised return at the start, the best and the end (evaluator: reporting only), the final action-change
ratio, the steps the bound held and the report's warning -> one JSON line per seed on stdout.

    OMP_NUM_THREADS=1 .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/machine2/seeds.py SEED ...
"""
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
from offline import dataset_of  # noqa: E402
from sim2real_bilevel.core.config import builtin_config  # noqa: E402
from sim2real_bilevel.core.offline import make_offline_run  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402

torch.set_num_threads(1)
problem = load_problem(builtin_config('pendulum'))
for seed in map(int, sys.argv[1:]):
    t0 = time.perf_counter()
    run = make_offline_run(problem, 'bilevel', dataset_of(problem, 10, 'nominal', seed), seed, iterations=15,
                           evaluate=True)
    run.run()
    report = run.final_report()
    returns = [record.normalized_return for record in run.history]
    print(json.dumps({'seed': seed, 'start': returns[0], 'max': max(returns), 'final': returns[-1],
                      'action_change': report['action_change'], 'held': int(run.action_change_held),
                      'refused': report.get('refused_steps'), 'halved': report.get('halved_steps'),
                      'warning': report['warning'], 'seconds': round(time.perf_counter() - t0, 1)}), flush=True)
