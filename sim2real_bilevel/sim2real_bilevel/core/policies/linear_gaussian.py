"""Linear Gaussian state-feedback policy u = -K x + sigma * eps, eps ~ N(0, I_m), as pure functions.

phi = vec(K), row-major: K[i, j] = phi[i * n + j] for an m x n gain (m inputs, n states), so
phi has m * n entries.  The standard deviation sigma is fixed (it comes from the problem file),
not learned: the inner problem optimises the gain only, and the LQR optimum K* does not depend
on sigma.

torch functions take float64 tensors and compose with torch.func (no data-dependent Python
control flow); numpy functions are their fast counterparts for sampling and for the
closed-form estimators.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def parameter_count(n_states: int, n_inputs: int) -> int:
    """Length of phi: one entry per gain coefficient."""
    return n_states * n_inputs


def gain(phi, n_states: int, n_inputs: int):
    """The m x n gain K of a flat phi (numpy array or torch tensor; row-major)."""
    return phi.reshape(n_inputs, n_states)


def flatten_gain(gain_matrix):
    """phi = vec(K), row-major (inverse of ``gain``)."""
    return gain_matrix.reshape(-1)


def mean_actions(phi: np.ndarray, states: np.ndarray, n_inputs: int) -> np.ndarray:
    """-K x for states of shape (..., n); returns (..., m)."""
    k = gain(np.asarray(phi, dtype=np.float64), states.shape[-1], n_inputs)
    return -states @ k.T


def sample_actions(phi: np.ndarray, states: np.ndarray, n_inputs: int, std: float,
                   rng: np.random.Generator) -> np.ndarray:
    """u ~ N(-K x, std^2 I) for states of shape (..., n)."""
    mean = mean_actions(phi, states, n_inputs)
    return mean + std * rng.standard_normal(mean.shape)


def log_prob_numpy(phi: np.ndarray, states: np.ndarray, actions: np.ndarray, std: float) -> np.ndarray:
    """log pi(u|x) for arrays of states (..., n) and actions (..., m)."""
    n_inputs = actions.shape[-1]
    residual = actions - mean_actions(phi, states, n_inputs)
    return (-0.5 * np.sum(residual ** 2, axis=-1) / std ** 2
            - n_inputs * (math.log(std) + 0.5 * math.log(2 * math.pi)))


def log_prob(phi: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, std: float) -> torch.Tensor:
    """Differentiable log pi_phi(u|x) (float64) for states (..., n) and actions (..., m)."""
    n_inputs = actions.shape[-1]
    k = gain(phi, states.shape[-1], n_inputs)
    residual = actions + states @ k.T
    return (-0.5 * torch.sum(residual ** 2, dim=-1) / std ** 2
            - n_inputs * (math.log(std) + 0.5 * math.log(2 * math.pi)))


def score(phi: np.ndarray, states: np.ndarray, actions: np.ndarray, std: float) -> np.ndarray:
    """grad_phi log pi(u|x) = vec(-(u + K x) x^T) / std^2, shape (..., m * n)."""
    n_inputs = actions.shape[-1]
    residual = actions - mean_actions(phi, states, n_inputs)           # = u + K x
    outer = -residual[..., :, None] * states[..., None, :] / std ** 2
    return outer.reshape(outer.shape[:-2] + (-1,))
