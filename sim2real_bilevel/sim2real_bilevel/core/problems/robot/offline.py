"""Offline (fixed-dataset) estimators of the robot kind (``core/offline.py`` uses them): a pathwise,
model-based estimate of the real return, with the data's own residuals replayed.

The model of the real system the dataset gives (built once per dataset, ``ResidualModel``):
- the simulator at theta_hat, the maximum-likelihood fit of its dynamics entries to every recorded
  transition (``system_identification``, as the sysid baseline), for the Jacobians
  d s_{t+1} / d(s_t, a_t);
- the behaviour b_hat, the maximum-likelihood fit of the problem's own policy class to the recorded
  (observation, action) pairs (no behaviour probability is used, so recordings of any controller
  serve);
- per recorded episode i and step t, the random numbers that reproduce it exactly (``noise_of``
  at (b_hat, theta_hat)): the action noise eps_it = (a_it - mu_bhat(o_it)) / sigma_bhat and the
  transition residual, which holds the real noise AND the simulator's error at that step (the
  actuation delay, friction, ... the family cannot express).

For a policy pi_phi, ``value(phi)`` is J_hat = 1/n sum_i sum_t gamma^t r(s_it, a_it) along the
re-simulation of episode i from its recorded initial state with a_it = mu_phi(o_it) + sigma_phi eps_it
and the residuals replayed (the task reward: what the evaluator's ``real_return`` is).  At phi =
b_hat it reproduces the recorded episodes to rounding error, so J_hat is then the data's mean
return whatever theta_hat is; off b_hat the replayed residuals are those of nearby states, and the
estimate is as good as the policy stays near the data (the coverage constraint).
- ``gradient(phi)``: its exact gradient (torch autograd, float64; ``test_offline`` checks it
  against central differences).  At b_hat it is the online pathwise real gradient on the data
  (``RobotProblem.pathwise_real_gradient``; SVG(inf), Heess et al. 2015): the same estimator, off-policy;
- ``coverage(phi)``: the Bhattacharyya coefficient of pi_phi(.|o) and b_hat(.|o) (Gaussians, exact),
  averaged over the recorded steps with the discount's time weights: 1 on the behaviour, falling as
  pi_phi puts its actions where the data have none (per step: nothing compounds over the horizon,
  unlike the effective sample size of importance weights);
- ``interval``: percentile bootstrap over whole episodes of the per-episode returns (theta_hat and
  b_hat held at the full data's fit: the interval is conditional on the model).
- ``action_change_ratio(phi)``: the rms of pi_phi's step-to-step action change along the re-simulated
  episodes over the data's.  The residuals replayed are the robot's response to the data's own command
  changes; what the simulator lacks (the pendulum's 40 ms actuation delay) bites a policy that changes
  its commands faster, and the estimate cannot see it (``DEFAULT_MAX_ACTION_CHANGE``: the pessimism bound
  and the report's warning, ``core/offline.py``).  Neither the interval nor a cross-fitted model nor fresh
  initial states flagged the run that showed it (bench/results/mixed_pendulum/warning_rule/).

Why the clipped per-decision importance weights this replaces never moved theta on the pendulum
(measured at the nominal policy on 30 nominal-policy episodes): their gradient norm was 2.7e4, and every
candidate policy of the first step, even at 1/16 of it (|dphi| 0.8: the inner solve's warm start moves
phi that far for any theta step), kept an effective sample size of 3-9 % of the data's from step 10 on
(the product of 100 per-step ratios): coverage 0.05-0.09 < 0.5, every step refused.  With this
estimator the pendulum row reaches online bi-level's improvement (bench/results/offline_pendulum).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...datasets import Dataset, DatasetError, fit_to_horizon
from ...evaluation import ReturnEstimate, bootstrap_interval
from ...problem import Trajectories, alive_mask
from .simulator import DTYPE

DEFAULT_MIN_COVERAGE = 0.2
"""No step to a policy whose actions at the data's states overlap the fitted behaviour's by a
Bhattacharyya coefficient below 0.2 on average (``OfflineEstimator.coverage``).  Measured on the pendulum
(30 nominal-policy episodes, data seed 0, 15 iterations; bench/results/offline_pendulum; the nominal
policy is 0.905, online bi-level with 30 real episodes 0.984): min_coverage 0.5 ended at 0.926, held
(9 of 15 steps refused at coverage 0.51); 0.2 at 0.992 (final coverage 0.20, no step refused); 0 (no
constraint) at 1.004 (coverage 0.18).  The policy's action std is 0.044 N m there, so the overlap falls
fast with any change of its mean: the residual model stays usable further off than the overlap says.
One seed: a choice, not a tuned value."""
DEFAULT_MAX_ACTION_CHANGE = 2.0
"""No step to (and a warning for) a policy whose step-to-step action changes along the re-simulated
episodes are, in rms, more than twice the recorded data's (``OfflineEstimator.action_change_ratio``).
The replayed residuals hold the robot's response to the data's own command changes -- an actuation delay,
actuator dynamics, effort limits the simulator family lacks -- and say nothing about its response to
faster ones.  Measured on the pendulum (bench/results/mixed_pendulum/warning_rule/: mixed N = 10 seed 4,
whose offline phase fell 0.905 -> 0.588 with its estimate unmoved, ended at 2.52, its last step from 1.75;
every other run's policies, N = 10 and 30, stayed at or below 1.65).  One failing run: a choice, not a
tuned value."""
BEHAVIOUR_FIT_ITERATIONS = 1000
"""L-BFGS iterations of the behaviour fit.  Measured on 30 nominal-policy pendulum episodes (policy std
0.044): 300 iterations left the fit's mean 0.099 (rms over the data) from the behaviour's, 1000: 0.012
(13 s on a loaded 2-core machine); maximum likelihood with the std free converged slower (0.036 at 1000)."""


def prepare_dataset(problem, dataset: Dataset) -> Dataset:
    """The dataset with shapes and finiteness checked, as one batch of one horizon; rewards the
    recording lacks are the task reward of its states and actions (``score_episodes``).  The
    behaviour's probabilities are not needed (the estimator fits the behaviour).  Episodes shorter
    than the task's horizon are padded when they end at a terminal state of the task, else dropped
    with a warning (``datasets.fit_to_horizon``)."""
    state_dim, action_dim = problem.model.state_dim, problem.model.action_dim
    dataset = fit_to_horizon(dataset, problem.horizon, problem.termination_reason)
    where_all = ", ".join(dataset.sources) or "dataset"
    horizons = sorted({b.actions.shape[1] for b in dataset.batches})
    if len(horizons) != 1:
        raise DatasetError(f'{where_all}: episodes of {horizons} steps; the robot kind\'s offline estimator needs '
                           'one horizon (cut the recording with a fixed length: `dataset --episode-length`)')
    batches = []
    for number, batch in enumerate(dataset.batches, start=1):
        where = f'{where_all} batch {number}'
        states, actions = np.asarray(batch.states, np.float64), np.asarray(batch.actions, np.float64)
        if states.ndim != 3 or states.shape[-1] != state_dim:
            raise DatasetError(f'{where}: states of shape {states.shape}: expected (n, T+1, {state_dim})')
        if actions.shape != states.shape[:1] + (states.shape[1] - 1, action_dim):
            raise DatasetError(f'{where}: actions of shape {actions.shape}: expected '
                               f'({states.shape[0]}, {states.shape[1] - 1}, {action_dim})')
        if not (np.all(np.isfinite(states)) and np.all(np.isfinite(actions))):
            raise DatasetError(f'{where}: non-finite states or actions')
        rewards = np.asarray(batch.rewards, dtype=np.float64)
        if rewards.shape != actions.shape[:2] or not np.all(np.isfinite(rewards)):
            rewards = problem.score_episodes(np.zeros(problem.phi_size()), states, actions)[0]
        log_probs = np.asarray(batch.log_probs, dtype=np.float64)
        if log_probs.shape != actions.shape[:2]:
            log_probs = np.full(actions.shape[:2], np.nan)
        # the task's termination applies to recorded data too (no termination: the last step)
        batches.append(type(batch)(states=states, actions=actions, rewards=rewards, dones=problem.episode_dones(states),
                                   log_probs=log_probs, source='real', policy_version=batch.policy_version))
    return dataset.with_batches(batches)


def behaviour_sampler(problem, phi: np.ndarray, noise: float):
    """(sampler, behaviour phi, words): the same policy with its action std x ``noise`` (log_std, the
    last action-dimension entries of phi, + log noise)."""
    if noise == 1.0:
        return problem, phi, 'nominal policy'
    behaviour = np.array(phi, dtype=np.float64)
    behaviour[-problem.model.action_dim:] += math.log(noise)
    return problem, behaviour, f'nominal policy with action std x{noise:g}'


def fit_behaviour(problem, observations: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
    """b_hat: the problem's policy class fitted to (observation, action) pairs -- its mean by least
    squares (L-BFGS from the class's deterministic initialisation, ``BEHAVIOUR_FIT_ITERATIONS``), its
    state-independent std the rms residual per action dimension (the maximum-likelihood std of that mean)."""
    policy = problem.policy
    phi = torch.tensor(policy.init_params(np.random.default_rng(0)), dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.LBFGS([phi], lr=1.0, max_iter=BEHAVIOUR_FIT_ITERATIONS, history_size=50,
                                  tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = (policy.mean(phi, observations) - actions).pow(2).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        residual = (policy.mean(phi, observations) - actions).reshape(-1, actions.shape[-1])
        fitted = phi.detach().clone()
        fitted[-actions.shape[-1]:] = 0.5 * torch.log(torch.clamp(residual.pow(2).mean(0), min=1e-12))
    return fitted.numpy().copy()


class OfflineEstimator:
    """The residual-model estimators of the module docstring on one dataset."""

    DEFAULT_MIN_COVERAGE = DEFAULT_MIN_COVERAGE
    DEFAULT_MAX_ACTION_CHANGE = DEFAULT_MAX_ACTION_CHANGE

    def __init__(self, problem, dataset: Dataset, resamples: int = 100, pessimism: bool = True):
        self.problem, self.dataset, self.resamples = problem, dataset, int(resamples)
        self.pessimism = pessimism
        batch = Trajectories(states=np.concatenate([b.states for b in dataset.batches]),
                             actions=np.concatenate([b.actions for b in dataset.batches]),
                             rewards=np.concatenate([b.rewards for b in dataset.batches]),
                             dones=np.concatenate([b.dones for b in dataset.batches]),
                             log_probs=np.concatenate([b.log_probs for b in dataset.batches]), source='real')
        horizon = batch.actions.shape[1]
        states = torch.as_tensor(batch.states, dtype=DTYPE)
        self.observations = problem.model.observation(states[:, :-1])          # (n, T, k)
        self.actions = torch.as_tensor(batch.actions, dtype=DTYPE)
        self.theta_hat = problem.system_identification([batch], problem.theta0())
        self.behaviour_phi = fit_behaviour(problem, self.observations, self.actions)
        self.noise = problem.noise_of(self.behaviour_phi, self.theta_hat, batch)
        theta_phys = problem.model.split(problem.full_theta(torch.as_tensor(self.theta_hat, dtype=DTYPE)))[0]
        self.theta_full = torch.cat([theta_phys, torch.as_tensor(np.log(problem.task_weights), dtype=DTYPE)])
        discounts = problem.gamma ** np.arange(horizon)
        self.discounts = torch.as_tensor(discounts[:, None] * alive_mask(batch.dones).T, dtype=DTYPE)   # (T, n)
        self.time_weights = torch.as_tensor(discounts / discounts.sum(), dtype=DTYPE)
        self.key = batch.states.tobytes()
        self.data_action_change = self._action_change(self.actions.transpose(0, 1), self.discounts > 0)
        # the scale the ratio divides by: the data's own change, but at least a thousandth of the recorded
        # commands' rms, so that data whose commands never change (a held torque) give a large, finite
        # ratio that says so, not 1e150 (``action_change_ratio``)
        alive = (self.discounts > 0).transpose(0, 1).to(self.actions.dtype)
        rms = float(torch.sqrt((self.actions.pow(2).sum(-1) * alive).sum()
                               / torch.clamp(alive.sum() * self.actions.shape[-1], min=1.0)))
        self.action_change_scale = max(self.data_action_change, 1e-3 * rms, 1e-9)

    @staticmethod
    def _action_change(actions: torch.Tensor, alive: torch.Tensor) -> float:
        """rms of a_t - a_{t-1} (actions (T, n, k)) over the steps where both are alive (alive (T, n))."""
        both = (alive[1:] & alive[:-1]).to(actions.dtype)
        squares = (actions[1:] - actions[:-1]).pow(2).sum(-1) * both
        return float(torch.sqrt(squares.sum() / torch.clamp(both.sum() * actions.shape[-1], min=1.0)))

    def action_change_ratio(self, phi: np.ndarray) -> float:
        """rms of pi_phi's step-to-step action change along the re-simulated episodes (the estimate's own
        rollouts) over the recorded data's: about 1 on the behaviour; large when pi_phi commands changes
        faster than any the data show the robot's response to (``DEFAULT_MAX_ACTION_CHANGE``)."""
        with torch.no_grad():
            _, actions, _ = self.problem.rollout(torch.as_tensor(phi, dtype=DTYPE), self.theta_full, self.noise)
        return self._action_change(actions, self.discounts > 0) / self.action_change_scale

    def _returns(self, phi: torch.Tensor) -> torch.Tensor:
        """Per-episode discounted task returns (n,) of the re-simulated episodes."""
        _, _, rewards = self.problem.rollout(phi, self.theta_full, self.noise)
        return (self.discounts * rewards).sum(0)

    def _terms(self, phi: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._returns(torch.as_tensor(phi, dtype=DTYPE)).numpy()

    def value(self, phi: np.ndarray) -> float:
        return float(np.mean(self._terms(phi)))

    objective = value

    def gradient(self, phi: np.ndarray) -> np.ndarray:
        phi_t = torch.tensor(np.asarray(phi, dtype=np.float64), dtype=DTYPE, requires_grad=True)
        (gradient,) = torch.autograd.grad(self._returns(phi_t).mean(), phi_t)
        return gradient.numpy()

    def coverage(self, phi: np.ndarray) -> float:
        """Time-weighted mean over the recorded steps of the Bhattacharyya coefficient
        BC = prod_k sqrt(2 s1 s2 / (s1^2 + s2^2)) exp(-(m1 - m2)^2 / (4 (s1^2 + s2^2))) of pi_phi(.|o)
        and b_hat(.|o)."""
        policy = self.problem.policy
        with torch.no_grad():
            phi_t, behaviour = torch.as_tensor(phi, dtype=DTYPE), torch.as_tensor(self.behaviour_phi, dtype=DTYPE)
            s1, s2 = torch.exp(policy.log_std(phi_t)), torch.exp(policy.log_std(behaviour))
            variance = s1 ** 2 + s2 ** 2
            difference = policy.mean(phi_t, self.observations) - policy.mean(behaviour, self.observations)
            log_bc = (0.5 * torch.log(2 * s1 * s2 / variance) - difference ** 2 / (4 * variance)).sum(-1)  # (n, T)
            return float(torch.clamp((torch.exp(log_bc).mean(0) * self.time_weights).sum(), 0.0, 1.0))

    def interval(self, phi: np.ndarray, confidence: float) -> ReturnEstimate:
        terms = self._terms(phi)
        return bootstrap_interval(float(terms.mean()), len(terms), lambda chosen: float(terms[chosen].mean()),
                                  self.resamples, confidence, self.key)
