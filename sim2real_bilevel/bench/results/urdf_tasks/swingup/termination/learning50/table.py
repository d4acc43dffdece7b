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

HERE = Path(__file__).resolve().parent
BUDGETS = (0, 5, 10, 20, 50)
GAP_RUNS = {0: HERE.parent, 1: HERE.parent / 'seed1', 2: HERE.parent / 'seed2'}
COLORS = {'bilevel-from-sysid': 'tab:blue', 'sysid': 'tab:red', 'bilevel': 'tab:orange', 'cmaes': 'tab:green'}


def curve(path):
    """(real episodes so far, normalised return) of every record, N = 0 first."""
    seeds = next(iter(json.loads(path.read_text())['methods'].values()))['seeds']
    records = seeds[0]['iterations']
    return [record['real_episodes'] for record in records], [record['normalized_return'] for record in records]


def at(episodes, values, budget):
    """The policy deployed after ``budget`` real episodes: the last record with at most that many."""
    kept = [v for n, v in zip(episodes, values) if n <= budget]
    return kept[-1] if kept else float('nan')


runs = sorted(HERE.glob('seed*_*.json'))
rows: dict = {}                 # method -> {seed: values at the budgets}
seeds = sorted({int(p.stem.split('_')[0][4:]) for p in runs})
figure, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 4), sharey=True, squeeze=False)
print('| gap seed | method | ' + ' | '.join(f'N = {n}' for n in BUDGETS) + ' |')
print('|---|---|' + '---|' * len(BUDGETS))
for axis, seed in zip(axes[0], seeds):
    for path in (p for p in runs if p.stem.startswith(f'seed{seed}_')):
        method = path.stem.split('_', 1)[1]
        episodes, values = curve(path)
        axis.plot(episodes, values, marker='o', markersize=3, label=method, color=COLORS.get(method))
        rows.setdefault(method, {})[seed] = [at(episodes, values, n) for n in BUDGETS]
        print(f'| {seed} | {method} | ' + ' | '.join(f'{v:.3f}' for v in rows[method][seed]) + ' |')
    gap = GAP_RUNS[seed] / 'results.json'
    if gap.exists():
        entries = [e for e in json.loads(gap.read_text())['results'] if e['seed'] == seed]
        oracle = next(e['real_return'] for e in entries if e['method'] == 'oracle')
        for entry in entries:
            if entry['method'] in ('nominal', 'domain-randomization'):
                value = entry['real_return'] / oracle
                rows.setdefault(entry['method'], {})[seed] = [value] * len(BUDGETS)
                axis.axhline(value, linestyle=':', color='grey' if entry['method'] == 'nominal' else 'black',
                             label=f"{entry['method']} (no real data)")
                print(f"| {seed} | {entry['method']} (gap run, no real data) | " + ' | '.join([f'{value:.3f}'] * len(BUDGETS)) + ' |')
    axis.set_title(f'swing-up, gap seed {seed}')
    axis.set_xlabel('real episodes')
    axis.grid(alpha=0.3)
    axis.set_xlim(-1, 52)
    axis.legend(fontsize=7)
axes[0][0].set_ylabel('normalised real return')
figure.tight_layout()
figure.savefig(HERE / 'learning50.png', dpi=110)
for method, by_seed in rows.items():
    if len(by_seed) == len(seeds):
        means = [sum(values[k] for values in by_seed.values()) / len(by_seed) for k in range(len(BUDGETS))]
        print(f'| mean of {len(by_seed)} | {method} | ' + ' | '.join(f'{v:.3f}' for v in means) + ' |')
