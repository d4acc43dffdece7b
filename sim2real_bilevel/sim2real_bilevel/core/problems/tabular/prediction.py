"""Safe improvement's check before deployment for tabular problems: is a candidate policy's real
return significantly below the best deployed one's, judged from the real episodes already
collected?

Transitions sample the real MDP whatever policy chose the action, so the counts of all real
episodes give a model (P_hat, r_hat; with the critic's prior of ``critic_prior_transitions``
nominal-simulator transitions per pair, and the nominal simulator where a pair was never tried)
under which any policy can be evaluated.  Both policies are evaluated on the same model as the
episodes measure them (``real.horizon`` steps, discounted, from the initial distribution); the
difference J_hat(candidate) - J_hat(best) gets a paired bootstrap interval over episodes
(resampling whole episodes; the resampling stream is seeded by the data, so the check is a
deterministic function of the run's real data and draws nothing from the run's RNG)."""
from __future__ import annotations

import zlib
from typing import Optional

import numpy as np

from ...evaluation import ReturnEstimate
from ...problem import Trajectories
from .estimators import count_transitions, empirical_model, reward_sums

RESAMPLES = 200


def episode_statistics(problem, batches: list[Trajectories]) -> tuple[np.ndarray, np.ndarray]:
    """(counts (E, S, A, S), reward sums (E, S, A)) of every real episode of ``batches``."""
    counts, rewards = [], []
    for batch in batches:
        for i in range(batch.actions.shape[0]):
            states, actions = batch.states[i:i + 1, :-1], batch.actions[i:i + 1]
            counts.append(count_transitions(states, actions, batch.states[i:i + 1, 1:], problem.n_states,
                                            problem.n_actions))
            rewards.append(reward_sums(states, actions, batch.rewards[i:i + 1], problem.n_states, problem.n_actions))
    return np.array(counts), np.array(rewards)


def horizon_return(problem, pi: np.ndarray, counts: np.ndarray, reward_total: np.ndarray) -> float:
    """The ``real.horizon``-step discounted return of the policy table ``pi`` from the initial
    distribution under the model of ``counts`` / ``reward_total`` (prior and fallback as above)."""
    nominal_p, nominal_r = problem._nominal_model
    prior = problem.critic_prior_transitions
    counts = counts + prior * nominal_p
    reward_total = reward_total + prior * nominal_r
    pairs = counts.sum(axis=2)
    model = empirical_model(counts, nominal_p)
    mean_rewards = np.where(pairs > 0, reward_total / np.maximum(pairs, 1e-300), nominal_r)
    transition = np.einsum('sa,sat->st', pi, model)
    reward = (pi * mean_rewards).sum(axis=1)
    value = np.zeros(problem.n_states)
    for _ in range(problem.real_horizon):
        value = reward + problem.gamma * transition @ value
    return float(problem.initial_distribution @ value)


def predict_improvement(problem, phi: np.ndarray, baseline_phi: np.ndarray, batches: list[Trajectories],
                        confidence: float) -> Optional[ReturnEstimate]:
    """J_hat(pi_phi) - J_hat(pi_baseline) with its paired bootstrap percentile interval at
    ``confidence``; None with fewer than two real episodes."""
    counts, rewards = episode_statistics(problem, batches)
    episodes = counts.shape[0]
    if episodes < 2:
        return None
    pi, _ = problem.policy_table(phi)
    base, _ = problem.policy_table(baseline_phi)

    def difference(c, r):
        return horizon_return(problem, pi, c, r) - horizon_return(problem, base, c, r)

    point = difference(counts.sum(axis=0), rewards.sum(axis=0))
    rng = np.random.default_rng(zlib.crc32(counts.tobytes()))
    weights = np.stack([np.bincount(rng.integers(0, episodes, episodes), minlength=episodes)
                        for _ in range(RESAMPLES)]).astype(np.float64)
    flat_counts, flat_rewards = counts.reshape(episodes, -1), rewards.reshape(episodes, -1)
    samples = np.array([difference((w @ flat_counts).reshape(counts.shape[1:]),
                                   (w @ flat_rewards).reshape(rewards.shape[1:])) for w in weights])
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return ReturnEstimate(point, float(low), float(high), episodes)
