"""Table and figure of the swing-up runs in this folder (seedK_METHOD.json, written by
termination/learning_from_gap.py): normalised real return against real episodes, per gap seed and
the mean over seeds.  Usage: python compare.py  ->  prints the markdown table, writes compare.png"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = {'bilevel': 'bi-level', 'fromsysid': 'bi-level from sysid', 'sysid': 'sysid'}
SEEDS = (0, 1, 2)
SHOWN = (0, 5, 10, 20, 30, 50)


def curve(seed: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    document = json.loads((HERE / f'seed{seed}_{method}.json').read_text())
    (runs,) = document['methods'].values()
    records = runs['seeds'][0]['iterations']
    episodes = np.array([r['real_episodes'] for r in records])       # cumulative
    return episodes, np.array([r['normalized_return'] for r in records])


def main() -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    lines = ['| method | gap seed | ' + ' | '.join(f'N = {n}' for n in SHOWN) + ' |',
             '|---|---|' + '---|' * len(SHOWN)]
    figure, axes = plt.subplots(1, len(SEEDS) + 1, figsize=(4 * (len(SEEDS) + 1), 3.4), sharey=True)
    for method, label in METHODS.items():
        curves = [curve(seed, method) for seed in SEEDS]
        for seed, (episodes, values) in zip(SEEDS, curves):
            at = dict(zip(episodes.tolist(), values.tolist()))
            lines.append(f'| {label} | {seed} | ' + ' | '.join(f'{at[n]:.3f}' for n in SHOWN) + ' |')
            axes[seed].plot(episodes, values, marker='o', ms=3, label=label)
        episodes = curves[0][0]
        mean = np.mean([values for _, values in curves], axis=0)
        at = dict(zip(episodes.tolist(), mean.tolist()))
        lines.append(f'| **{label}** | mean | ' + ' | '.join(f'**{at[n]:.3f}**' for n in SHOWN) + ' |')
        axes[-1].plot(episodes, mean, marker='o', ms=3, label=label)
    for axis, title in zip(axes, [f'gap seed {s}' for s in SEEDS] + ['mean of 3 seeds']):
        axis.set_title(title)
        axis.set_xlabel('real episodes')
        axis.axhline(0.9, color='grey', lw=0.8, ls='--')
        axis.grid(alpha=0.3)
    axes[0].set_ylabel('normalised real return (oracle = 1)')
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(HERE / 'compare.png', dpi=110)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
