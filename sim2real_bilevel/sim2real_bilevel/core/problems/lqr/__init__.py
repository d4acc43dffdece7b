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
    outer: {...}                          # optional outer-loop defaults (``OuterConfig`` fields);
                                          # unset: every real batch kept, a step per theta coordinate,
                                          # real_episodes max(5, ceil(2 p / horizon)) (``config.py``)

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
  z).  Both are unbiased; 'pathwise' has the lower variance, because it differentiates through
  the noise instead of weighting V_hat(x') by a score, so it is the default
  (``inner.critic_dynamics_term``; ``bench/accuracy_tables.py`` measures both).  For gain
  entries dQ(z) = gamma E[d/dK E_u'[Q_hat(x', u')] + dV(x')], whose reward gamma 2 (E_hat x') x''
  is the expectation over the policy's own Gaussian in closed form;
- S by the empirical discounted second moment of the simulated states (``discounted_second_moment``);
- dS by accumulated score weights (the paper's Lemma 1): W_k = sum_{i<k} score_theta_i for theta
  and sum_{i<k} grad_phi log pi(u_i|x_i) for the gain, dS ~ sum_k gamma^k mean[(x_k x_k' - m_k) W_k]
  (centring by the per-step mean m_k is a baseline: E[W_k] = 0).  The variance of W_k grows
  with k, hence short default trajectories and many of them (``inner.sensitivity_horizon``,
  ``inner.sensitivity_episodes``).
At an inner optimum E = 0, so dS enters only through E dS and the sampled d phi*/d theta is
essentially -(H_uu)^-1 (dH_uu K - dH_ux) from the critic sensitivities (S cancels).
``bench/accuracy_tables.py`` tabulates the error against finite differences over N and n.

Real side: ``real_policy_gradient`` (LSTD-Q critic from every real batch -- valid off-policy --
and the newest batch's discounted second moment), ``system_identification`` (generalised least
squares = Gaussian maximum likelihood of the learnable A, B entries), ``normalized_return``
= cost(K*_real) / cost(K) at the same policy std (0 for a gain that destabilises the real system).
"""
from .config import InnerSettings
from .estimators import LSTDQ, discounted_second_moment
from .maths import UnstableClosedLoopError, closed_loop, discounted_riccati
from .problem import LQRProblem
from .simulator import SimulatorFamily

__all__ = ['InnerSettings', 'LQRProblem', 'LSTDQ', 'SimulatorFamily', 'UnstableClosedLoopError', 'closed_loop',
           'discounted_riccati', 'discounted_second_moment']
