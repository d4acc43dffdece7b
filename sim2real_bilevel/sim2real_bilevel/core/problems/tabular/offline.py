"""Offline (fixed-dataset) estimators of the tabular problem (``core/offline.py`` uses them).

The count model of the dataset: transitions sample the real MDP whatever policy chose the action,
so counts n(s, a, s') and reward sums of ALL episodes give P_hat(s'|s, a) and r_hat(s, a), with
the nominal simulator (f_theta0, R_theta0) as a prior worth ``real_gradient.prior_transitions``
transitions per pair (the online critic's prior: pairs the data never tried take the nominal
simulator's guess, weighted away as data accumulate); the initial distribution is the data's
(first states of the episodes).  No behaviour probability is used, so recordings of any
controller serve.

- ``value(phi)``: J_hat = rho0_hat' V_hat of pi_phi under the model (infinite horizon,
  unregularised: the quantity ``real_objective`` is);
- ``gradient(phi)`` without pessimism: its exact policy gradient in the model,
  g[s, b] = d_hat(s) pi(b|s) (Q_hat(s, b) - V_hat(s)), d_hat the model's discounted visitation
  of pi from rho0_hat (``test_offline`` checks it against finite differences of ``value``);
- ``interval``: percentile bootstrap over whole episodes;
- pessimism (on by default): ``gradient`` is the exact policy gradient of the return in the
  PESSIMISTIC model (``pessimistic_model``): every pair the data tried fewer than
  ``MIN_PAIR_COUNT`` times leads to an absorbing state paying the data's worst reward forever,
  so the outer loop never gains by moving the policy to pairs the data lack, whatever the
  nominal prior guesses there;
- ``coverage(phi)``: (1 - gamma) x pi's discounted occupancy of covered pairs (>= ``MIN_PAIR_COUNT``
  transitions) in that pessimistic model -- the share of its discounted time spent on data before
  it first takes a pair the data lack.  (Measured in the plain count model instead, an untried
  action that the prior sends to a good state looks covered: the occupancy after it is the
  prior's guess.)
"""
from __future__ import annotations

import numpy as np

from ...datasets import Dataset, DatasetError
from ...evaluation import ReturnEstimate, bootstrap_interval
from .estimators import count_transitions, empirical_model, reward_sums
from .maths import discounted_visitation, evaluate_policy

MIN_PAIR_COUNT = 3
"""A pair counts as covered from this many transitions.  Measured (bench/offline.py's problems:
discrete_3s2a and generated tabular seeds 0-2, N = 10 and 30 episodes of the nominal and of a
sharp (temperature x 0.1) behaviour, 2 seeds, 100 iterations; mean final normalised return):
at 10 the pessimistic model halted on the rarely tried better actions of generated seed 1
(nominal, N = 30: 0.490; online bi-level with 30 episodes: 0.83) and seed 0 (N = 10: 0.640); at 3:
0.839 and 0.836, and discrete_3s2a 1.000 at N = 30; at 1 (only untried pairs halt) one
discrete_3s2a seed followed a pair tried once or twice to 0.81 (mean 0.933)."""
DEFAULT_MIN_COVERAGE = 0.9
UNSUPPORTED_GAIN_SHARE = 0.005
"""``unsupported_improvement`` speaks from a gain of this share of the return range (the span of the
count model's rewards / (1 - gamma)).  Measured (generated tabular 0-3 and discrete_3s2a, N = 10 and 30
nominal episodes, 3 seeds, 100 iterations; /tmp script, see the issue-14 report): the runs ending below
0.93 normalised return had their count model's optimum better by 0.57-8.8 % of the range (generated 1
at N = 10 seeds 0-1, generated 3 at N = 10 seeds 0-2 and N = 30 seed 1), every one at a coverage below
0.9; the runs ending at >= 0.99 by at most 0.36 % (discrete_3s2a N = 30 seed 1)."""


def prepare_dataset(problem, dataset: Dataset) -> Dataset:
    """The dataset with integer state / action indices checked against the problem's sizes and
    rewards present (recordings need the reward topic: a tabular reward cannot be computed)."""
    batches = []
    for number, batch in enumerate(dataset.batches, start=1):
        where = f'{", ".join(dataset.sources) or "dataset"} batch {number}'
        states = _indices(np.asarray(batch.states), problem.n_states, f'{where}: states')
        actions = _indices(np.asarray(batch.actions), problem.n_actions, f'{where}: actions')
        if states.ndim != 2 or actions.shape != (states.shape[0], states.shape[1] - 1):
            raise DatasetError(f'{where}: states {states.shape} and actions {actions.shape}: expected (n, T+1) and '
                               '(n, T) indices (one joint: the state index)')
        rewards = np.asarray(batch.rewards, dtype=np.float64)
        if not np.all(np.isfinite(rewards)):
            raise DatasetError(f'{where}: rewards missing or not finite (a tabular problem\'s reward is measured: '
                               'record the reward topic)')
        batches.append(type(batch)(states=states, actions=actions, rewards=rewards, dones=batch.dones,
                                   log_probs=batch.log_probs, source='real', policy_version=batch.policy_version))
    return dataset.with_batches(batches)


def _indices(values: np.ndarray, count: int, what: str) -> np.ndarray:
    if values.ndim == 3:
        if values.shape[-1] != 1:
            raise DatasetError(f'{what}: {values.shape[-1]} values per step, expected 1 (the index: one joint, '
                               'one command)')
        values = values[..., 0]
    rounded = np.rint(values)
    bad = ~np.isfinite(values) | (rounded != values) | (rounded < 0) | (rounded >= count)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f'{what}{list(index)} = {float(values[index])!r}: expected an integer index in 0..{count - 1}')
    return rounded.astype(np.int64)


def behaviour_sampler(problem, phi: np.ndarray, noise: float):
    """(sampler, behaviour phi, words): temperature x ``noise`` is phi / noise (the reduced
    softmax logits scale with 1 / temperature)."""
    words = 'nominal policy' if noise == 1.0 else f'nominal policy at temperature x{noise:g}'
    return problem, np.asarray(phi, dtype=np.float64) / noise, words


class OfflineEstimator:
    """The count-model estimators of the module docstring on one dataset."""

    DEFAULT_MIN_COVERAGE = DEFAULT_MIN_COVERAGE

    def __init__(self, problem, dataset: Dataset, resamples: int = 100, pessimism: bool = True):
        self.problem, self.dataset, self.resamples = problem, dataset, int(resamples)
        size = (problem.n_states, problem.n_actions)
        counts, rewards, initial = [], [], []
        for batch in dataset.batches:
            for i in range(batch.actions.shape[0]):
                states, actions = batch.states[i:i + 1, :-1], batch.actions[i:i + 1]
                counts.append(count_transitions(states, actions, batch.states[i:i + 1, 1:], *size))
                rewards.append(reward_sums(states, actions, batch.rewards[i:i + 1], *size))
                initial.append(np.bincount(batch.states[i:i + 1, 0], minlength=problem.n_states))
        self.episode_counts = np.array(counts)                # (E, S, A, S)
        self.episode_rewards = np.array(rewards)              # (E, S, A)
        self.episode_initial = np.array(initial, dtype=np.float64)    # (E, S)
        self.counts, self.reward_sums = self.episode_counts.sum(axis=0), self.episode_rewards.sum(axis=0)
        self.initial = self.episode_initial.mean(axis=0)
        self.covered = self.counts.sum(axis=2) >= MIN_PAIR_COUNT
        self.model = self._model(self.counts, self.reward_sums)
        self.pessimism = bool(pessimism)
        self.dataset_worst_reward = min(float(np.min(b.rewards)) for b in dataset.batches)
        self.pessimistic = self.pessimistic_model()

    def _model(self, counts: np.ndarray, reward_total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P_hat, r_hat) of counts and reward sums, with the nominal simulator as the prior."""
        nominal_p, nominal_r = self.problem._nominal_model
        prior = self.problem.critic_prior_transitions
        counts, reward_total = counts + prior * nominal_p, reward_total + prior * nominal_r
        pairs = counts.sum(axis=2)
        mean_rewards = np.where(pairs > 0, reward_total / np.where(pairs > 0, pairs, 1.0), nominal_r)
        return empirical_model(counts, nominal_p), mean_rewards

    def _evaluate(self, phi, model, initial) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(J, Q, V, pi, discounted visitation) of pi_phi in ``model``; a model with one state more
        than the problem (the pessimistic one) gets a uniform policy row for it."""
        pi, log_pi = self.problem.policy_table(phi)
        extra = model[1].shape[0] - pi.shape[0]
        if extra:
            pi = np.vstack([pi, np.full((extra, pi.shape[1]), 1.0 / pi.shape[1])])
            log_pi = np.log(pi)
            initial = np.append(initial, np.zeros(extra))
        q, v = evaluate_policy(pi, log_pi, model[0], model[1], self.problem.gamma, 0.0)
        return float(initial @ v), q, v, pi, discounted_visitation(pi, model[0], initial, self.problem.gamma)

    def pessimistic_model(self) -> tuple[np.ndarray, np.ndarray]:
        """The count model with every pair tried fewer than ``MIN_PAIR_COUNT`` times leading to an
        absorbing HALT state (index S) that pays the data's worst reward forever (the pessimistic
        MDP of MOReL, Kidambi et al. 2020): a policy earns nothing by going where the data
        have not been, whatever the prior guesses there."""
        n_states, n_actions = self.problem.n_states, self.problem.n_actions
        transitions, rewards = self.model
        worst = self.dataset_worst_reward
        model = np.zeros((n_states + 1, n_actions, n_states + 1))
        model[:n_states, :, :n_states] = np.where(self.covered[..., None], transitions, 0.0)
        model[:n_states, :, n_states] = ~self.covered
        model[n_states, :, n_states] = 1.0
        pessimistic_rewards = np.vstack([np.where(self.covered, rewards, worst), np.full((1, n_actions), worst)])
        return model, pessimistic_rewards

    def value(self, phi: np.ndarray) -> float:
        """The estimated real return (count model with the nominal prior)."""
        return self._evaluate(phi, self.model, self.initial)[0]

    def pessimistic_value(self, phi: np.ndarray) -> float:
        """The return in the pessimistic model (a lower estimate where pi leaves the data)."""
        return self._evaluate(phi, self.pessimistic, self.initial)[0]

    def objective(self, phi: np.ndarray) -> float:
        """What ``gradient`` differentiates: the pessimistic return, or the plain one without pessimism."""
        return self.pessimistic_value(phi) if self.pessimism else self.value(phi)

    def gradient(self, phi: np.ndarray) -> np.ndarray:
        _, q, v, pi, visitation = self._evaluate(phi, self.pessimistic if self.pessimism else self.model,
                                                 self.initial)
        n_states = self.problem.n_states
        advantage = (visitation[:, None] * pi * (q - v[:, None]))[:n_states]
        return advantage[:, :-1].reshape(-1)

    def coverage(self, phi: np.ndarray) -> float:
        """(1 - gamma) x pi's discounted occupancy of covered pairs in the pessimistic model: the
        share of its discounted time spent on data before it first takes a pair the data lack."""
        _, _, _, pi, visitation = self._evaluate(phi, self.pessimistic, self.initial)
        n_states = self.problem.n_states
        occupancy = visitation[:n_states, None] * pi[:n_states]
        return float(min(1.0, occupancy[self.covered].sum() * (1.0 - self.problem.gamma)))   # 1 + rounding

    def model_headroom(self, phi: np.ndarray) -> dict:
        """The count model's (nominal prior where the data are thin) optimal policy against pi_phi:
        'gain' its value minus pi_phi's, 'share' that gain over the return range (the span of the
        model's rewards / (1 - gamma)), 'coverage' its coverage (as ``coverage``), 'actions' its action
        per state."""
        transitions, rewards = self.model
        values = np.zeros(self.problem.n_states)
        for _ in range(100_000):                                       # value iteration on the count model
            q = rewards + self.problem.gamma * transitions @ values
            values, previous = q.max(axis=1), values
            if np.max(np.abs(values - previous)) <= 1e-12 * (1.0 + np.max(np.abs(values))):
                break
        actions = q.argmax(axis=1)
        best = np.eye(self.problem.n_actions)[actions]
        gain = float(self.initial @ values) - self.value(phi)
        pessimistic, _ = self.pessimistic
        padded = np.vstack([best, np.full((1, best.shape[1]), 1.0 / best.shape[1])])
        visitation = discounted_visitation(padded, pessimistic, np.append(self.initial, 0.0), self.problem.gamma)
        coverage = float(min(1.0, (visitation[:-1, None] * best)[self.covered].sum() * (1.0 - self.problem.gamma)))
        return {'gain': gain, 'share': gain * (1.0 - self.problem.gamma) / float(np.ptp(rewards)),
                'coverage': coverage, 'actions': actions}

    def unsupported_improvement(self, phi: np.ndarray, min_coverage: float) -> str:
        """Words when the count model holds a policy better than pi_phi by more than
        ``UNSUPPORTED_GAIN_SHARE`` of the return range that the data cover below ``min_coverage``
        (``model_headroom``) -- an improvement the pessimistic estimate cannot follow -- else ''."""
        headroom = self.model_headroom(phi)
        if not (headroom['share'] > UNSUPPORTED_GAIN_SHARE and headroom['coverage'] < min_coverage):
            return ''
        pi, _ = self.problem.policy_table(phi)
        tries = self.counts.sum(axis=2)
        pairs = [f'state {s} action {a}: {int(tries[s, a])} of {int(tries[s].sum())} tries'
                 for s, a in enumerate(headroom['actions']) if pi[s, a] < 0.5 and not self.covered[s, a]]
        return (f'the count model holds a policy {headroom["gain"]:.3g} better ({100 * headroom["share"]:.1f} % of the '
                f'return range) through actions the data tried fewer than {MIN_PAIR_COUNT} times (coverage of the '
                f'better policy {headroom["coverage"]:.2f} < {min_coverage:g}' + (f'; {", ".join(pairs)}' if pairs else '')
                + ')')

    def interval(self, phi: np.ndarray, confidence: float) -> ReturnEstimate:
        episodes = self.episode_counts.shape[0]

        def resampled(chosen: np.ndarray) -> float:
            weights = np.bincount(chosen, minlength=episodes).astype(np.float64)
            model = self._model(np.tensordot(weights, self.episode_counts, axes=1),
                                np.tensordot(weights, self.episode_rewards, axes=1))
            return self._evaluate(phi, model, weights @ self.episode_initial / episodes)[0]

        return bootstrap_interval(self.value(phi), episodes, resampled, self.resamples, confidence,
                                  self.episode_counts.tobytes())
