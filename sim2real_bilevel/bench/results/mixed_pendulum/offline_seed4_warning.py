"""Re-run mixed N = 10 seed 4's offline phase alone (same dataset, seed, 15 iterations) and print its
report and warning.  Run from the repository root: .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/offline_seed4_warning.py"""
import sys
sys.path.insert(0, 'sim2real_bilevel/bench')
from offline import dataset_of
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.offline import make_offline_run
p = load_problem(builtin_config('pendulum'))
d = dataset_of(p, 10, 'nominal', 4)
run = make_offline_run(p, 'bilevel', d, 4, iterations=15, evaluate=True); run.run()
r = run.final_report()
print({k: r[k] for k in ('normalized_return', 'real_return', 'real_return_estimate', 'real_return_ci_low', 'real_return_ci_high', 'coverage')})
print('WARNING:', repr(r['warning']))
