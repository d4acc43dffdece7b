"""``TabularProblem``: a finite real MDP and a softmax-parametrised simulator (the formulas are
in the package docstring)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...policies import tabular_softmax as policy
from ...problem import BilevelProblem, InnerResult, SensitivityTerms, Trajectories
from ...settings import override_settings
from ..common import SampleSizesFromInnerSettings
from .config import REAL_GRADIENT_ESTIMATORS, SOLVER_FIXED, InnerSettings, read_problem_file
from .estimators import (StatisticsPrefix, count_transitions, empirical_model, reward_sums, rng_from_content,
                         sampled_chain, sampled_visitation, top_up_pairs, transition_counts)
from .maths import discounted_visitation, evaluate_policy, logsumexp, optimal_return, residual_jacobian, rollout
from .simulator import SoftmaxSimulatorFamily
from .stepwise import TabularController, TabularRealSystem


class TabularProblem(SampleSizesFromInnerSettings, SoftmaxSimulatorFamily, BilevelProblem):
    """A finite MDP (real P, r) and a simulator f_theta = softmax(L), R_theta with masks."""

    kind = 'tabular'

    def __init__(self, *, gamma: float, initial_distribution: np.ndarray, real_transitions: np.ndarray,
                 real_rewards: np.ndarray, transition_logits: np.ndarray, learn_transition_logits: np.ndarray,
                 rewards: np.ndarray, learn_rewards: np.ndarray, inner: Optional[InnerSettings] = None,
                 real_horizon: int = 50, logit_bound: float = 10.0, reward_bound: float = 10.0,
                 outer_defaults: Optional[dict] = None, real_gradient_estimator: str = 'critic',
                 critic_prior_transitions: float = 1.0, critic_optimism: float = 0.0,
                 source: str = '<tabular>'):
        self.gamma = float(gamma)
        self.initial_distribution = np.asarray(initial_distribution, dtype=np.float64)
        self.real_transitions = np.asarray(real_transitions, dtype=np.float64)
        self.real_rewards = np.asarray(real_rewards, dtype=np.float64)
        self.nominal_logits = np.asarray(transition_logits, dtype=np.float64)
        self.nominal_rewards = np.asarray(rewards, dtype=np.float64)
        self.learn_logits = np.asarray(learn_transition_logits, dtype=bool)
        self.learn_rewards = np.asarray(learn_rewards, dtype=bool)
        self.inner = inner or InnerSettings()
        self.temperature = float(self.inner.temperature)
        self.real_horizon = int(real_horizon)
        self.logit_bound = float(logit_bound)
        self.reward_bound = float(reward_bound)
        self.outer_defaults = dict(outer_defaults or {})
        self.source = source
        self.n_states, self.n_actions = self.real_rewards.shape
        self.logit_index = np.argwhere(self.learn_logits)           # (D_L, 3), row-major
        self.reward_index = np.argwhere(self.learn_rewards)         # (D_R, 2)
        self.n_logit_params = len(self.logit_index)
        self.theta_names = ([f'L[{s}][{a}][{t}]' for s, a, t in self.logit_index]
                            + [f'R[{s}][{a}]' for s, a in self.reward_index])
        self._nominal_model = self.simulator_model(self.theta0())
        if real_gradient_estimator not in REAL_GRADIENT_ESTIMATORS:
            raise ValueError(f'real_gradient_estimator {real_gradient_estimator!r}: expected one of '
                             f'{REAL_GRADIENT_ESTIMATORS}')
        self.real_gradient_estimator = real_gradient_estimator
        self.critic_prior_transitions = float(critic_prior_transitions)
        self.critic_optimism = float(critic_optimism)
        if not (np.isfinite(self.critic_optimism) and self.critic_optimism >= 0):
            raise ValueError(f'critic_optimism {critic_optimism!r}: expected a finite number >= 0')

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str) -> 'TabularProblem':
        """Validate a loaded problem file (see the package docstring) and build the problem."""
        return cls(**read_problem_file(data, source))

    # --- the policy (the simulator family is ``SoftmaxSimulatorFamily``) ---------------------------
    def phi_size(self) -> int:
        return policy.parameter_count(self.n_states, self.n_actions)

    # --- inner level ------------------------------------------------------------------------------
    def policy_table(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pi, log pi) tables (S, A) of the reduced softmax policy."""
        log_pi = policy.log_probabilities_np(phi, self.n_states, self.n_actions)
        return np.exp(log_pi), log_pi

    def inner_solve(self, theta: np.ndarray, phi_init: Optional[np.ndarray] = None, *,
                    method: str = 'exact', rng: Optional[np.random.Generator] = None,
                    **options) -> InnerResult:
        """phi*(theta).  'exact': soft value iteration (warm-started from the soft value of
        pi_{phi_init}).  'sampled': natural actor-critic on simulated episodes, see
        ``_sampled_inner_solve``.  ``options`` override ``InnerSettings`` fields."""
        settings = override_settings(self.inner, options, source=self.source, fixed=SOLVER_FIXED)
        if method == 'exact':
            return self._exact_inner_solve(np.asarray(theta, dtype=np.float64), phi_init, settings)
        if method == 'sampled':
            return self._sampled_inner_solve(np.asarray(theta, dtype=np.float64), phi_init, settings,
                                             rng if rng is not None else np.random.default_rng(0))
        raise ValueError(f"inner_solve: method {method!r}: expected 'exact' or 'sampled'")

    def _exact_inner_solve(self, theta, phi_init, settings: InnerSettings) -> InnerResult:
        f, rewards = self.simulator_model(theta)
        tau = self.temperature
        if phi_init is None:
            value = np.zeros(self.n_states)
        else:
            pi, log_pi = self.policy_table(phi_init)
            _, value = evaluate_policy(pi, log_pi, f, rewards, self.gamma, tau)
        residual = np.inf
        iterations = 0
        while iterations < settings.max_iterations:
            q = rewards + self.gamma * f @ value
            new_value = tau * logsumexp(q / tau)
            residual = float(np.abs(new_value - value).max())
            value = new_value
            iterations += 1
            if residual <= settings.tolerance * max(1.0, float(np.abs(value).max())):
                break
        q = rewards + self.gamma * f @ value
        phi = policy.phi_from_action_values(q, tau)
        return InnerResult(phi=phi, grad_norm=float(np.linalg.norm(self.residual(phi, theta))),
                           iterations=iterations, info={'bellman_residual': residual})

    def _sampled_inner_solve(self, theta, phi_init, settings: InnerSettings,
                             rng: np.random.Generator) -> InnerResult:
        """Natural actor-critic in the simulator.

        Each iteration simulates ``sampled_episodes`` episodes with the current policy and adds
        their transitions to a tabular critic (transition counts; all of them stay valid while
        theta is fixed, whatever policy collected them, because they sample f_theta).  The critic
        gives Q_hat, V_hat and the soft advantage A_hat of the current policy; the actor takes the
        natural policy-gradient step phi[s, b] += eta (A_hat(s, b) - A_hat(s, A-1)), the
        Fisher-preconditioned SPG direction of the reduced softmax, with eta = sampled_step / tau
        (eta = 1 / tau is soft policy iteration).  Stops when ||F|| (exact or estimated, see
        ``sampled_stop``) is below ``sampled_tolerance``.
        """
        f, rewards = self.simulator_model(theta)
        phi = (np.zeros(self.phi_size()) if phi_init is None
               else np.asarray(phi_init, dtype=np.float64).copy())
        counts = np.zeros((self.n_states, self.n_actions, self.n_states))
        step = settings.sampled_step / self.temperature
        grad_norm = estimated = np.inf
        iterations = 0
        while iterations < settings.sampled_max_iterations:
            batch = self.simulate(phi, theta, settings.sampled_episodes, settings.sampled_horizon, rng,
                                  with_scores=False)
            counts += transition_counts(batch, self.n_states, self.n_actions)
            extra = top_up_pairs(counts.sum(axis=2).ravel(), f, settings.sensitivity_min_pair_samples, rng)
            counts += count_transitions(*extra, self.n_states, self.n_actions)
            pi, log_pi = self.policy_table(phi)
            model = empirical_model(counts, fallback=np.full_like(f, 1.0 / self.n_states))
            q_hat, v_hat = evaluate_policy(pi, log_pi, model, rewards, self.gamma, self.temperature)
            advantage = q_hat - self.temperature * log_pi - v_hat[:, None]
            visitation = sampled_visitation(batch.states[:, :-1], self.gamma, self.n_states)
            estimated = float(np.linalg.norm((visitation[:, None] * pi * advantage)[:, :-1]))
            grad_norm = float(np.linalg.norm(self.residual(phi, theta)))
            if (grad_norm if settings.sampled_stop == 'exact' else estimated) < settings.sampled_tolerance:
                break
            phi = phi + step * (advantage[:, :-1] - advantage[:, -1:]).reshape(-1)
            iterations += 1
        grad_norm = float(np.linalg.norm(self.residual(phi, theta)))
        watched = grad_norm if settings.sampled_stop == 'exact' else estimated
        return InnerResult(phi=phi, grad_norm=grad_norm, iterations=iterations,
                           info={'estimated_grad_norm': estimated, 'sim_transitions': int(counts.sum()),
                                 'converged': watched < settings.sampled_tolerance})

    def residual(self, phi: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """F(phi, theta) = grad_phi J_sim in numpy (the same value as ``inner_gradient``)."""
        f, rewards = self.simulator_model(theta)
        pi, log_pi = self.policy_table(phi)
        q, v = evaluate_policy(pi, log_pi, f, rewards, self.gamma, self.temperature)
        d = discounted_visitation(pi, f, self.initial_distribution, self.gamma)
        return (d[:, None] * pi * (q - self.temperature * log_pi - v[:, None]))[:, :-1].reshape(-1)

    def sim_objective(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """J_sim(phi, theta): the entropy-regularised in-sim return from the initial distribution."""
        f, rewards = self.simulator_model_torch(theta)
        value, _ = self._torch_values(phi, f, rewards, self.temperature)
        return torch.dot(self._torch_rho0(), value)

    def inner_gradient(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """F(phi, theta) = grad_phi J_sim by the entropy-regularised policy-gradient theorem:
        F[s, b] = d(s) pi(b|s) (Q(s,b) - tau log pi(b|s) - V(s)), a pure torch function."""
        f, rewards = self.simulator_model_torch(theta)
        value, transition = self._torch_values(phi, f, rewards, self.temperature)
        log_pi = policy.log_probabilities(phi, self.n_states, self.n_actions)
        q = rewards + self.gamma * f @ value
        visitation = torch.linalg.solve((torch.eye(self.n_states, dtype=torch.float64)
                                         - self.gamma * transition).T, self._torch_rho0())
        advantage = q - self.temperature * log_pi - value[:, None]
        return (visitation[:, None] * log_pi.exp() * advantage)[:, :-1].reshape(-1)

    def _torch_rho0(self) -> torch.Tensor:
        return torch.as_tensor(self.initial_distribution)

    def _torch_values(self, phi, f, rewards, temperature):
        """V^pi (entropy-regularised with ``temperature``) and P_pi, in torch."""
        log_pi = policy.log_probabilities(phi, self.n_states, self.n_actions)
        pi = log_pi.exp()
        transition = torch.einsum('sa,sat->st', pi, f)
        reward = (pi * (rewards - temperature * log_pi)).sum(dim=1)
        value = torch.linalg.solve(torch.eye(self.n_states, dtype=torch.float64) - self.gamma * transition,
                                   reward)
        return value, transition

    # --- simulation -------------------------------------------------------------------------------
    def simulate(self, phi: np.ndarray, theta: np.ndarray, n_episodes: int, horizon: int,
                 rng: np.random.Generator, with_scores: bool = True) -> Trajectories:
        """Roll out pi_phi in f_theta from the initial distribution; rewards are R_theta(s, a);
        score_theta[i, t] = grad_theta log f_theta(s_{t+1}|s_t, a_t) (zero on reward entries)."""
        f, rewards = self.simulator_model(theta)
        pi, log_pi = self.policy_table(phi)
        states, actions = rollout(pi, f, self.initial_distribution, n_episodes, horizon, rng)
        score = None
        if with_scores:
            score = self.transition_scores(states[:, :-1], actions, states[:, 1:], f)
        return Trajectories(states=states, actions=actions, rewards=rewards[states[:, :-1], actions],
                            dones=np.zeros((n_episodes, horizon), dtype=bool),
                            log_probs=log_pi[states[:, :-1], actions], source='sim', score_theta=score)

    def critic_transitions(self, batch: Trajectories, f: np.ndarray, minimum: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Flat (s, a, s', score_theta) of a simulated batch, topped up so that every
        state-action pair has at least ``minimum`` transitions: the missing ones are drawn
        by resetting the simulator to (s, a) and stepping once.  Critic data may come from any
        behaviour (transitions sample f_theta(.|s, a) whatever chose a); the top-up keeps rarely
        chosen actions from starving the critic of a near-deterministic policy."""
        states, actions = batch.states[:, :-1].ravel(), batch.actions.ravel()
        next_states = batch.states[:, 1:].ravel()
        scores = (batch.score_theta.reshape(-1, len(self.theta_names)) if batch.score_theta is not None
                  else self.transition_scores(states, actions, next_states, f))
        pair_counts = np.bincount(states * self.n_actions + actions, minlength=self.n_states * self.n_actions)
        extra_s, extra_a, extra_next = top_up_pairs(pair_counts, f, minimum, rng)
        if extra_s.size:
            states = np.concatenate([states, extra_s])
            actions = np.concatenate([actions, extra_a])
            next_states = np.concatenate([next_states, extra_next])
            scores = np.concatenate([scores, self.transition_scores(extra_s, extra_a, extra_next, f)])
        return states, actions, next_states, scores

    # --- sensitivities ----------------------------------------------------------------------------
    def sensitivity_terms(self, phi: np.ndarray, theta: np.ndarray, *, method: str = 'exact',
                          trajectories: Optional[Trajectories] = None,
                          rng: Optional[np.random.Generator] = None) -> SensitivityTerms:
        """hessian = dF/dphi (P x P) and mixed = dF/dtheta (P x D) at (phi, theta).

        'sampled' uses ``trajectories`` (from ``simulate`` with pi_phi in f_theta); without them it
        simulates ``inner.sensitivity_episodes`` x ``inner.sensitivity_horizon`` with ``rng``.
        """
        phi = np.asarray(phi, dtype=np.float64)
        theta = np.asarray(theta, dtype=np.float64)
        if method == 'exact':
            return self._exact_terms(phi, theta)
        if method == 'sampled':
            if trajectories is None:
                trajectories = self.simulate(phi, theta, self.default_sim_episodes, self.default_sim_horizon,
                                             rng if rng is not None else np.random.default_rng(0))
            if trajectories.score_theta is None:
                raise ValueError('sampled sensitivities need simulated trajectories with score_theta')
            return self._sampled_terms(phi, theta, trajectories,
                                       rng if rng is not None else rng_from_content(trajectories))
        raise ValueError(f"sensitivity_terms: method {method!r}: expected 'exact' or 'sampled'")

    def _exact_terms(self, phi, theta) -> SensitivityTerms:
        f, rewards = self.simulator_model(theta)
        pi, log_pi = self.policy_table(phi)
        tau, gamma = self.temperature, self.gamma
        q, v = evaluate_policy(pi, log_pi, f, rewards, gamma, tau)
        transition = np.einsum('sa,sat->st', pi, f)
        resolvent = np.linalg.inv(np.eye(self.n_states) - gamma * transition)
        visitation = self.initial_distribution @ resolvent
        df, dr = self.dynamics_jacobians(f)
        score_phi = policy.score_matrix(pi)
        # Markov-chain sensitivities: d(d)^T = gamma d^T dP_pi (I - gamma P_pi)^{-1}
        d_transition_phi = np.einsum('sa,sak,sat->stk', pi, score_phi, f)
        d_transition_theta = np.einsum('sa,satk->stk', pi, df)
        chain_phi = gamma * np.einsum('s,stk,tu->uk', visitation, d_transition_phi, resolvent)
        chain_theta = gamma * np.einsum('s,stk,tu->uk', visitation, d_transition_theta, resolvent)
        hessian, mixed = self._linearisation(pi, log_pi, f, q, v, visitation, chain_phi, chain_theta, dr,
                                             dynamics_term=np.einsum('satk,t->sak', df, v))
        return SensitivityTerms(hessian=hessian, mixed=mixed, info={'method': 'exact'})

    def _linearisation(self, pi, log_pi, model, q, v, visitation, chain_phi, chain_theta, d_rewards,
                       dynamics_term) -> tuple[np.ndarray, np.ndarray]:
        """(dF/dphi, dF/dtheta) from the critic (model, Q, V), the visitation and its
        sensitivities; phi moves only the policy, theta only the model and rewards."""
        common = dict(pi=pi, log_pi=log_pi, model=model, q=q, v=v, visitation=visitation,
                      gamma=self.gamma, temperature=self.temperature)
        phi_size, theta_size = chain_phi.shape[1], chain_theta.shape[1]
        hessian = residual_jacobian(**common, chain=chain_phi, score=policy.score_matrix(pi),
                                    d_rewards=np.zeros(pi.shape + (phi_size,)),
                                    dynamics_term=np.zeros(pi.shape + (phi_size,)))
        mixed = residual_jacobian(**common, chain=chain_theta, score=np.zeros(pi.shape + (theta_size,)),
                                  d_rewards=d_rewards, dynamics_term=dynamics_term)
        return hessian, mixed

    def _sampled_terms(self, phi, theta, batch: Trajectories, rng: np.random.Generator) -> SensitivityTerms:
        """Every piece of the linearisation estimated from simulated trajectories.

        Critic: transition counts give the tabular (certainty-equivalence / tabular LSTD) model
        P_hat; Q_hat, V_hat, A_hat solve the soft Bellman equations of pi_phi under P_hat with the
        simulator's known reward table.  Critic sensitivities: the recursion of the package
        docstring under P_hat, with [df V](s, a) estimated by the sample covariance of
        grad_theta log f(s'|s,a) and V_hat(s') over the transitions leaving (s, a) (the score has
        mean zero, so subtracting the mean of V_hat is a free control variate).  Visitation and
        Markov-chain sensitivities: discounted sums over the trajectories, the latter weighted by
        the accumulated scores W_k of theta (dynamics) and of phi (actions), as in Theorem 1 /
        Lemma 1 of the paper.  The within-state terms use all actions of pi (expected-gradient
        form), which removes action-sampling noise.
        """
        f, rewards = self.simulator_model(theta)
        pi, log_pi = self.policy_table(phi)
        tau, gamma = self.temperature, self.gamma
        flat_s, flat_a, flat_next, flat_scores = self.critic_transitions(
            batch, f, self.inner.sensitivity_min_pair_samples, rng)
        counts = count_transitions(flat_s, flat_a, flat_next, self.n_states, self.n_actions)
        model = empirical_model(counts, fallback=np.full_like(f, 1.0 / self.n_states))
        q, v = evaluate_policy(pi, log_pi, model, rewards, gamma, tau)
        states, actions = batch.states[:, :-1], batch.actions
        score_phi = policy.score_matrix(pi)
        visitation = sampled_visitation(states, gamma, self.n_states)
        chain_phi = sampled_chain(states, score_phi[states, actions], gamma, self.n_states)
        chain_theta = sampled_chain(states, batch.score_theta, gamma, self.n_states)
        # [df V](s, a) ~ Cov(score_theta, V_hat(s')) over the transitions leaving (s, a)
        n_pairs = self.n_states * self.n_actions
        pair = flat_s * self.n_actions + flat_a
        pair_counts = np.bincount(pair, minlength=n_pairs)
        next_value = v[flat_next]
        mean_next_value = np.bincount(pair, weights=next_value, minlength=n_pairs) / np.maximum(pair_counts, 1)
        dynamics_term = np.zeros((n_pairs, theta.size))
        np.add.at(dynamics_term, pair, (next_value - mean_next_value[pair])[:, None] * flat_scores)
        dynamics_term = (dynamics_term / np.maximum(pair_counts, 1)[:, None]).reshape(
            self.n_states, self.n_actions, theta.size)
        _, dr = self.dynamics_jacobians(f)
        hessian, mixed = self._linearisation(pi, log_pi, model, q, v, visitation, chain_phi, chain_theta, dr,
                                             dynamics_term)
        estimated_residual = (visitation[:, None] * pi * (q - tau * log_pi - v[:, None]))[:, :-1].reshape(-1)
        return SensitivityTerms(hessian=hessian, mixed=mixed, info={
            'method': 'sampled', 'sim_transitions': batch.n_transitions,
            'unvisited_pairs': int((pair_counts == 0).sum()),
            'estimated_grad_norm': float(np.linalg.norm(estimated_residual))})

    # --- real system ------------------------------------------------------------------------------
    def sample_real(self, phi: np.ndarray, n_episodes: int, rng: np.random.Generator) -> Trajectories:
        """``n_episodes`` episodes of ``real.horizon`` steps of pi_phi on the real MDP."""
        pi, log_pi = self.policy_table(phi)
        states, actions = rollout(pi, self.real_transitions, self.initial_distribution, n_episodes,
                                  self.real_horizon, rng)
        return Trajectories(states=states, actions=actions, rewards=self.real_rewards[states[:, :-1], actions],
                            dones=np.zeros(actions.shape, dtype=bool),
                            log_probs=log_pi[states[:, :-1], actions], source='real')

    def trajectory_sizes(self) -> dict:
        return {'n_states': self.n_states, 'n_actions': self.n_actions}

    def real_system(self, rng: np.random.Generator) -> TabularRealSystem:
        """The real MDP one step at a time (``stepwise.TabularRealSystem``)."""
        return TabularRealSystem(self, rng)

    def controller(self, phi: np.ndarray, rng: np.random.Generator) -> TabularController:
        """pi_phi one step at a time (``stepwise.TabularController``)."""
        return TabularController(self, phi, rng)

    def real_policy_gradient(self, phi: np.ndarray, batches: list[Trajectories],
                             theta: Optional[np.ndarray] = None) -> np.ndarray:
        """g ~ grad_phi J_real(phi) (unregularised return) from real episodes.

        Both estimators use a tabular critic: the model P_hat(s'|s,a), r_hat(s,a) of transition
        counts and mean rewards per state-action pair, from ALL batches given (valid off-policy:
        what a transition samples does not depend on the policy that chose a), with the nominal
        simulator (f_theta0, R_theta0) as a prior worth ``real_gradient.prior_transitions``
        transitions per pair; Q_hat, V_hat of pi_phi are then solved exactly under that model
        (tabular LSTD-Q with a prior).  The prior keeps a few unlucky early transitions of a
        rarely tried action from being taken at face value -- without it, the policy can turn
        away from that action before its data is corrected, and then never tries it again
        (config/discrete_3s2a.yaml with its outer defaults, 40 seeds: 10 stuck below 0.9
        normalised return with prior 0, none with prior 1); its weight vanishes as data
        accumulates.  With prior 0, never-tried pairs get Q_hat = V_hat.

        'critic' (default): the all-actions actor-critic gradient over the NEWEST batch's
        (on-policy) visited states,
            g[s, b] = d_hat(s) pi(b|s) (Q_hat(s, b) - V_hat(s)),
            d_hat(s) = mean over episodes of sum_k gamma^k [s_k = s]      (k < horizon H).
        Lowest variance; biased by the plug-in critic (O(prior / transitions)) and by the
        truncation (visitation mass gamma^H / (1 - gamma) missing).  Its critic is optimistic
        where a pair's data is thin (``real_gradient.optimism``, ``critic_from_statistics``): an
        action the policy turned away from on a few unlucky transitions keeps a positive
        advantage until its data says otherwise (generated problems 20 and 29 locked in without).

        'doubly_robust': per episode of the newest batch,
            g = mean_i sum_k gamma^k [ sum_a pi(a|s_k) grad log pi(a|s_k) Q_hat(s_k, a)
                                       + grad log pi(a_k|s_k) sum_{j>=k} gamma^{j-k} delta_j ],
            delta_j = r_j + gamma V_hat(s_{j+1}) - Q_hat(s_j, a_j)  (zero mean if Q_hat is exact),
        with cross-fitting: episodes are split into up to 5 folds, each corrected with a critic
        that never saw it (older batches + the other folds).  Unbiased for the H-step objective
        with a V_hat bootstrap at H, whatever the critic; more variance than 'critic' (same
        config, 40 seeds: median 140 vs 80 real transitions to 0.95; unbiased in expectation,
        yet 2 seeds still locked onto the wrong action, whose rare samples come too late).
        """
        if not batches:
            raise ValueError('real_policy_gradient needs at least one batch of real episodes')
        pi, _ = self.policy_table(phi)
        newest = batches[-1]
        states, actions, rewards = newest.states[:, :-1], newest.actions, newest.rewards
        if self.real_gradient_estimator == 'critic':
            q, v = self.critic_from_statistics(pi, *self.real_statistics(batches), optimism=self.critic_optimism)
            visitation = sampled_visitation(states, self.gamma, self.n_states)
            return (visitation[:, None] * pi * (q - v[:, None]))[:, :-1].reshape(-1)
        older_counts, older_rewards = self.real_statistics(batches[:-1])
        n_episodes, horizon = actions.shape
        folds = np.arange(n_episodes) % min(n_episodes, 5)
        new_counts, new_rewards = self.real_statistics([newest])
        score = policy.score_matrix(pi)
        discount = self.gamma ** np.arange(horizon)
        gradient = np.zeros(self.phi_size())
        for fold in np.unique(folds):
            mine = folds == fold
            fold_counts = count_transitions(newest.states[mine, :-1], actions[mine], newest.states[mine, 1:],
                                            self.n_states, self.n_actions)
            fold_rewards = reward_sums(states[mine], actions[mine], rewards[mine], self.n_states, self.n_actions)
            q, v = self.critic_from_statistics(pi, older_counts + new_counts - fold_counts,
                                               older_rewards + new_rewards - fold_rewards)
            # model errors delta_j = r_j + gamma V_hat(s_{j+1}) - Q_hat(s_j, a_j); their discounted
            # sum from k on is an unbiased estimate of Q(s_k, a_k) - Q_hat(s_k, a_k)
            delta = (rewards[mine] + self.gamma * v[newest.states[mine, 1:]]
                     - q[states[mine], actions[mine]])
            error_to_go = np.zeros_like(delta)
            running = np.zeros(int(mine.sum()))
            for t in range(horizon - 1, -1, -1):
                running = delta[:, t] + self.gamma * running
                error_to_go[:, t] = running
            expected = np.einsum('sa,sak,sa->sk', pi, score, q)[states[mine]]          # (n_f, T, P)
            correction = score[states[mine], actions[mine]] * error_to_go[..., None]
            gradient += np.einsum('t,ntk->k', discount, expected + correction)
        return gradient / n_episodes

    def real_statistics(self, batches: list[Trajectories]) -> tuple[np.ndarray, np.ndarray]:
        """(transition counts (S, A, S), reward sums (S, A)) of real batches, summed batch by
        batch from the first.  The running sums after each batch are kept (``StatisticsPrefix``,
        per first batch), so an outer loop that keeps all its real data and appends one batch per
        iteration pays for the new batch only -- with the same additions in the same order as a
        sum from scratch, so the result is bit-identical to it (and to a resumed run's)."""
        if not batches:
            return (np.zeros((self.n_states, self.n_actions, self.n_states)),
                    np.zeros((self.n_states, self.n_actions)))
        caches = self.__dict__.setdefault('_statistics_prefixes', {})
        cache = caches.pop(id(batches[0]), None)      # re-inserted last: least recently used first out
        if cache is None or cache.batches[0] is not batches[0]:
            cache = StatisticsPrefix(self.n_states, self.n_actions)
        caches[id(batches[0])] = cache
        while len(caches) > 4:                         # the loop's lists start at <= 2 batches at a time
            caches.pop(next(iter(caches)))
        return cache.sums(batches)

    def predict_improvement(self, phi, baseline_phi, batches: list[Trajectories], confidence: float):
        """Safe improvement's check before deployment: J(phi) - J(baseline) from the real data
        (``prediction.py``)."""
        from .prediction import predict_improvement
        return predict_improvement(self, phi, baseline_phi, batches, confidence)

    def real_critic(self, pi: np.ndarray, batches: list[Trajectories]) -> tuple[np.ndarray, np.ndarray]:
        """Q_hat, V_hat of the policy table ``pi`` under the tabular model of the real batches."""
        return self.critic_from_statistics(pi, *self.real_statistics(batches))

    def critic_from_statistics(self, pi: np.ndarray, counts: np.ndarray, reward_sums: np.ndarray,
                               optimism: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Q_hat, V_hat of ``pi`` (unregularised) under the model of the counts: P_hat = row-
        normalised counts, r_hat = mean reward.  Untried pairs get Q_hat = V_hat (the policy is
        evaluated restricted to tried actions); states never left keep the mean observed reward
        / (1 - gamma) (0 without data).

        ``optimism`` = kappa > 0 makes the critic optimistic where the data is thin (model-based
        interval estimation with an exploration bonus): each tried pair's reward gets
            b(s, a) = kappa gamma ( sqrt(Var_{P_hat(.|s,a)} V_hat / n) + (max V_hat - min V_hat) / n ),
        n = its transitions (prior included), an empirical-Bernstein bound on the error of
        gamma P_hat V_hat from n samples, and Q_hat, V_hat are solved again with it (so the bonus
        reaches the states that lead to thin pairs).  It vanishes as 1/sqrt(n) where transitions
        vary and as 1/n where they are deterministic, so well-visited pairs keep their estimate."""
        if self.critic_prior_transitions > 0:
            counts = counts + self.critic_prior_transitions * self._nominal_model[0]
            reward_sums = reward_sums + self.critic_prior_transitions * self._nominal_model[1]
        pair_counts = counts.sum(axis=2)
        tried = pair_counts > 0
        mean_rewards = np.where(tried, reward_sums / np.where(tried, pair_counts, 1), 0.0)
        weights = np.where(tried, pi, 0.0)
        known_state = weights.sum(axis=1) > 0
        weights[known_state] /= weights[known_state].sum(axis=1, keepdims=True)
        model = np.where(tried[..., None], counts / np.where(tried, pair_counts, 1)[..., None], 0.0)
        mean_reward = float(reward_sums.sum() / pair_counts.sum()) if pair_counts.sum() > 0 else 0.0
        transition = np.einsum('sa,sat->st', weights, model)
        transition[~known_state] = np.eye(self.n_states)[~known_state]   # unknown state: constant value

        def solve(pair_rewards):
            reward = np.where(known_state, (weights * pair_rewards).sum(axis=1), mean_reward)
            v = np.linalg.solve(np.eye(self.n_states) - self.gamma * transition, reward)
            return np.where(tried, pair_rewards + self.gamma * model @ v, v[:, None]), v

        q, v = solve(mean_rewards)
        if optimism > 0:
            n = np.where(tried, pair_counts, 1.0)
            spread = model @ v ** 2 - (model @ v) ** 2
            bonus = optimism * self.gamma * (np.sqrt(np.maximum(spread, 0.0) / n) + (v.max() - v.min()) / n)
            q, v = solve(mean_rewards + np.where(tried, bonus, 0.0))
        return q, v

    def real_objective(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact unregularised real return of pi_phi from the initial distribution."""
        value, _ = self._torch_values(phi, torch.as_tensor(self.real_transitions),
                                      torch.as_tensor(self.real_rewards), 0.0)
        return torch.dot(self._torch_rho0(), value)

    def real_return_range(self) -> tuple[float, float]:
        """(J_min, J*) over deterministic policies of the real MDP, from the initial distribution
        (exact: policy iteration maximising r and maximising -r)."""
        if getattr(self, '_return_range', None) is None:
            best = optimal_return(self.real_transitions, self.real_rewards, self.gamma, self.initial_distribution)
            worst = -optimal_return(self.real_transitions, -self.real_rewards, self.gamma,
                                    self.initial_distribution)
            self._return_range = (worst, best)
        return self._return_range

    def normalized_return(self, phi: np.ndarray) -> float:
        """(J(pi_phi) - J_min) / (J* - J_min) on the real MDP (1 = optimal, 0 = worst)."""
        worst, best = self.real_return_range()
        pi, log_pi = self.policy_table(phi)
        _, value = evaluate_policy(pi, log_pi, self.real_transitions, self.real_rewards, self.gamma, 0.0)
        if best - worst <= 1e-12 * max(1.0, abs(best)):
            return 1.0          # every policy is optimal
        return float((self.initial_distribution @ value - worst) / (best - worst))

    # --- baselines --------------------------------------------------------------------------------
    def system_identification(self, batches: list[Trajectories], theta_init: np.ndarray) -> np.ndarray:
        """Maximum likelihood of the learnable logits on the real transition counts (bounded,
        L-BFGS-B; the log-likelihood is concave per row).  Reward entries keep theta_init."""
        from scipy.optimize import minimize

        theta_init = np.asarray(theta_init, dtype=np.float64)
        if self.n_logit_params == 0:
            return theta_init.copy()
        counts = sum(transition_counts(b, self.n_states, self.n_actions) for b in batches)
        lower, upper = self.theta_bounds()

        def negative_log_likelihood(logit_params):
            theta = np.concatenate([logit_params, theta_init[self.n_logit_params:]])
            f, _ = self.simulator_model(theta)
            log_f = np.log(f)
            value = -float((counts * log_f).sum())
            # d/dL[s,a,t] of sum counts log f = counts[s,a,t] - n_sa f[s,a,t]
            expected = counts.sum(axis=2, keepdims=True) * f
            gradient = -(counts - expected)[tuple(self.logit_index.T)]
            return value, gradient

        start = np.clip(theta_init[:self.n_logit_params], lower[:self.n_logit_params],
                        upper[:self.n_logit_params])
        result = minimize(negative_log_likelihood, start, jac=True, method='L-BFGS-B',
                          bounds=list(zip(lower[:self.n_logit_params], upper[:self.n_logit_params])),
                          options={'maxiter': 1000, 'ftol': 1e-15, 'gtol': 1e-10})
        return np.concatenate([result.x, theta_init[self.n_logit_params:]])
