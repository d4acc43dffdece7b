"""Tabular bi-level problem: a finite real MDP and a softmax-parametrised simulator.

Problem file (``kind: tabular``)::

    kind: tabular
    gamma: 0.9                          # 0 < gamma < 1
    initial_distribution: [p0, ...]     # S probabilities summing to 1
    real:                               # the physical system: methods only sample it
      transitions: P[s][a][s']          # rows sum to 1
      rewards: r[s][a]
      horizon: 50                       # optional: steps per real episode (truncation)
    simulator:
      transition_logits: L[s][a][s']    # f_theta(s'|s,a) = softmax_s'(L[s][a])
      learn_transition_logits: M[s][a][s']   # 0/1 per entry, or true/false for all
      rewards: R[s][a]                  # in-sim reward R_theta
      learn_rewards: M[s][a]            # 0/1, or true/false
      logit_bound: 10                   # optional: learnable logits live in [-b, b]
      reward_bound: 10                  # optional: learnable rewards live in [-b, b]
    inner: {...}                        # optional, see ``InnerSettings``
    outer: {...}                        # optional outer-loop defaults (``OuterConfig`` fields)
    real_gradient:                      # optional, see ``real_policy_gradient``
      estimator: critic                 # or doubly_robust
      prior_transitions: 1.0            # weight of the nominal simulator as the critic's prior
      optimism: 1.0                     # 'critic' only: exploration bonus where real data is thin (0: off)

Defaults derived from the problem's scales (``config.py``), used where the file does not set them:
- ``inner.temperature`` = (the spread of in-sim rewards theta can reach: the nominal range, widened
  to [-reward_bound, reward_bound] where rewards are learnable) / 20;
- the outer step per theta coordinate = 1 % of its own bound range (2 * logit_bound, 2 * reward_bound:
  ``outer.step_per_range``, ``problems/common.py``);
- ``outer.real_history`` = every real batch (the real critic is valid off-policy).
A constant tau = 0.1 saturated pi* at the nominal theta of generated problems (smallest
pi(a|s) ~1e-10), which froze both the real policy gradient and d phi*/d theta; see
``default_temperature``.  (config/discrete_3s2a.yaml's hand-tuned 0.2 and 100000 are what these
rules give for it; its tau 1.0 is half the rule's 2.0.)
- ``real_gradient.optimism`` = 1.0: the real critic is optimistic where a state-action pair has few
  real transitions, so a policy that turned away from an action on little evidence comes back to it
  (``critic_from_statistics``; ``test_tabular_lockin.py``).

theta = the learnable logit entries (row-major order of the mask), then the learnable reward
entries; ``theta_names`` spells them ``L[s][a][s']`` and ``R[s][a]``.  Nominal values must
already lie inside the bounds (nothing is clipped).

Inner problem: maximise the entropy-regularised in-sim return
    J_sim(phi, theta) = E[sum_t gamma^t (R_theta(s_t, a_t) - tau log pi_phi(a_t|s_t))],
s_0 ~ initial_distribution, over the reduced softmax policy of
``core/policies/tabular_softmax.py``.  F(phi, theta) = grad_phi J_sim is, per state s and
non-last action b,
    F[s, b] = d(s) pi(b|s) A(s, b),   A = Q - tau log pi - V  (soft advantage),
with d the discounted visitation d^T = rho0^T (I - gamma P_pi)^{-1}.  Its unique zero is
pi* = softmax(Q*_soft / tau).

Sensitivities (``sensitivity_terms``), for x = phi (hessian) and x = theta (mixed):
    dQ = dR + gamma [df V] + gamma P Pi dQ + gamma P [sum_a' pi dlog pi (Q - tau log pi)]
(the Bellman-like recursion, one linear solve over state-action pairs), dV = sum_a pi
(dlog pi (Q - tau log pi) + dQ), and the Markov-chain sensitivity
d(d)^T = gamma d^T dP_pi (I - gamma P_pi)^{-1}.  Then
    dF[s, b] = d(d)(s) pi A + d(s) pi (dlog pi A + dQ - tau dlog pi - dV).
'exact' evaluates these with f_theta; 'sampled' estimates every piece from simulated
trajectories (see ``_sampled_terms``): a tabular critic (certainty-equivalence = tabular
LSTD) for Q, V, A, its data topped up by one-step simulator resets for state-action pairs the
policy rarely tries (``inner.sensitivity_min_pair_samples``); the dynamics term [df V] as the
sample covariance of the score grad_theta log f(s'|s,a) with V(s'); and the Markov-chain sensitivities from accumulated
score weights W_k = sum_{i<k} grad_theta log f(s_{i+1}|s_i,a_i) (theta) and
sum_{i<k} grad_phi log pi(a_i|s_i) (phi):  d(d)(s) ~ E[sum_k gamma^k 1{s_k = s} W_k].

Real side: episodes of ``real.horizon`` steps; the real policy gradient is described in
``real_policy_gradient``; ``normalized_return`` = (J - J_min) / (J* - J_min) with J_min, J*
over deterministic policies, exact from the initial distribution.
"""
from .config import InnerSettings
from .maths import discounted_visitation, evaluate_policy, optimal_return
from .problem import TabularProblem
from .simulator import SoftmaxSimulatorFamily

__all__ = ['InnerSettings', 'SoftmaxSimulatorFamily', 'TabularProblem', 'discounted_visitation', 'evaluate_policy',
           'optimal_return']
