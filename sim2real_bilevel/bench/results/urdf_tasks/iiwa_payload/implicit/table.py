"""The table of this folder's learning logs (bilevel_from.py output, LOG = METHOD_seedK.log, and
learning_from_gap.py's results, seedK_METHOD.json with run seed 0): normalised real return at every
real-episode budget, per method and run seed, and the mean over run seeds.  Usage: table.py [FOLDER]
(default: this file's folder)."""
import collections
import glob
import json
import os
import re
import sys

folder = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
RECORD = re.compile(r'^iteration \d+: (\d+) real episodes, real return [-\d.]+, normalised ([-\d.]+)', re.M)
runs = collections.defaultdict(dict)          # (method, seed) -> {episodes: normalised}
for path in sorted(glob.glob(os.path.join(folder, '*_seed*.log'))):
    method, seed = re.fullmatch(r'(.*)_seed(\d+)\.log', os.path.basename(path)).groups()
    for episodes, value in RECORD.findall(open(path).read()):
        runs[method, int(seed)][int(episodes)] = float(value)
for path in sorted(glob.glob(os.path.join(folder, 'seed*_*.json'))):       # learning_from_gap.py, one method each
    label = re.fullmatch(r'seed\d+_(.*)\.json', os.path.basename(path)).group(1)    # the file's label, e.g. M_normalized
    for entry in json.load(open(path))['methods'].values():
        for seed in entry['seeds']:
            runs[label, seed['seed']] = {r['real_episodes']: r['normalized_return'] for r in seed['iterations']}
budgets = sorted({n for values in runs.values() for n in values})
print('| method | run seed | ' + ' | '.join(f'N = {n}' for n in budgets) + ' |')
print('|---|---|' + '---|' * len(budgets))
for (method, seed), values in sorted(runs.items()):
    print(f'| {method} | {seed} | ' + ' | '.join(f'{values[n]:.3f}' if n in values else '' for n in budgets) + ' |')
for method in sorted({method for method, _ in runs}):
    cells = []
    for n in budgets:
        have = [values[n] for (m, _), values in runs.items() if m == method and n in values]
        cells.append(f'{sum(have) / len(have):.3f}' + ('' if len(have) == 3 else f' ({len(have)} runs)') if have else '')
    print(f'| {method} | mean | ' + ' | '.join(cells) + ' |')
