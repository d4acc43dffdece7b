"""The swing-up loop with warm-chained inner solves (../learning50/) against the same loop with
``inner_start=cold`` or ``best`` (this folder: seedK_METHOD_START.json), at N = 0, 5, 10, 15, 20 real
episodes, per gap seed and as the mean over the seeds each start has.  Run from anywhere:

    python bench/results/urdf_tasks/swingup/termination/cold_at_fits/table.py
"""
import json
from pathlib import Path

import numpy as np

from sim2real_bilevel.core.experiments import return_at_episodes

HERE = Path(__file__).resolve().parent
BUDGETS = (0, 5, 10, 15, 20)


def seed_records(path):
    """The run's one seed entry (its records: real episodes so far, normalised return)."""
    return next(iter(json.loads(path.read_text())['methods'].values()))['seeds'][0]


def values(entry):
    at = return_at_episodes([entry], BUDGETS)
    return [at[str(n)][0] for n in BUDGETS]


print('| gap seed | method | inner start | ' + ' | '.join(f'N = {n}' for n in BUDGETS) + ' |')
print('|---|---|---|' + '---|' * len(BUDGETS))
means: dict = {}
for path in sorted(HERE.glob('seed*_*_*.json')):
    seed, rest = path.stem.split('_', 1)
    method, start = rest.rsplit('_', 1)
    for label, source in ((start, path), ('warm', HERE.parent / 'learning50' / f'{seed}_{method}.json')):
        if seed in means.get((method, label), {}):
            continue                                   # the warm row of a seed with two other starts
        row = values(seed_records(source))
        means.setdefault((method, label), {})[seed] = row
        print(f'| {seed[4:]} | {method} | {label} | ' + ' | '.join(f'{v:.3f}' for v in row) + ' |')
print()
print('| method | inner start | seeds | ' + ' | '.join(f'N = {n}' for n in BUDGETS) + ' |')
print('|---|---|---|' + '---|' * len(BUDGETS))
for (method, label), rows in sorted(means.items()):
    mean = np.mean(list(rows.values()), axis=0)
    print(f'| {method} | {label} | {", ".join(s[4:] for s in sorted(rows))} | '
          + ' | '.join(f'{v:.3f}' for v in mean) + ' |')
