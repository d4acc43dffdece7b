"""Does a cross-fitted estimate flag the offline phase that failed (mixed, N = 10, seed 4)?
The residual-model estimator (core/problems/robot/offline.py) fits theta_hat and the behaviour on all
episodes and replays their residuals; its bootstrap interval is conditional on that fit.  Here: the
final policy of the offline phase, evaluated (a) as the run does and (b) cross-fitted: the model
(sysid theta_hat, fitted behaviour) from one half of the episodes, the residuals replayed from the
other half, both ways.  Against a run that worked (N = 30, seed 0) and the truth.

    .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/crossfit/crossfit_check.py N SEED
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from offline import dataset_of  # noqa: E402
from sim2real_bilevel.core.config import builtin_config  # noqa: E402
from sim2real_bilevel.core.datasets import Dataset  # noqa: E402
from sim2real_bilevel.core.offline import make_offline_run  # noqa: E402
from sim2real_bilevel.core.problem import Trajectories  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402
from sim2real_bilevel.core.problems.robot.offline import OfflineEstimator, prepare_dataset  # noqa: E402
from sim2real_bilevel.core.problems.robot.simulator import DTYPE  # noqa: E402

torch.set_num_threads(1)
n_episodes, seed = int(sys.argv[1]), int(sys.argv[2])
problem = load_problem(builtin_config('pendulum'))
dataset = dataset_of(problem, n_episodes, 'nominal', seed)
run = make_offline_run(problem, 'bilevel', dataset, seed, iterations=15, evaluate=True)
run.run()
report = run.final_report()
phi = run.phi
prepared = prepare_dataset(problem, dataset)
batch = Trajectories(**{k: np.concatenate([getattr(b, k) for b in prepared.batches])
                        for k in ('states', 'actions', 'rewards', 'dones', 'log_probs')}, source='real')


def subset(index):
    return Trajectories(**{k: getattr(batch, k)[index] for k in ('states', 'actions', 'rewards', 'dones', 'log_probs')},
                        source='real')


def held_out_returns(fit_index, eval_index):
    """Per-episode returns of phi on the eval episodes' replayed residuals, the model fitted on fit_index."""
    fitted = OfflineEstimator(problem, Dataset(batches=[subset(fit_index)], behaviour_known=False))
    held = subset(eval_index)
    noise = problem.noise_of(fitted.behaviour_phi, fitted.theta_hat, held)
    with torch.no_grad():
        _, _, rewards = problem.rollout(torch.as_tensor(phi, dtype=DTYPE), fitted.theta_full, noise)
    discounts = torch.as_tensor(problem.gamma ** np.arange(rewards.shape[0]), dtype=DTYPE)[:, None]
    return (discounts * rewards).sum(0).numpy()


order = np.random.default_rng(0).permutation(len(batch.states))
a, b = order[: len(order) // 2], order[len(order) // 2:]
cross = np.concatenate([held_out_returns(a, b), held_out_returns(b, a)])
result = {'N': n_episodes, 'seed': seed, 'true real return': report['real_return'],
          'normalised': report['normalized_return'],
          'estimate (the run)': report['real_return_estimate'],
          'interval': [report['real_return_ci_low'], report['real_return_ci_high']],
          'coverage': report['coverage'], 'warning': report['warning'],
          'cross-fitted estimate': float(cross.mean()),
          'cross-fitted standard error': float(cross.std(ddof=1) / np.sqrt(len(cross)))}
print(json.dumps(result, indent=1), flush=True)
(Path(__file__).resolve().parent / f'N{n_episodes}_seed{seed}.json').write_text(json.dumps(result, indent=1) + '\n')
