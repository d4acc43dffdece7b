"""Second hypothesis: the replayed residuals hold what the simulator family cannot express (the real
actuation delay), recorded under the BEHAVIOUR's actions; a policy that acts differently would meet
different residuals.  Check: regress the recorded residuals on the action history and the state (linear
least squares, every recorded transition), and re-simulate each recorded episode with the residual's
regressed part recomputed from the candidate's own actions and states (the rest replayed).  At the
fitted behaviour this reproduces the data exactly, as the estimator does.

    .venv/bin/python sim2real_bilevel/bench/results/mixed_pendulum/warning_rule/residual_check.py N10_seed4 [...]
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
LAGS = int(dict(a.split('=') for a in sys.argv[1:] if '=' in a).get('lags', 3))
problem = load_problem(builtin_config('pendulum'))
discounts = torch.as_tensor(problem.gamma ** np.arange(problem.horizon), dtype=DTYPE)[:, None]


def features(state, actions_so_far, action):
    """(N, F): current action, LAGS previous ones (0 before the start), state, 1."""
    recent = [action] + [actions_so_far[-k] if len(actions_so_far) >= k else torch.zeros_like(action)
                         for k in range(1, LAGS + 1)]
    return torch.cat(recent + [state, torch.ones_like(action)], -1)


def rollout(est, phi, weights, rest):
    model, policy = problem.model, problem.policy
    phi = torch.as_tensor(phi, dtype=DTYPE)
    coefficients = model.coefficients(model.split(est.theta_full)[0])
    std = torch.exp(policy.log_std(phi))
    state = est.noise.initial_states
    actions, rewards_states = [], [state]
    for t in range(problem.horizon):
        action = policy.mean(phi, model.observation(state)) + std * est.noise.action_noise[t]
        residual = features(state, actions, action) @ weights + rest[t]
        state = model.step_mean_with(state, action, coefficients) + residual
        actions.append(action)
        rewards_states.append(state)
    rewards = model.reward(torch.stack(rewards_states[:-1]), torch.stack(actions), model.split(est.theta_full)[1])
    return (discounts * rewards).sum(0).numpy()


for name in [a for a in sys.argv[1:] if '=' not in a]:
    saved = json.loads((HERE / 'records' / f'{name}.json').read_text())
    phis = np.load(HERE / 'records' / f'{name}.npz')['phis']
    est = OfflineEstimator(problem, prepare_dataset(problem, dataset_of(problem, saved['N'], 'nominal', saved['seed'])))
    residuals = est.noise.transition_noise * problem.model.noise_std          # (T, n, 2)
    states = torch.as_tensor(np.concatenate([b.states for b in est.dataset.batches]), dtype=DTYPE).transpose(0, 1)
    acts = est.actions.transpose(0, 1)                                          # (T, n, 1)
    rows = []
    for t in range(problem.horizon):
        rows.append(features(states[t], [acts[s] for s in range(t)], acts[t]))
    design = torch.stack(rows)                                                  # (T, n, F)
    flat_x, flat_y = design.reshape(-1, design.shape[-1]), residuals.reshape(-1, residuals.shape[-1])
    weights = torch.linalg.lstsq(flat_x, flat_y).solution
    rest = residuals - design @ weights
    explained = 1 - rest.pow(2).sum(dim=(0, 1)) / (residuals - residuals.mean(dim=(0, 1))).pow(2).sum(dim=(0, 1))
    print(name, 'R^2 of the residual regression per state dim', explained.numpy().round(3),
          'action weights', weights[:LAGS + 1].numpy().round(4).tolist(), flush=True)
    out = []
    for it in (0, 5, 10, 15):
        terms_aug = rollout(est, phis[it], weights, rest)
        terms = est._terms(phis[it])
        diff = terms_aug - terms
        ci = est.interval(phis[it], 0.95)
        r = {'iteration': it, 'true_norm': saved['history'][it]['normalized_return'], 'true': saved['history'][it]['real_return'],
             'est': ci.mean, 'ci_low': ci.low, 'augmented': float(terms_aug.mean()), 'diff': float(diff.mean()),
             'diff_se': float(diff.std(ddof=1) / np.sqrt(len(diff)))}
        out.append(r)
        print(f"{name} it{it:2d} true {r['true_norm']:.3f} ({r['true']:.1f}) est {r['est']:.1f} low {r['ci_low']:.1f} "
              f"augmented {r['augmented']:.1f} diff {r['diff']:.1f}+-{r['diff_se']:.1f}", flush=True)
    (HERE / 'records' / f'{name}_residual_lags{LAGS}.json').write_text(json.dumps(out, indent=1) + '\n')
