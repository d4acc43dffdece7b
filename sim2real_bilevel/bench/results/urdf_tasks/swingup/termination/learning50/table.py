"""Swing-up learning to 50 real episodes (config/swingup.yaml, 5 real episodes per outer iteration, gap seeds
0, 1, 2): the table at N = 0, 5, 10, 20, 50 and learning50.png from the runs' results.json files in this
folder (one per method and gap seed: seedK_METHOD.json), with the flat rows of the gap runs (nominal,
domain randomisation: no real data; results.json of ../, ../seed1, ../seed2).  Run from anywhere:

    python bench/results/urdf_tasks/swingup/termination/learning50/table.py      # -> stdout, learning50.png
"""
import json
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt

from sim2real_bilevel.core.experiments import return_at_episodes

HERE = Path(__file__).resolve().parent
BUDGETS = (0, 5, 10, 20, 50)
GAP_RUNS = {0: HERE.parent, 1: HERE.parent / 'seed1', 2: HERE.parent / 'seed2'}
COLORS = {'bilevel-from-sysid': 'tab:blue', 'sysid': 'tab:red', 'bilevel': 'tab:orange', 'cmaes': 'tab:green'}


def seed_records(path):
    """The run's one seed entry (its records: real episodes so far, normalised return; N = 0 first)."""
    return next(iter(json.loads(path.read_text())['methods'].values()))['seeds'][0]


def flat(value):
    """A method that uses no real data, as a seed entry with one record."""
    return {'iterations': [{'real_episodes': 0, 'normalized_return': value}]}


def row(label, entries):
    """The table row of the seed entries' (mean) value at each budget (``return_at_episodes``)."""
    at = return_at_episodes(entries, BUDGETS)
    print(f'| {label} | ' + ' | '.join(f'{at[str(n)][0]:.3f}' for n in BUDGETS) + ' |')


runs = sorted(HERE.glob('seed*_*.json'))
entries: dict = {}              # method -> {seed: its seed entry}
seeds = sorted({int(p.stem.split('_')[0][4:]) for p in runs})
figure, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 4), sharey=True, squeeze=False)
print('| gap seed | method | ' + ' | '.join(f'N = {n}' for n in BUDGETS) + ' |')
print('|---|---|' + '---|' * len(BUDGETS))
for axis, seed in zip(axes[0], seeds):
    for path in (p for p in runs if p.stem.startswith(f'seed{seed}_')):
        method = path.stem.split('_', 1)[1]
        entry = entries.setdefault(method, {})[seed] = seed_records(path)
        axis.plot([r['real_episodes'] for r in entry['iterations']],
                  [r['normalized_return'] for r in entry['iterations']],
                  marker='o', markersize=3, label=method, color=COLORS.get(method))
        row(f'{seed} | {method}', [entry])
    gap = GAP_RUNS[seed] / 'results.json'
    if gap.exists():
        results = [e for e in json.loads(gap.read_text())['results'] if e['seed'] == seed]
        oracle = next(e['real_return'] for e in results if e['method'] == 'oracle')
        for result in results:
            if result['method'] in ('nominal', 'domain-randomization'):
                value = result['real_return'] / oracle
                entries.setdefault(result['method'], {})[seed] = flat(value)
                axis.axhline(value, linestyle=':', color='grey' if result['method'] == 'nominal' else 'black',
                             label=f"{result['method']} (no real data)")
                row(f"{seed} | {result['method']} (gap run, no real data)", [flat(value)])
    axis.set_title(f'swing-up, gap seed {seed}')
    axis.set_xlabel('real episodes')
    axis.grid(alpha=0.3)
    axis.set_xlim(-1, 52)
    axis.legend(fontsize=7)
axes[0][0].set_ylabel('normalised real return')
figure.tight_layout()
figure.savefig(HERE / 'learning50.png', dpi=110)
for method, by_seed in entries.items():
    if len(by_seed) == len(seeds):
        row(f'mean of {len(by_seed)} | {method}', list(by_seed.values()))
