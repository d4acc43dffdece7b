"""Sampled estimators for the tabular problem: transition counts and the critic's empirical
model, the critic top-up by simulator resets, and the sampled visitation and Markov-chain
sensitivities."""
from __future__ import annotations

import zlib

import numpy as np

from ...problem import Trajectories
from .maths import sample_rows


def reward_sums(states, actions, rewards, n_states: int, n_actions: int) -> np.ndarray:
    """Sum of observed rewards per state-action pair."""
    return np.bincount((states * n_actions + actions).ravel(), weights=np.ravel(rewards),
                       minlength=n_states * n_actions).reshape(n_states, n_actions)


def top_up_pairs(pair_counts: np.ndarray, model: np.ndarray, minimum: int, rng: np.random.Generator):
    """(s, a, s') of extra one-step transitions from ``model`` for every state-action pair (flat
    index s * A + a) whose count is below ``minimum``, bringing it up to ``minimum``."""
    n_actions = model.shape[1]
    missing = np.maximum(minimum - np.asarray(pair_counts, dtype=np.int64), 0)
    pairs = np.repeat(np.arange(missing.size), missing)
    states, actions = pairs // n_actions, pairs % n_actions
    return states, actions, sample_rows(model[states, actions], rng)


class StatisticsPrefix:
    """Running (counts, reward sums) after each batch of a list of batches that grows at the end."""

    def __init__(self, n_states: int, n_actions: int):
        self.n_states, self.n_actions = n_states, n_actions
        self.batches: list[Trajectories] = []          # held: their ids stay theirs
        self.counts = [np.zeros((n_states, n_actions, n_states))]
        self.rewards = [np.zeros((n_states, n_actions))]

    def sums(self, batches: list[Trajectories]) -> tuple[np.ndarray, np.ndarray]:
        shared = 0
        for mine, theirs in zip(self.batches, batches):
            if mine is not theirs:
                break
            shared += 1
        del self.batches[shared:], self.counts[shared + 1:], self.rewards[shared + 1:]
        for b in batches[shared:]:
            self.batches.append(b)
            self.counts.append(self.counts[-1] + transition_counts(b, self.n_states, self.n_actions))
            self.rewards.append(self.rewards[-1] + reward_sums(b.states[:, :-1], b.actions, b.rewards,
                                                                self.n_states, self.n_actions))
        return self.counts[len(batches)].copy(), self.rewards[len(batches)].copy()


def transition_counts(batch: Trajectories, n_states: int, n_actions: int) -> np.ndarray:
    """counts[s, a, s'] of the transitions in a batch."""
    return count_transitions(batch.states[:, :-1], batch.actions, batch.states[:, 1:], n_states, n_actions)


def count_transitions(states, actions, next_states, n_states: int, n_actions: int) -> np.ndarray:
    """counts[s, a, s'] of transitions given as equally shaped integer arrays."""
    flat = ((np.asarray(states) * n_actions + actions) * n_states + next_states).ravel()
    return np.bincount(flat, minlength=n_states * n_actions * n_states).reshape(
        n_states, n_actions, n_states).astype(np.float64)


def empirical_model(counts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Row-normalised counts; rows without data take ``fallback``'s row."""
    totals = counts.sum(axis=2, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1), fallback)


def sampled_visitation(states: np.ndarray, gamma: float, n_states: int) -> np.ndarray:
    """d_hat(s) = mean over episodes of sum_k gamma^k [s_k = s] for states (n, T)."""
    weights = np.broadcast_to(gamma ** np.arange(states.shape[1]), states.shape)
    return np.bincount(states.ravel(), weights=weights.ravel(), minlength=n_states) / states.shape[0]


def sampled_chain(states: np.ndarray, scores: np.ndarray, gamma: float, n_states: int) -> np.ndarray:
    """d(d_hat)(s) = mean over episodes of sum_k gamma^k [s_k = s] W_k with the accumulated
    score weights W_k = sum_{i<k} scores_i (scores (n, T, K) per transition or action)."""
    n_episodes, horizon, size = scores.shape
    accumulated = np.cumsum(scores, axis=1) - scores                       # exclusive: i < k
    weighted = accumulated * (gamma ** np.arange(horizon))[None, :, None]
    chain = np.zeros((n_states, size))
    np.add.at(chain, states.ravel(), weighted.reshape(-1, size))
    return chain / n_episodes


def rng_from_content(batch: Trajectories) -> np.random.Generator:
    """A generator seeded by the batch's transitions: repeated calls on one batch agree and
    different batches draw independently (the critic top-up when no rng is given)."""
    return np.random.default_rng(zlib.crc32(batch.states.tobytes() + batch.actions.tobytes()))
