"""Tabular problems with a built-in objective mismatch (``generate tabular``).

A candidate:
- the real MDP: S states x A actions, each (s, a) leading to 1-3 next states (Dirichlet
  weights), rewards = a per-state desirability plus per-action noise;
- the simulator is OPTIMISTIC about a tempting action b != a*(s) in several states (its row
  moves most of the real mass onto the best state, by the real optimal values V*), sometimes
  PESSIMISTIC about the optimal action (mass moved onto the worst state), and slightly off
  everywhere else; in-sim rewards start at the task rewards;
- learnable logits (``--learn logits|both``) never include the optimistic/pessimistic target
  nor the real row's main entry: softmax keeps the ratio of fixed entries, so the maximum-
  likelihood fit cannot undo the optimism -- the family cannot represent the real system.
  Learnable rewards (``rewards|both``): all of them, or a random subset.

Checks on the loaded candidate (exact unless said): nominal and sysid normalised real return
<= MAX_BASELINE (sysid: ML of the learnable logits on >= 100000 real transitions of the nominal
policy, projected onto the bounds, then refitted once with as many transitions of its own
policy added), and a witness theta inside the bounds whose exact inner optimum reaches
>= MIN_REACHABLE: first the reward construction R(s, a*(s)) = +reward_bound, other learnable
rewards -reward_bound (then the in-sim soft-optimal policy picks a*(s) wherever the rewards of
s are learnable: the construction is a sufficient check, evaluated exactly), else exact
gradient ascent on the real return through the implicit function theorem (exact real gradient,
exact sensitivities, Adam, as test_tabular_config.py does on the shipped problem).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..config import ProblemConfigError
from . import (CHOICES, MAX_BASELINE, MAX_DRAWS, MIN_REACHABLE, RANGES, derived_rng, GenerationFailed,
               header_opening, int_matrix, iterated_sysid, load_text, matrix, number, redraw_summary,
               round_probabilities, rounded_inside, row, wrap_comment)

LOGIT_BOUND = 10.0
REWARD_BOUND = 10.0
MIN_LOGIT = -5.0             # an entry without real mass gets this logit (like the shipped file)
SYSID_TRANSITIONS = 100000


def draw_settings(seed: int, options: dict) -> dict:
    """Every choice not tied to a candidate, drawn from the seed in a fixed order, then
    overridden by the options given."""
    rng = derived_rng('tabular', seed)
    low_s, high_s = RANGES['tabular']['states']
    low_a, high_a = RANGES['tabular']['actions']
    drawn = {'states': int(rng.integers(low_s, high_s + 1)),
             'actions': int(rng.integers(low_a, high_a + 1)),
             'learn': str(rng.choice(CHOICES['tabular']['learn'])),
             'horizon': int(rng.integers(10, 81)) if rng.random() < 0.8 else 'none',
             'gamma': round(float(rng.uniform(0.8, 0.97)), 2)}
    drawn.update(options)
    return drawn


def optimal_values(transitions, rewards, gamma):
    """(Q*, V*) of the real MDP (policy iteration, exact)."""
    n_states, n_actions = rewards.shape
    actions = np.zeros(n_states, dtype=np.int64)
    for _ in range(1000):
        p_pi = transitions[np.arange(n_states), actions]
        value = np.linalg.solve(np.eye(n_states) - gamma * p_pi, rewards[np.arange(n_states), actions])
        q = rewards + gamma * transitions @ value
        improved = np.where(q.max(axis=1) > q[np.arange(n_states), actions] + 1e-12 * (1 + np.abs(q).max()),
                            q.argmax(axis=1), actions)
        if np.array_equal(improved, actions):
            break
        actions = improved
    return q, value


def draw_candidate(rng: np.random.Generator, settings: dict) -> dict:
    n_s, n_a, gamma = settings['states'], settings['actions'], settings['gamma']
    transitions = np.zeros((n_s, n_a, n_s))
    for s in range(n_s):
        for a in range(n_a):
            support = rng.choice(n_s, size=int(rng.integers(1, min(n_s, 3) + 1)), replace=False)
            transitions[s, a, support] = rng.dirichlet(np.ones(len(support)))
    transitions = round_probabilities(transitions)
    desirability = rng.normal(0.0, 1.0, n_s)
    rewards = np.round(desirability[:, None] + 0.5 * rng.normal(0.0, 1.0, (n_s, n_a)), 1)
    starts = rng.choice(n_s, size=int(rng.integers(1, n_s + 1)), replace=False)
    initial = np.zeros(n_s)
    initial[starts] = rng.dirichlet(np.ones(len(starts)))
    initial = round_probabilities(initial)

    q_star, v_star = optimal_values(transitions, rewards, gamma)
    best_action = q_star.argmax(axis=1)
    best_state, worst_state = int(v_star.argmax()), int(v_star.argmin())
    # the simulator: optimistic about a tempting action in several states, sometimes pessimistic
    # about the optimal one, slightly off everywhere
    sim = 0.85 * transitions + 0.15 * rng.dirichlet(np.ones(n_s), size=(n_s, n_a))
    n_tempted = max(1, int(round(n_s * rng.uniform(0.3, 0.8))))
    tempted = rng.choice(n_s, size=n_tempted, replace=False)
    protected = {}                       # (s, a) -> entries that must stay fixed
    distortions = []

    def move_mass(s, a, target, share, what):
        """The sim row of (s, a): ``share`` of the real mass moved onto ``target``; the target and
        the real row's main other entry stay fixed (their ratio is the mismatch)."""
        sim[s, a] = (1 - share) * transitions[s, a] + share * np.eye(n_s)[target]
        main = [int(t) for t in np.argsort(-transitions[s, a]) if t != target][:1]
        protected[(s, a)] = {target, *main}
        distortions.append(f'({s}, {a}) {what}: {share:.0%} of its mass moved onto state {target}')

    for s in sorted(int(x) for x in tempted):
        b = int(rng.choice([a for a in range(n_a) if a != best_action[s]]))
        move_mass(s, b, best_state, rng.uniform(0.6, 0.9), f'optimistic (a*({s}) = {best_action[s]})')
        if rng.random() < 0.5 and worst_state != best_state:
            move_mass(s, int(best_action[s]), worst_state, rng.uniform(0.3, 0.6), 'pessimistic, optimal action')
    logits = np.round(np.maximum(np.log(np.maximum(sim, 1e-300)), MIN_LOGIT), 1)

    learn = settings['learn']
    learn_logits = np.zeros((n_s, n_a, n_s), dtype=bool)
    if learn in ('logits', 'both'):
        for s in range(n_s):
            for a in range(n_a):
                allowed = [t for t in range(n_s) if t not in protected.get((s, a), ())]
                if (s, a) in protected:
                    chosen = [s] if s in allowed and rng.random() < 0.5 else [int(rng.choice(allowed))]
                else:
                    chosen = ([s] if rng.random() < 0.5 else []) + (
                        [int(rng.choice(allowed))] if rng.random() < 0.3 else [])
                learn_logits[s, a, chosen] = True
            # never a whole row: the fixed part of each row keeps its (wrong) ratios
        full = learn_logits.all(axis=2)
        learn_logits[full, 0] = False
    learn_rewards = np.zeros((n_s, n_a), dtype=bool)
    all_rewards = False
    if learn in ('rewards', 'both'):
        if rng.random() < 0.5:
            learn_rewards[:] = all_rewards = True
        else:
            learn_rewards = rng.random((n_s, n_a)) < 0.6
            if not learn_rewards.any():
                learn_rewards[int(rng.integers(n_s)), int(rng.integers(n_a))] = True
    if not learn_logits.any() and not learn_rewards.any():
        learn_logits[0, 0, 0] = True
    return {'gamma': gamma, 'initial': initial, 'transitions': transitions, 'rewards': rewards,
            'logits': logits, 'learn_logits': learn_logits, 'learn_rewards': learn_rewards,
            'all_rewards': all_rewards, 'horizon': settings['horizon'], 'distortions': distortions,
            'best_action': best_action, 'best_state': best_state, 'worst_state': worst_state}


def write(candidate: dict, header: list[str]) -> str:
    c = candidate
    lines = [f'# {line}' if line else '#' for line in header]
    lines += ['kind: tabular', f'gamma: {number(c["gamma"], 2)}',
              f'initial_distribution: {row(c["initial"], 2)}', 'real:',
              "  transitions:            # P[s][a][s']"]
    lines += [f'    - {matrix(block, 2)}' for block in c['transitions']]
    lines.append(f'  rewards: {matrix(c["rewards"], 1)}')
    if c['horizon'] != 'none':
        lines.append(f'  horizon: {int(c["horizon"])}             # steps per real episode')
    lines += ['simulator:', "  transition_logits:      # f_theta(s'|s,a) = softmax_s'(L[s][a])"]
    lines += [f'    - {matrix(block, 1)}' for block in c['logits']]
    if c['learn_logits'].any():
        lines.append('  learn_transition_logits:')
        lines += [f'    - {int_matrix(block)}' for block in c['learn_logits']]
    else:
        lines.append('  learn_transition_logits: false')
    lines.append(f'  rewards: {matrix(c["rewards"], 1)}     # in-sim rewards start at the task rewards')
    if c['all_rewards']:
        lines.append('  learn_rewards: true')
    elif c['learn_rewards'].any():
        lines.append(f'  learn_rewards: {int_matrix(c["learn_rewards"])}')
    else:
        lines.append('  learn_rewards: false')
    lines += [f'  logit_bound: {number(LOGIT_BOUND, 1)}', f'  reward_bound: {number(REWARD_BOUND, 1)}']
    return '\n'.join(lines) + '\n'


def sysid_returns(problem, phi_nominal, rng) -> list[float]:
    """Normalised real return of the sysid fit (ML of the learnable logits on plentiful real data
    of the nominal policy, projected onto the bounds), then refitted with as much data of the
    fitted policy added (the sysid baseline's next iteration)."""
    return [problem.normalized_return(phi) for phi in iterated_sysid(problem, phi_nominal, rng, SYSID_TRANSITIONS)]


def reward_construction(problem, best_action) -> np.ndarray:
    """theta0 with every learnable reward at +bound for the real optimal action, -bound else."""
    theta = problem.theta0()
    offset = problem.n_logit_params
    for k, (s, a) in enumerate(problem.reward_index):
        theta[offset + k] = problem.reward_bound if a == best_action[s] else -problem.reward_bound
    return theta


def gradient_ascent(problem, theta, steps: int = 40, step_size: float = 0.5, target: float = 0.995):
    """Exact bi-level ascent: exact real gradient, exact sensitivities, Adam, projected."""
    import torch

    from ..outer import Adam

    lower, upper = problem.theta_bounds()
    adam = Adam(theta.size, step_size)
    phi = None
    best = (-1.0, theta)
    for _ in range(steps):
        phi = problem.inner_solve(theta, phi).phi
        value = problem.normalized_return(phi)
        if value > best[0]:
            best = (value, theta.copy())
        if value >= target:
            break
        phi_t = torch.tensor(phi, requires_grad=True)
        (real_gradient,) = torch.autograd.grad(problem.real_objective(phi_t), phi_t)
        terms = problem.sensitivity_terms(phi, theta)
        sensitivity = -np.linalg.solve(terms.hessian, terms.mixed)
        theta = np.clip(theta + adam.direction(sensitivity.T @ real_gradient.numpy()), lower, upper)
    return best


def find_witness(problem, best_action) -> tuple[float, np.ndarray, str]:
    """(normalised return, theta rounded to 3 decimals inside the bounds, how it was found)."""
    lower, upper = problem.theta_bounds()

    def evaluate(theta):
        theta = rounded_inside(theta, lower, upper, 3)
        return problem.normalized_return(problem.inner_solve(theta).phi), theta

    tried = []
    if len(problem.reward_index):
        value, theta = evaluate(reward_construction(problem, best_action))
        tried.append((value, theta, 'reward construction: learnable R(s, a*(s)) = +reward_bound, '
                                    'the other learnable rewards -reward_bound'))
        if value >= MIN_REACHABLE:
            return tried[-1]
    value, theta = gradient_ascent(problem, problem.theta0())
    value, theta = evaluate(theta)
    tried.append((value, theta, 'exact gradient ascent on the real return through the implicit function '
                                'theorem (Adam 0.5, at most 40 steps, from the nominal theta)'))
    return max(tried, key=lambda item: item[0])


def generate_tabular(seed: int, options: dict):
    settings = draw_settings(seed, options)
    rejected = Counter()
    for draw in range(1, MAX_DRAWS + 1):
        rng = derived_rng('tabular', seed, draw)
        candidate = draw_candidate(rng, settings)
        try:
            problem = load_text(write(candidate, []))
        except ProblemConfigError as err:          # should not happen: counted, redrawn
            rejected[f'invalid {err.field}'] += 1
            continue
        phi_nominal = problem.inner_solve(problem.theta0()).phi
        nominal = problem.normalized_return(phi_nominal)
        if nominal > MAX_BASELINE:
            rejected['nominal'] += 1
            continue
        if problem.n_logit_params:
            sysid = sysid_returns(problem, phi_nominal, derived_rng('tabular', seed, draw, 1))
        else:
            sysid = [nominal, nominal]
        if max(sysid) > MAX_BASELINE:
            rejected['sysid'] += 1
            continue
        reached, witness, how = find_witness(problem, candidate['best_action'])
        if reached < MIN_REACHABLE:
            rejected['unreachable'] += 1
            continue
        info = {'states': settings['states'], 'actions': settings['actions'], 'learn': settings['learn'],
                'gamma': settings['gamma'], 'horizon': settings['horizon'], 'nominal': nominal,
                'sysid': sysid[0], 'sysid_refit': sysid[1], 'reachable': reached, 'witness_method': how,
                'theta_size': len(problem.theta_names), 'rejected': dict(rejected)}
        header = _header(seed, options, settings, candidate, problem, draw, rejected, info, witness)
        return write(candidate, header), draw, info
    raise GenerationFailed(f'tabular seed {seed}: no candidate passed the checks in {MAX_DRAWS} draws '
                           f'(rejected: {dict(rejected)}); try another seed or other sizes')


def _header(seed, options, settings, candidate, problem, draw, rejected, info, witness) -> list[str]:
    n_s, n_a = settings['states'], settings['actions']
    worst, best = problem.real_return_range()
    n_logits, n_rewards = problem.n_logit_params, len(problem.reward_index)
    lines = header_opening('tabular', seed, options, f'{n_s} states x {n_a} actions, gamma {settings["gamma"]}',
                           settings['horizon'], 'gamma and the candidate') + [
        'The real MDP: each (s, a) leads to 1-3 next states; rewards = a per-state desirability plus',
        'per-action noise.  The real optimal policy a*(s) = '
        + str([int(a) for a in candidate['best_action']]) + '.',
        '',
        'Built-in mismatch: the simulator (logits = log of a distorted real model, rounded) is',
        f'optimistic about a tempting action in some states (mass moved onto state {candidate["best_state"]}, the best',
        f'by the real V*), sometimes pessimistic about the optimal one (onto state {candidate["worst_state"]}, the worst),',
        'and slightly off everywhere (15 % of each row redrawn):',
    ]
    lines += [f'  - {d}' for d in candidate['distortions']]
    lines.append(f'Learnable (--learn {settings["learn"]}): {n_logits} logits, {n_rewards} of {n_s * n_a} rewards; '
                 f'bounds [-10, 10] for both.')
    if n_logits:
        lines += ['  Per row at most the "stay" logit and one other, never an optimistic/pessimistic target nor',
                  '  the real row\'s main entry: softmax keeps the ratio of the fixed entries, so the maximum-',
                  '  likelihood fit cannot undo the optimism (the family cannot represent the real system).']
    lines += [
        '',
        'Measured at generation (exact, from the initial distribution):',
        f'  real optimum J* = {best:.4f}; worst deterministic policy J_min = {worst:.4f}',
        f'  nominal simulator\'s policy: normalised real return {info["nominal"]:.4f}',
    ]
    if n_logits:
        lines += [f'  sysid (ML of the {n_logits} learnable logits on {SYSID_TRANSITIONS} real transitions of the nominal',
                  f'    policy, projected onto the bounds): {info["sysid"]:.4f}; refitted with as many transitions of',
                  f'    its own policy added: {info["sysid_refit"]:.4f}']
    else:
        lines.append('  sysid: no learnable dynamics entry to fit, so sysid = nominal')
    lines += [f'  a theta inside the bounds reaches {info["reachable"]:.4f}, found by'] + [
        line[2:] for line in wrap_comment(info['witness_method'] + ';', width=98, indent='#     ')] + [
              f'  checked: nominal and sysid <= {MAX_BASELINE}, reachable >= {MIN_REACHABLE}.',
              redraw_summary(draw, rejected),
              'Witness theta (theta_names order: learnable logits row-major, then learnable rewards):']
    lines += [line[2:] for line in wrap_comment(row(witness, 3), width=98)]
    return lines
