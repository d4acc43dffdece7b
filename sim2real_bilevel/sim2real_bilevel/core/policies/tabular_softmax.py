"""Tabular softmax policy in a reduced parametrisation, as pure functions of a flat vector.

pi_phi(a|s) = softmax_a(z[s, a]) with z[s, a] = phi[s * (A - 1) + a] for a < A - 1 and
z[s, A - 1] = 0, so phi has S * (A - 1) entries.

Why reduced: a full S x A logit table is invariant to adding a constant per state, so the
in-sim optimality residual F(phi, theta) = grad_phi J_sim would have a singular Jacobian
dF/dphi (one flat direction per state) and the implicit-function step
d phi*/d theta = -(dF/dphi)^{-1} dF/dtheta would be ill-posed.  Fixing the last action's logit
to 0 removes exactly those directions.  Together with the entropy bonus of the inner problem
(temperature tau > 0; see ``core/problems/tabular/``) the inner optimum
pi* = softmax(Q*_soft / tau) has finite logits phi*[s, a] = (Q*(s, a) - Q*(s, A-1)) / tau, it
is the unique stationary point (every state has positive discounted visitation because the
simulator's softmax dynamics have full support), and dF/dphi there is negative definite.

All torch functions take float64 tensors and compose with torch.func; the numpy functions are
their fast counterparts for sampling and for the closed-form sensitivities.
"""
from __future__ import annotations

import numpy as np
import torch


def parameter_count(n_states: int, n_actions: int) -> int:
    """Length of phi: one free logit per state and non-last action."""
    return n_states * (n_actions - 1)


def logits(phi: torch.Tensor, n_states: int, n_actions: int) -> torch.Tensor:
    """(S, A) logit table z with the last action's logit pinned to 0."""
    free = phi.reshape(n_states, n_actions - 1)
    return torch.cat([free, torch.zeros(n_states, 1, dtype=phi.dtype)], dim=1)


def log_probabilities(phi: torch.Tensor, n_states: int, n_actions: int) -> torch.Tensor:
    """(S, A) log pi_phi(a|s)."""
    return torch.log_softmax(logits(phi, n_states, n_actions), dim=1)


def probabilities(phi: torch.Tensor, n_states: int, n_actions: int) -> torch.Tensor:
    """(S, A) pi_phi(a|s)."""
    return torch.softmax(logits(phi, n_states, n_actions), dim=1)


def log_probabilities_np(phi: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    """numpy float64 counterpart of ``log_probabilities``."""
    z = np.concatenate([np.asarray(phi, dtype=np.float64).reshape(n_states, n_actions - 1),
                        np.zeros((n_states, 1))], axis=1)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def probabilities_np(phi: np.ndarray, n_states: int, n_actions: int) -> np.ndarray:
    """numpy float64 counterpart of ``probabilities``."""
    return np.exp(log_probabilities_np(phi, n_states, n_actions))


def score_matrix(pi: np.ndarray) -> np.ndarray:
    """(S, A, P) grad_phi log pi(a|s) for the policy table ``pi`` (S, A).

    d log pi(a|s) / d phi[s, b] = [a == b] - pi(b|s) for b < A - 1; zero for other states.
    """
    n_states, n_actions = pi.shape
    reduced = n_actions - 1
    score = np.zeros((n_states, n_actions, n_states * reduced))
    for s in range(n_states):
        block = np.eye(n_actions)[:, :reduced] - pi[s, :reduced][None, :]
        score[s, :, s * reduced:(s + 1) * reduced] = block
    return score


def phi_from_action_values(q: np.ndarray, temperature: float) -> np.ndarray:
    """phi of the Boltzmann policy softmax(q / temperature) (the soft-greedy policy)."""
    return ((q[:, :-1] - q[:, -1:]) / temperature).reshape(-1)


def sample_actions(pi: np.ndarray, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per entry of ``states`` (int array), drawn from the table ``pi`` (S, A)."""
    cumulative = np.cumsum(pi[states], axis=-1)
    uniform = rng.random(states.shape + (1,))
    # the last column is forced to 1 so rounding never lets an index run past A - 1
    cumulative[..., -1] = 1.0
    return (uniform > cumulative).sum(axis=-1).astype(np.int64)
