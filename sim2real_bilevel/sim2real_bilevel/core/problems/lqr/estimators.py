"""Sampled estimators of the LQR quantities: the LSTD-Q critic with quadratic features, the
empirical discounted second moment and its score-weighted derivative, and the flat
transition arrays they read."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import scipy.linalg

from ...problem import Trajectories

LOGGER = logging.getLogger(__name__)


def quadratic_features(outer: np.ndarray) -> np.ndarray:
    """Features of a quadratic function z'Hz + h0 from (..., p, p) matrices z z' (or their
    expectation): the upper triangle (i <= j) then a constant 1.  Weights w map back to H by
    H_ii = w_ii, H_ij = H_ji = w_ij / 2."""
    p = outer.shape[-1]
    rows, cols = np.triu_indices(p)
    ones = np.ones(outer.shape[:-2] + (1,))
    return np.concatenate([outer[..., rows, cols], ones], axis=-1)


def weights_to_matrix(weights: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, h0) of feature weights (p(p+1)/2 + 1, ...) -> H (..., p, p), h0 (...)."""
    rows, cols = np.triu_indices(p)
    extra = weights.shape[1:]
    h = np.zeros(extra + (p, p))
    half = np.where(rows == cols, 1.0, 0.5)
    h[..., rows, cols] = np.moveaxis(weights[:-1], 0, -1) * half
    h[..., cols, rows] = np.moveaxis(weights[:-1], 0, -1) * half
    return h, weights[-1]


def expected_next_outer(k: np.ndarray, next_states: np.ndarray, std: float) -> np.ndarray:
    """E_{u' ~ pi_K}[z' z'] at z' = [x'; u'], u' = -K x' + std eps: M x'x'' M' + diag(0, std^2 I)."""
    n = next_states.shape[-1]
    m = k.shape[0]
    lift = np.concatenate([np.eye(n), -k], axis=0)                     # z' mean = lift @ x'
    mean = next_states @ lift.T
    outer = mean[..., :, None] * mean[..., None, :]
    outer[..., n:, n:] += std ** 2 * np.eye(m)
    return outer


class LSTDQ:
    """LSTD-Q for the quadratic Q-function of the Gaussian policy pi_K (expected next features:
    the target policy's own action distribution, so transitions from any behaviour policy on the
    same dynamics are valid).  One factorisation serves several reward columns (the critic and
    its sensitivities).

    Instruments are the features weighted by w_t = 1 / (|x_t|^2 + floor * mean |x|^2): the TD
    noise of a quadratic value grows like |x| while the features grow like |x|^2, so unweighted
    LSTD lets a few large states dominate.  Any weights that depend on (x_t, u_t) alone keep
    the estimator consistent, because the quadratic features represent Q exactly; the floor keeps
    states near the origin from taking all the weight.

    Scaling: each feature (x_i x_j, x_i u_j, u_i u_j, 1) is divided by its root-mean-square over
    the data before the system is formed, so the condition number measures how well the data
    determine Q, not the units of the states (|x| ~ 10 makes x^2 ~ 100 next to the constant 1;
    over a long horizon of a slowly decaying loop the spread is many decades).  The unscaled
    system of the same data has the same solution when it is regular.

    A feature that never varies in the data -- a state component that is exactly zero in every
    transition (no noise, no initial spread and no input reaching it), or fewer transitions than
    coefficients -- leaves its coefficient undetermined; its value does not matter on the data's
    states (where that feature is zero, so the policy gradient's second moment is zero there too).
    Such systems (condition number of the scaled system >= ``max_condition``, or a feature of
    zero RMS) are solved by least squares truncated at that condition number: the minimum-norm
    coefficients in the scaled units, never an exception.  ``rank`` (of the scaled system),
    ``conditioning`` (before truncation) and ``truncated`` report it; a warning is logged."""

    max_condition = 1e10

    def __init__(self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray,
                 k: np.ndarray, std: float, gamma: float, weight_floor: float = 0.1):
        z = np.concatenate([states, actions], axis=-1)
        self.p = z.shape[-1]
        features = quadratic_features(z[:, :, None] * z[:, None, :])
        next_features = quadratic_features(expected_next_outer(k, next_states, std))
        squared = np.sum(states ** 2, axis=-1)
        weights = 1.0 / (squared + weight_floor * max(float(squared.mean()), 1e-300))
        rms = np.sqrt(np.mean(features ** 2, axis=0)) if len(z) else np.zeros(features.shape[1])
        self.scale = np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 0.0)     # unexcited: dropped
        features, next_features = features * self.scale, next_features * self.scale
        self.instruments = features * (weights / weights.mean())[:, None]
        count = len(z)
        matrix = self.instruments.T @ (features - gamma * next_features) / max(count, 1)
        self.count = count
        self.n_features = features.shape[1]
        singular = np.linalg.svd(matrix, compute_uv=False)
        self.conditioning = float(singular[0] / singular[-1]) if singular[-1] > 0 else float('inf')
        self.truncated = not self.conditioning < self.max_condition
        if self.truncated:
            self.pseudo_inverse = np.linalg.pinv(matrix, rcond=1.0 / self.max_condition)
            self.rank = int(np.sum(singular > singular[0] / self.max_condition)) if singular[0] > 0 else 0
            LOGGER.warning('LSTD-Q: %d transitions determine %d of the %d coefficients of the quadratic '
                           'Q-function (scaled condition number %.3g, unexcited features %d): minimum-norm '
                           'solution on the determined ones', count, self.rank, self.n_features,
                           self.conditioning, int(np.sum(rms == 0)))
        else:
            self.rank = self.n_features
            self.factor = scipy.linalg.lu_factor(matrix)

    def solve(self, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H (..., p, p), h0 of the fixed point for per-transition rewards (count,) or (count, C)."""
        rhs = self.instruments.T @ rewards / max(self.count, 1)
        if self.truncated:
            weights = self.pseudo_inverse @ rhs
        else:
            weights = scipy.linalg.lu_solve(self.factor, rhs)
        weights = weights * (self.scale if weights.ndim == 1 else self.scale[:, None])
        return weights_to_matrix(weights, self.p)


def discounted_second_moment(states: np.ndarray, gamma: float, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """S ~ sum_t gamma^t E[x_t x_t'] from episodes (n, T+1, d): the sample mean at each step
    t < T, and the tail sum_{t >= T} gamma^t E[x_t x_t'] ~ gamma^T / (1 - gamma) E[x_T x_T']
    (the last step stands for the stationary distribution).  With ``weights`` (n, T+1, D) it
    returns sum_t gamma^t c_t mean_i[(x_t x_t' - m_t) w_it] (d, d, D) instead: the score-function
    derivative of the same estimator, centred by the per-step mean m_t."""
    horizon = states.shape[1] - 1
    discount = gamma ** np.arange(horizon + 1)
    discount[-1] /= (1.0 - gamma)
    outer = states[..., :, None] * states[..., None, :]                  # (n, T+1, d, d)
    if weights is None:
        return np.einsum('t,ntij->ij', discount, outer) / states.shape[0]
    centred = outer - outer.mean(axis=0, keepdims=True)
    return np.einsum('t,ntij,ntk->ijk', discount, centred, weights) / states.shape[0]


def accumulated_scores(scores: np.ndarray) -> np.ndarray:
    """W_k = sum_{i<k} score_i for episodes (n, T, D) -> (n, T+1, D), W_0 = 0."""
    zero = np.zeros(scores.shape[:1] + (1,) + scores.shape[2:])
    return np.concatenate([zero, np.cumsum(scores, axis=1)], axis=1)


def flat_transitions(batch: Trajectories) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat (x, u, x', cost) arrays of a batch (truncated episodes: every step bootstraps)."""
    d = batch.states.shape[-1]
    return (batch.states[:, :-1].reshape(-1, d), batch.actions.reshape(-1, batch.actions.shape[-1]),
            batch.states[:, 1:].reshape(-1, d), -batch.rewards.reshape(-1))


def mean_action_lift(k: np.ndarray) -> np.ndarray:
    """[I; -K]: z = [x; u] at the policy's mean action."""
    return np.concatenate([np.eye(k.shape[1]), -k], axis=0)


def block_diagonal(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Stacks (D, n, n), (D, m, m) -> (D, n + m, n + m) block-diagonal."""
    n, m = upper.shape[-1], lower.shape[-1]
    out = np.zeros(upper.shape[:1] + (n + m, n + m))
    out[:, :n, :n] = upper
    out[:, n:, n:] = lower
    return out
