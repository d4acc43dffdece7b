"""``LQRProblem``: a real linear Gaussian system and a simulator (A_hat, B_hat, Q_hat, R_hat)(theta)
(the formulas are in the package docstring)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ...policies import linear_gaussian as policy
from ...problem import BilevelProblem, InnerResult, SensitivityTerms, Trajectories, warm_torch_func
from ...settings import override_settings
from ..common import SampleSizesFromInnerSettings
from .config import InnerSettings, read_problem_file
from .estimators import (LSTDQ, accumulated_scores, block_diagonal, discounted_second_moment, flat_transitions,
                         mean_action_lift)
from .maths import (DTYPE, ClosedLoop, DiscountedLyapunov, UnstableClosedLoopError, closed_loop, discounted_radius,
                    discounted_radius_torch, discounted_riccati, psd_factor, sym, torch_cost, torch_gradient,
                    transposed)
from .simulator import SimulatorFamily


class LQRProblem(SampleSizesFromInnerSettings, BilevelProblem):
    """A real linear Gaussian system and a simulator (A_hat, B_hat, Q_hat, R_hat)(theta)."""

    kind = 'lqr'

    def __init__(self, *, gamma: float, real_a: np.ndarray, real_b: np.ndarray, real_noise: np.ndarray,
                 cost_q: np.ndarray, cost_r: np.ndarray, initial_mean: np.ndarray, initial_covariance: np.ndarray,
                 std: float, family: SimulatorFamily, sim_noise: np.ndarray, real_horizon: int = 50,
                 inner: Optional[InnerSettings] = None, outer_defaults: Optional[dict] = None,
                 source: str = '<lqr>'):
        self.gamma = float(gamma)
        self.real_a, self.real_b = np.asarray(real_a, float), np.asarray(real_b, float)
        self.real_noise = np.asarray(real_noise, float)
        self.cost_q, self.cost_r = np.asarray(cost_q, float), np.asarray(cost_r, float)
        self.initial_mean = np.asarray(initial_mean, float)
        self.initial_covariance = np.asarray(initial_covariance, float)
        self.initial_moment = self.initial_covariance + np.outer(self.initial_mean, self.initial_mean)
        self.std = float(std)
        self.family = family
        self.sim_noise = np.asarray(sim_noise, float)
        self.sim_noise_inverse = np.linalg.inv(self.sim_noise)
        self.real_horizon = int(real_horizon)
        self.inner = inner or InnerSettings()
        self.outer_defaults = dict(outer_defaults or {})
        self.source = source
        self.n_states, self.n_inputs = self.real_b.shape
        self.theta_names = list(family.names)
        self._initial_factor = psd_factor(self.initial_covariance)
        self._real_noise_factor = psd_factor(self.real_noise)
        self._sim_noise_factor = psd_factor(self.sim_noise)
        self._real_optimum: Optional[tuple[np.ndarray, float]] = None

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str) -> 'LQRProblem':
        """Validate a loaded problem file (see the package docstring) and build the problem."""
        return cls(**read_problem_file(data, source))

    # --- the simulator family ---------------------------------------------------------------------
    def theta0(self) -> np.ndarray:
        return self.family.nominal.copy()

    def theta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.family.lower.copy(), self.family.upper.copy()

    def warm_up(self) -> None:
        warm_torch_func()                  # the exact sensitivity's Jacobians (jacfwd)

    def theta_groups(self) -> dict[str, np.ndarray]:
        return {'dynamics': self.family.group('AB'), 'reward': self.family.group('QR')}

    def theta_coordinates(self) -> list[str]:
        """Per theta entry: 'linear' (A, B entries), 'log' (cost diagonals), 'correlation'."""
        return list(self.family.kinds)

    def phi_size(self) -> int:
        return policy.parameter_count(self.n_states, self.n_inputs)

    def gain(self, phi) -> np.ndarray:
        return policy.gain(np.asarray(phi, dtype=np.float64), self.n_states, self.n_inputs)

    def simulator_matrices(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A_hat, B_hat, Q_hat, R_hat) at theta (numpy)."""
        return self.family.matrices(np.asarray(theta, dtype=np.float64))

    def sim_closed_loop(self, phi: np.ndarray, theta: np.ndarray) -> ClosedLoop:
        a, b, q, r = self.simulator_matrices(theta)
        return closed_loop(a, b, q, r, self.sim_noise, self.gain(phi), self.gamma, self.std, self.initial_moment,
                           what=f'simulator at theta = {np.asarray(theta).tolist()}')

    def real_closed_loop(self, phi: np.ndarray) -> ClosedLoop:
        return closed_loop(self.real_a, self.real_b, self.cost_q, self.cost_r, self.real_noise, self.gain(phi),
                           self.gamma, self.std, self.initial_moment, what='real system')

    def cost_of(self, loop: ClosedLoop) -> float:
        """Discounted expected cost (= -J) of a closed loop, noise terms included."""
        return float(np.sum((loop.q + loop.k.T @ loop.r @ loop.k) * loop.s)
                     + self.std ** 2 * np.trace(loop.r) / (1.0 - self.gamma))

    # --- inner level ------------------------------------------------------------------------------
    def inner_solve(self, theta: np.ndarray, phi_init: Optional[np.ndarray] = None, *,
                    method: str = 'exact', rng: Optional[np.random.Generator] = None,
                    **options) -> InnerResult:
        """'exact': discounted Riccati.  'sampled': actor-critic in the simulator (see
        ``_sampled_inner_solve``); ``options`` override ``InnerSettings`` fields."""
        theta = np.asarray(theta, dtype=np.float64)
        if method == 'exact':
            a, b, q, r = self.simulator_matrices(theta)
            k, _ = discounted_riccati(a, b, q, r, self.gamma)
            phi = policy.flatten_gain(k)
            return InnerResult(phi=phi, grad_norm=self._sim_gradient_norm(phi, theta), iterations=1,
                               info={'method': 'exact'})
        if method == 'sampled':
            settings = override_settings(self.inner, options, source=self.source)
            return self._sampled_inner_solve(theta, phi_init, settings, rng or np.random.default_rng())
        raise ValueError(f"inner_solve: method {method!r}: expected 'exact' or 'sampled'")

    def _sim_gradient_norm(self, phi, theta) -> float:
        return float(np.linalg.norm(self.sim_closed_loop(phi, theta).gradient))

    def _sampled_inner_solve(self, theta, phi_init, settings: InnerSettings, rng) -> InnerResult:
        """Actor-critic policy iteration on simulated episodes.

        Each iteration simulates ``sampled_episodes`` episodes with the current gain.  Even
        iterations' transitions feed the ACTOR's critic; odd iterations' alternate between two
        CHECK sets.  Each critic is an LSTD-Q fit of the current gain's Q-matrix on every
        transition of its set simulated at this theta so far (valid off-policy, so all sharpen
        as the solve goes on).  Stopping rule: ||F_hat|| + 2 noise <= ``sampled_tolerance``, with
        F_hat = -2 (H_uu K - H_ux) S_hat from the critic of both check sets and the mean discounted
        second moment of the last ``sampled_moment_window`` batches (one batch's S_hat is too
        noisy where S is ill-conditioned; near convergence K hardly moves), and noise = ||F_hat_1 - F_hat_2|| / 2 from the two
        check sets apart.  The gain is a function of the actor's data only, so the check is an
        honest estimate of ||F|| (a critic that also chose K would report F_hat ~ 0 right after
        every policy-improvement step).  Otherwise the actor takes the natural-gradient
        (Gauss-Newton) step K <- K - step H_uu^-1 (H_uu K - H_ux) with its own critic, halving
        the step while the new gain would destabilise the simulator.  Warm start: ``phi_init``
        when it stabilises the simulator at theta, else the simulator's Riccati gain
        (info['restarted'] = True).  ``grad_norm`` is the exact ||F|| at the returned gain (the
        model is known in simulation); info holds the stopping statistics.
        """
        a, b, _, _ = self.simulator_matrices(theta)
        restarted = False
        if phi_init is not None and discounted_radius(a - b @ self.gain(phi_init), self.gamma) < 1.0:
            phi = np.asarray(phi_init, dtype=np.float64).copy()
        else:
            phi, restarted = self.inner_solve(theta, method='exact').phi, phi_init is not None
        actor, check = [], ([], [])           # (x, u, x', cost) parts of the actor's and the check's data
        recent = []                           # discounted second moments of the batches so far
        estimated = noise = float('inf')
        iteration = 0
        for iteration in range(1, settings.sampled_max_iterations + 1):
            batch = self.simulate(phi, theta, settings.sampled_episodes, settings.sampled_horizon, rng,
                                  with_scores=False)
            (actor if iteration % 2 == 0 else check[(iteration // 2) % 2]).append(flat_transitions(batch))
            if iteration < 3:
                recent.append(discounted_second_moment(batch.states, self.gamma))
                continue                      # every data set needs a batch first
            k = self.gain(phi)
            recent.append(discounted_second_moment(batch.states, self.gamma))
            second_moment = np.mean(recent[-settings.sampled_moment_window:], axis=0)
            checks = [-2.0 * self._critic_error(k, parts)[1] @ second_moment
                      for parts in (check[0] + check[1], check[0], check[1])]
            estimated = float(np.linalg.norm(checks[0]))
            noise = float(np.linalg.norm(checks[1] - checks[2])) / 2
            if estimated + 2.0 * noise <= settings.sampled_tolerance:
                break
            h_uu, e = self._critic_error(k, actor)
            if np.linalg.eigvalsh(sym(h_uu)).min() <= 0:
                continue                      # critic not yet informative: gather more transitions
            step = settings.sampled_step
            direction = np.linalg.solve(h_uu, e)
            while step > 1e-6 and not discounted_radius(a - b @ (k - step * direction), self.gamma) < 1.0:
                step *= 0.5
            phi = policy.flatten_gain(k - step * direction)
        transitions = sum(len(part[3]) for part in actor + check[0] + check[1])
        return InnerResult(phi=phi, grad_norm=self._sim_gradient_norm(phi, theta), iterations=iteration,
                           info={'method': 'sampled', 'estimated_grad_norm': estimated, 'noise': noise,
                                 'restarted': restarted, 'sim_transitions': int(transitions)})

    def _critic_error(self, k: np.ndarray, parts: list) -> tuple[np.ndarray, np.ndarray]:
        """(H_uu, E = H_uu K - H_ux) of the LSTD-Q critic of pi_K on transition parts (x, u, x', cost)."""
        x, u, x_next, costs = (np.concatenate(column) for column in zip(*parts))
        h, _ = LSTDQ(x, u, x_next, k, self.std, self.gamma).solve(costs)
        n = self.n_states
        return h[n:, n:], h[n:, n:] @ k - h[n:, :n]

    def sim_objective(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """J_sim(phi, theta) = -(discounted expected in-sim cost), torch; raises when unstable."""
        a, b, q, r = self.family.matrices_torch(theta)
        k = policy.gain(phi, self.n_states, self.n_inputs)
        self._require_stable(a, b, k, 'simulator')
        return -torch_cost(a, b, q, r, torch.as_tensor(self.sim_noise), k, self.gamma, self.std,
                            torch.as_tensor(self.initial_moment))

    def inner_gradient(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Exact F(phi, theta) = grad_K J_sim (flattened row-major), a pure torch function of both
        (composes with torch.autograd and torch.func grad/jvp/jacrev; not with vmap, because of the
        stability check).  Raises ``UnstableClosedLoopError`` when K does not stabilise the simulator."""
        a, b, q, r = self.family.matrices_torch(theta)
        k = policy.gain(phi, self.n_states, self.n_inputs)
        self._require_stable(a, b, k, 'simulator')
        return torch_gradient(a, b, q, r, torch.as_tensor(self.sim_noise), k, self.gamma, self.std,
                               torch.as_tensor(self.initial_moment))

    def _require_stable(self, a, b, k, what: str) -> None:
        radius = discounted_radius_torch(a, b, k, self.gamma)
        if not radius < 1.0:
            raise UnstableClosedLoopError(
                f'{what}: the gain K = {k.detach().tolist()} does not stabilise the discounted system '
                f'(spectral radius of sqrt(gamma) (A - B K) is {radius:.6g} >= 1): its cost is infinite')

    def riccati_gain_derivative(self, theta: np.ndarray) -> np.ndarray:
        """dK*/dtheta (P x D) by differentiating the discounted Riccati equation at its solution
        (independent of the implicit-function route): at the optimum the dK terms of dP vanish
        (envelope), so
            dP = dQ + K'dRK + gamma ((dA - dB K)' P A_K + A_K' P (dA - dB K)) + gamma A_K' dP A_K,
            (R + gamma B'PB) dK = gamma (dB'PA + B'dPA + B'PdA) - (dR + gamma (dB'PB + B'dPB + B'PdB)) K."""
        theta = np.asarray(theta, dtype=np.float64)
        a, b, q, r = self.simulator_matrices(theta)
        k, p = discounted_riccati(a, b, q, r, self.gamma)
        d_a, d_b, d_q, d_r = self.family.jacobians(theta)
        a_k = a - b @ k
        lyapunov = DiscountedLyapunov(a_k, self.gamma)
        open_change = d_a - d_b @ k
        d_p = lyapunov.value(d_q + transposed(k) @ d_r @ k
                             + self.gamma * (transposed(open_change) @ p @ a_k + a_k.T @ p @ open_change))
        curvature = r + self.gamma * b.T @ p @ b
        rhs = (self.gamma * (transposed(d_b) @ p @ a + b.T @ d_p @ a + b.T @ p @ d_a)
               - (d_r + self.gamma * (transposed(d_b) @ p @ b + b.T @ d_p @ b + b.T @ p @ d_b)) @ k)
        d_k = np.linalg.solve(curvature, rhs)                                    # (D, m, n)
        return d_k.reshape(len(d_k), -1).T

    # --- simulation -------------------------------------------------------------------------------
    def _rollout(self, phi, a, b, noise_factor, n_episodes: int, horizon: int, rng):
        """States (n, T+1, d), actions (n, T, m), and each step's mean next state (n, T, d)."""
        k = self.gain(phi)
        states = np.zeros((n_episodes, horizon + 1, self.n_states))
        actions = np.zeros((n_episodes, horizon, self.n_inputs))
        means = np.zeros((n_episodes, horizon, self.n_states))
        states[:, 0] = self.initial_mean + rng.standard_normal((n_episodes, self.n_states)) @ self._initial_factor.T
        for t in range(horizon):
            actions[:, t] = -states[:, t] @ k.T + self.std * rng.standard_normal((n_episodes, self.n_inputs))
            means[:, t] = states[:, t] @ a.T + actions[:, t] @ b.T
            states[:, t + 1] = means[:, t] + rng.standard_normal((n_episodes, self.n_states)) @ noise_factor.T
        return states, actions, means

    def _trajectories(self, phi, states, actions, q, r, source: str, score=None) -> Trajectories:
        x = states[:, :-1]
        costs = np.einsum('nti,ij,ntj->nt', x, q, x) + np.einsum('nti,ij,ntj->nt', actions, r, actions)
        return Trajectories(states=states, actions=actions, rewards=-costs,
                            dones=np.zeros(actions.shape[:2], dtype=bool),
                            log_probs=policy.log_prob_numpy(phi, x, actions, self.std), source=source,
                            score_theta=score)

    def simulate(self, phi: np.ndarray, theta: np.ndarray, n_episodes: int, horizon: int,
                 rng: np.random.Generator, with_scores: bool = True) -> Trajectories:
        """Episodes of pi_phi in f_theta from the initial distribution; rewards -(x'Q_hat x + u'R_hat u);
        score_theta[i, t] = grad_theta log f_theta(x_{t+1}|x_t, u_t)
                          = (dA x_t + dB u_t)' W_sim^-1 (x_{t+1} - A_hat x_t - B_hat u_t)  (0 on cost entries)."""
        theta = np.asarray(theta, dtype=np.float64)
        phi = np.asarray(phi, dtype=np.float64)
        a, b, q, r = self.simulator_matrices(theta)
        states, actions, means = self._rollout(phi, a, b, self._sim_noise_factor, n_episodes, horizon, rng)
        score = None
        if with_scores:
            d_a, d_b, _, _ = self.family.jacobians(theta)
            whitened = (states[:, 1:] - means) @ self.sim_noise_inverse             # W^-1 (x' - mean)
            score = (np.einsum('dij,ntj,nti->ntd', d_a, states[:, :-1], whitened)
                     + np.einsum('dij,ntj,nti->ntd', d_b, actions, whitened))
        return self._trajectories(phi, states, actions, q, r, 'sim', score)

    # --- sensitivities ----------------------------------------------------------------------------
    def sensitivity_terms(self, phi: np.ndarray, theta: np.ndarray, *, method: str = 'exact',
                          trajectories: Optional[Trajectories] = None,
                          rng: Optional[np.random.Generator] = None) -> SensitivityTerms:
        """hessian = dF/dphi (P x P), mixed = dF/dtheta (P x D) at (phi, theta); see the package
        docstring.  'sampled' uses ``trajectories`` (simulated with pi_phi in f_theta, with
        score_theta), or simulates the default sample size with ``rng`` when none are given."""
        phi = np.asarray(phi, dtype=np.float64)
        theta = np.asarray(theta, dtype=np.float64)
        if method == 'exact':
            hessian, mixed = self._exact_terms(phi, theta)
            return SensitivityTerms(hessian=hessian, mixed=mixed, info={'method': 'exact'})
        if method == 'sampled':
            if trajectories is None:
                trajectories = self.simulate(phi, theta, self.default_sim_episodes, self.default_sim_horizon,
                                             rng or np.random.default_rng())
            return self._sampled_terms(phi, theta, trajectories)
        raise ValueError(f"sensitivity_terms: method {method!r}: expected 'exact' or 'sampled'")

    def _directions(self, theta: np.ndarray):
        """(dA, dB, dQ, dR, dK) stacks: first the P unit gain directions, then the D theta ones."""
        n, m = self.n_states, self.n_inputs
        size, count = self.phi_size(), self.family.size
        d_a, d_b, d_q, d_r = self.family.jacobians(theta)
        unit_gains = np.eye(size).reshape(size, m, n)

        def stack(gain_part, theta_part):
            return np.concatenate([gain_part, theta_part], axis=0)
        return (stack(np.zeros((size, n, n)), d_a), stack(np.zeros((size, n, m)), d_b),
                stack(np.zeros((size, n, n)), d_q), stack(np.zeros((size, m, m)), d_r),
                stack(unit_gains, np.zeros((count, m, n))))

    def _exact_terms(self, phi, theta) -> tuple[np.ndarray, np.ndarray]:
        loop = self.sim_closed_loop(phi, theta)
        d_a, d_b, d_q, d_r, d_k = self._directions(theta)
        gamma, k, p, s, a_k = self.gamma, loop.k, loop.p, loop.s, loop.a_k
        d_ak = d_a - d_b @ k - loop.b @ d_k
        d_qk = d_q + transposed(d_k) @ loop.r @ k + k.T @ d_r @ k + k.T @ loop.r @ d_k
        d_p = sym(loop.lyapunov.value(d_qk + gamma * (transposed(d_ak) @ p @ a_k + a_k.T @ p @ d_ak)))
        d_noise = self.std ** 2 * (d_b @ loop.b.T + loop.b @ transposed(d_b))
        d_s = sym(loop.lyapunov.covariance(gamma * (d_ak @ s @ a_k.T + a_k @ s @ transposed(d_ak))
                                            + gamma / (1.0 - gamma) * d_noise))
        d_huu = d_r + gamma * (transposed(d_b) @ p @ loop.b + loop.b.T @ d_p @ loop.b + loop.b.T @ p @ d_b)
        d_hux = gamma * (transposed(d_b) @ p @ loop.a + loop.b.T @ d_p @ loop.a + loop.b.T @ p @ d_a)
        d_e = d_huu @ k + loop.h_uu @ d_k - d_hux
        return self._assemble(d_e @ s + loop.e @ d_s)

    def _assemble(self, d_e_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns dF = -2 (dE S + E dS) -> (hessian, mixed)."""
        columns = (-2.0 * d_e_s).reshape(len(d_e_s), -1).T
        size = self.phi_size()
        return columns[:, :size], columns[:, size:]

    def _sampled_terms(self, phi, theta, batch: Trajectories) -> SensitivityTerms:
        """The exact formulas with every closed-loop quantity estimated from ``batch``."""
        if batch.score_theta is None:
            raise ValueError('sampled sensitivities need simulated trajectories with score_theta '
                             '(simulate(..., with_scores=True))')
        n, gamma, std = self.n_states, self.gamma, self.std
        k = self.gain(phi)
        a, b, _, _ = self.simulator_matrices(theta)
        d_a, d_b, d_q, d_r, d_k = self._directions(theta)
        size = self.phi_size()
        x, u, x_next, costs = flat_transitions(batch)
        critic = LSTDQ(x, u, x_next, k, std, gamma)
        h, _ = critic.solve(costs)
        h_uu, h_ux = h[n:, n:], h[n:, :n]
        e = h_uu @ k - h_ux
        value = mean_action_lift(k).T @ h @ mean_action_lift(k)               # V_hat(x) = x' P_hat x + c
        # Critic-sensitivity rewards, one column per direction (gain entries first, then theta).
        z = np.concatenate([x, u], axis=-1)
        d_cost = np.concatenate([np.zeros((size,) + h.shape),
                                 block_diagonal(d_q[size:], d_r[size:])], axis=0)
        rewards = np.einsum('ti,dij,tj->td', z, d_cost, z)
        if self.inner.critic_dynamics_term == 'pathwise':
            # d/dtheta V_hat(A_hat x + B_hat u + xi) = 2 x'' P_hat (dA x + dB u), xi held fixed
            mean_change = np.einsum('dij,tj->tdi', d_a[size:], x) + np.einsum('dij,tj->tdi', d_b[size:], u)
            rewards[:, size:] += gamma * 2.0 * np.einsum('ti,ij,tdj->td', x_next, value, mean_change)
        else:
            mean_next = x @ a.T + u @ b.T
            surprise = (np.einsum('ti,ij,tj->t', x_next, value, x_next)
                        - np.einsum('ti,ij,tj->t', mean_next, value, mean_next))
            scores = batch.score_theta.reshape(-1, batch.score_theta.shape[-1])
            rewards[:, size:] += gamma * scores * surprise[:, None]
        rewards[:, :size] += gamma * 2.0 * np.einsum('ai,ti,tb->tab', e, x_next, x_next).reshape(len(x), size)
        d_h, _ = critic.solve(rewards)                                        # (P + D, p, p)
        d_huu, d_hux = d_h[:, n:, n:], d_h[:, n:, :n]
        s = discounted_second_moment(batch.states, gamma)
        policy_scores = policy.score(phi, batch.states[:, :-1], batch.actions, std)
        weights = np.concatenate([accumulated_scores(policy_scores), accumulated_scores(batch.score_theta)], axis=-1)
        d_s = np.moveaxis(discounted_second_moment(batch.states, gamma, weights), -1, 0)
        d_e = d_huu @ k + h_uu @ d_k - d_hux
        hessian, mixed = self._assemble(d_e @ s + e @ d_s)
        return SensitivityTerms(hessian=hessian, mixed=mixed, info={
            'method': 'sampled', 'transitions': int(len(x)), 'episodes': int(batch.states.shape[0]),
            'horizon': int(batch.actions.shape[1]), 'lstd_condition': critic.conditioning,
            'estimated_grad_norm': float(np.linalg.norm(-2.0 * e @ s))})

    # --- real system ------------------------------------------------------------------------------
    def sample_real(self, phi: np.ndarray, n_episodes: int, rng: np.random.Generator) -> Trajectories:
        """``n_episodes`` episodes of ``real.horizon`` steps of pi_phi on the real system."""
        phi = np.asarray(phi, dtype=np.float64)
        states, actions, _ = self._rollout(phi, self.real_a, self.real_b, self._real_noise_factor, n_episodes,
                                           self.real_horizon, rng)
        return self._trajectories(phi, states, actions, self.cost_q, self.cost_r, 'real')

    def real_policy_gradient(self, phi: np.ndarray, batches: list[Trajectories],
                             theta: Optional[np.ndarray] = None) -> np.ndarray:
        """g ~ grad_K J_real = -2 (H_uu K - H_ux) S from real episodes.

        H: LSTD-Q (quadratic features, expected next action under pi_phi) on the transitions of
        ALL batches -- valid off-policy, because the real dynamics and costs do not depend on the
        policy that chose u, and the target policy's next action enters only through its known
        Gaussian.  S: the discounted second moment of the NEWEST batch (collected with phi; on-policy),
        with the stationary tail correction of ``discounted_second_moment``.  Every real transition
        feeds the critic (p(p+1)/2 + 1 unknowns, p = n + m), which is what makes the estimator
        cheap in real data.
        """
        if not batches:
            raise ValueError('real_policy_gradient needs at least one batch of real episodes')
        parts = [flat_transitions(batch) for batch in batches]
        if not all(np.all(np.isfinite(part[2])) and np.all(np.isfinite(part[3])) for part in parts):
            raise FloatingPointError('real_policy_gradient: the real episodes contain non-finite states or '
                                     'costs (a gain that destabilised the real system?)')
        _, e = self._critic_error(self.gain(phi), parts)
        return (-2.0 * e @ discounted_second_moment(batches[-1].states, self.gamma)).reshape(-1)

    def real_objective(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact real J(phi) = -(discounted expected cost), torch; -inf when K destabilises the real system."""
        k = policy.gain(phi, self.n_states, self.n_inputs)
        a, b = torch.as_tensor(self.real_a), torch.as_tensor(self.real_b)
        if not discounted_radius_torch(a, b, k, self.gamma) < 1.0:
            return torch.full((), -math.inf, dtype=DTYPE)
        return -torch_cost(a, b, torch.as_tensor(self.cost_q), torch.as_tensor(self.cost_r),
                            torch.as_tensor(self.real_noise), k, self.gamma, self.std,
                            torch.as_tensor(self.initial_moment))

    def real_cost(self, phi: np.ndarray) -> float:
        """Exact real discounted cost of pi_phi (inf when it destabilises the real system)."""
        try:
            return self.cost_of(self.real_closed_loop(phi))
        except UnstableClosedLoopError:
            return math.inf

    def real_optimum(self) -> tuple[np.ndarray, float]:
        """(phi of K*_real, its cost) at the policy std of the problem (cached)."""
        if self._real_optimum is None:
            k, _ = discounted_riccati(self.real_a, self.real_b, self.cost_q, self.cost_r, self.gamma)
            phi = policy.flatten_gain(k)
            self._real_optimum = (phi, self.real_cost(phi))
        return self._real_optimum

    def normalized_return(self, phi: np.ndarray) -> float:
        """cost(K*_real) / cost(K) on the real system at the same policy std (1 = optimal; 0 when K
        destabilises it)."""
        cost = self.real_cost(np.asarray(phi, dtype=np.float64))
        return 0.0 if not math.isfinite(cost) else self.real_optimum()[1] / cost

    # --- baselines --------------------------------------------------------------------------------
    def system_identification(self, batches: list[Trajectories], theta_init: np.ndarray) -> np.ndarray:
        """Gaussian maximum likelihood of the learnable A, B entries on all real transitions under
        the simulator's noise model W_sim: generalised least squares
            min sum_t (y_t - G_t theta)' W_sim^-1 (y_t - G_t theta),
        y_t = x_{t+1} - (fixed part of A) x_t - (fixed part of B) u_t, G_t[:, d] = dA_d x_t + dB_d u_t.
        Entries the data do not excite get the minimum-norm change from theta_init (lstsq).  Cost
        entries keep theta_init; the result is not clipped (the caller projects onto bounds).
        ``system_identification_statistics`` gives the same fit batch by batch."""
        theta_init = np.asarray(theta_init, dtype=np.float64)
        dynamics = self.family.group('AB')
        theta = theta_init.copy()
        if not dynamics.any() or not batches:
            return theta
        design_w, target_w = self._whitened_regression(batches, theta_init)
        start = theta_init[dynamics]
        change, *_ = np.linalg.lstsq(design_w, target_w - design_w @ start, rcond=_rcond(*design_w.shape))
        theta[dynamics] = start + change
        return theta

    def system_identification_statistics(self, theta_init: np.ndarray) -> 'LeastSquaresStatistics':
        """``system_identification`` kept up to date batch by batch (the sysid baseline refits after
        every real batch): ``add(batch)`` folds a batch's whitened regression rows into the
        triangular factor of the least squares, ``fit()`` returns what ``system_identification``
        returns on every batch added so far, to float tolerance, at a cost that does not grow
        with the data."""
        return LeastSquaresStatistics(self, np.asarray(theta_init, dtype=np.float64))

    def _whitened_regression(self, batches: list[Trajectories], theta_init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The generalised least squares of ``system_identification`` whitened by W_sim^-1/2:
        design (rows, learnable dynamics entries), target (rows,)."""
        dynamics = self.family.group('AB')
        x, u, x_next, _ = (np.concatenate(column) for column in zip(*(flat_transitions(b) for b in batches)))
        d_a, d_b, _, _ = self.family.jacobians(theta_init)
        d_a, d_b = d_a[dynamics], d_b[dynamics]
        fixed_a = self.family.a_parts[0].numpy()
        fixed_b = self.family.b_parts[0].numpy()
        design = np.einsum('dij,tj->tid', d_a, x) + np.einsum('dij,tj->tid', d_b, u)      # (T, n, Dd)
        target = x_next - x @ fixed_a.T - u @ fixed_b.T
        whitening = np.linalg.cholesky(self.sim_noise_inverse).T                     # L'L = W^-1
        design_w = np.einsum('ij,tjd->tid', whitening, design).reshape(-1, int(dynamics.sum()))
        return design_w, (target @ whitening.T).reshape(-1)


def _rcond(rows: int, columns: int) -> float:
    """numpy's default lstsq cut-off for a (rows, columns) design, made explicit so that the
    incremental fit (a smaller triangular system) cuts the same singular values."""
    return float(np.finfo(np.float64).eps * max(rows, columns))


class LeastSquaresStatistics:
    """Sufficient statistics of ``LQRProblem.system_identification``: the R factor of the QR
    decomposition of [design | target] over every row added (updated by one QR of the old R
    stacked on the new rows), and the row count.  R' R = [G y]' [G y], and R's first columns
    have the design's singular values, so the minimum-norm least-squares solution of
    R_G c = r_y - R_G start is the batch fit's, with the same cut-off."""

    def __init__(self, problem: LQRProblem, theta_init: np.ndarray):
        self.problem, self.theta_init = problem, theta_init
        self.dynamics = problem.family.group('AB')
        self.columns = int(self.dynamics.sum())
        self.factor = np.zeros((0, self.columns + 1))
        self.rows = 0

    def add(self, batch: Trajectories) -> None:
        if not self.columns:
            return
        design_w, target_w = self.problem._whitened_regression([batch], self.theta_init)
        stacked = np.vstack([self.factor, np.column_stack([design_w, target_w])])
        self.factor = np.linalg.qr(stacked, mode='r')
        self.rows += len(target_w)

    def fit(self) -> np.ndarray:
        theta = self.theta_init.copy()
        if not self.columns or not self.rows:
            return theta
        design, target = self.factor[:, :-1], self.factor[:, -1]
        start = self.theta_init[self.dynamics]
        change, *_ = np.linalg.lstsq(design, target - design @ start, rcond=_rcond(self.rows, self.columns))
        theta[self.dynamics] = start + change
        return theta
