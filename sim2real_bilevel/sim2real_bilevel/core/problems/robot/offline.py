"""Offline (fixed-dataset) estimators of the robot kind (``core/offline.py`` uses them): per-decision
importance sampling with clipped weights over the MLP Gaussian policy.

The dataset must carry the behaviour policy's log-probabilities log b(a_t|o_t) (this package's run
folders, its ``real_trajectories`` bags and ``sim2real-bilevel dataset`` record them); a recording of
an unknown controller cannot give them, and ``prepare_dataset`` refuses it with that reason.

For a policy pi_phi and episode i of the data,
    w_it = min(exp(sum_{k<=t} log pi_phi(a_ik|o_ik) - log b(a_ik|o_ik)), CLIP),
- ``value(phi)``: J_hat = 1/n sum_i sum_t gamma^t w_it r_it (the task return over the recorded
  horizon: what the evaluator's ``real_return`` is); unbiased where no weight is clipped;
- ``gradient(phi)``: its exact gradient (torch autograd; ``test_offline`` checks it against finite
  differences).  A clipped weight has no gradient, so the estimate never rewards moving the policy
  further where the data already cannot follow it -- the clipping is the pessimism here, with the
  outer loop's coverage constraint;
- ``coverage(phi)``: the discounted average over t of ESS_t / n, ESS_t = (sum_i w_it)^2 / sum_i w_it^2
  the effective sample size of the weights up to t (1 on the behaviour, falling as pi_phi leaves
  the data);
- ``interval``: percentile bootstrap over whole episodes of the per-episode terms.

The compounding product makes the weights collapse over long horizons for any policy far from the
behaviour: coverage says so, and the constraint keeps the outer loop near the data.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...datasets import BehaviourUnknownError, Dataset, DatasetError
from ...evaluation import ReturnEstimate, bootstrap_interval
from .estimators import alive_mask
from .simulator import DTYPE

CLIP = 10.0
"""Largest importance weight (the product up to t), as in clipped / truncated importance sampling."""
DEFAULT_MIN_COVERAGE = 0.5
"""No step to a policy whose weights keep less than half of the data's effective sample size
(a choice, not measured on the pendulum: no offline pendulum benchmark exists yet)."""


def prepare_dataset(problem, dataset: Dataset) -> Dataset:
    """The dataset with shapes, finiteness and the behaviour's log-probabilities checked; rewards the
    recording lacks are the task reward of its states and actions (``score_episodes``)."""
    if not dataset.behaviour_known:
        raise BehaviourUnknownError(
            f'{", ".join(dataset.sources) or "dataset"}: the behaviour policy\'s probabilities are unknown ('
            f'{dataset.behaviour or "a recording of another controller"}); the robot kind\'s offline estimator '
            '(clipped importance weights) needs them: record with this package\'s runs or `sim2real-bilevel dataset`')
    batches = []
    state_dim, action_dim = problem.model.state_dim, problem.model.action_dim
    for number, batch in enumerate(dataset.batches, start=1):
        where = f'{", ".join(dataset.sources) or "dataset"} batch {number}'
        states, actions = np.asarray(batch.states, np.float64), np.asarray(batch.actions, np.float64)
        if states.ndim != 3 or states.shape[-1] != state_dim:
            raise DatasetError(f'{where}: states of shape {states.shape}: expected (n, T+1, {state_dim})')
        if actions.shape != states.shape[:1] + (states.shape[1] - 1, action_dim):
            raise DatasetError(f'{where}: actions of shape {actions.shape}: expected '
                               f'({states.shape[0]}, {states.shape[1] - 1}, {action_dim})')
        log_probs = np.asarray(batch.log_probs, dtype=np.float64)
        if not (np.all(np.isfinite(states)) and np.all(np.isfinite(actions))):
            raise DatasetError(f'{where}: non-finite states or actions')
        if log_probs.shape != actions.shape[:2] or not np.all(np.isfinite(log_probs)):
            raise DatasetError(f'{where}: behaviour log-probabilities of shape {log_probs.shape} '
                               f'(finite: {bool(np.all(np.isfinite(log_probs)))}): expected finite values of shape '
                               f'{actions.shape[:2]}')
        rewards = np.asarray(batch.rewards, dtype=np.float64)
        if rewards.shape != actions.shape[:2] or not np.all(np.isfinite(rewards)):
            rewards = problem.score_episodes(_any_phi(problem), states, actions)[0]
        batches.append(type(batch)(states=states, actions=actions, rewards=rewards, dones=batch.dones,
                                   log_probs=log_probs, source='real', policy_version=batch.policy_version))
    return Dataset(batches=batches, behaviour_known=True, sources=dataset.sources, behaviour=dataset.behaviour,
                   notes=dataset.notes)


def _any_phi(problem) -> np.ndarray:
    """A policy for ``score_episodes``, whose rewards do not depend on it."""
    return np.zeros(problem.phi_size())


def behaviour_sampler(problem, phi: np.ndarray, noise: float):
    """(sampler, behaviour phi, words): the same policy with its action std x ``noise`` (log_std, the
    last action-dimension entries of phi, + log noise)."""
    if noise == 1.0:
        return problem, phi, 'nominal policy'
    behaviour = np.array(phi, dtype=np.float64)
    behaviour[-problem.model.action_dim:] += math.log(noise)
    return problem, behaviour, f'nominal policy with action std x{noise:g}'


class OfflineEstimator:
    """The clipped importance-sampling estimators of the module docstring on one dataset."""

    DEFAULT_MIN_COVERAGE = DEFAULT_MIN_COVERAGE

    def __init__(self, problem, dataset: Dataset, resamples: int = 100, pessimism: bool = True):
        self.problem, self.dataset, self.resamples = problem, dataset, int(resamples)
        self.pessimism = pessimism
        horizon = max(b.actions.shape[1] for b in dataset.batches)
        if any(b.actions.shape[1] != horizon for b in dataset.batches):
            raise DatasetError(f'robot offline data: episodes of {sorted({b.actions.shape[1] for b in dataset.batches})}'
                               ' steps; expected one horizon')
        states = np.concatenate([b.states for b in dataset.batches])
        alive = np.concatenate([alive_mask(b.dones) for b in dataset.batches])
        self.observations = problem.model.observation(torch.as_tensor(states[:, :-1], dtype=DTYPE))
        self.actions = torch.as_tensor(np.concatenate([b.actions for b in dataset.batches]), dtype=DTYPE)
        self.behaviour = torch.as_tensor(np.concatenate([b.log_probs for b in dataset.batches]), dtype=DTYPE)
        rewards = np.where(alive, np.concatenate([b.rewards for b in dataset.batches]), 0.0)
        discounts = problem.gamma ** np.arange(horizon)
        self.discounted = torch.as_tensor(rewards * discounts, dtype=DTYPE)
        self.time_weights = discounts / discounts.sum()
        self.key = states.tobytes()

    def _weights(self, phi: torch.Tensor) -> torch.Tensor:
        log_ratio = self.problem.policy.log_prob(phi, self.observations, self.actions) - self.behaviour
        return torch.clamp(torch.exp(torch.cumsum(log_ratio, dim=1)), max=CLIP)

    def _terms(self, phi: np.ndarray) -> np.ndarray:
        """Per-episode estimates sum_t gamma^t w_it r_it."""
        with torch.no_grad():
            weights = self._weights(torch.as_tensor(phi, dtype=DTYPE))
            return (weights * self.discounted).sum(1).numpy()

    def objective(self, phi: np.ndarray) -> float:
        return float(np.mean(self._terms(phi)))

    value = objective

    def gradient(self, phi: np.ndarray) -> np.ndarray:
        phi_t = torch.tensor(np.asarray(phi, dtype=np.float64), dtype=DTYPE, requires_grad=True)
        estimate = (self._weights(phi_t) * self.discounted).sum(1).mean()
        (gradient,) = torch.autograd.grad(estimate, phi_t)
        return gradient.numpy()

    def coverage(self, phi: np.ndarray) -> float:
        with torch.no_grad():
            weights = self._weights(torch.as_tensor(phi, dtype=DTYPE)).numpy()
        n = weights.shape[0]
        ess = weights.sum(0) ** 2 / np.maximum((weights ** 2).sum(0), 1e-300)
        return float(np.clip(self.time_weights @ (ess / n), 0.0, 1.0))

    def interval(self, phi: np.ndarray, confidence: float) -> ReturnEstimate:
        terms = self._terms(phi)
        return bootstrap_interval(float(terms.mean()), len(terms), lambda chosen: float(terms[chosen].mean()),
                                  self.resamples, confidence, self.key)
