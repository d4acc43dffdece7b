"""The table of README.md from the runs' results.json files (mean [min, max] over seeds)."""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for name in ('nodelay', 'delay'):
    results = json.loads((HERE / f'{name}_results.json').read_text())
    for method, runs in results['methods'].items():
        curves = np.array([[r['normalized_return'] for r in seed['iterations']] for seed in runs['seeds']])
        episodes = [r['real_episodes'] for r in runs['seeds'][0]['iterations']]
        cells = [f'{curves[:, i].mean():.3f} [{curves[:, i].min():.2f}, {curves[:, i].max():.2f}]'
                 for i, n in enumerate(episodes) if n in (0, 4, 10, 20)]
        print(f'| {name} | {method} | ' + ' | '.join(cells) + ' |')
        if 'log_delay' in results['theta_names']:
            index = results['theta_names'].index('log_delay')
            print(f'|   | learned delay (ms) | ' + ', '.join(
                f'{1e3 * np.exp(seed["iterations"][-1]["theta"][index]):.1f}' for seed in runs['seeds']) + ' |')
sys.exit(0)
