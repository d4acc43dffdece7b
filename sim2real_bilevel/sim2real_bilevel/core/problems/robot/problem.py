"""``RobotProblem``: the torque-controlled pendulum (see the package docstring)."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ...evaluation import ReturnEstimate
from ...problem import (BilevelProblem, InnerResult, JointLimits, ResetResponse, SensitivityTerms, Trajectories,
                        alive_mask, require_finite_policy, warm_torch_func)
from ...robot_model import THETA_NAMES, PendulumGeometry, PendulumModel
from .config import REAL_GRADIENT_ESTIMATORS, REAL_GRADIENT_MODELS, InnerSettings, read_problem_file
from .estimators import cross_fitted_values, gae, value_features
from .guard import ADAM_RESTARTS, LBFGS_RESTARTS, FiniteGuard, NonFiniteInnerSolve
from .simulator import DTYPE, CommonNoise, InitialStateRange, PendulumSimulatorFamily, history_arguments, make_policy
from .stepwise import PendulumController, PendulumRealSystem

LOGGER = logging.getLogger(__name__)
MAX_PARALLEL_EPISODES = 64       # emulators stepped side by side (one pybullet client each)
INNER_SOLVERS = ('exact', 'sampled', 'ppo')
RESET_NEWTON_STEPS = 4         # reset_response: the hold commands converge in 2-3 (the saturation is smooth)
UNCONVERGED_FACTOR = 100.0
"""A cold exact solve that ends with ||F|| above this many times ``inner.tolerance`` is far from any
stationary point: its policy may sit on a poor slope of J_sim that every method then starts from.
It is solved again from other initial policies (``inner.cold_restarts``, the best J_sim on the CRN
set kept), and the one kept is reported when it is still that far (``InnerResult.info['unconverged']``,
a warning).  Measured (config/pendulum_urdf.yaml, inner.seed 0, 50 Adam warm-up steps): J_sim 14.4 at
||F|| 389 = 1 947 x tolerance, normalised real return 0.20, where seeds 1-3 reached J_sim 56-58
(0.76-0.97); the same CRN set from the next initial policy reached J_sim 56.7 at 6 x.  The same
factor as ``OuterConfig.first_order_above``."""
PPO_EPOCHS, PPO_CLIP, PPO_GAE_LAMBDA = 4, 0.2, 0.95


DELAY_SHIFTS = 2
"""``actuation_delay_evidence`` tries commands acting 1..this many control periods late."""


@dataclasses.dataclass(frozen=True)
class DelayEvidence:
    """What real transitions say about an actuation delay the simulator family lacks: sysid's fit
    with every command acting ``steps`` control periods late (the best of the shifts tried)
    against its fit with the commands as sent.  ``gain``: the mean, over episodes, of each
    episode's mean log-likelihood gain per transition; ``low``/``high``: its Student-t interval;
    ``favouring``: the episodes whose gain is positive."""
    steps: int
    gain: float
    low: float
    high: float
    episodes: int
    favouring: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval lies above 0 (False with fewer than two episodes: no interval)."""
        return bool(self.low > 0)

    def describe(self, control_period: float) -> str:
        return (f'real transitions under sysid\'s fit of a simulator whose commands act {self.steps} control '
                f'period{"s" if self.steps > 1 else ""} ({1e3 * self.steps * control_period:.3g} ms) late, against '
                f'its fit with commands acting at once: log-likelihood {self.gain:+.3g} per transition '
                f'[{self.low:+.3g}, {self.high:+.3g}] ({100 * self.confidence:g} % interval over {self.episodes} '
                f'episodes; {self.favouring} of them favour the delay)')


def better_start(warm: InnerResult, cold: InnerResult) -> str:
    """``inner.start: best``'s rule: 'cold' when the cold solve reached the higher J_sim on the CRN set
    (``info['objective']``), else 'warm'; a non-finite objective loses."""
    warm_objective, cold_objective = warm.info['objective'], cold.info['objective']
    return 'cold' if np.isfinite(cold_objective) and not warm_objective >= cold_objective else 'warm'


class _NonFiniteEvaluation(Exception):
    """Raised by the L-BFGS closure to leave the step at a non-finite evaluation (``FiniteGuard``)."""


class RobotProblem(PendulumSimulatorFamily, BilevelProblem):
    kind = 'robot'

    def __init__(self, *, source: str, gamma: float, horizon: int, geometry: PendulumGeometry,
                 initial: InitialStateRange, task_weights: np.ndarray, real_parameters, real_substeps: int,
                 nominal_full: np.ndarray, learn_mask: np.ndarray, lower_full: np.ndarray,
                 upper_full: np.ndarray, transition_noise_std: np.ndarray, hidden_sizes: tuple[int, ...],
                 initial_std: float, inner: InnerSettings, evaluation_episodes: int, evaluation_seed: int,
                 outer_defaults: Optional[dict] = None, policy=None, real_gradient_lambda: float = 1.0,
                 real_gradient_estimator: str = 'pathwise', real_gradient_model: str = 'identified', model=None,
                 theta_names_full=THETA_NAMES):
        """``model``: the simulator's f_theta, R_theta (default: the pendulum's ``PendulumModel``
        of ``geometry``); ``theta_names_full``: the names of its full parameter vector."""
        self.source = source
        self.gamma = gamma
        self.horizon = horizon
        self.geometry = geometry
        self.initial = initial
        self.task_weights = np.asarray(task_weights, dtype=np.float64)
        self._real_parameters = real_parameters      # hidden: only the emulator and the oracle read it
        self._real_substeps = real_substeps
        self.nominal_full = np.asarray(nominal_full, dtype=np.float64)
        self.learn_mask = np.asarray(learn_mask, dtype=bool)
        self.learn_index = np.flatnonzero(self.learn_mask)
        self._lower_full, self._upper_full = lower_full, upper_full
        self.model = model if model is not None else PendulumModel(geometry, transition_noise_std)
        self.policy = policy if policy is not None else make_policy(hidden_sizes, initial_std, self.model.observation_dim,
                                                                    self.model.action_dim)
        self.inner = inner
        self.evaluation_episodes = evaluation_episodes
        self.evaluation_seed = evaluation_seed
        self.outer_defaults = dict(outer_defaults or {})
        self.theta_names = [theta_names_full[i] for i in self.learn_index]
        self._discounts = gamma ** torch.arange(horizon, dtype=DTYPE)
        self._crn = CommonNoise.draw(inner.episodes, horizon, initial, np.random.default_rng([inner.seed, 1]))
        self._crn_offsets = self._randomization_offsets()
        self._emulators: list = []
        self.real_gradient_lambda = real_gradient_lambda
        if real_gradient_estimator not in REAL_GRADIENT_ESTIMATORS:
            raise ValueError(f'real_gradient_estimator={real_gradient_estimator!r}: expected one of '
                             f'{REAL_GRADIENT_ESTIMATORS}')
        self.real_gradient_estimator = real_gradient_estimator
        if real_gradient_model not in REAL_GRADIENT_MODELS:
            raise ValueError(f'real_gradient_model={real_gradient_model!r}: expected one of {REAL_GRADIENT_MODELS}')
        self.real_gradient_model = real_gradient_model
        self._oracle_phi: Optional[np.ndarray] = None
        self._unconverged_reports = 0          # cold solves that ended far from stationary (_report_unconverged)
        self._real_return_cache: dict[bytes, float] = {}
        self._cold_solves: dict[bytes, InnerResult] = {}

    def _randomized_entries(self) -> np.ndarray:
        """The full theta's entries that randomisation draws (domain randomisation, ``inner.randomize``):
        the learnable physical ones."""
        physical = np.arange(self.nominal_full.size) < self.model.n_physical
        return self.learn_mask & physical

    def _randomization_offsets(self) -> Optional[torch.Tensor]:
        """``inner.randomize``'s fixed per-rollout offsets of the full theta (episodes, F) for the CRN
        set: the learnable physical entries uniform within +- randomize x their bound range, the rest 0
        (drawn from their own seed, so the CRN noise is the same with or without); None when off."""
        if not self.inner.randomize:
            return None
        spread = np.where(self._randomized_entries(), self._upper_full - self._lower_full, 0.0)
        if not np.all(np.isfinite(spread)):
            raise ValueError(f'{self.source}: inner.randomize = {self.inner.randomize:g} needs finite bounds on '
                             f'every learnable physical entry of theta')
        rng = np.random.default_rng([self.inner.seed, 3])
        draws = rng.uniform(-1.0, 1.0, size=(self.inner.episodes, self.nominal_full.size))
        return torch.as_tensor(draws * self.inner.randomize * spread, dtype=DTYPE)

    def __getstate__(self) -> dict:
        """Pickled without what belongs to one process: the emulators (pybullet connections, made
        again on first use) and the caches of real returns and cold solves (solver 'resolve' sends
        the problem to its worker processes: ``core/solve_pool.py``)."""
        state = self.__dict__.copy()
        state.update(_emulators=[], _real_return_cache={}, _cold_solves={})
        return state

    # --- construction from a problem file ------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str, policy=None) -> 'RobotProblem':
        """Validate a loaded problem file and build the problem (``policy``: a policy object to use
        instead of the MLP the file describes)."""
        return cls(policy=policy, **read_problem_file(data, source))

    # --- the policy and the true parameters (the simulator family is ``PendulumSimulatorFamily``) ---
    def phi_size(self) -> int:
        return int(self.policy.num_params)

    def oracle_theta_full(self) -> np.ndarray:
        """True physical parameters and the task's reward weights (reporting only).  A zero
        true damping or friction maps to the lower bound of its log (exp(lower) ~ 0)."""
        p = self._real_parameters
        values = [p.payload_mass, p.damping, p.coulomb_friction, p.motor_gain]
        logs = [math.log(v) if v > 0 else self._lower_full[i] for i, v in enumerate(values)]
        return np.concatenate([logs, np.log(self.task_weights)])

    # --- differentiable simulation -------------------------------------------------------------------
    def inner_gradient(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(self.sim_objective)(phi, theta)

    # --- inner level -----------------------------------------------------------------------------------
    def inner_solve(self, theta: np.ndarray, phi_init: Optional[np.ndarray] = None, *, method: str = 'exact',
                    rng: Optional[np.random.Generator] = None, **options) -> InnerResult:
        theta_full = self.full_theta(torch.as_tensor(theta, dtype=DTYPE)).detach()
        if phi_init is not None and method == 'exact' and not options and self.inner.start == 'best':
            return self._best_of_warm_and_cold(theta, theta_full, phi_init, rng)
        if phi_init is not None or method != 'exact' or options:
            return self._solve(theta_full, phi_init, method=method, rng=rng, **options)
        # a cold exact solve is a deterministic function of theta (fixed CRN set and initial policy):
        # the methods of one experiment that all start at the nominal theta share it
        key = theta_full.numpy().tobytes()
        if key not in self._cold_solves:
            if len(self._cold_solves) >= 8:
                self._cold_solves.clear()
            self._cold_solves[key] = self._solve(theta_full, None, method=method, rng=rng)
        solved = self._cold_solves[key]
        return InnerResult(phi=solved.phi.copy(), grad_norm=solved.grad_norm, iterations=solved.iterations,
                           info=dict(solved.info))

    def continued_solve(self, theta: np.ndarray, phi: np.ndarray) -> InnerResult:
        """The warm exact solve from ``phi`` alone, whatever ``inner.start`` says (a cold solve's
        basin would make the finite differences of solver 'resolve' jump)."""
        return self._solve(self.full_theta(torch.as_tensor(theta, dtype=DTYPE)).detach(),
                           np.asarray(phi, dtype=np.float64), method='exact', rng=None)

    def _best_of_warm_and_cold(self, theta, theta_full: torch.Tensor, phi_init: np.ndarray,
                               rng: Optional[np.random.Generator]) -> InnerResult:
        """``inner.start: best``: the warm solve from ``phi_init`` and the cold one at the same theta,
        whichever reaches the higher J_sim on the CRN set (a non-finite objective loses).  A
        warm chain can stay in the basin of a policy solved for another theta (measured on the
        swing-up: J_sim 4.4 warm against 9.8 cold at sysid's first fit); the cold solve is a
        deterministic function of theta, cached.  info: ``start`` (which), both objectives.  A solve
        that finds no finite iterate at all (``NonFiniteInnerSolve``) loses to the other one, its
        objective NaN and its error in info (``warm_error`` / ``cold_error``); both failing raises
        the warm solve's error."""
        solves, errors = {}, {}
        for start, solve in (('warm', lambda: self._solve(theta_full, phi_init, method='exact', rng=rng)),
                             ('cold', lambda: self.inner_solve(theta, None, method='exact', rng=rng))):
            try:
                solves[start] = solve()
            except NonFiniteInnerSolve as err:
                errors[start] = err
        if not solves:
            raise errors['warm']
        start = better_start(solves['warm'], solves['cold']) if len(solves) == 2 else next(iter(solves))
        chosen = solves[start]
        chosen.info['start'] = start
        for which in ('warm', 'cold'):
            chosen.info[f'{which}_objective'] = solves[which].info['objective'] if which in solves else math.nan
        for which, err in errors.items():
            chosen.info[f'{which}_error'] = str(err)
        return chosen

    def warm_up(self) -> None:
        warm_torch_func()                  # the sensitivities' grad / jvp (a sensitivity node does no inner solve)

    def inner_tolerance(self) -> float:
        return float(self.inner.tolerance)

    def _solve(self, theta_full: torch.Tensor, phi_init: Optional[np.ndarray], *, method: str,
               rng: Optional[np.random.Generator], max_iterations: Optional[int] = None,
               tolerance: Optional[float] = None, crn: Optional[CommonNoise] = None,
               budget: str = 'inner.cold_iterations', start: int = 0) -> InnerResult:
        """Minimise -J_sim on the CRN set ``crn`` (default: the problem's) from ``phi_init``, or,
        cold (``phi_init`` None), from the initial policy number ``start`` of ``inner.seed``; a cold
        exact solve ending far from stationary is restarted (``_restarted``).  ``budget``: the
        setting that gives a cold solve's iterations (named in the report)."""
        settings = self.inner
        crn = self._crn if crn is None else crn
        tolerance = settings.tolerance if tolerance is None else tolerance
        started = time.perf_counter()
        cold = phi_init is None
        if max_iterations is None:
            max_iterations = settings.cold_iterations if cold else settings.max_iterations
        if cold:
            phi_init = self.policy.init_params(np.random.default_rng([settings.seed, 2] + ([start] if start else [])))
        phi = torch.tensor(np.asarray(phi_init, dtype=np.float64), dtype=DTYPE, requires_grad=True)

        def loss_on(noise):
            return -self.sim_objective(phi, theta_full, noise, full=True)

        def crn_grad_norm():
            return self._crn_grad_norm(phi, theta_full, crn)

        # a non-finite loss, gradient or parameter stops the solve at the last finite iterate (guard.py)
        guard = FiniteGuard(self, phi, theta_full, crn, method)
        if method == 'sampled':
            rng = rng if rng is not None else np.random.default_rng()
            iterations = self._adam(phi, max_iterations, lambda: loss_on(
                CommonNoise.draw(settings.sampled_episodes, self.horizon, self.initial, rng)),
                guard, stop=lambda: crn_grad_norm() <= tolerance, check_every=10)
        elif method == 'ppo':
            rng = rng if rng is not None else np.random.default_rng()
            iterations = self._ppo(phi, theta_full, max_iterations, rng, guard,
                                   stop=lambda: crn_grad_norm() <= tolerance)
        elif method == 'exact':
            guard.solver = 'exact, Adam warm-up'
            iterations = self._adam(phi, settings.warmup_iterations, lambda: loss_on(crn), guard) if cold else 0
            guard.solver, guard.keep_lowest = 'exact, L-BFGS; iteration = function evaluation', True
            iterations += self._lbfgs(phi, lambda: loss_on(crn), max_iterations, tolerance, guard)
        else:
            raise ValueError(f"inner_solve: method={method!r}: expected one of {INNER_SOLVERS}")
        guard.finish(iterations)
        guard.raise_if_nothing_kept()
        info = {'method': method, 'seconds': time.perf_counter() - started,
                'objective': float(-loss_on(crn).detach())}
        if guard.report is not None:
            info['non_finite'] = guard.report
        solved = InnerResult(phi=phi.detach().numpy().copy(), grad_norm=crn_grad_norm(), iterations=iterations,
                             info=info)
        if cold and method == 'exact' and start == 0:
            return self._restarted(solved, tolerance, budget, max_iterations, lambda k: self._solve(
                theta_full, None, method=method, rng=rng, max_iterations=max_iterations, tolerance=tolerance,
                crn=crn, budget=budget, start=k))
        return solved

    def _restarted(self, first: InnerResult, tolerance: float, budget: str, iterations: int,
                   solve_from) -> InnerResult:
        """``first``, a cold exact solve, or -- when it ended above ``UNCONVERGED_FACTOR`` x its
        tolerance -- the best by J_sim (``better_start``) of it and the solves from initial policies
        1, 2, ... (``solve_from(k)``), at most ``inner.cold_restarts`` of them, stopping at the first
        that ends within the factor.  info: ``cold_starts`` (each start's objective and ||F||) and
        ``cold_start`` (the one kept) when restarted; ``unconverged`` (and a warning: the first of
        this problem, later ones at INFO) when the one kept still ended that far."""
        def far(result: Optional[InnerResult]) -> bool:      # None: a start without a finite iterate
            ratio = math.nan if result is None else result.grad_norm / tolerance
            return not ratio <= UNCONVERGED_FACTOR

        solves = {0: first}
        while far(solves[len(solves) - 1]) and len(solves) <= self.inner.cold_restarts:
            try:
                solves[len(solves)] = solve_from(len(solves))
            except NonFiniteInnerSolve as err:      # no finite iterate from that start: the next one
                LOGGER.info(f'{self.source}: cold restart {len(solves)}: {err}')
                solves[len(solves)] = None
        finished = {k: result for k, result in solves.items() if result is not None}
        kept = 0
        for k, result in finished.items():
            if better_start(finished[kept], result) == 'cold':
                kept = k
        chosen = finished[kept]
        if len(solves) > 1:
            chosen.info['cold_start'] = kept
            chosen.info['cold_starts'] = [
                {'start': k, 'objective': result.info['objective'] if result is not None else math.nan,
                 'grad_norm': float(result.grad_norm) if result is not None else math.nan}
                for k, result in solves.items()]
        if far(chosen):
            self._report_unconverged(chosen, tolerance, budget, iterations, len(solves))
        return chosen

    def _report_unconverged(self, solved: InnerResult, tolerance: float, budget: str, iterations: int,
                            starts: int) -> None:
        ratio = solved.grad_norm / tolerance
        solved.info['unconverged'] = {'grad_norm': float(solved.grad_norm), 'tolerance': float(tolerance),
                                      'ratio': float(ratio)}
        defaults = InnerSettings()
        tried = (f'the best J_sim of {starts} initial policies (inner.cold_restarts {self.inner.cold_restarts})'
                 if starts > 1 else 'inner.cold_restarts 0')
        message = (f'{self.source}: a cold inner solve (inner.seed {self.inner.seed}: '
                   f'{self.inner.warmup_iterations} Adam warm-up steps, then L-BFGS within {budget} {iterations}; '
                   f'{tried}) ended at ||F|| {solved.grad_norm:.3g}, {ratio:.0f} x inner.tolerance {tolerance:g}, '
                   f'with J_sim {solved.info["objective"]:.4g}: far from a stationary point, so every method starts '
                   'from a policy that may be a poor one.  Raise inner.warmup_iterations (default '
                   f'{defaults.warmup_iterations}) or {budget} (default {getattr(defaults, budget.split(".")[1])}), '
                   'or compare J_sim over a few inner.seed values')
        self._unconverged_reports += 1
        LOGGER.log(logging.WARNING if self._unconverged_reports == 1 else logging.INFO, message)

    def _ppo(self, phi: torch.Tensor, theta_full: torch.Tensor, iterations: int, rng: np.random.Generator,
             guard: FiniteGuard, stop, check_every: int = 5) -> int:
        """PPO-style actor-critic on fresh simulated episodes: per iteration, sampled_episodes
        rollouts of the current policy (no gradient through the simulator: the learner only
        needs samples, as it would with a black-box simulator), GAE(0.95) advantages from a
        linear value function on quadratic observation features, then PPO_EPOCHS Adam steps
        on the clipped surrogate plus the entropy bonus and ridge of J_sim.  Stops on the CRN
        ||F|| (checked every ``check_every`` iterations) or after ``iterations``, or at the last
        finite iterate when a loss, gradient or parameter is not finite (``guard``)."""
        settings = self.inner
        optimizer = torch.optim.Adam([phi], lr=settings.learning_rate)
        for k in range(iterations):
            if k % check_every == 0 and stop():
                return k
            noise = CommonNoise.draw(settings.sampled_episodes, self.horizon, self.initial, rng)
            with torch.no_grad():
                states, actions, rewards = self.rollout(phi, theta_full, noise)
                observations = self.model.observation(states)                      # (T+1, N, 3)
                old_log_probs = self.policy.log_prob(phi, observations[:-1], actions)
            if not guard.accept_rollout(k, states, rewards, old_log_probs):
                return k
            horizon = rewards.shape[0]
            advantages = self._advantages(rewards.T.numpy(), observations.transpose(0, 1).numpy(), PPO_GAE_LAMBDA)
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-12)
            advantages_t = torch.as_tensor(advantages.T, dtype=DTYPE)              # (T, N)
            for _ in range(PPO_EPOCHS):
                ratio = torch.exp(self.policy.log_prob(phi, observations[:-1], actions) - old_log_probs)
                surrogate = torch.minimum(ratio * advantages_t,
                                          torch.clamp(ratio, 1 - PPO_CLIP, 1 + PPO_CLIP) * advantages_t).mean()
                loss = -(surrogate + settings.entropy * self.policy.log_std(phi).sum() / horizon
                         - 0.5 * settings.l2 * (phi ** 2).sum() / horizon)
                optimizer.zero_grad()
                loss.backward()
                if not guard.accept(k, loss):
                    return k
                optimizer.step()
        return iterations

    def _crn_grad_norm(self, phi: torch.Tensor, theta_full: torch.Tensor,
                       crn: Optional[CommonNoise] = None) -> float:
        point = phi.detach().clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.sim_objective(point, theta_full, crn, full=True), point)
        return float(gradient.norm())

    def _adam(self, phi, iterations, loss, guard: FiniteGuard, stop=None, check_every=10) -> int:
        """Adam steps on ``loss``.  A non-finite value puts phi back to the last finite iterate
        (``guard``); Adam goes on from there with fresh moments and half the step size, at most
        ADAM_RESTARTS times, then stops."""
        learning_rate, restarts = self.inner.learning_rate, 0
        guard.then = f'; Adam goes on from it with fresh moments and half the step (at most {ADAM_RESTARTS} times)'
        optimizer = torch.optim.Adam([phi], lr=learning_rate)
        for k in range(iterations):
            if stop is not None and k % check_every == 0 and stop():
                return k
            optimizer.zero_grad()
            value = loss()
            value.backward()
            if not guard.accept(k, value):
                if restarts == ADAM_RESTARTS:
                    return k
                restarts, learning_rate = restarts + 1, 0.5 * learning_rate
                optimizer = torch.optim.Adam([phi], lr=learning_rate)
                continue
            optimizer.step()
        return iterations

    def _lbfgs(self, phi, loss, max_iterations, tolerance, guard: FiniteGuard) -> int:
        """L-BFGS (strong Wolfe) on ``loss``.  A non-finite loss, gradient or parameter at any
        evaluation (line-search trials too) puts phi back to the best finite evaluation
        (``guard``), and L-BFGS restarts from there with a fresh memory, at most LBFGS_RESTARTS
        times and within ``max_iterations`` in all."""
        evaluations = done = 0
        guard.then = f'; L-BFGS restarts from it with a fresh memory (at most {LBFGS_RESTARTS} times)'
        for restart in range(LBFGS_RESTARTS + 1):
            optimizer = torch.optim.LBFGS([phi], lr=1.0, max_iter=max_iterations - done, history_size=50,
                                          tolerance_grad=tolerance / math.sqrt(phi.numel()), tolerance_change=0.0,
                                          line_search_fn='strong_wolfe')

            def closure():
                nonlocal evaluations
                optimizer.zero_grad()
                value = loss()
                value.backward()
                evaluations += 1
                if not guard.accept(evaluations, value):
                    raise _NonFiniteEvaluation
                return value

            try:
                optimizer.step(closure)
                return done + int(optimizer.state[phi].get('n_iter', 0))
            except _NonFiniteEvaluation:
                done += int(optimizer.state[phi].get('n_iter', 0))
                if done >= max_iterations or restart == LBFGS_RESTARTS:
                    return done
        return done

    # --- sampled trajectories and sensitivities --------------------------------------------------------
    @property
    def default_sim_episodes(self) -> int:
        return self.inner.episodes

    @property
    def default_sim_horizon(self) -> int:
        return self.horizon

    def sensitivity_terms(self, phi: np.ndarray, theta: np.ndarray, *, method: str = 'exact',
                          trajectories: Optional[Trajectories] = None,
                          rng: Optional[np.random.Generator] = None) -> SensitivityTerms:
        """Operator form of dF/dphi and dF/dtheta (the P x P Hessian is never formed).

        'exact': derivatives of the F the inner solver zeroes (the fixed CRN set).
        'sampled': the same derivatives on other random numbers -- those of ``trajectories``
        (recovered by ``noise_of``), or a fresh draw from ``rng`` -- a Monte-Carlo estimate
        of the linearisation of the expected objective.

        F's graph is built once (create_graph) and each product is one backward pass through
        it: forward-over-reverse (torch.func.jvp of grad) would trace the T-step Python loop again
        for every product.  F = grad_phi J is a gradient, so dF/dphi is symmetric and
        hvp_t = hvp.
        """
        if method == 'exact':
            noise = None
        elif method == 'sampled':
            if trajectories is not None:
                noise = self.noise_of(phi, theta, trajectories)
            else:
                rng = rng if rng is not None else np.random.default_rng()
                noise = CommonNoise.draw(self.inner.episodes, self.horizon, self.initial, rng)
        else:
            raise ValueError(f"sensitivity_terms: method={method!r}: expected 'exact' or 'sampled'")
        phi_t = torch.tensor(np.asarray(phi, dtype=np.float64), dtype=DTYPE, requires_grad=True)
        theta_t = torch.tensor(np.asarray(theta, dtype=np.float64), dtype=DTYPE, requires_grad=True)
        started = time.perf_counter()
        (residual,) = torch.autograd.grad(self.sim_objective(phi_t, theta_t, noise), phi_t, create_graph=True)

        def hvp(vector):
            (product,) = torch.autograd.grad(residual, phi_t, grad_outputs=torch.as_tensor(vector, dtype=DTYPE),
                                             retain_graph=True)
            return product.detach()

        def vjp_theta(vector):
            (product,) = torch.autograd.grad(residual, theta_t, grad_outputs=torch.as_tensor(vector, dtype=DTYPE),
                                             retain_graph=True, allow_unused=True)
            return torch.zeros_like(theta_t) if product is None else product.detach()

        def jvp_theta(vector):
            # dF/dtheta w from the same graph: the VJP is linear in its cotangent u, so
            # differentiating <vjp_theta(u), w> with respect to u gives dF/dtheta w.
            cotangent = torch.zeros_like(residual, requires_grad=True)
            (pullback,) = torch.autograd.grad(residual, theta_t, grad_outputs=cotangent, create_graph=True,
                                              retain_graph=True)
            (product,) = torch.autograd.grad(pullback, cotangent, grad_outputs=torch.as_tensor(vector, dtype=DTYPE),
                                             retain_graph=True)
            return product.detach()

        return SensitivityTerms(hvp=hvp, hvp_t=hvp, vjp_theta=vjp_theta,
                                info={'method': method, 'symmetric': True, 'jvp_theta': jvp_theta,
                                      'phi_size': int(phi_t.numel()), 'theta_size': int(theta_t.numel()),
                                      'residual_norm': float(residual.detach().norm()),
                                      'graph_seconds': time.perf_counter() - started,
                                      'episodes': int((self._crn if noise is None else noise).initial_states.shape[0])})

    # --- real system -----------------------------------------------------------------------------------
    def make_emulator(self):
        """A fresh pybullet emulator with the hidden true parameters (real episodes, ``real_system``)."""
        from ...robots import PendulumEmulator
        g = self.geometry
        return PendulumEmulator(self._real_parameters, link_length=g.link_length, rod_mass=g.rod_mass,
                                rod_radius=g.rod_radius, gravity=g.gravity, control_period=g.control_period,
                                physics_substeps=self._real_substeps,
                                initial_position_range=self.initial.position,
                                initial_velocity_range=self.initial.velocity)

    def _emulator_pool(self, size: int) -> list:
        """``size`` emulators (created on first use, kept): real episodes run side by side."""
        while len(self._emulators) < size:
            self._emulators.append(self.make_emulator())
        return self._emulators[:size]

    def real_episodes(self, phi: np.ndarray, seeds) -> tuple[np.ndarray, ...]:
        """Episodes of pi_phi on the emulated robot, one per seed (each seed fixes that
        episode's initial state, sensor noise and action noise, so an episode does not depend
        on which others run beside it).  Returns measured states (n, T+1, 2), commanded
        efforts (n, T, 1), task rewards on the measurements (n, T) and log pi (n, T).

        The episodes run in lockstep on separate emulators so that one batched policy call
        serves them all; each emulator still sees only its own command stream.

        With a termination, an episode stops at its first terminal state (after the first), as the
        hardware bridge stops it: its emulator is not stepped again, and the episode holds that
        state with zero commands up to the horizon (``PendulumController.batch``)."""
        require_finite_policy(phi, f'{self.source}: real episodes')
        seeds = [int(seed) for seed in seeds]
        if len(seeds) > MAX_PARALLEL_EPISODES:
            chunks = [self.real_episodes(phi, seeds[i:i + MAX_PARALLEL_EPISODES])
                      for i in range(0, len(seeds), MAX_PARALLEL_EPISODES)]
            return tuple(np.concatenate(parts) for parts in zip(*chunks))
        emulators = self._emulator_pool(len(seeds))
        action_rngs = [np.random.default_rng([seed, 7]) for seed in seeds]
        phi_t = torch.as_tensor(phi, dtype=DTYPE)
        states = np.empty((len(seeds), self.horizon + 1, self.model.state_dim))
        actions = np.empty((len(seeds), self.horizon, self.model.action_dim))
        samples = [emulator.reset(seed) for emulator, seed in zip(emulators, seeds)]
        ended = np.zeros(len(seeds), dtype=bool)
        with torch.no_grad():
            std = np.exp(self.policy.log_std(phi_t).numpy())
            for t in range(self.horizon):
                states[:, t] = [list(sample.position) + list(sample.velocity) for sample in samples]
                state_t = torch.as_tensor(states[:, t], dtype=DTYPE)
                terminal = self.terminal_states(state_t) if t else None
                if terminal is not None:
                    ended |= terminal.numpy()
                mean = self.policy.mean(phi_t, self.model.observation(state_t))
                actions[:, t] = mean.numpy() + std * np.array([rng.standard_normal(self.model.action_dim)
                                                               for rng in action_rngs])
                actions[ended, t] = 0.0
                for i, (emulator, action) in enumerate(zip(emulators, actions[:, t])):
                    if not ended[i]:
                        emulator.apply_effort(action)
                        samples[i] = emulator.step()
            states[:, -1] = [list(sample.position) + list(sample.velocity) for sample in samples]
        rewards, log_probs = self.score_episodes(phi, states, actions)
        return states, actions, rewards, log_probs

    def score_episodes(self, phi: np.ndarray, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Task rewards (n, T) and log pi_phi (n, T) of measured episodes: states (n, T+1, 2),
        efforts (n, T, 1) -- what the robot's own data gives, wherever it was collected.  With a
        termination, rewards after an episode's end (``episode_dones``) are zero."""
        with torch.no_grad():
            phi_t = torch.as_tensor(phi, dtype=DTYPE)
            states_t = torch.as_tensor(states, dtype=DTYPE)
            actions_t = torch.as_tensor(actions, dtype=DTYPE)
            task_log_weights = torch.as_tensor(np.log(self.task_weights), dtype=DTYPE)
            rewards = self.model.reward(states_t[:, :-1], actions_t, task_log_weights).numpy()
            log_probs = self.policy.log_prob(phi_t, self.model.observation(states_t[:, :-1]), actions_t).numpy()
        return np.where(alive_mask(self.episode_dones(states)), rewards, 0.0), log_probs

    def sample_real(self, phi: np.ndarray, n_episodes: int, rng: np.random.Generator) -> Trajectories:
        states, actions, rewards, log_probs = self.real_episodes(phi, rng.integers(0, 2 ** 31 - 1, size=n_episodes))
        dones = self.episode_dones(states)
        return Trajectories(states=states, actions=actions, rewards=rewards, dones=dones, log_probs=log_probs,
                            source='real')

    def real_system(self, rng: np.random.Generator) -> PendulumRealSystem:
        """A fresh emulator (``make_emulator``) one control period at a time (``stepwise``)."""
        return PendulumRealSystem(self, rng)

    @property
    def control_period(self) -> float:
        """Seconds of physical time per control step (what the controller's rate follows)."""
        return float(self.geometry.control_period)

    def controller(self, phi: np.ndarray, rng: np.random.Generator) -> PendulumController:
        """pi_phi one effort command at a time (``stepwise.PendulumController``)."""
        return PendulumController(self, require_finite_policy(phi, f'{self.source}: controller'), rng)

    def joints(self) -> tuple[JointLimits, ...]:
        """The pendulum's one joint; its description gives no limits (the bridge's own apply)."""
        from ...robots import JOINT_NAME
        return (JointLimits(JOINT_NAME),)

    def actuator_range(self) -> tuple[float, ...]:
        """The simulator's smooth command saturation (``simulator.effort_limit``)."""
        return (float(self.geometry.effort_limit),)

    def models_actuation_delay(self) -> bool:
        """Whether the simulator family delays commands (a ``delay`` entry, fixed or learnable):
        the hand-written pendulum's does not; its commands act at once."""
        return False

    def robot_description(self) -> str:
        """The URDF of the pendulum the user describes (rod, no payload: the payload is uncertain)."""
        from ...robots.pendulum import pendulum_urdf
        return pendulum_urdf(self.geometry.link_length, self.geometry.rod_mass, radius=self.geometry.rod_radius)

    def link_transforms(self, position) -> tuple[str, dict[str, np.ndarray]]:
        """The rod's link turned by the joint angle about y, in the base link."""
        from transforms3d.axangles import axangle2mat
        from ...robots.pendulum import BASE_LINK, PENDULUM_LINK
        transform = np.eye(4)
        transform[:3, :3] = axangle2mat([0.0, 1.0, 0.0], float(position[0]))
        return BASE_LINK, {BASE_LINK: np.eye(4), PENDULUM_LINK: transform}

    def start_pose(self) -> list[float]:
        """The middle of ``initial_state.position_range`` (the mean of the uniform initial angle),
        one per joint: the range is one (low, high) pair, or one row per joint."""
        ranges = np.asarray(self.initial.position, dtype=np.float64).reshape(-1, 2)
        return [float(value) for value in ranges.mean(axis=1)]

    def reset_response(self, pose: Optional[Sequence[float]] = None) -> Optional[ResetResponse]:
        """``BilevelProblem.reset_response`` from the simulator's one-step mean at the nominal
        theta: the hold commands by Newton's method on the velocity after one period from rest at
        ``pose`` (within the actuator range), then the diagonals of that velocity's Jacobians in
        the commands and in the positions there.  None when they are not finite, or a joint does
        not answer its own command."""
        pose = torch.tensor(self.start_pose() if pose is None else [float(q) for q in pose], dtype=DTYPE)
        n = pose.numel()
        theta_phys = self.model.split(self.full_theta(torch.as_tensor(self.theta0(), dtype=DTYPE)))[0].detach()
        limit = torch.tensor(self.actuator_range(), dtype=DTYPE)
        rest = torch.zeros(n, dtype=DTYPE)

        def velocity(command: torch.Tensor, position: torch.Tensor = pose) -> torch.Tensor:
            return self.model.step_mean(torch.cat([position, rest]), command, theta_phys)[n:]
        hold = torch.zeros(n, dtype=DTYPE)
        for _ in range(RESET_NEWTON_STEPS):
            try:
                step = torch.linalg.solve(torch.autograd.functional.jacobian(velocity, hold), velocity(hold))
            except RuntimeError:                      # singular: a joint the commands do not move
                return None
            hold = torch.clamp(hold - step, -limit, limit)
        by_command, by_position = torch.autograd.functional.jacobian(velocity, (hold, pose))
        response = ResetResponse(command=torch.diagonal(by_command).numpy().copy(),
                                 position=torch.diagonal(by_position).numpy().copy(), hold=hold.numpy().copy())
        finite = all(np.all(np.isfinite(v)) for v in (response.command, response.position, response.hold))
        return response if finite and np.all(response.command > 0) else None

    def real_policy_gradient(self, phi: np.ndarray, batches: list[Trajectories],
                             theta: Optional[np.ndarray] = None) -> np.ndarray:
        """g = grad_phi J_real(phi) from the newest real batch (collected with phi), by the
        ``real_gradient.estimator`` of the problem file: 'pathwise' (default) or 'reinforce'.

        The pathwise estimator differentiates the real trajectories through a model's Jacobians;
        ``real_gradient.model`` says which: 'identified' (default) the simulator at the
        maximum-likelihood fit of its dynamics entries to every batch given
        (``gradient_model_theta``), 'simulator' the simulator at ``theta`` (the outer loop's
        current theta, tuned for the policy's return and not for accuracy).  Measured on generated
        task 5 (bench/results/urdf_generated_tasks/estimator_check.py): along the three policy
        directions checked, the pathwise gradient at the outer loop's theta had the wrong sign on
        two in every one of 4 batches, at the fit the right sign on all three."""
        if self.real_gradient_estimator == 'pathwise':
            model_theta = self.theta0() if theta is None else theta
            if self.real_gradient_model == 'identified':
                model_theta = self.gradient_model_theta(batches, model_theta)
            return self.pathwise_real_gradient(phi, batches[-1], model_theta)
        return self.likelihood_ratio_real_gradient(phi, batches)

    def gradient_model_theta(self, batches: list[Trajectories], theta: np.ndarray) -> np.ndarray:
        """``theta`` with its learnable dynamics entries replaced by their maximum-likelihood fit
        to ``batches`` (``system_identification``, started from the nominal values: deterministic
        in the data, whatever path the outer loop took); the reward entries are ``theta``'s (the
        pathwise estimator uses the task's reward, not them)."""
        dynamics = np.asarray(self.theta_groups()['dynamics'], dtype=bool)
        return self.system_identification(batches, np.where(dynamics, self.theta0(), np.asarray(theta, dtype=np.float64)))

    def pathwise_real_gradient(self, phi: np.ndarray, batch: Trajectories, theta: np.ndarray) -> np.ndarray:
        """Pathwise gradient of the TASK return along the real trajectories (SVG(inf)-style,
        Heess et al. 2015): the random numbers of each real episode are recovered -- the
        policy's action noise exactly, the transition noise as the residuals of the simulator
        at ``theta`` (``noise_of``) -- so re-simulating them at phi reproduces the measured
        trajectory to rounding error; the gradient of the discounted task reward along that
        reproduction then uses the states the robot really visited and the simulator's
        Jacobians d s_{t+1} / d(s_t, a_t).  Biased only through those Jacobians (e.g. the
        robot's actuation delay is not in them); its variance is far below the
        likelihood-ratio estimator's, which weights whole returns by a score."""
        noise = self.noise_of(phi, theta, batch)
        theta_phys = self.model.split(self.full_theta(torch.as_tensor(theta, dtype=DTYPE)))[0]
        theta_full = torch.cat([theta_phys, torch.as_tensor(np.log(self.task_weights), dtype=DTYPE)])
        phi_t = torch.tensor(np.asarray(phi, dtype=np.float64), dtype=DTYPE, requires_grad=True)
        _, _, rewards = self.rollout(phi_t, theta_full, noise)
        task_return = (self._discounts[:rewards.shape[0], None] * rewards).sum(0).mean()
        (gradient,) = torch.autograd.grad(task_return, phi_t)
        return gradient.numpy()

    def likelihood_ratio_real_gradient(self, phi: np.ndarray, batches: list[Trajectories]) -> np.ndarray:
        """Likelihood-ratio gradient on the newest batch (collected with phi):

            g = 1/n sum_i sum_t gamma^t grad log pi(a_it|o_it) A_it,

        A the GAE(lambda) advantage of a linear value function V on quadratic features of the
        observation and time.  V is CROSS-FITTED to the discounted reward-to-go: V of the even
        episodes is fitted on the odd ones and vice versa, so it never sees the episode whose
        advantage it forms.  lambda = 1 is REINFORCE with that baseline (unbiased); smaller
        lambda trades a bias (V is only approximate) for much less variance.  One episode:
        no value function (plain REINFORCE)."""
        batch = batches[-1]
        rewards = np.where(alive_mask(batch.dones), batch.rewards, 0.0)
        n, horizon = rewards.shape
        discounts = self.gamma ** np.arange(horizon)
        observations = self.model.observation(torch.as_tensor(batch.states, dtype=DTYPE))
        advantages = self._advantages(rewards, observations.numpy(), self.real_gradient_lambda)
        weights = torch.as_tensor(discounts * advantages * alive_mask(batch.dones) / n, dtype=DTYPE)
        phi_t = torch.tensor(np.asarray(phi, dtype=np.float64), dtype=DTYPE, requires_grad=True)
        log_probs = self.policy.log_prob(phi_t, observations[:, :-1], torch.as_tensor(batch.actions, dtype=DTYPE))
        (gradient,) = torch.autograd.grad((weights * log_probs).sum(), phi_t)
        return gradient.numpy()

    def _advantages(self, rewards: np.ndarray, observations: np.ndarray, lam: float) -> np.ndarray:
        """GAE(lam) advantages (n, T) of rewards (n, T) from observations (n, T+1, k), with the
        linear value function cross-fitted to the discounted reward-to-go (V(s_T) = 0)."""
        horizon = rewards.shape[1]
        discounts = self.gamma ** np.arange(horizon)
        to_go = np.flip(np.cumsum(np.flip(rewards * discounts, 1), 1), 1) / discounts
        values = cross_fitted_values(value_features(observations, self.gamma, horizon), to_go)
        return gae(rewards, values, self.gamma, lam)

    def real_return(self, phi: np.ndarray) -> float:
        """Mean discounted real return of pi_phi over the fixed evaluation seeds (cached)."""
        phi = np.asarray(phi, dtype=np.float64)
        key = phi.tobytes()
        if key not in self._real_return_cache:
            discounts = self.gamma ** np.arange(self.horizon)
            seeds = self.evaluation_seed + np.arange(self.evaluation_episodes)
            returns = self.real_episodes(phi, seeds)[2] @ discounts
            if len(self._real_return_cache) > 256:
                self._real_return_cache.clear()
            self._real_return_cache[key] = float(np.mean(returns))
        return self._real_return_cache[key]

    def real_objective(self, phi: torch.Tensor) -> torch.Tensor:
        """The fixed-seed Monte-Carlo real return (not differentiable: the robot is not)."""
        return torch.tensor(self.real_return(phi.detach().numpy()), dtype=DTYPE)

    def oracle_phi(self) -> np.ndarray:
        """The oracle policy: exact inner optimum at the true physical parameters and the task
        reward (cold start, ``inner.oracle_iterations``), cached."""
        if self._oracle_phi is None:
            theta_full = torch.as_tensor(self.oracle_theta_full(), dtype=DTYPE)
            self._oracle_phi = self._solve(theta_full, None, method='exact', rng=None,
                                           max_iterations=self.inner.oracle_iterations,
                                           budget='inner.oracle_iterations').phi
        return self._oracle_phi

    def normalized_return(self, phi: np.ndarray) -> float:
        return self.real_return(phi) / self.real_return(self.oracle_phi())

    # --- baselines --------------------------------------------------------------------------------------
    def randomized_inner_solve(self, rng: np.random.Generator, phi_init: Optional[np.ndarray] = None,
                               episodes: Optional[int] = None) -> InnerResult:
        """Domain randomisation: the inner optimum of the in-sim return averaged over simulators
        whose learnable PHYSICAL entries are drawn uniformly (in natural units) within their
        bounds -- one draw per rollout of a fresh CRN set of ``episodes`` (default
        4 x inner.episodes) rollouts.  Reward weights keep their nominal (user) values."""
        episodes = 4 * self.inner.episodes if episodes is None else int(episodes)
        if episodes < 1:
            raise ValueError(f'randomized_inner_solve: episodes={episodes!r}: expected >= 1')
        lower, upper = np.exp(self._lower_full), np.exp(self._upper_full)
        randomized = self._randomized_entries()
        draws = np.tile(self.nominal_full, (episodes, 1))
        natural = rng.uniform(lower[randomized], upper[randomized], size=(episodes, int(randomized.sum())))
        draws[:, randomized] = np.log(natural)
        noise = CommonNoise.draw(episodes, self.horizon, self.initial, rng)
        theta_full = torch.as_tensor(draws, dtype=DTYPE)        # (episodes, F): one simulator per rollout
        return self._solve(theta_full, phi_init, method='exact', rng=rng, crn=noise)

    def system_identification(self, batches: list[Trajectories], theta_init: np.ndarray) -> np.ndarray:
        """Maximum likelihood of the learnable dynamics entries under the Gaussian transition
        model on every real transition up to each episode's end (``dones``: after a terminal
        state the batch holds it, nothing was measured; L-BFGS-B inside the bounds); reward
        entries keep their values in ``theta_init``."""
        from scipy.optimize import minimize
        ran = torch.as_tensor(np.concatenate([alive_mask(b.dones).reshape(-1) for b in batches]))
        parts = [self._transitions(b) for b in batches]
        next_states, states, actions = (torch.cat([part[i] for part in parts])[ran] for i in range(3))
        history = {key: torch.cat([part[3][key] for part in parts])[ran] for key in parts[0][3]}
        theta = np.asarray(theta_init, dtype=np.float64).copy()
        dynamics = self.theta_groups()['dynamics']
        if not dynamics.any():
            return theta
        lower, upper = self.theta_bounds()

        def negative_log_likelihood(values):
            candidate = torch.as_tensor(theta, dtype=DTYPE).clone()
            candidate[torch.as_tensor(dynamics)] = torch.as_tensor(values, dtype=DTYPE)
            candidate.requires_grad_(True)
            theta_phys = self.model.split(self.full_theta(candidate))[0]
            loss = -self.model.log_prob(next_states, states, actions, theta_phys, **history).mean()
            (gradient,) = torch.autograd.grad(loss, candidate)
            return float(loss.detach()), gradient[torch.as_tensor(dynamics)].numpy()

        result = minimize(negative_log_likelihood, theta[dynamics], jac=True, method='L-BFGS-B',
                          bounds=list(zip(lower[dynamics], upper[dynamics])))
        theta[dynamics] = result.x
        return theta

    def _transitions(self, batch: Trajectories) -> tuple:
        """(next states, states, commands, history) of every transition of ``batch`` in (episode,
        step) order, as the transition model takes them; ``history``: a delayed simulator's
        previous commands (``{}`` for one without)."""
        state_dim, action_dim = self.model.state_dim, self.model.action_dim
        history = {}
        if getattr(self.model, 'action_history', 0):
            history = {'history': history_arguments(self.model, torch.as_tensor(batch.actions, dtype=DTYPE)
                                                    .transpose(0, 1))['history'].transpose(0, 1)
                       .reshape((-1,) + (self.model.action_history, action_dim))}
        return (torch.as_tensor(batch.states[:, 1:].reshape(-1, state_dim), dtype=DTYPE),
                torch.as_tensor(batch.states[:, :-1].reshape(-1, state_dim), dtype=DTYPE),
                torch.as_tensor(batch.actions.reshape(-1, action_dim), dtype=DTYPE), history)

    def transition_log_likelihoods(self, batch: Trajectories, theta: np.ndarray) -> np.ndarray:
        """log p(s_t+1 | s_t, a_t; theta) of each real transition (n, T) under the simulator's
        Gaussian transition model, 0 after an episode's end."""
        next_states, states, actions, history = self._transitions(batch)
        theta_phys = self.model.split(self.full_theta(torch.as_tensor(theta, dtype=DTYPE)))[0]
        with torch.no_grad():
            values = self.model.log_prob(next_states, states, actions, theta_phys, **history)
        return np.where(alive_mask(batch.dones), values.numpy().reshape(batch.dones.shape), 0.0)

    def actuation_delay_evidence(self, batches: list[Trajectories], theta_init: np.ndarray,
                                 confidence: float = 0.95) -> Optional[DelayEvidence]:
        """Whether the real data say the robot's commands act later than the simulator's (a
        family without a ``delay`` entry; robots have communication and actuation latency): sysid
        fitted to the batches as sent, and again with every command shifted 1..``DELAY_SHIFTS``
        control periods later (the first ones under a zero command, as a robot holds before its
        first command); the shift whose fit explains the transitions best, against the fit as
        sent, per episode (``DelayEvidence``).  None where the family models a delay, has no
        dynamics entries to fit, or the batches hold fewer than two episodes.

        Measured (bench/results/fit_validation/, 30 first batches of 10 episodes on 12 robots): on
        the four generated URDF robots that delay their commands one step, the shifted fit gains +2.0
        to +289 per transition, on every episode; on the six without a delay, the iiwa and the
        swing-up it loses on every episode."""
        if self.models_actuation_delay() or not np.asarray(self.theta_groups()['dynamics']).any():
            return None
        if sum(b.dones.shape[0] for b in batches) < 2:
            return None

        def per_episode(data: list[Trajectories]) -> np.ndarray:
            fit = self.system_identification(data, theta_init)
            return np.concatenate([self.transition_log_likelihoods(b, fit).sum(1) / alive_mask(b.dones).sum(1)
                                   for b in data])

        as_sent = per_episode(batches)
        best = None
        for steps in range(1, DELAY_SHIFTS + 1):
            shifted = [dataclasses.replace(b, actions=np.concatenate(
                [np.zeros_like(b.actions[:, :steps]), b.actions[:, :-steps]], axis=1)) for b in batches]
            gains = per_episode(shifted) - as_sent
            if best is None or gains.mean() > best[1].mean():
                best = (steps, gains)
        steps, gains = best
        estimate = ReturnEstimate.of(gains, confidence)
        return DelayEvidence(steps=steps, gain=estimate.mean, low=estimate.low, high=estimate.high,
                             episodes=estimate.episodes, favouring=int((gains > 0).sum()), confidence=confidence)
