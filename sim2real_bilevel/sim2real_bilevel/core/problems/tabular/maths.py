"""Finite-MDP arithmetic in numpy float64: soft policy evaluation, discounted visitation, the
Jacobian of the soft policy-gradient residual, episode rollouts and the optimal return."""
from __future__ import annotations

import numpy as np

from ...policies import tabular_softmax as policy


def logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def evaluate_policy(pi, log_pi, model, rewards, gamma, temperature):
    """Q, V of the policy table under ``model`` (S, A, S) with the entropy bonus
    -temperature log pi (0: the plain return)."""
    n_states = pi.shape[0]
    transition = np.einsum('sa,sat->st', pi, model)
    reward = (pi * (rewards - temperature * log_pi)).sum(axis=1)
    value = np.linalg.solve(np.eye(n_states) - gamma * transition, reward)
    return rewards + gamma * model @ value, value


def discounted_visitation(pi, model, rho0, gamma):
    """d^T = rho0^T (I - gamma P_pi)^{-1} (sums to 1 / (1 - gamma))."""
    transition = np.einsum('sa,sat->st', pi, model)
    return np.linalg.solve((np.eye(len(rho0)) - gamma * transition).T, rho0)


def residual_jacobian(*, pi, log_pi, model, q, v, visitation, gamma, temperature, chain, score, d_rewards,
                      dynamics_term):
    """dF/dx for F[s, b] = d(s) pi(b|s) A(s, b) (b < A-1), x = phi or theta.

    score: (S, A, K) d log pi / dx; d_rewards: (S, A, K) dR/dx; dynamics_term: (S, A, K)
    [df/dx V](s, a); chain: (S, K) d(visitation)/dx.  The critic sensitivity dQ solves
    (I - gamma P Pi) dQ = dR + gamma [df V] + gamma P [sum_a' pi dlog pi (Q - tau log pi)].
    """
    n_states, n_actions = pi.shape
    size = chain.shape[1]
    soft_q = q - temperature * log_pi
    policy_term = np.einsum('sa,sak,sa->sk', pi, score, soft_q)          # d V through pi only
    right = d_rewards + gamma * (dynamics_term + np.einsum('sat,tk->sak', model, policy_term))
    pairs = n_states * n_actions
    propagate = np.einsum('sat,tb->satb', model, pi).reshape(pairs, pairs)
    d_q = np.linalg.solve(np.eye(pairs) - gamma * propagate, right.reshape(pairs, size)).reshape(
        n_states, n_actions, size)
    d_v = policy_term + np.einsum('sa,sak->sk', pi, d_q)
    advantage = soft_q - v[:, None]
    d_advantage = d_q - temperature * score - d_v[:, None, :]
    d_residual = (chain[:, None, :] * (pi * advantage)[..., None]
                  + visitation[:, None, None] * (pi * advantage)[..., None] * score
                  + visitation[:, None, None] * pi[..., None] * d_advantage)
    return d_residual[:, :-1, :].reshape(-1, size)


def rollout(pi, model, rho0, n_episodes, horizon, rng):
    """States (n, T+1) and actions (n, T) of pi in the MDP ``model``."""
    states = np.zeros((n_episodes, horizon + 1), dtype=np.int64)
    actions = np.zeros((n_episodes, horizon), dtype=np.int64)
    states[:, 0] = sample_rows(np.broadcast_to(rho0, (n_episodes, len(rho0))), rng)
    for t in range(horizon):
        actions[:, t] = policy.sample_actions(pi, states[:, t], rng)
        states[:, t + 1] = sample_rows(model[states[:, t], actions[:, t]], rng)
    return states, actions


def sample_rows(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cumulative = np.cumsum(probabilities, axis=-1)
    cumulative[..., -1] = 1.0
    return (rng.random((probabilities.shape[0], 1)) > cumulative).sum(axis=-1).astype(np.int64)


def optimal_return(transitions, rewards, gamma, rho0) -> float:
    """max over policies of the return from rho0 (policy iteration, exact; a deterministic
    policy attains it)."""
    n_states, n_actions = rewards.shape
    actions = np.zeros(n_states, dtype=np.int64)
    for _ in range(10 * n_states * n_actions + 100):
        pi = np.eye(n_actions)[actions]
        q, value = evaluate_policy(pi, np.zeros_like(pi), transitions, rewards, gamma, 0.0)
        improved = np.where(q.max(axis=1) > q[np.arange(n_states), actions] + 1e-12 * (1 + np.abs(q).max()),
                            q.argmax(axis=1), actions)
        if np.array_equal(improved, actions):
            break
        actions = improved
    return float(rho0 @ value)
