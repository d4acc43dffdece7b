"""The tabular simulator family: f_theta(s'|s, a) = softmax_s'(L[s][a]) and R_theta(s, a), with
theta the learnable logit entries then the learnable reward entries."""
from __future__ import annotations

import numpy as np
import torch


class SoftmaxSimulatorFamily:
    """The simulator family of ``TabularProblem`` (a mixin over its nominal tables
    ``nominal_logits``, ``nominal_rewards``, masks ``logit_index``, ``reward_index`` and bounds)."""

    def theta0(self) -> np.ndarray:
        return np.concatenate([self.nominal_logits[tuple(self.logit_index.T)],
                               self.nominal_rewards[tuple(self.reward_index.T)]])

    def theta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        bound = np.concatenate([np.full(self.n_logit_params, self.logit_bound),
                                np.full(len(self.reward_index), self.reward_bound)])
        return -bound, bound

    def theta_groups(self) -> dict[str, np.ndarray]:
        dynamics = np.arange(len(self.theta_names)) < self.n_logit_params
        return {'dynamics': dynamics, 'reward': ~dynamics}

    def simulator_model(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f_theta (S, A, S), R_theta (S, A)) as numpy arrays."""
        theta = np.asarray(theta, dtype=np.float64)
        logits = self.nominal_logits.copy()
        logits[tuple(self.logit_index.T)] = theta[:self.n_logit_params]
        rewards = self.nominal_rewards.copy()
        rewards[tuple(self.reward_index.T)] = theta[self.n_logit_params:]
        shifted = logits - logits.max(axis=2, keepdims=True)
        f = np.exp(shifted)
        return f / f.sum(axis=2, keepdims=True), rewards

    def simulator_model_torch(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_theta, R_theta) as differentiable torch float64 tensors."""
        logits = torch.as_tensor(self.nominal_logits).index_put(
            tuple(torch.as_tensor(self.logit_index.T)), theta[:self.n_logit_params])
        rewards = torch.as_tensor(self.nominal_rewards).index_put(
            tuple(torch.as_tensor(self.reward_index.T)), theta[self.n_logit_params:])
        return torch.softmax(logits, dim=2), rewards

    def dynamics_jacobians(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(df/dtheta (S, A, S, D), dR/dtheta (S, A, D)) of the simulator at f = f_theta."""
        d_total = len(self.theta_names)
        df = np.zeros(f.shape + (d_total,))
        for k, (s, a, t) in enumerate(self.logit_index):
            df[s, a, :, k] = f[s, a, t] * ((np.arange(self.n_states) == t) - f[s, a])
        dr = np.zeros((self.n_states, self.n_actions, d_total))
        for k, (s, a) in enumerate(self.reward_index):
            dr[s, a, self.n_logit_params + k] = 1.0
        return df, dr

    def transition_scores(self, states, actions, next_states, f: np.ndarray) -> np.ndarray:
        """grad_theta log f_theta(s'|s, a) for arrays of transitions: (..., D), zero on rewards.
        d log f(s'|s,a) / d L[s,a,t] = [s' == t] - f(t|s,a)."""
        score = np.zeros(np.shape(states) + (len(self.theta_names),))
        for k, (ls, la, lt) in enumerate(self.logit_index):
            here = (states == ls) & (actions == la)
            score[..., k] = np.where(here, (next_states == lt) - f[ls, la, lt], 0.0)
        return score
