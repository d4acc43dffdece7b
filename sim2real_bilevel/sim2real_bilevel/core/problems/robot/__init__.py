"""The continuous robot problem: a torque-controlled pendulum stabilised from perturbed starts.

- Real system: ``robots.PendulumEmulator`` (pybullet, hidden ``real:`` parameters, actuation
  delay, hard torque limit, stiction, sensor noise), sampled in-process by ``sample_real``.
- Simulator: ``core.robot_model.PendulumModel`` (torch, differentiable) with theta = the
  learnable entries of [log payload_mass, log damping, log coulomb_friction, log motor_gain,
  log w_angle, log w_velocity, log w_effort].
- Policy: MLP Gaussian over the observation (sin q, cos q, qd / 4).

The in-sim objective and its gradient F
---------------------------------------
J_sim(phi, theta) is the pathwise (reparametrised) Monte-Carlo return on a FIXED set of common
random numbers (CRN: initial states, standard action noise, standard transition noise drawn
once from ``inner.seed``), plus two regularisers that make the inner optimum an isolated root:

    J_sim = 1/N sum_n sum_t gamma^t r_theta(s_t, a_t)   with a_t = mu_phi(o_t) + sigma_phi eps_t,
                                                             s_{t+1} = f_theta(s_t, a_t) + std xi_t
            + entropy * sum log sigma_phi - l2 / 2 ||phi||^2.

With the random numbers fixed, J_sim is a deterministic, smooth function of (phi, theta), so
F = grad_phi J_sim is an exact pure torch function and its derivatives (Hessian-vector
products, the mixed theta term) are exact derivatives of the F whose root the inner solver
finds.  The entropy bonus keeps sigma from collapsing to zero (the pathwise return alone
always prefers less noise); the ridge gives curvature to the MLP's flat directions.

Inner solvers: 'exact' minimises -J_sim on the CRN set (Adam, then L-BFGS) to ||F|| <= tol;
'sampled' is a stochastic policy gradient: pathwise gradients through fresh simulated
rollouts each iteration (Adam), warm-started, stopping on the CRN ||F||; 'ppo' is a PPO-style
actor-critic on fresh rollouts that uses the simulator only as a sampler (for simulators
without derivatives).  Both stop near, not at, the CRN optimum: the implicit-function step
is then taken at an approximate stationary point, whose ||F|| is reported.
A non-finite loss, gradient or parameter (a diverging integrator) puts phi back to the last
finite iterate, from which Adam and L-BFGS go on with a fresh memory (a few times) and PPO stops,
reported in ``InnerResult.info['non_finite']`` with the likely cause; with no finite iterate
they raise ``NonFiniteInnerSolve`` (``guard.py``).  No method deploys a
non-finite policy (``core.problem.require_finite_policy``).

Normalised return
-----------------
real return of pi_phi / real return of the ORACLE policy, the 'exact' inner optimum in the
simulator at the true physical parameters and the task's reward weights (cached per problem
instance).  Both are Monte-Carlo estimates on the emulator with the SAME fixed evaluation
seeds (initial state, sensor noise and action noise per episode: common random numbers, so
the ratio's noise is much smaller than either return's), ``evaluation.episodes`` episodes.
The oracle is the best policy the simulator family can produce from exact knowledge of the
physical parameters; it knows nothing of the delay or the torque clipping, so a policy tuned
by the real return can exceed 1.
"""
from .config import InnerSettings
from .problem import RobotProblem
from .simulator import CommonNoise, InitialStateRange, PendulumSimulatorFamily

__all__ = ['CommonNoise', 'InitialStateRange', 'InnerSettings', 'PendulumSimulatorFamily', 'RobotProblem']
