"""Side by side: normalised real return vs real episodes, inner.start warm against best, from the two
``solve`` runs' results.json (out_warm/, out_best/), with the inner seconds per outer iteration.

    cd sim2real_bilevel && ../.venv/bin/python bench/results/inner_start/pendulum/table.py
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
runs = {start: json.loads((HERE / f'out_{start}' / 'results.json').read_text()) for start in ('warm', 'best')}
episodes = [0, 2, 4, 6, 8, 10, 14, 20]
print('| method | inner.start | ' + ' | '.join(f'N = {n}' for n in episodes) + ' | inner s / outer iteration |')
print('|---' * (len(episodes) + 3) + '|')
for method in runs['warm']['methods']:
    for start, data in runs.items():
        seeds = data['methods'][method]['seeds']
        cells = []
        for n in episodes:
            values = [[it['normalized_return'] for it in seed['iterations'] if it['real_episodes'] <= n][-1]
                      for seed in seeds]
            cells.append(f'{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]')
        inner = np.mean([it['timing']['inner_s'] for seed in seeds for it in seed['iterations'][1:]])
        print(f'| {method} | {start} | ' + ' | '.join(cells) + f' | {inner:.1f} |')
