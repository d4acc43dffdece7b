"""Baselines with the same real-data accounting as the bi-level loop.

- nominal: the user's simulator, no adaptation (no real data);
- sysid: maximum likelihood of the learnable dynamics entries on all real transitions so far,
  then the inner solve (iterated: each iteration deploys the current policy);
- cmaes: CMA-ES over theta, each candidate scored by real episodes of its inner-optimal policy;
- spsa: simultaneous-perturbation gradient ascent over theta on real returns;
- real-rl: policy-gradient ascent on phi directly with real episodes (same estimator and policy
  class as the bi-level outer loop's real gradient);
- bilevel-exact-real-gradient: REFERENCE ONLY, not a method anyone can run on a robot: the
  bi-level loop with the exact real policy gradient (autograd of the hidden real model's
  objective) in place of the estimate from real episodes.
"""
from __future__ import annotations

import time

import numpy as np

from .outer import Adam, BilevelOuterLoop, MethodRun


class NominalRun(MethodRun):
    name = 'nominal'

    def iterate(self):
        # No adaptation: the policy stays the nominal simulator's optimum and no real data is used.
        return float('nan'), float('nan'), {}


class DomainRandomizationRun(MethodRun):
    """Domain randomisation: one inner solve on simulators drawn uniformly over the theta
    bounds (the problem's ``randomized_inner_solve``); no real data is used."""
    name = 'domain-randomization'

    def start(self):
        solve = getattr(self.problem, 'randomized_inner_solve', None)
        if solve is None:
            raise ValueError(f'domain randomisation needs a problem with randomized_inner_solve; '
                             f'{self.problem.source} ({self.problem.kind}) has none')
        t0 = time.perf_counter()
        self.set_policy(solve(self.rng))
        self.elapsed += time.perf_counter() - t0
        return self.record(grad_norm=float('nan'), estimate=float('nan'),
                           timing={'inner_s': time.perf_counter() - t0})

    def iterate(self):
        return float('nan'), float('nan'), {}


class SysIdRun(MethodRun):
    name = 'sysid'

    def iterate(self):
        t0 = time.perf_counter()
        batch = self.collect_real(self.phi)
        t1 = time.perf_counter()
        self.check_actuation_delay()
        self.theta = np.clip(self.identify(), self.lower, self.upper)
        t2 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, self.phi))
        timing = {'real_s': t1 - t0, 'sysid_s': t2 - t1, 'inner_s': time.perf_counter() - t2}
        return float('nan'), self.mean_real_return(batch), timing


class BlackBoxRun(MethodRun):
    """Shared by the black-box searches: score a theta by real episodes of phi*(theta)."""

    @property
    def batch_episodes(self) -> int:
        return self.config.score_episodes or self.config.real_episodes

    def score(self, theta: np.ndarray) -> float:
        result = self.solve_inner(theta, self.phi)
        return self.mean_real_return(self.collect_real(result.phi, keep=False, theta=theta))


class CMAESRun(BlackBoxRun):
    """One iteration = one CMA-ES generation (popsize candidates, each scored on real episodes)."""
    name = 'cmaes'

    def start(self):
        import cma
        span = self.upper - self.lower
        finite = np.isfinite(span)
        scale = np.where(finite, span, 1.0)
        options = {
            'bounds': [list(self.lower), list(self.upper)],
            'seed': int(self.rng.integers(1, 2**31 - 1)),
            'verbose': -9,
            'CMA_stds': list(scale),
        }
        if self.config.cma_popsize:
            options['popsize'] = self.config.cma_popsize
        self.es = cma.CMAEvolutionStrategy(list(self.theta), self.config.cma_sigma, options)
        return super().start()

    def iterate(self):
        t0 = time.perf_counter()
        candidates = self.es.ask()
        scores = [self.score(np.asarray(c, dtype=np.float64)) for c in candidates]
        self.es.tell(candidates, [-s for s in scores])
        t1 = time.perf_counter()
        self.theta = np.clip(np.asarray(self.es.mean, dtype=np.float64), self.lower, self.upper)
        self.set_policy(self.solve_inner(self.theta, self.phi))
        return float('nan'), float(np.mean(scores)), {'real_s': t1 - t0, 'inner_s': time.perf_counter() - t1}


class SPSARun(BlackBoxRun):
    """Spall's SPSA with the standard gain sequences, ascending the real return."""
    name = 'spsa'

    def iterate(self):
        k = self.iteration
        a_k = self.config.spsa_a / (k + 1 + max(1, self.config.iterations // 10)) ** 0.602
        c_k = self.config.spsa_c / (k + 1) ** 0.101
        delta = self.rng.choice([-1.0, 1.0], size=self.theta.size)
        t0 = time.perf_counter()
        plus = np.clip(self.theta + c_k * delta, self.lower, self.upper)
        minus = np.clip(self.theta - c_k * delta, self.lower, self.upper)
        j_plus, j_minus = self.score(plus), self.score(minus)
        gradient = (j_plus - j_minus) / ((plus - minus) + (plus == minus)) * (plus != minus)
        self.theta = np.clip(self.theta + a_k * gradient, self.lower, self.upper)
        t1 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, self.phi))
        return (float(np.linalg.norm(gradient)), 0.5 * (j_plus + j_minus),
                {'real_s': t1 - t0, 'inner_s': time.perf_counter() - t1})


class RealRLRun(MethodRun):
    """Policy-gradient RL on the real system, started from the nominal simulator's policy."""
    name = 'real-rl'

    def start(self):
        record = super().start()
        self.adam = Adam(self.phi.size, self.config.real_rl_step_size, self.config.adam_betas)
        return record

    def iterate(self):
        t0 = time.perf_counter()
        batch = self.collect_real(self.phi)
        self.real_batches = self.real_batches[-self.config.real_history:]
        gradient = self.problem.real_policy_gradient(self.phi, self.real_batches)
        self.phi = self.phi + self.adam.direction(gradient)
        self.inner_grad_norm = float('nan')
        return float(np.linalg.norm(gradient)), self.mean_real_return(batch), {'real_s': time.perf_counter() - t0}


class ExactRealGradientRun(BilevelOuterLoop):
    """REFERENCE ONLY (benchmark reporting; it reads the hidden real model): the bi-level loop
    of ``BilevelOuterLoop`` with the real policy gradient g = grad_phi J_real(phi) computed
    exactly by autograd of ``problem.real_objective`` instead of estimated from the real
    episodes.  Everything else is the bi-level loop's: the same real episodes are collected
    (so the real-data accounting and the random stream match ``bilevel`` run for run), the
    same sensitivity, solver, outer optimiser and inner solve.  Side by side with ``bilevel``
    it separates estimator failures (this reference succeeds where bi-level fails: the sampled
    real gradient is to blame) from landscape failures (this reference fails too: following
    the exact outer gradient from the nominal theta does not reach the target).

    Needs an exact real objective differentiable in phi (tabular, lqr); on a problem without one
    (the robots: a Monte-Carlo estimate) the first iteration raises ``ValueError``.  An LQR gain
    that destabilises the real system has no gradient (J_real = -inf): the iteration raises
    ``FloatingPointError``."""
    name = 'bilevel-exact-real-gradient'

    def __init__(self, problem, config, *args, **kwargs):     # BilevelOuterLoop's arguments, whatever they are
        super().__init__(_ExactRealGradient(problem), config, *args, **kwargs)


class _ExactRealGradient:
    """A problem whose ``real_policy_gradient`` is the exact grad_phi J_real(phi) (batches unused);
    every other attribute is the wrapped problem's."""

    def __init__(self, problem):
        self._problem = problem

    def __getattr__(self, name):
        if name == '_problem':          # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._problem, name)

    def real_policy_gradient(self, phi, batches, theta=None) -> np.ndarray:
        import torch
        phi_t = torch.as_tensor(phi, dtype=torch.float64).clone().requires_grad_(True)
        value = self._problem.real_objective(phi_t)
        if not torch.isfinite(value):
            raise FloatingPointError(f'the exact real objective is {float(value)} at this policy (an LQR gain '
                                     'that destabilises the real system?): no exact real gradient')
        if not value.requires_grad:
            raise ValueError(f'{ExactRealGradientRun.name} is a reference that needs the exact real objective as '
                             f'a differentiable function of the policy; {self._problem.source} '
                             f'({self._problem.kind}) has none')
        (gradient,) = torch.autograd.grad(value, phi_t)
        return gradient.detach().numpy()
