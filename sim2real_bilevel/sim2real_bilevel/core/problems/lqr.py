"""LQR bi-level problem: a real linear Gaussian system and a parametrised linear simulator.

Problem file (``kind: lqr``)::

    kind: lqr
    gamma: 0.95                           # 0 < gamma < 1
    real:                                 # the physical system: methods only sample it
      A: [[..]]                           # n x n
      B: [[..]]                           # n x m
      noise_covariance: [[..]]            # n x n, symmetric PSD: x' = A x + B u + w, w ~ N(0, W)
      horizon: 50                         # optional: steps per real episode (truncation)
    cost: {Q: [[..]], R: [[..]]}          # real stage cost x'Qx + u'Ru (Q PSD, R PD); reward = -cost
    initial_state: {mean: [..], covariance: [[..]]}   # x_0 ~ N(mean, covariance), covariance PSD
    policy: {std: 0.1}                    # u = -K x + std * eps, eps ~ N(0, I_m); std > 0 fixed
    simulator:
      A: [[..]]            learn_A: [[0/1 ..]] or true/false (default false)
      B: [[..]]            learn_B: ...
      Q: [[..]]            learn_Q: ...   (symmetric mask)      in-sim stage cost
      R: [[..]]            learn_R: ...   (symmetric mask)
      noise_covariance: [[..]]            # optional, symmetric PD; default: real.noise_covariance
      dynamics_bound: 1.0                 # optional: learnable A, B entries stay in nominal +- bound
                                          # (one number, or {A: .., B: ..}; default 1.0)
      cost_scale_bound: 100.0             # optional: learnable cost diagonals stay in nominal */ bound
      correlation_bound: 0.9              # optional: learnable cost correlations stay in +- bound
    inner: {...}                          # optional, see ``InnerSettings``
    outer: {...}                          # optional outer-loop defaults (``OuterConfig`` fields)

Simulator noise: f_theta(x'|x,u) = N(x'; A_hat x + B_hat u, W_sim) needs W_sim positive
DEFINITE so that its score grad_theta log f_theta exists; by default W_sim is the real noise
covariance (then that one must be PD).  The LQR gain K*(theta) does not depend on W_sim; the
in-sim gradient F and the sampled estimators do.

theta (``theta_names`` in this order: A, B, Q, R, each row-major):
- a learnable A or B entry is itself a coordinate, named 'A[i][j]' / 'B[i][j]';
- cost matrices are written C = D^(1/2) Corr D^(1/2), D = diag(C), Corr a unit-diagonal
  correlation matrix.  A learnable diagonal entry 'Q[i][i]' is the coordinate log Q[i][i]
  (so Q[i][i] stays positive; its nominal value must be > 0).  A learnable off-diagonal pair
  is ONE coordinate 'Q[i][j]' (i < j; the mask must be symmetric), the correlation
  Corr[i][j] = Corr[j][i] = Q[i][j] / sqrt(Q[i][i] Q[j][j]), both diagonals nominally > 0.
  Fixed off-diagonal entries keep their nominal correlation, so they scale with learnable
  diagonals.  Correlations live in [-correlation_bound, correlation_bound], and loading checks
  Corr at every vertex of that box (PSD for Q, PD for R): Corr is affine in the correlations
  and the PSD cone is convex, so the whole box -- and with positive diagonals every theta
  within bounds -- gives Q_hat PSD and R_hat PD.  No projection or clipping is ever needed.

Inner problem (costs c = x'Qx + u'Ru; J = -cost):
    cost(K) = tr((Q + K'RK) S) + std^2 tr(R) / (1 - gamma),
    P = Q + K'RK + gamma A_K' P A_K                                   (value matrix, critic)
    S = X0 + gamma/(1-gamma) (W + std^2 B B') + gamma A_K S A_K'       (discounted second moment)
with A_K = A - B K, X0 = Sigma0 + mu0 mu0'.  The Q-function is z'Hz + const, z = [x; u],
    H = [[Q + gamma A'PA, gamma A'PB], [gamma B'PA, R + gamma B'PB]],
and F(phi, theta) = grad_K J = -2 E S with E = H_uu K - H_ux (phi = vec K, row-major).  The
'exact' inner solve is the discounted Riccati equation (scipy's DARE on sqrt(gamma) A,
sqrt(gamma) B, polished by Hewer policy-iteration steps).  A gain with spectral radius of
sqrt(gamma) A_K >= 1 has infinite cost: ``inner_gradient`` and ``sensitivity_terms`` raise
``UnstableClosedLoopError``, ``real_objective`` returns -inf and ``normalized_return`` 0.

Exact sensitivities (``sensitivity_terms(method='exact')``): for each direction -- a unit
change of one gain entry (hessian columns) or of one theta coordinate (mixed columns) --
    dP  = dQ_K + gamma (dA_K' P A_K + A_K' P dA_K) + gamma A_K' dP A_K   (critic sensitivity)
    dS  = gamma (dA_K S A_K' + A_K S dA_K') + gamma/(1-gamma) std^2 (dB B' + B dB')
          + gamma A_K dS A_K'                                           (Markov-chain sensitivity)
    dH_uu = dR + gamma (dB'PB + B'dPB + B'PdB),  dH_ux = gamma (dB'PA + B'dPA + B'PdA)
    dF  = -2 ((dH_uu K + H_uu dK - dH_ux) S + E dS),
with dQ_K = dQ + dK'RK + K'dRK + K'RdK, dA_K = dA - dB K - B dK.  All Lyapunov equations share
one LU factorisation of I - gamma (A_K' kron A_K').

Sampled sensitivities (``sensitivity_terms(method='sampled')``, from simulated trajectories
with ``score_theta``):
- critic H by LSTD-Q (``LSTDQ``) with quadratic features of z, the policy's expected next
  features and variance-weighted instruments (valid off-policy);
- critic sensitivities dH by the same LSTD system with vector "rewards" (the Bellman-like
  recursions of the paper's Theorem 1).  For theta,
      dQ(z) = dc(z) + gamma d/dtheta E[V(x')|z] + gamma E[dV(x')],
  with the dynamics term per transition either 'pathwise', gamma 2 x'' P_hat (dA x + dB u)
  (the reparametrised derivative through the differentiable simulator; the default), or
  'score', gamma score_theta(x'|z) (V_hat(x') - V_hat(x_bar')), x_bar' the simulator's mean
  next state (the likelihood-ratio form, with a control variate: the score has zero mean given
  z).  Both are unbiased; at the default sample size on config/lqr.yaml (5 seeds) the sampled
  d phi*/d theta is off by 1.9-3.3 % with 'pathwise' and 3-32 % (median 17 %) with 'score'
  (``inner.critic_dynamics_term``).  For gain entries dQ(z) = gamma E[d/dK E_u'[Q_hat(x', u')]
  + dV(x')], whose reward gamma 2 (E_hat x') x'' is the expectation over the policy's own
  Gaussian in closed form;
- S by the empirical discounted second moment of the simulated states (``discounted_second_moment``);
- dS by accumulated score weights (the paper's Lemma 1): W_k = sum_{i<k} score_theta_i for theta
  and sum_{i<k} grad_phi log pi(u_i|x_i) for the gain, dS ~ sum_k gamma^k mean[(x_k x_k' - m_k) W_k]
  (centring by the per-step mean m_k is a baseline: E[W_k] = 0).  The variance of W_k grows
  with k, hence short default trajectories (N = 25) and many of them (n = 4000).
At an inner optimum E = 0, so dS enters only through E dS and the sampled d phi*/d theta is
essentially -(H_uu)^-1 (dH_uu K - dH_ux) from the critic sensitivities (S cancels).
``bench/accuracy_tables.py`` tabulates the error against finite differences over N and n.

Real side: ``real_policy_gradient`` (LSTD-Q critic from every real batch -- valid off-policy --
and the newest batch's discounted second moment), ``system_identification`` (generalised least
squares = Gaussian maximum likelihood of the learnable A, B entries), ``normalized_return``
= cost(K*_real) / cost(K) at the same policy std (0 for a gain that destabilises the real system).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.linalg
import torch

from ..config import MAX_HORIZON, FieldReader, ProblemConfigError, check_symmetric_psd
from ..settings import override_settings, read_settings, setting
from .common import read_outer_section
from ..policies import linear_gaussian as policy
from ..problem import BilevelProblem, InnerResult, SensitivityTerms, Trajectories

DTYPE = torch.float64
TOP_LEVEL_FIELDS = {'kind', 'gamma', 'real', 'cost', 'initial_state', 'policy', 'simulator', 'inner', 'outer'}
REAL_FIELDS = {'A', 'B', 'noise_covariance', 'horizon'}
COST_FIELDS = {'Q', 'R'}
INITIAL_FIELDS = {'mean', 'covariance'}
POLICY_FIELDS = {'std'}
SIMULATOR_FIELDS = {'A', 'learn_A', 'B', 'learn_B', 'Q', 'learn_Q', 'R', 'learn_R', 'noise_covariance',
                    'dynamics_bound', 'cost_scale_bound', 'correlation_bound'}
MAX_CORRELATION_VERTICES = 2 ** 12


class UnstableClosedLoopError(ValueError):
    """A gain that does not stabilise sqrt(gamma) (A - B K): its discounted cost is infinite."""


@dataclass
class InnerSettings:
    """The ``inner:`` section of an LQR problem file."""
    sampled_episodes: int = setting(20, low=1)
    """Sampled solver: simulated episodes per actor-critic iteration."""
    sampled_horizon: int = setting(50, low=1)
    """Sampled solver: their length."""
    sampled_step: float = setting(1.0, low=0.0, high=1.0, low_open=True)
    """Sampled solver: step as a fraction of a full policy-improvement (Gauss-Newton) step
    K <- K - H_uu^-1 E; in (0, 1]."""
    sampled_tolerance: float = setting(0.05, low=0.0, low_open=True)
    """Sampled solver: stop when the held-out estimate of ||F|| falls below this (on
    config/lqr.yaml ||F|| = 0.05 is about 3 % off the Riccati gain)."""
    sampled_max_iterations: int = setting(300, low=1)
    """Sampled solver: iteration cap."""
    sampled_moment_window: int = setting(5, low=1)
    """Sampled solver: the stopping rule's S_hat averages this many most recent batches."""
    critic_dynamics_term: str = setting('pathwise', choices=('pathwise', 'score'))
    """Sampled sensitivities: how the dynamics term gamma d/dtheta E[V(x')|z] of the critic-
    sensitivity recursion is estimated per transition: 'pathwise' (2 x'' P_hat (dA x + dB u),
    the reparametrised derivative through the differentiable simulator) or 'score'
    (score_theta (V_hat(x') - V_hat(x_bar')), the likelihood-ratio form of the paper's
    Theorem 1).  Both are unbiased; see the module docstring for their measured variance."""
    sensitivity_episodes: int = setting(4000, low=1)
    """Default number n of simulated trajectories for sampled sensitivities (with the default
    horizon: sampled d phi*/d theta within 5 % of finite differences on config/lqr.yaml, see
    ``sampled_sensitivity_table``)."""
    sensitivity_horizon: int = setting(25, low=1)
    """Default trajectory length N for sampled sensitivities (short: the variance of the score
    weights W_k grows with k)."""


@dataclass
class ClosedLoop:
    """Everything the exact formulas need at one (K, model): value matrix P, discounted second
    moment S, Q-function blocks, E = H_uu K - H_ux, and the factorised Lyapunov operator."""
    a: np.ndarray
    b: np.ndarray
    q: np.ndarray
    r: np.ndarray
    k: np.ndarray
    a_k: np.ndarray
    p: np.ndarray
    s: np.ndarray
    h_uu: np.ndarray
    h_ux: np.ndarray
    e: np.ndarray
    lyapunov: 'DiscountedLyapunov'

    @property
    def gradient(self) -> np.ndarray:
        """F = grad_K J = -2 E S (m x n)."""
        return -2.0 * self.e @ self.s


class DiscountedLyapunov:
    """Solves X = M + gamma G' X G (value form) and X = N + gamma G X G' (covariance form) for a
    batch of right-hand sides with one LU factorisation of I - gamma (G' kron G') (row-major vec;
    the covariance operator is its transpose)."""

    def __init__(self, closed_loop: np.ndarray, gamma: float):
        self.n = closed_loop.shape[0]
        operator = np.eye(self.n ** 2) - gamma * np.kron(closed_loop.T, closed_loop.T)
        self.factor = scipy.linalg.lu_factor(operator)

    def _solve(self, rhs: np.ndarray, trans: int) -> np.ndarray:
        flat = rhs.reshape(-1, self.n ** 2).T
        return scipy.linalg.lu_solve(self.factor, flat, trans=trans).T.reshape(rhs.shape)

    def value(self, rhs: np.ndarray) -> np.ndarray:
        return self._solve(rhs, 0)

    def covariance(self, rhs: np.ndarray) -> np.ndarray:
        return self._solve(rhs, 1)


def discounted_radius(closed_loop: np.ndarray, gamma: float) -> float:
    """Spectral radius of sqrt(gamma) G: the discounted cost is finite iff it is < 1."""
    return math.sqrt(gamma) * float(np.abs(np.linalg.eigvals(closed_loop)).max())


def closed_loop(a, b, q, r, w, k, gamma: float, std: float, x0_moment: np.ndarray,
                what: str = 'closed loop') -> ClosedLoop:
    """P, S, H blocks and E at gain ``k`` (raises ``UnstableClosedLoopError``)."""
    a_k = a - b @ k
    radius = discounted_radius(a_k, gamma)
    if not radius < 1.0:
        raise UnstableClosedLoopError(
            f'{what}: the gain K = {k.tolist()} does not stabilise the discounted system '
            f'(spectral radius of sqrt(gamma) (A - B K) is {radius:.6g} >= 1): its cost is infinite')
    lyapunov = DiscountedLyapunov(a_k, gamma)
    p = _sym(lyapunov.value(q + k.T @ r @ k))
    noise = w + std ** 2 * b @ b.T
    s = _sym(lyapunov.covariance(x0_moment + gamma / (1.0 - gamma) * noise))
    h_uu = r + gamma * b.T @ p @ b
    h_ux = gamma * b.T @ p @ a
    return ClosedLoop(a=a, b=b, q=q, r=r, k=k, a_k=a_k, p=p, s=s, h_uu=h_uu, h_ux=h_ux,
                      e=h_uu @ k - h_ux, lyapunov=lyapunov)


def discounted_riccati(a, b, q, r, gamma: float, *, polish_tolerance: float = 1e-14,
                       max_polish: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(K*, P*) of min E sum gamma^t (x'Qx + u'Ru): the DARE of (sqrt(gamma) A, sqrt(gamma) B, Q, R),
    refined by Hewer (policy-iteration) steps to machine precision.  Raises
    ``UnstableClosedLoopError`` when no stabilising solution exists."""
    scale = math.sqrt(gamma)
    try:
        p = scipy.linalg.solve_discrete_are(scale * a, scale * b, q, r)
    except (np.linalg.LinAlgError, ValueError) as err:
        raise UnstableClosedLoopError(
            f'the discounted Riccati equation has no stabilising solution for A = {a.tolist()}, '
            f'B = {b.tolist()} (is (sqrt(gamma) A, sqrt(gamma) B) stabilisable?): {err}') from None
    k = np.linalg.solve(r + gamma * b.T @ p @ b, gamma * b.T @ p @ a)
    for _ in range(max_polish):
        a_k = a - b @ k
        if not discounted_radius(a_k, gamma) < 1.0:
            raise UnstableClosedLoopError(
                f'the discounted Riccati solution for A = {a.tolist()}, B = {b.tolist()} does not '
                f'stabilise the system (is (sqrt(gamma) A, sqrt(gamma) B) stabilisable?)')
        p = _sym(DiscountedLyapunov(a_k, gamma).value(q + k.T @ r @ k))
        new_k = np.linalg.solve(r + gamma * b.T @ p @ b, gamma * b.T @ p @ a)
        change = np.abs(new_k - k).max()
        k = new_k
        if change <= polish_tolerance * max(1.0, np.abs(k).max()):
            break
    return k, p


def _sym(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + np.swapaxes(m, -1, -2))


# --- sampled estimators ---------------------------------------------------------------------------
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
    the estimator consistent, because the quadratic features represent Q exactly.  Measured on
    config/lqr.yaml (10 seeds, 400 x 50 simulated transitions): median relative error of the
    sampled d phi*/d theta 5.2 % unweighted, 3.1 % with floor 0.1."""

    def __init__(self, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray,
                 k: np.ndarray, std: float, gamma: float, weight_floor: float = 0.1):
        z = np.concatenate([states, actions], axis=-1)
        self.p = z.shape[-1]
        features = quadratic_features(z[:, :, None] * z[:, None, :])
        next_features = quadratic_features(expected_next_outer(k, next_states, std))
        squared = np.sum(states ** 2, axis=-1)
        weights = 1.0 / (squared + weight_floor * max(float(squared.mean()), 1e-300))
        self.instruments = features * (weights / weights.mean())[:, None]
        count = len(z)
        matrix = self.instruments.T @ (features - gamma * next_features) / count
        self.count = count
        self.conditioning = float(np.linalg.cond(matrix))
        if not self.conditioning < 1e14:
            raise ValueError(f'LSTD-Q: {count} transitions do not determine the {features.shape[1]} '
                             f'coefficients of the quadratic Q-function (condition number '
                             f'{self.conditioning:.3g}); collect more, or more varied, transitions')
        self.factor = scipy.linalg.lu_factor(matrix)

    def solve(self, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H (..., p, p), h0 of the fixed point for per-transition rewards (count,) or (count, C)."""
        rhs = self.instruments.T @ rewards / self.count
        weights = scipy.linalg.lu_solve(self.factor, rhs)
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


# --- the simulator family -------------------------------------------------------------------------
class SimulatorFamily:
    """theta -> (A_hat, B_hat, Q_hat, R_hat), see the module docstring.  Every matrix is
    written with bases over the FULL theta vector, so the map is one pure torch function."""

    def __init__(self, *, a, learn_a, b, learn_b, q, learn_q, r, learn_r, dynamics_bounds: dict,
                 cost_scale_bound: float, correlation_bounds: dict):
        self.n, self.m = b.shape
        names, kinds, nominal, lower, upper, matrix_of = [], [], [], [], [], []

        def add(name, kind, value, low, high, matrix):
            names.append(name)
            kinds.append(kind)
            nominal.append(value)
            lower.append(low)
            upper.append(high)
            matrix_of.append(matrix)

        for label, values, mask in (('A', a, learn_a), ('B', b, learn_b)):
            bound = dynamics_bounds[label]
            for i, j in np.argwhere(mask):
                add(f'{label}[{i}][{j}]', 'linear', values[i, j], values[i, j] - bound, values[i, j] + bound, label)
        log_scale = math.log(cost_scale_bound)
        for label, values, mask in (('Q', q, learn_q), ('R', r, learn_r)):
            diagonal = np.diag(values)
            for i, j in np.argwhere(np.triu(mask)):
                if i == j:
                    add(f'{label}[{i}][{i}]', 'log', math.log(diagonal[i]), math.log(diagonal[i]) - log_scale,
                        math.log(diagonal[i]) + log_scale, label)
                else:
                    bound = correlation_bounds[label]
                    add(f'{label}[{i}][{j}]', 'correlation', _correlation(values)[i, j], -bound, bound, label)
        self.names = names
        self.kinds = kinds
        self.nominal = np.asarray(nominal, dtype=np.float64)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.matrix_of = np.asarray(matrix_of)
        size = len(names)
        index = {name: d for d, name in enumerate(names)}

        def linear_basis(label, values, mask):
            fixed = np.where(mask, 0.0, values)
            basis = np.zeros((size,) + values.shape)
            for i, j in np.argwhere(mask):
                basis[index[f'{label}[{i}][{j}]'], i, j] = 1.0
            return torch.as_tensor(fixed), torch.as_tensor(basis)

        def cost_basis(label, values, mask):
            k = values.shape[0]
            learn_diagonal = np.diag(mask).astype(bool)
            fixed_scale = np.where(learn_diagonal, 0.0, np.sqrt(np.maximum(np.diag(values), 0.0)))
            log_basis = np.zeros((size, k))
            correlation_basis = np.zeros((size, k, k))
            fixed_correlation = _correlation(values)
            for i, j in np.argwhere(np.triu(mask)):
                d = index[f'{label}[{i}][{j}]']
                if i == j:
                    log_basis[d, i] = 0.5           # the scale is sqrt(diagonal) = exp(theta / 2)
                else:
                    correlation_basis[d, i, j] = correlation_basis[d, j, i] = 1.0
                    fixed_correlation[i, j] = fixed_correlation[j, i] = 0.0
            return tuple(torch.as_tensor(x) for x in (fixed_scale, learn_diagonal.astype(np.float64), log_basis,
                                                       fixed_correlation, correlation_basis))

        self.a_parts = linear_basis('A', a, learn_a)
        self.b_parts = linear_basis('B', b, learn_b)
        self.q_parts = cost_basis('Q', q, learn_q)
        self.r_parts = cost_basis('R', r, learn_r)

    @property
    def size(self) -> int:
        return len(self.names)

    def group(self, labels: str) -> np.ndarray:
        return np.isin(self.matrix_of, list(labels)) if self.size else np.zeros(0, dtype=bool)

    def matrices_torch(self, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(A_hat, B_hat, Q_hat, R_hat) as a pure differentiable function of theta."""
        return (_linear(theta, *self.a_parts), _linear(theta, *self.b_parts),
                _scaled_correlation(theta, *self.q_parts), _scaled_correlation(theta, *self.r_parts))

    def matrices(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return tuple(x.numpy().copy() for x in self.matrices_torch(torch.as_tensor(theta, dtype=DTYPE)))

    def jacobians(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """(dA, dB, dQ, dR), each (D, rows, cols): derivatives w.r.t. each theta coordinate."""
        jac = torch.func.jacfwd(self.matrices_torch)(torch.as_tensor(theta, dtype=DTYPE))
        return tuple(np.moveaxis(j.detach().numpy(), -1, 0) for j in jac)


def _linear(theta, fixed, basis):
    return fixed + torch.einsum('d,dij->ij', theta, basis)


def _scaled_correlation(theta, fixed_scale, learn_diagonal, log_basis, fixed_correlation, correlation_basis):
    scale = fixed_scale + learn_diagonal * torch.exp(theta @ log_basis)
    correlation = fixed_correlation + torch.einsum('d,dij->ij', theta, correlation_basis)
    return scale[:, None] * correlation * scale[None, :]


def _correlation(c: np.ndarray) -> np.ndarray:
    """Unit-diagonal correlation of a PSD matrix; rows with a zero diagonal get 0 (PSD forces
    their off-diagonal entries to be 0 too)."""
    scale = np.sqrt(np.maximum(np.diag(c), 0.0))
    safe = np.where(scale > 0, scale, 1.0)
    correlation = _sym(c) / safe[:, None] / safe[None, :]
    correlation[scale == 0, :] = 0.0
    correlation[:, scale == 0] = 0.0
    np.fill_diagonal(correlation, 1.0)
    return correlation


def _torch_cost(a, b, q, r, w, k, gamma: float, std: float, x0_moment) -> torch.Tensor:
    """Discounted expected cost of u = -Kx + std eps (torch; the caller checks stability)."""
    n = a.shape[0]
    a_k = a - b @ k
    operator = torch.eye(n * n, dtype=DTYPE) - gamma * torch.kron(a_k, a_k)
    noise = w + std ** 2 * b @ b.T
    s = torch.linalg.solve(operator, (x0_moment + gamma / (1.0 - gamma) * noise).reshape(-1)).reshape(n, n)
    return torch.sum((q + k.T @ r @ k) * s) + std ** 2 * torch.trace(r) / (1.0 - gamma)


def _torch_gradient(a, b, q, r, w, k, gamma: float, std: float, x0_moment) -> torch.Tensor:
    """F = grad_K J = -2 ((R + gamma B'PB) K - gamma B'PA) S, flattened row-major (torch)."""
    n = a.shape[0]
    a_k = a - b @ k
    operator = torch.eye(n * n, dtype=DTYPE) - gamma * torch.kron(a_k.T, a_k.T)
    p = torch.linalg.solve(operator, (q + k.T @ r @ k).reshape(-1)).reshape(n, n)
    noise = w + std ** 2 * b @ b.T
    s = torch.linalg.solve(operator.T, (x0_moment + gamma / (1.0 - gamma) * noise).reshape(-1)).reshape(n, n)
    e = (r + gamma * b.T @ p @ b) @ k - gamma * b.T @ p @ a
    return (-2.0 * e @ s).reshape(-1)


def _radius_torch(a, b, k, gamma: float) -> float:
    with torch.no_grad():
        closed = (a - b @ k).detach()
        return math.sqrt(gamma) * float(torch.linalg.eigvals(closed).abs().max())


def _factor(covariance: np.ndarray) -> np.ndarray:
    """L with L L' = covariance for a symmetric PSD matrix (eigen-decomposition: works when singular)."""
    values, vectors = np.linalg.eigh(_sym(covariance))
    return vectors * np.sqrt(np.maximum(values, 0.0))


# --- the problem ----------------------------------------------------------------------------------
class LQRProblem(BilevelProblem):
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
        self.default_sim_horizon = self.inner.sensitivity_horizon
        self._initial_factor = _factor(self.initial_covariance)
        self._real_noise_factor = _factor(self.real_noise)
        self._sim_noise_factor = _factor(self.sim_noise)
        self._real_optimum: Optional[tuple[np.ndarray, float]] = None

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str) -> 'LQRProblem':
        """Validate a loaded problem file (see the module docstring) and build the problem."""
        return _parse(data, source)

    # --- the simulator family ---------------------------------------------------------------------
    def theta0(self) -> np.ndarray:
        return self.family.nominal.copy()

    def theta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.family.lower.copy(), self.family.upper.copy()

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
            (actor if iteration % 2 == 0 else check[(iteration // 2) % 2]).append(_transitions(batch))
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
            if np.linalg.eigvalsh(_sym(h_uu)).min() <= 0:
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
        return -_torch_cost(a, b, q, r, torch.as_tensor(self.sim_noise), k, self.gamma, self.std,
                            torch.as_tensor(self.initial_moment))

    def inner_gradient(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Exact F(phi, theta) = grad_K J_sim (flattened row-major), a pure torch function of both
        (composes with torch.autograd and torch.func grad/jvp/jacrev; not with vmap, because of the
        stability check).  Raises ``UnstableClosedLoopError`` when K does not stabilise the simulator."""
        a, b, q, r = self.family.matrices_torch(theta)
        k = policy.gain(phi, self.n_states, self.n_inputs)
        self._require_stable(a, b, k, 'simulator')
        return _torch_gradient(a, b, q, r, torch.as_tensor(self.sim_noise), k, self.gamma, self.std,
                               torch.as_tensor(self.initial_moment))

    def _require_stable(self, a, b, k, what: str) -> None:
        radius = _radius_torch(a, b, k, self.gamma)
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
        d_p = lyapunov.value(d_q + _t(k) @ d_r @ k
                             + self.gamma * (_t(open_change) @ p @ a_k + a_k.T @ p @ open_change))
        curvature = r + self.gamma * b.T @ p @ b
        rhs = (self.gamma * (_t(d_b) @ p @ a + b.T @ d_p @ a + b.T @ p @ d_a)
               - (d_r + self.gamma * (_t(d_b) @ p @ b + b.T @ d_p @ b + b.T @ p @ d_b)) @ k)
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
    @property
    def default_sim_episodes(self) -> int:
        return self.inner.sensitivity_episodes

    def sensitivity_terms(self, phi: np.ndarray, theta: np.ndarray, *, method: str = 'exact',
                          trajectories: Optional[Trajectories] = None,
                          rng: Optional[np.random.Generator] = None) -> SensitivityTerms:
        """hessian = dF/dphi (P x P), mixed = dF/dtheta (P x D) at (phi, theta); see the module
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
        d_qk = d_q + _t(d_k) @ loop.r @ k + k.T @ d_r @ k + k.T @ loop.r @ d_k
        d_p = _sym(loop.lyapunov.value(d_qk + gamma * (_t(d_ak) @ p @ a_k + a_k.T @ p @ d_ak)))
        d_noise = self.std ** 2 * (d_b @ loop.b.T + loop.b @ _t(d_b))
        d_s = _sym(loop.lyapunov.covariance(gamma * (d_ak @ s @ a_k.T + a_k @ s @ _t(d_ak))
                                            + gamma / (1.0 - gamma) * d_noise))
        d_huu = d_r + gamma * (_t(d_b) @ p @ loop.b + loop.b.T @ d_p @ loop.b + loop.b.T @ p @ d_b)
        d_hux = gamma * (_t(d_b) @ p @ loop.a + loop.b.T @ d_p @ loop.a + loop.b.T @ p @ d_a)
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
        x, u, x_next, costs = _transitions(batch)
        critic = LSTDQ(x, u, x_next, k, std, gamma)
        h, _ = critic.solve(costs)
        h_uu, h_ux = h[n:, n:], h[n:, :n]
        e = h_uu @ k - h_ux
        value = _lift(k).T @ h @ _lift(k)                                     # V_hat(x) = x' P_hat x + c
        # Critic-sensitivity rewards, one column per direction (gain entries first, then theta).
        z = np.concatenate([x, u], axis=-1)
        d_cost = np.concatenate([np.zeros((size,) + h.shape),
                                 _block_diagonal(d_q[size:], d_r[size:])], axis=0)
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
        parts = [_transitions(batch) for batch in batches]
        if not all(np.all(np.isfinite(part[2])) and np.all(np.isfinite(part[3])) for part in parts):
            raise FloatingPointError('real_policy_gradient: the real episodes contain non-finite states or '
                                     'costs (a gain that destabilised the real system?)')
        _, e = self._critic_error(self.gain(phi), parts)
        return (-2.0 * e @ discounted_second_moment(batches[-1].states, self.gamma)).reshape(-1)

    def real_objective(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact real J(phi) = -(discounted expected cost), torch; -inf when K destabilises the real system."""
        k = policy.gain(phi, self.n_states, self.n_inputs)
        a, b = torch.as_tensor(self.real_a), torch.as_tensor(self.real_b)
        if not _radius_torch(a, b, k, self.gamma) < 1.0:
            return torch.full((), -math.inf, dtype=DTYPE)
        return -_torch_cost(a, b, torch.as_tensor(self.cost_q), torch.as_tensor(self.cost_r),
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
        entries keep theta_init; the result is not clipped (the caller projects onto bounds)."""
        theta_init = np.asarray(theta_init, dtype=np.float64)
        dynamics = self.family.group('AB')
        theta = theta_init.copy()
        if not dynamics.any() or not batches:
            return theta
        x, u, x_next, _ = (np.concatenate(column) for column in zip(*(_transitions(b) for b in batches)))
        d_a, d_b, _, _ = self.family.jacobians(theta_init)
        d_a, d_b = d_a[dynamics], d_b[dynamics]
        fixed_a = self.family.a_parts[0].numpy()
        fixed_b = self.family.b_parts[0].numpy()
        design = np.einsum('dij,tj->tid', d_a, x) + np.einsum('dij,tj->tid', d_b, u)      # (T, n, Dd)
        target = x_next - x @ fixed_a.T - u @ fixed_b.T
        whitening = np.linalg.cholesky(self.sim_noise_inverse).T                     # L'L = W^-1
        design_w = np.einsum('ij,tjd->tid', whitening, design).reshape(-1, int(dynamics.sum()))
        target_w = (target @ whitening.T).reshape(-1)
        start = theta_init[dynamics]
        change, *_ = np.linalg.lstsq(design_w, target_w - design_w @ start, rcond=None)
        theta[dynamics] = start + change
        return theta


def _t(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


def _lift(k: np.ndarray) -> np.ndarray:
    """[I; -K]: z = [x; u] at the policy's mean action."""
    return np.concatenate([np.eye(k.shape[1]), -k], axis=0)


def _block_diagonal(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Stacks (D, n, n), (D, m, m) -> (D, n + m, n + m) block-diagonal."""
    n, m = upper.shape[-1], lower.shape[-1]
    out = np.zeros(upper.shape[:1] + (n + m, n + m))
    out[:, :n, :n] = upper
    out[:, n:, n:] = lower
    return out


def _transitions(batch: Trajectories) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat (x, u, x', cost) arrays of a batch (truncated episodes: every step bootstraps)."""
    d = batch.states.shape[-1]
    return (batch.states[:, :-1].reshape(-1, d), batch.actions.reshape(-1, batch.actions.shape[-1]),
            batch.states[:, 1:].reshape(-1, d), -batch.rewards.reshape(-1))


# --- loading and validation -----------------------------------------------------------------------
def _parse(data: dict, source: str) -> LQRProblem:
    root = FieldReader(data, source)
    root.reject_unknown(TOP_LEVEL_FIELDS)
    if root.raw('kind') != 'lqr':
        raise root.error('kind', root.raw('kind'), "'lqr'")
    gamma = root.scalar('gamma', low=0.0, high=1.0, low_open=True, high_open=True)

    real = root.section('real')
    real.reject_unknown(REAL_FIELDS)
    real_a = _square(real, 'A')
    n = real_a.shape[0]
    real_b = real.array('B', (n, None))
    m = real_b.shape[1]
    if m < 1:
        raise real.error('B', real_b.tolist(), f'an {n} x m matrix with m >= 1 inputs')
    real_noise = _covariance(real, 'noise_covariance', n, definite=False)
    horizon = real.integer('horizon', 50, low=1, high=MAX_HORIZON)

    cost = root.section('cost')
    cost.reject_unknown(COST_FIELDS)
    cost_q = _covariance(cost, 'Q', n, definite=False)
    cost_r = _covariance(cost, 'R', m, definite=True)

    initial = root.section('initial_state')
    initial.reject_unknown(INITIAL_FIELDS)
    initial_mean = initial.array('mean', (n,))
    initial_covariance = _covariance(initial, 'covariance', n, definite=False)

    policy_section = root.section('policy')
    policy_section.reject_unknown(POLICY_FIELDS)
    std = policy_section.scalar('std', low=0.0, low_open=True)

    sim = root.section('simulator')
    sim.reject_unknown(SIMULATOR_FIELDS)
    sim_a, sim_b = sim.array('A', (n, n)), sim.array('B', (n, m))
    learn_a, learn_b = sim.mask('learn_A', (n, n), default=False), sim.mask('learn_B', (n, m), default=False)
    sim_q = _covariance(sim, 'Q', n, definite=False)
    sim_r = _covariance(sim, 'R', m, definite=True)
    learn_q = _symmetric_mask(sim, 'learn_Q', n)
    learn_r = _symmetric_mask(sim, 'learn_R', m)
    if sim.has('noise_covariance'):
        sim_noise = _covariance(sim, 'noise_covariance', n, definite=True)
    else:
        if np.linalg.eigvalsh(real_noise).min() <= 1e-12 * max(1.0, np.abs(real_noise).max()):
            raise sim.error('noise_covariance', '<missing>',
                            'a symmetric positive definite n x n matrix: the default (real.noise_covariance) is '
                            'singular, and the simulator noise must be definite for its score to exist')
        sim_noise = real_noise
    dynamics_bound = _dynamics_bounds(sim)
    cost_scale_bound = sim.scalar('cost_scale_bound', 100.0, low=1.0, low_open=True)
    correlation_bounds = {}
    for label, values, mask in (('Q', sim_q, learn_q), ('R', sim_r, learn_r)):
        default = 0.9 / max(1, values.shape[0] - 1)
        bound = sim.scalar('correlation_bound', default, low=0.0, high=1.0, low_open=True, high_open=True)
        correlation_bounds[label] = bound
        _check_cost_parametrisation(sim, label, values, mask, bound, definite=(label == 'R'))
    if not (learn_a.any() or learn_b.any() or learn_q.any() or learn_r.any()):
        raise sim.error('learn_A', sim.raw('learn_A', False),
                        'at least one learnable entry in learn_A, learn_B, learn_Q or learn_R (theta would be empty)')

    family = SimulatorFamily(a=sim_a, learn_a=learn_a, b=sim_b, learn_b=learn_b, q=sim_q, learn_q=learn_q,
                             r=sim_r, learn_r=learn_r, dynamics_bounds=dynamics_bound,
                             cost_scale_bound=cost_scale_bound, correlation_bounds=correlation_bounds)
    for reader, key, (a, b, q, r), what in ((real, 'A', (real_a, real_b, cost_q, cost_r), 'the real system'),
                                             (sim, 'A', (sim_a, sim_b, sim_q, sim_r), 'the nominal simulator')):
        try:
            discounted_riccati(a, b, q, r, gamma)
        except UnstableClosedLoopError as err:
            raise reader.error(key, a.tolist(), f'{what} to be stabilisable with a finite optimal cost ({err})')
    problem = LQRProblem(gamma=gamma, real_a=real_a, real_b=real_b, real_noise=real_noise, cost_q=cost_q,
                         cost_r=cost_r, initial_mean=initial_mean, initial_covariance=initial_covariance, std=std,
                         family=family, sim_noise=sim_noise, real_horizon=horizon,
                         inner=read_settings(InnerSettings, root.section('inner', {})), outer_defaults=read_outer_section(root),
                         source=source)
    return problem


def _dynamics_bounds(sim: FieldReader) -> dict:
    """``dynamics_bound``: one number for every learnable A and B entry, or {A: .., B: ..}."""
    value = sim.raw('dynamics_bound', 1.0)
    if isinstance(value, dict):
        bounds = sim.section('dynamics_bound')
        bounds.reject_unknown({'A', 'B'})
        return {label: bounds.scalar(label, 1.0, low=0.0, low_open=True) for label in 'AB'}
    bound = sim.scalar('dynamics_bound', 1.0, low=0.0, low_open=True)
    return {'A': bound, 'B': bound}


def _square(reader: FieldReader, key: str) -> np.ndarray:
    value = reader.array(key, (None, None))
    if value.shape[0] < 1 or value.shape[0] != value.shape[1]:
        raise reader.error(key, value.tolist(), f'a square n x n matrix with n >= 1; got shape '
                                                f'{"x".join(map(str, value.shape))}')
    return value


def _covariance(reader: FieldReader, key: str, size: int, *, definite: bool) -> np.ndarray:
    value = reader.array(key, (size, size))
    check_symmetric_psd(value, reader.source, reader.path(key), definite=definite)
    return _sym(value)


def _symmetric_mask(reader: FieldReader, key: str, size: int) -> np.ndarray:
    mask = reader.mask(key, (size, size), default=False)
    asymmetric = np.argwhere(mask != mask.T)
    if len(asymmetric):
        i, j = asymmetric[0]
        raise ProblemConfigError(reader.source, f'{reader.path(key)}[{i}][{j}]', int(mask[i, j]),
                                 f'{int(mask[j, i])}, like [{j}][{i}]: a cost matrix is symmetric, so an '
                                 f'off-diagonal pair is learnable together or not at all')
    return mask


def _check_cost_parametrisation(reader: FieldReader, label: str, values: np.ndarray, mask: np.ndarray,
                                bound: float, *, definite: bool) -> None:
    """Learnable diagonals > 0 (log space); learnable correlations have positive diagonals and a
    nominal value inside the bound; the correlation box keeps the matrix PSD (PD for R)."""
    diagonal = np.diag(values)
    for i, j in np.argwhere(np.triu(mask)):
        for index in {i, j}:
            if not diagonal[index] > 0:
                what = 'it is optimised in log space' if i == j else f'entry [{i}][{j}] is a learnable correlation'
                raise ProblemConfigError(reader.source, f'{reader.path(label)}[{index}][{index}]',
                                         float(diagonal[index]), f'a value > 0 ({what})')
    correlation = _correlation(values)
    pairs = [(i, j) for i, j in np.argwhere(np.triu(mask, 1))]
    for i, j in pairs:
        if abs(correlation[i, j]) > bound:
            raise ProblemConfigError(reader.source, f'{reader.path(label)}[{i}][{j}]', float(values[i, j]),
                                     f'a correlation Q[i][j] / sqrt(Q[i][i] Q[j][j]) within +-correlation_bound '
                                     f'= {bound:g} (it is {correlation[i, j]:.6g}); raise simulator.correlation_bound')
    if not pairs:
        return
    if 2 ** len(pairs) > MAX_CORRELATION_VERTICES:
        raise reader.error(f'learn_{label}', mask.astype(int).tolist(),
                           f'at most {int(math.log2(MAX_CORRELATION_VERTICES))} learnable off-diagonal pairs '
                           f'(the PSD check visits every vertex of the correlation box)')
    for signs in itertools.product((-bound, bound), repeat=len(pairs)):
        vertex = correlation.copy()
        for (i, j), value in zip(pairs, signs):
            vertex[i, j] = vertex[j, i] = value
        smallest = float(np.linalg.eigvalsh(vertex).min())
        if smallest < -1e-12 or (definite and smallest <= 1e-12):
            kind = 'positive definite' if definite else 'positive semidefinite'
            raise reader.error('correlation_bound', bound,
                               f'a bound that keeps {label}_hat {kind} for every learnable correlation in '
                               f'[-bound, bound] (at the vertex {dict(zip(map(str, map(tuple, pairs)), signs))} the '
                               f'correlation matrix has eigenvalue {smallest:.3g}); use a smaller correlation_bound')
