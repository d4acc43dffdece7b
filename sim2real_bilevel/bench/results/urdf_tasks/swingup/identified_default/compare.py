"""Table and figure of the swing-up runs in this folder (seedK_METHOD.json, written by
termination/learning_from_gap.py): normalised real return against real episodes, per gap seed and
the mean over seeds (``experiments.return_at_episodes``).  Usage: python compare.py  ->  prints the
markdown table, writes compare.png"""
import json
from pathlib import Path

import numpy as np

from sim2real_bilevel.core.experiments import return_at_episodes

HERE = Path(__file__).resolve().parent
METHODS = {'bilevel': 'bi-level', 'fromsysid': 'bi-level from sysid', 'sysid': 'sysid'}
SEEDS = (0, 1, 2)
SHOWN = (0, 5, 10, 20, 30, 50)


def run(seed: int, method: str) -> dict:
    """The one run of seedK_METHOD.json: its ``iterations`` records."""
    (runs,) = json.loads((HERE / f'seed{seed}_{method}.json').read_text())['methods'].values()
    return runs['seeds'][0]


def curve(records: dict) -> tuple[list, list]:
    return ([r['real_episodes'] for r in records['iterations']],        # cumulative
            [r['normalized_return'] for r in records['iterations']])


def row(label: str, seed, table: dict, bold: bool = False) -> str:
    mark = '**' if bold else ''
    return (f'| {mark}{label}{mark} | {seed} | '
            + ' | '.join(f'{mark}{table[str(n)][0]:.3f}{mark}' for n in SHOWN) + ' |')


def main() -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    lines = ['| method | gap seed | ' + ' | '.join(f'N = {n}' for n in SHOWN) + ' |',
             '|---|---|' + '---|' * len(SHOWN)]
    figure, axes = plt.subplots(1, len(SEEDS) + 1, figsize=(4 * (len(SEEDS) + 1), 3.4), sharey=True)
    for method, label in METHODS.items():
        runs = [run(seed, method) for seed in SEEDS]
        for seed, records in zip(SEEDS, runs):
            lines.append(row(label, seed, return_at_episodes([records], SHOWN)))
            axes[seed].plot(*curve(records), marker='o', ms=3, label=label)
        lines.append(row(label, 'mean', return_at_episodes(runs, SHOWN), bold=True))
        episodes, _ = curve(runs[0])
        axes[-1].plot(episodes, np.mean([curve(records)[1] for records in runs], axis=0), marker='o', ms=3, label=label)
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
