"""Candidate warning quantities for every iteration's policy of saved runs (runs.py), in the data's
fitted model only (the estimator's theta_hat and residuals; nothing here reads the hidden model -- the
true normalised return comes from the saved run, reporting only).

    .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/diagnose.py N10_seed4 [N30_seed0 ...]

Per policy phi:
  est        the run's estimate: recorded initial states, each episode's residuals replayed (mean, bootstrap CI)
  fresh_res  M fresh initial states from the task's initial_state distribution, fresh start k replaying
             recorded episode (k mod n)'s action noise and residuals
  rec_sim    recorded initial states, the fitted simulator's own noise (no residuals)
  fresh_sim  fresh initial states, the fitted simulator's own noise
  state_gap  mean over visited states (fresh_res rollouts) of the distance to the nearest recorded state,
             per dimension in units of the data's std, minus the same for the behaviour fit
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
from sim2real_bilevel.core.problems.robot.simulator import DTYPE, CommonNoise  # noqa: E402

torch.set_num_threads(1)
M = 200
problem = load_problem(builtin_config('pendulum'))
discounts = torch.as_tensor(problem.gamma ** np.arange(problem.horizon), dtype=DTYPE)[:, None]


def returns(est, phi, noise):
    with torch.no_grad():
        states, _, rewards = problem.rollout(torch.as_tensor(phi, dtype=DTYPE), est.theta_full, noise)
    return (discounts * rewards).sum(0).numpy(), states


def state_distance(states, data, scale):
    """Mean distance of visited states to the nearest recorded state (std units)."""
    visited = states[::5].reshape(-1, states.shape[-1]) / scale
    d = torch.cdist(visited, data / scale)
    return float(d.min(1).values.mean())


for name in sys.argv[1:]:
    saved = json.loads((HERE / 'records' / f'{name}.json').read_text())
    phis = np.load(HERE / 'records' / f'{name}.npz')['phis']
    dataset = dataset_of(problem, saved['N'], 'nominal', saved['seed'])
    est = OfflineEstimator(problem, prepare_dataset(problem, dataset))
    n = est.noise.initial_states.shape[0]
    rng = np.random.default_rng(12345)
    fresh_init = CommonNoise.draw(M, problem.horizon, problem.initial, rng)
    index = torch.arange(M) % n
    fresh_res = CommonNoise(fresh_init.initial_states, est.noise.action_noise[:, index], est.noise.transition_noise[:, index])
    sim_rec = CommonNoise.draw(n, problem.horizon, problem.initial, np.random.default_rng(7))
    sim_rec = CommonNoise(est.noise.initial_states, sim_rec.action_noise, sim_rec.transition_noise)
    data_states = torch.as_tensor(np.concatenate([b.states for b in est.dataset.batches]), dtype=DTYPE).reshape(-1, 2)
    scale = data_states.std(0)
    _, behaviour_states = returns(est, est.behaviour_phi, fresh_res)
    base_gap = state_distance(behaviour_states, data_states, scale)
    rows = []
    for it, phi in enumerate(phis):
        record = saved['history'][it]
        ci = est.interval(phi, 0.95)
        terms = est._terms(phi)
        fr, fr_states = returns(est, phi, fresh_res)
        rs, _ = returns(est, phi, sim_rec)
        fs, _ = returns(est, phi, fresh_init)
        # the fresh starts' per-start returns, grouped by the replayed episode: a paired comparison per episode
        per_episode = np.array([fr[index.numpy() == i].mean() for i in range(n)])
        diff = per_episode - terms
        rows.append({'iteration': it, 'true_norm': record['normalized_return'], 'true': record['real_return'],
                     'est': ci.mean, 'ci_low': ci.low, 'ci_high': ci.high,
                     'est_sd': float(terms.std(ddof=1)), 'fresh_res': float(fr.mean()),
                     'fresh_res_se': float(fr.std(ddof=1) / np.sqrt(M)),
                     'paired_gap': float(diff.mean()), 'paired_gap_se': float(diff.std(ddof=1) / np.sqrt(n)),
                     'fresh_res_p10': float(np.percentile(fr, 10)), 'fresh_res_min': float(fr.min()),
                     'rec_sim': float(rs.mean()), 'fresh_sim': float(fs.mean()),
                     'coverage': est.coverage(phi),
                     'state_gap': state_distance(fr_states, data_states, scale) - base_gap})
        r = rows[-1]
        print(f"{name} it{it:2d} true {r['true_norm']:.3f} ({r['true']:.1f}) est {r['est']:.1f} [{r['ci_low']:.1f},"
              f"{r['ci_high']:.1f}] fresh_res {r['fresh_res']:.1f}+-{r['fresh_res_se']:.1f} gap {r['paired_gap']:.1f}"
              f"+-{r['paired_gap_se']:.1f} p10 {r['fresh_res_p10']:.1f} min {r['fresh_res_min']:.1f} rec_sim "
              f"{r['rec_sim']:.1f} fresh_sim {r['fresh_sim']:.1f} cov {r['coverage']:.3f} sgap {r['state_gap']:.3f}",
              flush=True)
    (HERE / 'records' / f'{name}_diagnosis.json').write_text(json.dumps(rows, indent=1) + '\n')
