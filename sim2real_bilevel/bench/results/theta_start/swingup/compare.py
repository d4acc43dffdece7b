"""Swing-up (config/swingup.yaml, termination max_speed 30), seeds 0 and 1 of the gap run: normalised real
return vs real episodes of bi-level from the nominal theta (CG, first-order), bi-level from sysid's fit
(theta_start: sysid) and sysid -> compare.png and a table on stdout.  Run from sim2real_bilevel/."""
import json
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
TERMINATION = HERE.parents[1] / 'urdf_tasks' / 'swingup' / 'termination'
RUNS = {
    0: {'sysid': TERMINATION / 'learning' / 'sysid.json', 'bilevel, CG': TERMINATION / 'learning' / 'cg2.json',
        'bilevel, first-order': TERMINATION / 'learning' / 'fo.json',
        'bilevel from sysid (CG)': HERE / 'seed0_from_sysid.json'},
    1: {'sysid': TERMINATION / 'seed1' / 'learning_sysid.json', 'bilevel, CG': TERMINATION / 'seed1' / 'learning_cg.json',
        'bilevel, first-order': TERMINATION / 'seed1' / 'learning_fo.json',
        'bilevel from sysid (default: first-order far from stationary)': HERE / 'seed1_from_sysid.json'},
}
figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for axis, (seed, runs) in zip(axes, RUNS.items()):
    for label, path in runs.items():
        method = json.loads(path.read_text())['methods']
        history = next(iter(method.values()))['seeds'][0]['iterations']
        episodes = [round(h['real_transitions'] / 40) for h in history]        # horizon 40 steps
        values = [h['normalized_return'] for h in history]
        axis.plot(episodes, values, marker='o', label=label)
        print(f'seed {seed} | {label} | ' + ' | '.join(f'{v:.3f}' for v in values))
    axis.set_title(f'swing-up, gap seed {seed}')
    axis.set_xlabel('real episodes')
    axis.grid(alpha=0.3)
axes[0].set_ylabel('normalised real return')
axes[1].legend(fontsize=7)
figure.tight_layout()
figure.savefig(HERE / 'compare.png', dpi=110)
