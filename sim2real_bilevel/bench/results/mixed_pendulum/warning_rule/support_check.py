"""Third look: where the candidate's own (state, action) pairs lie relative to the data's, along the
estimator's re-simulated episodes (recorded initial states, residuals replayed; the fitted model only).

    .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/support_check.py N10_seed4 [...]

Per policy: act_ratio = rms action / the data's rms action; outside = share of actions beyond the data's
largest |action|; inc_ratio = rms of a_t - a_{t-1} / the data's; sa_gap = mean distance of the candidate's
(q, qd, a) to the nearest recorded one (each dimension in units of the data's std) minus the same for the
fitted behaviour's re-simulation.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from offline import dataset_of  # noqa: E402
from sim2real_bilevel.core.config import builtin_config  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402
from sim2real_bilevel.core.problems.robot.offline import OfflineEstimator, prepare_dataset  # noqa: E402
from sim2real_bilevel.core.problems.robot.simulator import DTYPE  # noqa: E402

torch.set_num_threads(1)
problem = load_problem(builtin_config('pendulum'))


def pairs(est, phi):
    with torch.no_grad():
        states, actions, _ = problem.rollout(torch.as_tensor(phi, dtype=DTYPE), est.theta_full, est.noise)
    return states[:-1], actions


for name in sys.argv[1:]:
    saved = json.loads((HERE / 'records' / f'{name}.json').read_text())
    phis = np.load(HERE / 'records' / f'{name}.npz')['phis']
    est = OfflineEstimator(problem, prepare_dataset(problem, dataset_of(problem, saved['N'], 'nominal', saved['seed'])))
    data_s = torch.as_tensor(np.concatenate([b.states for b in est.dataset.batches]), dtype=DTYPE)[:, :-1].transpose(0, 1)
    data_a = est.actions.transpose(0, 1)
    data = torch.cat([data_s, data_a], -1).reshape(-1, 3)
    scale = data.std(0)
    rms = data_a.pow(2).mean().sqrt()
    inc = (data_a[1:] - data_a[:-1]).pow(2).mean().sqrt()
    amax = data_a.abs().max()

    def gap(s, a):
        x = torch.cat([s, a], -1).reshape(-1, 3)[::3] / scale
        return float(torch.cdist(x, data / scale).min(1).values.mean())

    base = gap(*pairs(est, est.behaviour_phi))
    out = []
    for it, phi in enumerate(phis):
        s, a = pairs(est, phi)
        r = {'iteration': it, 'true_norm': saved['history'][it]['normalized_return'],
             'act_ratio': float(a.pow(2).mean().sqrt() / rms), 'outside': float((a.abs() > amax).double().mean()),
             'inc_ratio': float((a[1:] - a[:-1]).pow(2).mean().sqrt() / inc), 'sa_gap': gap(s, a) - base,
             'coverage': est.coverage(phi)}
        out.append(r)
        print(f"{name} it{it:2d} true {r['true_norm']:.3f} act_ratio {r['act_ratio']:.3f} outside {r['outside']:.3f} "
              f"inc_ratio {r['inc_ratio']:.3f} sa_gap {r['sa_gap']:.3f} cov {r['coverage']:.3f}", flush=True)
    (HERE / 'records' / f'{name}_support.json').write_text(json.dumps(out, indent=1) + '\n')
