"""Offline (fixed-dataset) estimators of the LQR problem (``core/offline.py`` uses them).

All transitions (x, u, x', cost) of the dataset, whatever policy chose u (no behaviour
probability is used, so recordings of any controller serve, as long as their actions vary):

- the critic of the target gain K: LSTD-Q (``LSTDQ``, the online real critic), valid
  off-policy because the next action enters only through pi_K's known Gaussian;
  Q(z) = z'Hz + h0 (of cost);
- ``value(phi)``: J_hat = -mean over the data's initial states x0 of
  V(x0) = E_u Q(x0, u) = z0'H z0 + std^2 tr(H_uu) + h0, z0 = [x0; -K x0] (infinite horizon:
  the quantity ``real_objective`` is);
- ``gradient(phi)``: g = -2 (H_uu K - H_ux) S_hat (the online estimator's form), with S_hat the
  discounted second moment of pi_K in the least-squares linear model of the data
  (x' = A_hat x + B_hat u + w, W_hat the residual covariance; X0 the data's initial second
  moment): S = X0 + gamma/(1-gamma) (W_hat + std^2 B_hat B_hat') + gamma A_K S A_K'.  S only
  weights the critic's direction E (the zero of g is E = 0 whatever S); where the model's
  closed loop is not discounted-stable, the data's own discounted second moment is used;
- ``interval``: percentile bootstrap over whole episodes (LSTD-Q refitted per resample);
- ``coverage(phi)``: 1 / C with C = lambda_max(Sigma_D^-1 Sigma_K), the relative condition number
  of the second moments of z = [x; u] that the critic is fitted on: Sigma_D of the data, Sigma_K
  of the data's states with pi_K's actions (u = -K x + std eps).  1: pi_K asks about no direction
  of (x, u) more than the data spread into; a behaviour without action noise (a deterministic
  controller) gives Sigma_D rank-deficient and coverage ~0 for any other gain.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...datasets import Dataset, DatasetError
from ...evaluation import ReturnEstimate, bootstrap_interval
from .estimators import LSTDQ, discounted_second_moment, flat_transitions
from .maths import DiscountedLyapunov, discounted_radius

DEFAULT_MIN_COVERAGE = 0.05
"""pi_K may ask about a direction of (x, u) at most 20 x more than the data spread into.  The
quadratic critic is exact for every gain, so LSTD-Q extrapolates well past the data's spread.
Measured (30 nominal episodes, 2 seeds, 100 iterations, final normalised return): config/lqr.yaml
0.945 / 0.998 at 0.05 and at 0 (no constraint), 0.856 / 0.999 at 0.1 (the constraint held one
seed's gain back), 0.84 / 0.91 at 0.25; generated LQR seeds 0-2: the same at 0, 0.05 and 0.1."""


def prepare_dataset(problem, dataset: Dataset) -> Dataset:
    """The dataset with its dimensions checked (states n, actions m) and rewards -(x'Qx + u'Ru)
    from the problem's cost where a recording has none (the cost is known, the reward topic
    optional)."""
    batches = []
    for number, batch in enumerate(dataset.batches, start=1):
        where = f'{", ".join(dataset.sources) or "dataset"} batch {number}'
        states, actions = np.asarray(batch.states, np.float64), np.asarray(batch.actions, np.float64)
        if states.ndim != 3 or states.shape[-1] != problem.n_states:
            raise DatasetError(f'{where}: states of shape {states.shape}: expected (n, T+1, {problem.n_states}) '
                               f'(one joint per state of {problem.source})')
        if actions.shape != states.shape[:1] + (states.shape[1] - 1, problem.n_inputs):
            raise DatasetError(f'{where}: actions of shape {actions.shape}: expected '
                               f'({states.shape[0]}, {states.shape[1] - 1}, {problem.n_inputs}) (one command per input)')
        if not (np.all(np.isfinite(states)) and np.all(np.isfinite(actions))):
            raise DatasetError(f'{where}: non-finite states or actions')
        rewards = np.asarray(batch.rewards, dtype=np.float64)
        if not np.all(np.isfinite(rewards)):
            x = states[:, :-1]
            rewards = -(np.einsum('nti,ij,ntj->nt', x, problem.cost_q, x)
                        + np.einsum('nti,ij,ntj->nt', actions, problem.cost_r, actions))
        batches.append(type(batch)(states=states, actions=actions, rewards=rewards, dones=batch.dones,
                                   log_probs=batch.log_probs, source='real', policy_version=batch.policy_version))
    return dataset.with_batches(batches)


def behaviour_sampler(problem, phi: np.ndarray, noise: float):
    """(sampler, behaviour phi, words): the same gain with action std x ``noise`` (a copy of the
    problem whose ``std`` is the behaviour's, so its batches carry the behaviour's log-probabilities)."""
    if noise == 1.0:
        return problem, phi, 'nominal policy'
    import copy
    sampler = copy.copy(problem)
    sampler.std = problem.std * noise
    return sampler, phi, f'nominal gain with action std x{noise:g} ({sampler.std:g})'


class OfflineEstimator:
    """The LSTD-Q estimators of the module docstring on one dataset."""

    DEFAULT_MIN_COVERAGE = DEFAULT_MIN_COVERAGE

    def __init__(self, problem, dataset: Dataset, resamples: int = 100, pessimism: bool = True):
        # pessimism: the coverage constraint of the outer loop is all of it here (the quadratic
        # critic is exact for every gain, so it needs no pessimistic model)
        self.problem, self.dataset, self.resamples = problem, dataset, int(resamples)
        self.episodes = []          # per episode: (x, u, x', cost) and x0
        for batch in dataset.batches:
            for i in range(batch.actions.shape[0]):
                self.episodes.append(flat_transitions(replace(batch, states=batch.states[i:i + 1],
                                                              actions=batch.actions[i:i + 1],
                                                              rewards=batch.rewards[i:i + 1])))
        self.x, self.u, self.x_next, self.costs = (np.concatenate(c) for c in zip(*self.episodes))
        self.initial = np.array([b.states[i, 0] for b in dataset.batches for i in range(b.actions.shape[0])])
        self.data_moment = np.mean([discounted_second_moment(b.states, problem.gamma) for b in dataset.batches],
                                   axis=0)
        self.model = self._linear_model()
        z = np.concatenate([self.x, self.u], axis=1)
        self.z_moment = z.T @ z / len(z)
        self.x_moment = self.x.T @ self.x / len(self.x)

    def _linear_model(self):
        """(A_hat, B_hat, W_hat): least squares of x' on [x, u], residual covariance."""
        design = np.concatenate([self.x, self.u], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, self.x_next, rcond=None)
        residual = self.x_next - design @ coefficients
        n = self.problem.n_states
        return coefficients[:n].T, coefficients[n:].T, residual.T @ residual / max(len(residual) - design.shape[1], 1)

    def _critic(self, k: np.ndarray, x, u, x_next, costs):
        return LSTDQ(x, u, x_next, k, self.problem.std, self.problem.gamma).solve(costs)

    def _value(self, k: np.ndarray, h: np.ndarray, h0: float, initial: np.ndarray) -> float:
        z0 = np.concatenate([initial, -initial @ k.T], axis=1)
        n = self.problem.n_states
        values = np.einsum('ti,ij,tj->t', z0, h, z0) + self.problem.std ** 2 * np.trace(h[n:, n:]) + h0
        return -float(values.mean())

    def value(self, phi: np.ndarray) -> float:
        k = self.problem.gain(phi)
        h, h0 = self._critic(k, self.x, self.u, self.x_next, self.costs)
        return self._value(k, h, h0, self.initial)

    def second_moment(self, k: np.ndarray) -> np.ndarray:
        """S_hat of pi_K in the linear model of the data (the data's own when that loop is unstable)."""
        a, b, w = self.model
        gamma, std = self.problem.gamma, self.problem.std
        closed = a - b @ k
        if not discounted_radius(closed, gamma) < 1.0:
            return self.data_moment
        start = self.initial.T @ self.initial / len(self.initial)
        rhs = start + gamma / (1.0 - gamma) * (w + std ** 2 * b @ b.T)
        return DiscountedLyapunov(closed, gamma).covariance(rhs)

    def gradient(self, phi: np.ndarray) -> np.ndarray:
        k = self.problem.gain(phi)
        h, _ = self._critic(k, self.x, self.u, self.x_next, self.costs)
        n = self.problem.n_states
        error = h[n:, n:] @ k - h[n:, :n]
        return (-2.0 * error @ self.second_moment(k)).reshape(-1)

    def coverage(self, phi: np.ndarray) -> float:
        k = self.problem.gain(phi)
        n, m = self.problem.n_states, self.problem.n_inputs
        lift = np.concatenate([np.eye(n), -k], axis=0)
        target = lift @ self.x_moment @ lift.T
        target[n:, n:] += self.problem.std ** 2 * np.eye(m)
        data = self.z_moment + 1e-12 * np.trace(self.z_moment) * np.eye(n + m)
        factor = np.linalg.cholesky(data)
        inverse = np.linalg.inv(factor)
        ratio = np.linalg.eigvalsh(inverse @ target @ inverse.T).max()
        return float(min(1.0, 1.0 / ratio)) if ratio > 0 else 1.0

    def interval(self, phi: np.ndarray, confidence: float) -> ReturnEstimate:
        k = self.problem.gain(phi)

        def resampled(chosen: np.ndarray) -> float:
            x, u, x_next, costs = (np.concatenate([self.episodes[i][c] for i in chosen]) for c in range(4))
            h, h0 = self._critic(k, x, u, x_next, costs)
            return self._value(k, h, h0, self.initial[chosen])

        return bootstrap_interval(self.value(phi), len(self.episodes), resampled, self.resamples, confidence,
                                  self.x.tobytes())
