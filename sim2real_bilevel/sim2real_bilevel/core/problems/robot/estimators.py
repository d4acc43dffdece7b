"""Estimators on real pendulum episodes: value features, a cross-fitted value baseline and
generalised advantage estimates (for the likelihood-ratio real gradient and PPO)."""
from __future__ import annotations

import numpy as np

from ...problem import alive_mask  # noqa: F401  (the robot kind's estimators and their tests use it from here)


def value_features(observations: np.ndarray, gamma: float, horizon: int) -> np.ndarray:
    """(n, T+1, k) features of a linear value function: 1, o, o o^T (upper triangle), t/T and
    gamma^(T-t) (with 1 they span the value of any constant reward exactly)."""
    n, steps = observations.shape[:2]
    rows, cols = np.triu_indices(observations.shape[-1])
    quadratic = observations[..., rows] * observations[..., cols]
    t = np.arange(steps)
    time_features = np.broadcast_to(np.stack([t / horizon, gamma ** (horizon - t)], -1), (n, steps, 2))
    return np.concatenate([np.ones((n, steps, 1)), observations, quadratic, time_features], axis=-1)


def cross_fitted_values(features: np.ndarray, to_go: np.ndarray) -> np.ndarray:
    """V(s_t) for t < T from a two-fold cross-fitted least-squares fit (minimum norm: the
    features are collinear, e.g. sin^2 + cos^2 = 1) of the reward-to-go; V(s_T) = 0."""
    n, horizon = to_go.shape
    values = np.zeros((n, horizon + 1))
    if n < 2:
        return values
    inputs = features[:, :horizon]
    folds = np.arange(n) % 2
    for fold in (0, 1):
        train, test = folds != fold, folds == fold
        coefficients = np.linalg.lstsq(inputs[train].reshape(-1, inputs.shape[-1]), to_go[train].reshape(-1),
                                       rcond=None)[0]
        values[test, :horizon] = inputs[test] @ coefficients
    return values


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates (n, T) from rewards (n, T) and values (n, T+1)."""
    deltas = rewards + gamma * values[:, 1:] - values[:, :-1]
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * running
        advantages[:, t] = running
    return advantages


