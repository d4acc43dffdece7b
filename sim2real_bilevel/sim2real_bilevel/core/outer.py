"""The outer level: Algorithm 1 of arXiv 2510.17709 as a resumable stepper.

One outer iteration:
  1. deploy pi_phi on the real system, collect ``real_episodes`` episodes;
  2. estimate the real policy gradient g = grad_phi J_real(phi) from them;
  3. linearise the inner optimality condition at (phi, theta) (exact or sampled terms);
  4. dJ_real/dtheta = (d phi*/d theta)^T g by one implicit-function solve;
  5. theta <- project(theta + optimiser step), then warm-start the inner solve at phi.

The stepper keeps all of its state in plain attributes (``state_dict``) so a ROS node or a
crash-safe runner can persist and resume it.  The three expensive calls (inner solve,
sensitivity, real episodes) are methods, so a distributed runner can replace them with
remote calls and keep the same arithmetic.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import checkpoint, implicit, solve_pool
from .evaluation import BestPolicy, Evaluator, ReturnEstimate
from .problem import BilevelProblem, InnerResult, Trajectories, alive_mask, require_finite_policy

log = logging.getLogger(__name__)

SOLVERS = ('dense', 'cg', 'first_order', 'resolve')
FAR_FROM_STATIONARY = ('first_order', 'resolve', 'skip')
LINEAR_SOLVERS = ('dense', 'cg', 'first_order')
"""The solvers that solve the implicit-function system ('resolve' re-solves the inner problem instead)."""
SENSITIVITY_METHODS = ('exact', 'sampled')
INNER_METHODS = ('exact', 'sampled', 'ppo')
THETA_STARTS = ('nominal', 'sysid')
ANCHORS = ('none', 'sysid', 'auto')
ANCHOR_OFFSETS = ('add', 'absorb')
UNMODELLED_DELAY_WARNING = 0.25
"""A real loop whose median sensing-to-command delay is at least this fraction of the control
period, on a simulator family without an actuation delay, is warned about (once per run)."""
DELAY_EVIDENCE_EPISODES = 20
"""Methods that fit theta to the real data ask the problem's ``actuation_delay_evidence`` at their
fits until it is significant, each time the real episodes have doubled since they last asked, up to
this many episodes (each time costs three sysid fits on all the data; where the evidence exists it
was clear at 10 episodes: bench/results/fit_validation/)."""


@dataclass
class OuterConfig:
    """Hyper-parameters of the bi-level outer loop (problem files may override defaults
    through their ``outer:`` section)."""
    iterations: int = 200
    """Outer iterations (each one deploys the policy on the real system)."""
    step_size: float = 0.05
    """Outer learning rate (Adam's alpha, or the SGD step); with ``step_per_range`` a fraction of each
    theta coordinate's bound range instead."""
    step_per_range: bool = False
    """True: coordinate i's step is ``step_size * (upper_i - lower_i)`` (its own bound range), so a log
    cost scale with range 9.2 and a cost correlation with range 0.6 each cross their box in about
    1 / step_size steps.  Problem files that set no ``step_size`` get this (``problems/common.py``
    ``default_step_rule``); a file that sets ``step_size`` keeps one absolute step for every coordinate."""
    step_shrink_on_flip: float = 1.0
    """Adam only, opt-in: a coordinate's step is multiplied by this each time its first moment (the
    smoothed outer gradient) changes sign, i.e. each time theta crosses a maximum along it; 1 = off.
    Not a default: with the sampled real gradient the first moment also flips on noise, and the steps
    die (generated LQR problem 14: step factors down to 5e-4, 0.834 after 200 iterations)."""
    step_reset_on_reversal: bool = False
    """Adam only, opt-in: a coordinate whose outer gradient opposes its first moment (theta has passed a
    maximum along it, or the gradient is noise) restarts its momentum from that gradient, so the step
    turns at once instead of carrying on past the maximum for ~1 / (1 - beta1) iterations; the second
    moment (the step's scale) is kept."""
    optimizer: str = 'adam'
    """'adam' or 'sgd' on theta (ascent on the real return)."""
    adam_betas: tuple = (0.9, 0.999)
    """Adam's moment decay rates."""
    real_episodes: int = 10
    """Real episodes per outer iteration (the LQR kind derives its default from the problem:
    ``problems/lqr/config.py`` ``real_episodes_rule``)."""
    score_episodes: int = 0
    """Black-box methods (cmaes, spsa): real episodes that score one candidate theta; 0 = ``real_episodes``.
    A score is a fresh Monte-Carlo mean that is never reused, unlike the batches the real critic keeps."""
    real_history: int = 1
    """How many most recent real batches the real-gradient estimator may see (>=1)."""
    inner_method: str = 'exact'
    """'exact' (soft DP / Riccati / converged solver) or 'sampled' (SPG in sim)."""
    sensitivity_method: str = 'exact'
    """'exact' or 'sampled' linearisation of the inner optimality condition."""
    sim_episodes: int = 0
    """Simulated trajectories for sampled sensitivities (0: the problem's default)."""
    sim_horizon: int = 0
    """Their horizon (0: the problem's default)."""
    solver: str = 'dense'
    """Implicit-function solve: 'dense', 'cg' or 'first_order'; or 'resolve': no implicit-function
    solve, but d phi*/d theta by central differences of the inner solve itself, continued from phi
    (``BilevelProblem.continued_solve``) at theta +- h_i e_i for each learnable coordinate
    (``resolve_step``): two inner solves per coordinate and iteration, and the solve's own
    derivative, stationary or not (``resolved_outer_gradient``)."""
    damping: float = 1e-8
    """Ridge added to -dF/dphi in dense and CG solves."""
    cg_maxiter: int = 200
    """Conjugate-gradient iteration cap."""
    cg_tol: float = 1e-10
    """Conjugate-gradient relative residual tolerance."""
    first_order_step: float = 1.0
    """Step of the first-order variant: d phi*/d theta ~ step * dF/dtheta."""
    first_order_above: float = 100.0
    """When the inner solve ended with ||F|| above this many times the problem's inner tolerance
    (``inner_tolerance``; kinds with exact solves have none), that iteration's sensitivity is the
    first-order one whatever ``solver`` says: the implicit-function theorem linearises F = 0, and
    far from it the linear system does not describe the solve (the swing-up's warm solves end at
    ||F|| 5000-25000x the tolerance, the pendulum's at <= 9x: bench/results/urdf_tasks/swingup/).
    0: never."""
    far_from_stationary: str = 'first_order'
    """What replaces the implicit-function solve for such a policy (``first_order_above``):
    'first_order' (d phi*/d theta ~ ``first_order_step`` * dF/dtheta), 'resolve' (the solve's own
    derivative, as solver 'resolve'; with ``inner_method: exact`` only, else first-order) or 'skip'
    (no outer step that iteration: no sensitivity is computed, theta and the optimiser's moments stay,
    with ``anchor: sysid`` the refit alone moves theta; the policy is solved on, warm).  ``anchor: auto``
    skips so while anchored, whatever this says (``skips_far_steps``)."""
    resolve_step: float = 0.05
    """Solver 'resolve': the finite-difference step h_i of theta coordinate i, as a fraction of its
    bound range (the outer step's size with ``step_per_range`` and the default ``step_size``)."""
    resolve_workers: int = 0
    """Solver 'resolve': processes that run its 2 d independent solves (``solve_pool``).  0 (auto): one
    per usable CPU (as many as the available memory holds) when the first solve took >=
    ``RESOLVE_POOL_ABOVE_S`` (robot tasks: tens of seconds each), else all in this process (small
    problems: milliseconds); 1: all in this process."""
    learn: str = 'all'
    """Which theta entries move: 'all', 'dynamics' or 'reward' (ablations)."""
    theta_start: str = 'nominal'
    """Bi-level only.  'nominal': the outer gradient moves theta from the problem file's values.
    'sysid': the first iteration fits the learnable dynamics entries to its real batch instead (the
    problem's ``system_identification``, the sysid baseline's fit; reward entries keep their values)
    and re-solves the policy there; the outer gradient takes over from the second iteration."""
    anchor: str = 'none'
    """Bi-level only.  'none': theta moves by the outer gradient alone.  'sysid': each iteration the
    learnable dynamics entries are sysid's fit on ALL the real data so far (the sysid baseline's
    ``identify``) plus an offset that the outer gradient learns (0 at first; the outer steps move it,
    and reward entries as usual).  The first iteration fits and re-solves only, as ``theta_start:
    sysid``.  The refit makes the large, data-supported moves a local gradient from a failing policy
    cannot find (the swing-up's nominal policy never swings up, and the outer gradient there takes
    the motor gain away from the robot's); the offset corrects what the fit gets wrong for the
    real return (effects the simulator family cannot represent).  Keeps every real batch (the fit's
    data), as sysid does; the real-gradient estimator still sees the ``real_history`` newest.
    'auto': 'sysid' until the real data say the fit hurts -- an anchored policy's estimated real
    return significantly below the first policy's (the nominal one, deployed before any fit; the
    intervals of ``significantly_below``) while that first policy is still the best deployed -- then
    theta, the policy and the optimiser go back to the first policy's and bi-level goes on from
    there as with 'none' (the record's event says so).  For robots whose real effects the family
    cannot represent (an actuation delay), where the fit's theta trains worse policies than the
    nominal one (bench/results/anchor_sysid/generated_urdf/).  While anchored, 'auto' takes no
    outer step from a policy far from stationary, whatever ``far_from_stationary`` says (as
    ``skip``: the refit alone moves theta that iteration; on the swing-up the first-order offset
    steps there lost 0.41 of the oracle at 15 real episodes against 'skip', 3 run seeds:
    bench/results/urdf_tasks/swingup/implicit/); released, ``far_from_stationary`` applies.  The
    method ``bilevel-anchored`` is 'sysid' with ``far_from_stationary: skip``,
    ``bilevel-anchored-auto`` is 'auto' alone: a problem file (the ROS graph's only way to choose)
    needs the same lines."""
    anchor_offset: str = 'add'
    """Anchored (``anchor: sysid``, or ``auto`` before a release): how the offset meets the refit.
    'add': theta's dynamics entries are the fit plus the offset, whatever the fit did.  'absorb':
    where the refit moved an entry the same way as its offset, the offset shrinks by the refit's move
    (to 0 at most): a step taken from the previous fit partly corrects that fit's error, which the
    refit on more data corrects as well, and the two must not add up.  Where the refit moved the other
    way, or not at all, the offset stays.  Opt-in (measured: bench/results/anchor_offset_absorb/)."""
    normalize_gradient: bool = False
    """Divide each outer gradient by its norm before the optimiser (Adam or SGD; opt-in).  With
    Adam every iteration's direction then weighs the same in its moments: one gradient orders of
    magnitude larger than the rest (an iteration on the first-order fallback, a real batch whose
    pathwise estimate blows up) no longer fixes the step's sign for the rest of a short run
    (swing-up: one first-order iteration at ~3500 against ~5 held the motor gain's first moment
    positive after the gradient turned negative; bench/results/urdf_tasks/swingup/adam_scale/)."""
    # --- baselines (same real-data accounting) ---
    cma_sigma: float = 0.3
    """CMA-ES initial step size, as a fraction of each theta entry's bound range."""
    cma_popsize: int = 0
    """CMA-ES population (0: cma's default 4 + 3 ln D)."""
    spsa_a: float = 0.1
    """SPSA step gain a (a_k = a / (k + 1 + A)^0.602, A = iterations / 10)."""
    spsa_c: float = 0.1
    """SPSA perturbation gain c (c_k = c / (k + 1)^0.101), in theta units."""
    real_rl_step_size: float = 0.05
    """Adam step for direct policy-gradient RL on the real system."""
    # --- what the real data says, and safe improvement ---
    confidence: float = 0.95
    """Level of the Student-t intervals of the estimated real return (records, best policy, safety)."""
    safe_improvement: bool = False
    """Bi-level only: never go on from a policy whose estimated real return is significantly below the
    best deployed so far (its interval entirely below the best's): theta, phi and the optimiser state go
    back to the best's and the step is halved (``backtrack_shrink``); where the problem can predict a
    candidate's return from the real data already collected (``predict_improvement``) the candidate is
    refused before it is deployed.  Off for ``solve`` unless asked (--safe-improvement); on in the
    hardware params file."""
    backtrack_shrink: float = 0.5
    """Factor on the theta step after each backtrack (the step grows back by 1/shrink, up to its
    configured size, with every new best policy)."""

    def validate(self) -> None:
        checks = [
            (self.iterations >= 0, 'iterations', 'an integer >= 0'),
            (self.step_size > 0 and np.isfinite(self.step_size), 'step_size', 'a finite number > 0'),
            (self.optimizer in ('adam', 'sgd'), 'optimizer', "'adam' or 'sgd'"),
            (isinstance(self.step_per_range, (bool, np.bool_)), 'step_per_range', 'true or false'),
            (isinstance(self.normalize_gradient, (bool, np.bool_)), 'normalize_gradient', 'true or false'),
            (0 < self.step_shrink_on_flip <= 1, 'step_shrink_on_flip', 'a number in (0, 1]'),
            (isinstance(self.step_reset_on_reversal, (bool, np.bool_)), 'step_reset_on_reversal', 'true or false'),
            (self.real_episodes >= 1, 'real_episodes', 'an integer >= 1'),
            (self.score_episodes >= 0, 'score_episodes', 'an integer >= 0 (0: real_episodes)'),
            (self.real_history >= 1, 'real_history', 'an integer >= 1'),
            (self.inner_method in INNER_METHODS, 'inner_method', f'one of {INNER_METHODS}'),
            (self.sensitivity_method in SENSITIVITY_METHODS, 'sensitivity_method',
             f'one of {SENSITIVITY_METHODS}'),
            (self.solver in SOLVERS, 'solver', f'one of {SOLVERS}'),
            (self.damping >= 0, 'damping', 'a number >= 0'),
            (self.first_order_above >= 0, 'first_order_above', 'a number >= 0 (0: never)'),
            (self.far_from_stationary in FAR_FROM_STATIONARY, 'far_from_stationary', f'one of {FAR_FROM_STATIONARY}'),
            (0 < self.resolve_step <= 1, 'resolve_step', 'a fraction of the bound range in (0, 1]'),
            (isinstance(self.resolve_workers, (int, np.integer)) and not isinstance(self.resolve_workers, bool)
             and self.resolve_workers >= 0, 'resolve_workers', 'an integer >= 0 (0: one per CPU for slow solves)'),
            (self.solver != 'resolve' or self.inner_method == 'exact', 'solver',
             "a linear solver ('dense', 'cg', 'first_order') with inner_method 'sampled' or 'ppo': 'resolve' "
             'differentiates the exact (deterministic) inner solve'),
            (self.learn in ('all', 'dynamics', 'reward'), 'learn', "'all', 'dynamics' or 'reward'"),
            (self.theta_start in THETA_STARTS, 'theta_start', f'one of {THETA_STARTS}'),
            (self.anchor in ANCHORS, 'anchor', f'one of {ANCHORS}'),
            (self.anchor_offset in ANCHOR_OFFSETS, 'anchor_offset', f'one of {ANCHOR_OFFSETS}'),
            (self.cma_sigma > 0, 'cma_sigma', 'a number > 0'),
            (self.cma_popsize >= 0, 'cma_popsize', 'an integer >= 0 (0: default)'),
            (self.spsa_a > 0 and self.spsa_c > 0, 'spsa_a', 'spsa_a > 0 and spsa_c > 0'),
            (self.real_rl_step_size > 0, 'real_rl_step_size', 'a number > 0'),
            (0 < self.confidence < 1, 'confidence', 'a number in (0, 1)'),
            (isinstance(self.safe_improvement, (bool, np.bool_)), 'safe_improvement', 'true or false'),
            (0 < self.backtrack_shrink < 1, 'backtrack_shrink', 'a number in (0, 1)'),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f'outer config: {name} = {getattr(self, name)!r}: expected {expected}')

    @classmethod
    def from_mapping(cls, values: dict, **overrides) -> 'OuterConfig':
        known = {f.name for f in fields(cls)}
        merged = dict(values or {})
        merged.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f'outer config: unknown field(s) {unknown}; known: {sorted(known)}')
        config = cls(**merged)
        config.validate()
        return config


def make_solver(config: OuterConfig):
    """The implicit-function linear solver named by the configuration (not for 'resolve')."""
    if config.solver not in LINEAR_SOLVERS:
        raise ValueError(f'make_solver: solver {config.solver!r} solves no linear system; expected one of '
                         f'{LINEAR_SOLVERS}')
    if config.solver == 'dense':
        return implicit.dense_solver(damping=config.damping)
    if config.solver == 'cg':
        return implicit.cg_solver(damping=config.damping, maxiter=config.cg_maxiter, tol=config.cg_tol)
    return implicit.first_order(step=config.first_order_step)


def far_from_stationary(config: OuterConfig, problem: BilevelProblem, inner_grad_norm: float) -> str:
    """Why a policy whose inner solve ended at ``inner_grad_norm`` is too far from stationary for the
    implicit-function solve (``OuterConfig.first_order_above``); '' when it is not."""
    tolerance = problem.inner_tolerance()
    factor = config.first_order_above
    if (config.solver in ('dense', 'cg') and factor > 0 and tolerance is not None
            and np.isfinite(inner_grad_norm) and inner_grad_norm > factor * tolerance):
        return (f'the inner solve ended at ||F|| {inner_grad_norm:.3g}, above {factor:g} x its tolerance '
                f'{tolerance:g}')
    return ''


def sensitivity_solver(config: OuterConfig, problem: BilevelProblem, inner_grad_norm: float):
    """The implicit-function solver for a policy whose inner solve ended at ``inner_grad_norm`` (None:
    re-solve, as solver 'resolve' does), and why it is not the configured one ('' when it is): where
    the solve ended far from stationary (``OuterConfig.first_order_above``), the first-order step or
    the re-solves (``OuterConfig.far_from_stationary``; 'skip' is the optimiser's to act on, before it
    asks: asked anyway, the first-order step)."""
    if config.solver == 'resolve':
        return None, ''
    far = far_from_stationary(config, problem, inner_grad_norm)
    if far:
        if config.far_from_stationary == 'resolve' and config.inner_method == 'exact':
            return None, f'sensitivity by re-solving: {far}'
        return implicit.first_order(step=config.first_order_step), f'first-order sensitivity: {far}'
    return make_solver(config), ''


def resolve_steps(problem: BilevelProblem, fraction: float) -> np.ndarray:
    """Solver 'resolve': each theta coordinate's finite-difference step, ``fraction`` of its bound
    range (a ValueError names a coordinate whose range is not finite and > 0)."""
    lower, upper = (np.asarray(b, dtype=np.float64) for b in problem.theta_bounds())
    ranges = upper - lower
    bad = ~(np.isfinite(ranges) & (ranges > 0))
    if bad.any():
        i = int(np.argmax(bad))
        name = problem.theta_names[i] if i < len(problem.theta_names) else str(i)
        raise ValueError(f"solver 'resolve': theta coordinate {name} of {problem.source} has bounds "
                         f'[{lower[i]:g}, {upper[i]:g}]; expected a finite range > 0 for its finite-difference step')
    return fraction * ranges


RESOLVE_POOL_ABOVE_S = 1.0
"""``resolve_workers: 0`` (auto): the remaining solves go to worker processes when the first one took
at least this long (a process costs ~1-3 s to start and to load the problem, once)."""


def resolve_processes(workers: int, remaining: int, first_solve_s: float) -> int:
    """How many processes run the ``remaining`` solves of a 'resolve' sensitivity after the first one
    (which runs in this process, timed): ``workers`` >= 1 at most that many; 0 (auto) one per usable
    CPU, as many as the available memory holds (``solve_pool.affordable_workers``), when the first
    solve took at least ``RESOLVE_POOL_ABOVE_S``.  1 = in this process."""
    if workers == 0:
        workers = solve_pool.affordable_workers() if first_solve_s >= RESOLVE_POOL_ABOVE_S else 1
    return max(1, min(int(workers), int(remaining)))


def resolved_outer_gradient(problem: BilevelProblem, phi: np.ndarray, theta: np.ndarray,
                            real_gradient: np.ndarray, steps: np.ndarray,
                            mask: Optional[np.ndarray] = None, workers: int = 1,
                            progress: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, dict]:
    """Solver 'resolve': (d phi*/d theta)^T g with d phi*/d theta by central differences of the inner
    solve continued from ``phi``: for each coordinate i in ``mask`` (default all), column i =
    (solve(theta + b e_i) - solve(theta - a e_i)) / (a + b), with a = b = h_i, each end cut at the
    coordinate's bound (a one-sided secant at a bound).  Both ends are the same budgeted solve from
    the same start, so what the continued training does whatever theta is cancels; the column is
    the change that the next solve at a moved theta makes over the outer step's scale, which is what
    the step buys (the implicit-function columns describe it only at a stationary point of a
    well-conditioned inner problem; a one-sided difference sees one side of a return that may rise
    both ways: generated task 5's motor gain, ``bench/results/urdf_generated_tasks/resolve/``).

    The solves are independent: the first runs here, the others in ``resolve_processes(workers, ...)``
    processes (``solve_pool``; a problem that cannot be pickled runs them all here when ``workers``
    is 0, and raises ``solve_pool.ProblemNotPicklable`` when workers were asked for; if a worker
    dies, the solves run here).  The result is
    the same whichever runs them (``continued_solve`` is deterministic).
    ``progress(done, total)`` is called after each solve (from a pool thread when in workers).
    Returns the gradient (0 off the mask) and info: solves, seconds, processes and each column's norm."""
    started = time.perf_counter()
    theta = np.asarray(theta, dtype=np.float64)
    g = np.asarray(real_gradient, dtype=np.float64)
    mask = np.ones(theta.size, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    lower, upper = problem.theta_bounds()
    coordinates = np.flatnonzero(mask)
    ends, moved = [], []
    for i in coordinates:
        for value in (max(theta[i] - steps[i], lower[i]), min(theta[i] + steps[i], upper[i])):
            ends.append(value)
            moved.append(theta.copy())
            moved[-1][i] = value
    names = [f'{problem.theta_names[i] if i < len(problem.theta_names) else i} = {v:g}'
             for i, v in zip(np.repeat(coordinates, 2), ends)]
    solved, processes = [], 1
    report = progress or (lambda done, total: None)
    if moved:
        solved.append(problem.continued_solve(moved[0], phi).phi)
        report(1, len(moved))
        processes = resolve_processes(workers, len(moved) - 1, time.perf_counter() - started)
    if processes > 1:
        try:
            solved += solve_pool.shared_pool(processes).continued_solves(
                problem, [(t, phi) for t in moved[1:]], names[1:],
                progress=lambda done: report(1 + done, len(moved)))
        except solve_pool.ProblemNotPicklable as error:
            if workers != 0:
                raise
            log.warning('resolve: every solve in this process: %s', error)
            processes = 1
        except solve_pool.WorkerDied as error:          # e.g. out of memory: the solves go on here
            log.warning('resolve: %s; the remaining solves run in this process', error)
            processes = 1
    for theta_moved in moved[len(solved):]:
        solved.append(problem.continued_solve(theta_moved, phi).phi)
        report(len(solved), len(moved))
    gradient = np.zeros(theta.size)
    column_norms = np.zeros(theta.size)
    for k, i in enumerate(coordinates):
        low, high = ends[2 * k], ends[2 * k + 1]
        column = (np.asarray(solved[2 * k + 1]) - np.asarray(solved[2 * k])) / (high - low)
        gradient[i] = float(g @ column)
        column_norms[i] = float(np.linalg.norm(column))
    info = {'solves': len(moved), 'seconds': time.perf_counter() - started, 'processes': processes,
            'column_norms': column_norms.tolist()}
    return gradient, info


def sensing_to_command(batch: Trajectories) -> np.ndarray:
    """Seconds from the sensing of each state a command used to that command leaving the
    controller, over the steps that ran (``alive_mask``); empty when the batch has no timestamps
    (episodes of the batched transport or of the core's own real system)."""
    if batch.state_times is None or batch.command_times is None:
        return np.zeros(0)
    delays = np.asarray(batch.command_times, dtype=np.float64) - np.asarray(batch.state_times, dtype=np.float64)[:, :-1]
    delays = delays[alive_mask(np.asarray(batch.dones, dtype=bool))]
    return delays[np.isfinite(delays)]


def discounted_returns(batch: Trajectories, gamma: float) -> np.ndarray:
    """Per-episode discounted return of a batch (rewards after a done are ignored)."""
    rewards = np.where(alive_mask(batch.dones), batch.rewards, 0.0)
    discounts = gamma ** np.arange(rewards.shape[1])
    return rewards @ discounts


class Adam:
    """Adam ascent on a vector, with its state as plain arrays (checkpointable).

    ``scale``: per-coordinate multipliers of ``step_size`` (default 1: one step for all).
    ``shrink_on_flip`` < 1: a coordinate's step is multiplied by it each time its first moment m
    changes sign; ``factor`` holds the product so far (1 while nothing flipped).
    ``reset_on_reversal``: a coordinate whose gradient has the opposite sign of its first moment
    restarts that moment from the gradient (its bias-corrected m equals the gradient)."""

    def __init__(self, size: int, step_size: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 scale: Optional[np.ndarray] = None, shrink_on_flip: float = 1.0, reset_on_reversal: bool = False):
        self.step_size, self.betas, self.eps = step_size, tuple(betas), eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0
        self.scale = np.ones(size) if scale is None else np.array(scale, dtype=np.float64)
        self.shrink_on_flip = float(shrink_on_flip)
        self.reset_on_reversal = bool(reset_on_reversal)
        self.factor = np.ones(size)

    def direction(self, gradient: np.ndarray) -> np.ndarray:
        self.t += 1
        b1, b2 = self.betas
        previous = self.m
        self.m = b1 * self.m + (1 - b1) * gradient
        if self.reset_on_reversal:
            self.m = np.where(previous * gradient < 0, (1 - b1 ** self.t) * gradient, self.m)
        self.v = b2 * self.v + (1 - b2) * gradient ** 2
        if self.shrink_on_flip < 1.0:
            self.factor = np.where(previous * self.m < 0, self.factor * self.shrink_on_flip, self.factor)
        m_hat = self.m / (1 - b1 ** self.t)
        v_hat = self.v / (1 - b2 ** self.t)
        return self.step_size * self.scale * self.factor * m_hat / (np.sqrt(v_hat) + self.eps)

    def state(self) -> tuple[dict, dict]:
        """(JSON-able meta, arrays) of everything ``restore`` needs."""
        meta = {'t': int(self.t), 'step_size': float(self.step_size), 'betas': list(self.betas),
                'eps': float(self.eps), 'shrink_on_flip': self.shrink_on_flip,
                'reset_on_reversal': self.reset_on_reversal}
        return meta, {'adam.m': self.m, 'adam.v': self.v, 'adam.scale': self.scale, 'adam.factor': self.factor}

    @classmethod
    def restore(cls, meta: dict, arrays: dict) -> 'Adam':
        """The optimiser ``state`` described (checkpoints without a scale or factor: ones)."""
        size = arrays['adam.m'].size
        adam = cls(size, meta['step_size'], meta['betas'], meta['eps'], scale=arrays.get('adam.scale'),
                   shrink_on_flip=meta.get('shrink_on_flip', 1.0),
                   reset_on_reversal=meta.get('reset_on_reversal', False))
        adam.m, adam.v = np.array(arrays['adam.m']), np.array(arrays['adam.v'])
        adam.factor = np.array(arrays.get('adam.factor', np.ones(size)), dtype=np.float64)
        adam.t = int(meta['t'])
        return adam


@dataclass(slots=True)
class IterationRecord:
    """One outer iteration.  ``normalized_return`` and ``real_return`` are the current policy's exact
    values from the run's evaluator (sim-only); NaN without one.  ``real_return_estimate`` and its
    interval come from the real episodes collected in this iteration (the policy deployed in it,
    i.e. the previous record's); NaN at iteration 0."""
    iteration: int
    normalized_return: float
    real_transitions: int
    grad_norm: float
    theta: list
    wall_time_s: float
    real_return: float = float('nan')
    real_return_estimate: float = float('nan')
    inner_grad_norm: float = float('nan')
    real_episodes: int = 0
    timing: dict = field(default_factory=dict)
    real_return_ci_low: float = float('nan')
    real_return_ci_high: float = float('nan')
    event: str = ''
    """'' or what safe improvement did in this iteration ('backtracked: ...', 'refused: ...')."""
    loop_delay_p50_ms: float = float('nan')
    loop_delay_p99_ms: float = float('nan')
    """Over this iteration's real episodes: from the sensing of each state a command used to the
    command leaving the controller (``sensing_to_command``); NaN without timestamps (the batched
    transport, the core's own real system)."""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class PendingRecord:
    """A record whose evaluation is in flight (``evaluation.result()``: its values), or, restored
    from a checkpoint, still to be asked for (``evaluation`` None) for ``phi``."""
    record: IterationRecord
    phi: np.ndarray
    evaluation: Any = None


class MethodRun:
    """Shared state and bookkeeping of every method (bi-level and baselines): theta, phi, the
    real data collected and its accounting, the per-iteration records."""

    name = 'method'

    def __init__(self, problem: BilevelProblem, config: OuterConfig, seed: int = 0,
                 progress: Optional[Callable[[IterationRecord], None]] = None,
                 evaluator: Optional[Evaluator] = None):
        config.validate()
        self.problem = problem
        self.evaluator = evaluator
        """Sim-only: ``phi -> {'normalized_return', 'real_return'}`` from the hidden real model
        (``evaluation.oracle_evaluator``); None on a robot (those record fields are then NaN)."""
        self.iteration_returns: list[np.ndarray] = []
        """Per-episode discounted returns of the real batches collected since the last record."""
        self.iteration_delays: list[np.ndarray] = []
        """``sensing_to_command`` of the real batches collected since the last record."""
        self.delay_checked = False          # ``check_loop_delay`` has seen timestamps
        self.actuation_delay = None
        """``check_actuation_delay``'s significant evidence once found (None before)."""
        self.delay_asked_at = 0
        """The real episodes when ``check_actuation_delay`` last asked the problem."""
        self.best: Optional[BestPolicy] = None
        """The best policy deployed so far (highest mean estimated real return)."""
        self.last_deployed: Optional[ReturnEstimate] = None
        """The estimate of the policy deployed last (pooled with earlier batches when it is the best)."""
        self.backtracks = 0
        self.step_scale = 1.0
        """Safe improvement's factor on the theta step (halved per backtrack)."""
        self.event = ''
        self.config = config
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.progress = progress
        self.theta = np.asarray(problem.theta0(), dtype=np.float64).copy()
        self.lower, self.upper = (np.asarray(b, dtype=np.float64) for b in problem.theta_bounds())
        self.phi: Optional[np.ndarray] = None
        self.inner_grad_norm = float('nan')
        self.real_batches: list[Trajectories] = []
        self.real_transitions = 0
        self.real_episode_count = 0
        self.iteration = 0
        self.history: list[IterationRecord] = []
        self.elapsed = 0.0
        self.real_batch_count = 0
        """Real batches collected so far (kept or not): the index of the last real/batch file."""
        self.run_dir: Optional[Path] = None
        """Where the run persists itself (None: in memory only); see ``attach_run_dir``."""
        self.replayed_real_batches = 0
        """Real batches taken from RUN_DIR/real/ on resume instead of being collected again."""
        self._history: Optional[checkpoint.HistoryLog] = None    # RUN_DIR/history.jsonl, made when first needed
        self.writer: Optional[checkpoint.WriteBehind | checkpoint.PeriodicSync] = None
        """With a run dir: writes its files behind, on a thread of its own (``checkpoint.WriteBehind``,
        ``write_behind``), or fsyncs them together now and then (``checkpoint.PeriodicSync``,
        ``sync_periodically``); None: every write is on disk before the loop goes on."""
        self.resumed_from: Optional[str] = None
        """The checkpoint file ``attach_run_dir`` resumed from (None: a new run)."""
        self.kept_batch_numbers: list[int] = []
        """RUN_DIR/real/ file number of each kept batch; its tail lines up with ``real_batches``
        (which only grows at the end and is only cut at the front)."""
        self.pending: Optional[PendingRecord] = None
        """The newest record while its evaluation is in flight (an evaluator with ``submit``:
        ``record``); not yet in ``history``, nor reported."""

    # --- the expensive calls (replaceable by remote calls) --------------------------------------
    def solve_inner(self, theta: np.ndarray, phi_init: Optional[np.ndarray]) -> InnerResult:
        return self.problem.inner_solve(theta, phi_init, method=self.config.inner_method, rng=self.rng)

    @property
    def batch_episodes(self) -> int:
        """Real episodes per collected batch (``config.real_episodes``; black-box scores differ)."""
        return self.config.real_episodes

    def sample_real_batch(self, phi: np.ndarray) -> Trajectories:
        """``batch_episodes`` real episodes of pi_phi (a ROS node asks the robot instead)."""
        return self.problem.sample_real(phi, self.batch_episodes, self.rng)

    def collect_real(self, phi: np.ndarray, keep: bool = True, theta: Optional[np.ndarray] = None) -> Trajectories:
        """Real episodes with pi_phi (persisted, reused on resume: ``take_real_batch``), counted
        in the real-data accounting and in the estimates (``note_deployed``); ``theta`` is the
        simulator phi was trained in (default: the run's)."""
        require_finite_policy(phi, f'{self.problem.source}: method {self.name}, iteration {self.iteration + 1}')
        batch = self.take_real_batch(lambda: self.sample_real_batch(phi), phi)
        self.real_transitions += batch.n_transitions
        self.real_episode_count += batch.rewards.shape[0]
        if keep:
            self.real_batches.append(batch)
            self.kept_batch_numbers.append(self.real_batch_count)
        self.note_deployed(phi, self.theta if theta is None else theta, discounted_returns(batch, self.problem.gamma))
        self.iteration_delays.append(sensing_to_command(batch))
        self.check_loop_delay(self.iteration_delays[-1])
        return batch

    def check_actuation_delay(self, timing: Optional[dict] = None) -> Optional[Any]:
        """For methods that fit theta to the real data: the problem's ``actuation_delay_evidence``
        on the kept real batches (asked as DELAY_EVIDENCE_EPISODES says).  Significant: a warning,
        once per run, and a note in the iteration's event; the evidence is returned (None
        otherwise).  A warning only: on generated robots with a delay the fit both hurt and helped
        (``anchor: auto`` judges the fit by real returns).  Reads only real data and the problem
        file, so it runs on hardware as in simulation.  ``timing``: its seconds go in as
        ``delay_check_s`` when it asked."""
        check = getattr(self.problem, 'actuation_delay_evidence', None)
        episodes = self.real_episode_count
        if check is None or self.actuation_delay is not None or episodes > DELAY_EVIDENCE_EPISODES \
                or episodes < 2 * self.delay_asked_at:
            return None
        self.delay_asked_at = episodes
        started = time.perf_counter()
        evidence = check(self.real_batches, self.problem.theta0(), self.config.confidence)
        if timing is not None:
            timing['delay_check_s'] = time.perf_counter() - started
        if evidence is None or not evidence.significant:
            return None
        self.actuation_delay = evidence
        log.warning('%s: %s.  The simulator family has no actuation delay, so a fit to these data gives '
                    'other entries values that imitate it.  On four generated robots with one step of delay, the '
                    'policy solved at such a fit was 0.17-0.2 of the oracle below the nominal policy on two, '
                    'level with it on one and 0.47 above it on one (bench/results/anchor_sysid/'
                    'generated_urdf_auto/): the fit may still help; anchor: auto judges it by real '
                    'returns.  A `delay` entry in the simulator (kind urdf: simulator.parameters.delay, '
                    'seconds, docs/dynamics.md) can represent the delay itself.',
                    self.problem.source, evidence.describe(getattr(self.problem, 'control_period', float('nan'))))
        self.event = (self.event + '; ' if self.event else '') + (
            f'the real data say commands act {evidence.steps} control period(s) late '
            f'(log-likelihood {evidence.gain:+.3g} per transition [{evidence.low:+.3g}, {evidence.high:+.3g}])')
        return evidence

    def check_loop_delay(self, delays: np.ndarray) -> None:
        """At the first real batch with timestamps: a warning when the loop's median
        sensing-to-command delay is at least UNMODELLED_DELAY_WARNING control periods and the
        simulator family does not delay its commands (``models_actuation_delay``).  Reads only the
        real data's timestamps and the user's problem file."""
        modelled = getattr(self.problem, 'models_actuation_delay', None)
        period = getattr(self.problem, 'control_period', None)
        if self.delay_checked or delays.size == 0 or modelled is None or not period:
            return
        self.delay_checked = True
        median, p99 = np.percentile(delays, [50, 99])
        if median < UNMODELLED_DELAY_WARNING * period or modelled():
            return
        log.warning('%s: on the real robot, commands left %.3g ms (median; p99 %.3g ms) after the states they '
                    'were computed from were sensed: %.2g control periods of %.3g ms, before any delay in the '
                    'actuators.  The simulator family has no actuation delay (its commands act at once), so '
                    'every policy trained in it is trained for a robot that reacts sooner.  A `delay` entry '
                    'in the simulator (kind urdf: simulator.parameters.delay, seconds, docs/dynamics.md) can '
                    'represent it; the robot\'s own actuation delay comes on top (docs/hardware.md, "Loop '
                    'delay": what such entries changed on the real-time pendulum).',
                    self.problem.source, 1e3 * median, 1e3 * p99, median / period, 1e3 * period)

    def note_deployed(self, phi: np.ndarray, theta: np.ndarray, returns: np.ndarray) -> None:
        """Book a deployed policy's episode returns: into this iteration's estimate, and into the
        best policy (pooled when phi is the best's, a new best when its mean is higher)."""
        returns = np.asarray(returns, dtype=np.float64)
        self.iteration_returns.append(returns)
        confidence = self.config.confidence
        best = self.best
        if best is not None and np.array_equal(phi, best.phi):
            best.returns = np.concatenate([best.returns, returns])
            self.last_deployed = best.estimate(confidence)
            return
        self.last_deployed = ReturnEstimate.of(returns, confidence)
        if best is None or self.last_deployed.mean > best.estimate(confidence).mean:
            self.best = BestPolicy(iteration=self.iteration + 1, theta=np.array(theta, dtype=np.float64),
                                   phi=np.array(phi, dtype=np.float64), inner_grad_norm=float(self.inner_grad_norm),
                                   returns=returns.copy(), optimizer=self.optimizer_state())
            if best is not None:
                self.step_scale = min(1.0, self.step_scale / self.config.backtrack_shrink)

    def optimizer_state(self) -> dict:
        """A copy of the optimiser's state (Adam's moments and count), for backtracking."""
        adam = getattr(self, 'adam', None)
        if not isinstance(adam, Adam):
            return {}
        return {'adam.m': adam.m.copy(), 'adam.v': adam.v.copy(), 'adam.t': int(adam.t),
                'adam.factor': adam.factor.copy()}

    def restore_optimizer_state(self, state: dict) -> None:
        adam = getattr(self, 'adam', None)
        if isinstance(adam, Adam) and state:
            adam.m, adam.v, adam.t = state['adam.m'].copy(), state['adam.v'].copy(), int(state['adam.t'])
            if 'adam.factor' in state:
                adam.factor = state['adam.factor'].copy()

    def take_real_batch(self, collect: Callable[[], Trajectories], phi: Optional[np.ndarray] = None) -> Trajectories:
        """The next real batch: from RUN_DIR/real/ when an earlier, interrupted attempt of this
        run already collected it (the RNG is then put where collecting it left it), else
        ``collect()``, persisted atomically (with ``phi``, the policy that collected it) before
        anything else uses it."""
        index = self.real_batch_count + 1
        if self.run_dir is not None:
            stored = checkpoint.load_real_batch(self.run_dir, index)
            if stored is not None:
                batch, meta = stored
                self.rng.bit_generator.state = meta['rng_after']
                self.real_batch_count = index
                self.replayed_real_batches += 1
                return batch
        batch = collect()
        self.real_batch_count = index
        if self.run_dir is not None:
            checkpoint.save_real_batch(self.run_dir, index, batch, {
                'iteration': self.iteration + 1, 'rng_after': self.rng.bit_generator.state}, phi, self.writer)
        return batch

    def kept_numbers(self) -> list[int]:
        """The run's numbers of the kept real batches (``real_batches``), oldest first."""
        return self.kept_batch_numbers[len(self.kept_batch_numbers) - len(self.real_batches):]

    def identify(self) -> np.ndarray:
        """The fit on every kept real batch.  Where the problem keeps sufficient statistics
        (``system_identification_statistics(theta_init)``: ``add(batch)``, ``fit()``), each batch is
        added once, in order -- so a resumed run, which adds the reloaded batches one by one, is
        bit-identical to the uninterrupted one -- else ``system_identification`` refits on all."""
        make = getattr(self.problem, 'system_identification_statistics', None)
        if make is None:
            return self.problem.system_identification(self.real_batches, self.problem.theta0())
        numbers = self.kept_numbers()
        statistics, added = getattr(self, '_sysid', (None, []))
        if statistics is None or added != numbers[:len(added)]:        # first call, resumed, or cut at the front
            statistics, added = make(self.problem.theta0()), []
        for number, batch in zip(numbers[len(added):], self.real_batches[len(added):]):
            statistics.add(batch)
            added.append(number)
        self._sysid = (statistics, added)
        return statistics.fit()

    def mean_real_return(self, batch: Trajectories) -> float:
        return float(np.mean(discounted_returns(batch, self.problem.gamma)))

    # --- the loop -------------------------------------------------------------------------------
    def start(self) -> IterationRecord:
        """Inner solve at the nominal theta and the iteration-0 record (no real data yet)."""
        t0 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, None))
        self.elapsed += time.perf_counter() - t0
        return self.record(grad_norm=float('nan'), estimate=float('nan'),
                           timing={'inner_s': time.perf_counter() - t0})

    def set_policy(self, result: InnerResult) -> None:
        self.phi, self.inner_grad_norm = result.phi, result.grad_norm

    def step(self) -> IterationRecord:
        if self.phi is None:
            self.start()
        t0 = time.perf_counter()
        grad_norm, estimate, timing = self.iterate()
        self.elapsed += time.perf_counter() - t0
        self.iteration += 1
        return self.record(grad_norm=grad_norm, estimate=estimate, timing=timing)

    def iterate(self) -> tuple[float, float, dict]:
        """One iteration of the method; returns (grad_norm, real return estimate, timing)."""
        raise NotImplementedError

    def run(self, iterations: Optional[int] = None) -> list[IterationRecord]:
        total = self.config.iterations if iterations is None else iterations
        if self.phi is None:
            self.start()
        while self.iteration < total:
            self.step()
        self.settle()
        return self.history

    def return_interval(self) -> ReturnEstimate:
        """The interval of the record's estimate: over this iteration's real episodes."""
        pooled = np.concatenate(self.iteration_returns) if self.iteration_returns else np.zeros(0)
        return ReturnEstimate.of(pooled, self.config.confidence)

    def record(self, grad_norm: float, estimate: float, timing: dict) -> IterationRecord:
        """The iteration's record: the estimate's interval from this iteration's real episodes; the
        exact returns only from the evaluator (sim-only), else NaN.

        An evaluator with ``submit(phi)`` (an evaluation in flight, ``result()`` its values; the
        graph's ``EvaluatorClient``) is not waited for: the record stays ``pending`` -- saved in
        the checkpoint with its policy, not yet in ``history`` -- while the next iteration runs,
        and goes into ``history``, history.jsonl and the progress callback (in that order) once its
        evaluation is in: at the next record, or at ``settle``.  Every record in ``history`` holds
        its evaluation either way, and no record is reported before it is on disk."""
        submit = getattr(self.evaluator, 'submit', None)
        evaluated = self.evaluator(self.phi) if self.evaluator is not None and submit is None else {}
        interval = self.return_interval()
        delays = np.concatenate(self.iteration_delays) if self.iteration_delays else np.zeros(0)
        delay_p50, delay_p99 = (1e3 * np.percentile(delays, [50, 99]) if delays.size else (float('nan'),) * 2)
        self.iteration_returns, self.iteration_delays = [], []
        record = IterationRecord(
            iteration=self.iteration,
            normalized_return=float(evaluated.get('normalized_return', float('nan'))),
            real_transitions=int(self.real_transitions),
            grad_norm=grad_norm,
            theta=self.theta.tolist(),
            wall_time_s=float(self.elapsed),
            real_return=float(evaluated.get('real_return', float('nan'))),
            real_return_estimate=estimate,
            inner_grad_norm=float(self.inner_grad_norm),
            real_episodes=int(self.real_episode_count),
            timing=timing,
            real_return_ci_low=interval.low,
            real_return_ci_high=interval.high,
            event=self.event,
            loop_delay_p50_ms=float(delay_p50),
            loop_delay_p99_ms=float(delay_p99),
        )
        self.event = ''
        if submit is None:
            done = self._evaluated(self.pending)
            self.pending = None
            self._complete(done + [record])
            return record
        evaluation = submit(self.phi)
        done = self._evaluated(self.pending)       # in flight for a whole iteration: normally in by now
        self.pending = PendingRecord(record, np.array(self.phi, dtype=np.float64), evaluation)
        self._complete(done)
        return record

    def settle(self) -> None:
        """Wait for the pending record's evaluation, then store and report it (the end of a run)."""
        if self.pending is not None:
            done = self._evaluated(self.pending)
            self.pending = None
            self._complete(done)

    def _evaluated(self, pending: Optional['PendingRecord']) -> list:
        """``pending``'s record with its evaluation filled in (asked for now if it was pending in a
        checkpoint: a resumed run), as a list of zero or one record."""
        if pending is None:
            return []
        if pending.evaluation is not None:
            values = pending.evaluation.result()
        else:
            values = self.evaluator(pending.phi) if self.evaluator is not None else {}
        pending.record.normalized_return = float(values.get('normalized_return', float('nan')))
        pending.record.real_return = float(values.get('real_return', float('nan')))
        return [pending.record]

    def _complete(self, records: list) -> None:
        """Into ``history``; persisted (queued, with write_behind) before anyone is told."""
        self.history.extend(records)
        if self.run_dir is not None:
            self.save_checkpoint()
        if self.progress is not None:
            for record in records:
                self.progress(record)

    # --- persistence --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue the run from its run dir: ``{'meta': JSON-able dict,
        'arrays': {name: ndarray}}``; the real batches it keeps are referred to by their number
        in RUN_DIR/real/.  Subclasses with more state extend both (call ``super()`` first)."""
        meta = {
            'class': type(self).__name__, 'method': self.name, 'seed': int(self.seed),
            'source': str(getattr(self.problem, 'source', '')),
            'config': vars(self.config) | {'adam_betas': list(self.config.adam_betas)},
            'iteration': int(self.iteration), 'real_transitions': int(self.real_transitions),
            'real_episode_count': int(self.real_episode_count), 'real_batch_count': int(self.real_batch_count),
            'inner_grad_norm': float(self.inner_grad_norm), 'elapsed': float(self.elapsed),
            'rng': self.rng.bit_generator.state, 'history_length': len(self.history),
            'has_phi': self.phi is not None,
        }
        arrays = {'theta': self.theta}
        if self.phi is not None:
            arrays['phi'] = np.asarray(self.phi, dtype=np.float64)
        # the kept batches are already in RUN_DIR/real/: the checkpoint refers to them by number
        # instead of copying them into every save (which made each save grow with the run)
        self.kept_batch_numbers = self.kept_numbers()
        meta['real_batch_runs'] = checkpoint.number_runs(self.kept_batch_numbers)
        adam = getattr(self, 'adam', None)
        if isinstance(adam, Adam):
            meta['adam'], adam_arrays = adam.state()
            arrays.update(adam_arrays)
        meta['safety'] = {'backtracks': int(self.backtracks), 'step_scale': float(self.step_scale)}
        if self.pending is not None:          # its evaluation in flight: asked for again on resume
            meta['pending_record'] = self.pending.record.to_json()
            arrays['pending.phi'] = self.pending.phi
        state = {'meta': meta, 'arrays': arrays}
        if self.best is not None:
            save_best_policy(state, 'best', self.best)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s output (the configuration is the saved one)."""
        meta, arrays = state['meta'], state['arrays']
        source = str(getattr(self.problem, 'source', ''))
        if meta['class'] != type(self).__name__ or meta['source'] != source \
                or arrays['theta'].shape != self.theta.shape:
            raise checkpoint.CheckpointError(
                f'the checkpoint is of a {meta["class"]} run on {meta["source"]!r} with {arrays["theta"].size} '
                f'theta entries; this is a {type(self).__name__} run on {source!r} with {self.theta.size}')
        saved = OuterConfig.from_mapping(dict(meta['config'], adam_betas=tuple(meta['config']['adam_betas'])))
        for name, value in vars(saved).items():     # in place: subclasses and nodes hold this object
            setattr(self.config, name, value)
        self.seed = int(meta['seed'])
        self.rng.bit_generator.state = meta['rng']
        self.theta = np.array(arrays['theta'], dtype=np.float64)
        self.phi = np.array(arrays['phi'], dtype=np.float64) if meta['has_phi'] else None
        self.inner_grad_norm = float(meta['inner_grad_norm'])
        self.iteration = int(meta['iteration'])
        self.real_transitions = int(meta['real_transitions'])
        self.real_episode_count = int(meta['real_episode_count'])
        self.real_batch_count = int(meta['real_batch_count'])
        self.elapsed = float(meta['elapsed'])
        self.history = [IterationRecord(**record) for record in self._history_log().read(meta['history_length'])]
        self.pending = (PendingRecord(IterationRecord(**meta['pending_record']), np.array(arrays['pending.phi']))
                        if 'pending_record' in meta else None)
        self.kept_batch_numbers = checkpoint.numbers_from_runs(meta['real_batch_runs'])
        self.real_batches = [self._stored_batch(n) for n in self.kept_batch_numbers]
        if 'adam' in meta:
            self.adam = Adam.restore(meta['adam'], arrays)
        safety = meta.get('safety', {})
        self.backtracks = int(safety.get('backtracks', 0))
        self.step_scale = float(safety.get('step_scale', 1.0))
        self.best = load_best_policy(state, 'best')

    def _stored_batch(self, number: int) -> Trajectories:
        stored = None if self.run_dir is None else checkpoint.load_real_batch(self.run_dir, number)
        if stored is None:
            raise checkpoint.CheckpointError(f'the checkpoint refers to real batch {number}, which is not in '
                                             f'{self.run_dir}/{checkpoint.REAL_DIR}/')
        return stored[0]

    def _history_log(self) -> checkpoint.HistoryLog:
        if self.run_dir is None:
            raise checkpoint.CheckpointError('the run has no run dir to keep its history in')
        if self._history is None or self._history.path.parent != self.run_dir:
            self._history = checkpoint.HistoryLog(self.run_dir)
        return self._history

    def save_checkpoint(self) -> Path:
        """history.jsonl first (the records the checkpoint will count), then the checkpoint."""
        self._history_log().sync(self.history, IterationRecord.to_json, self.writer)
        state = self.state_dict()
        return checkpoint.save_checkpoint(self.run_dir, state['meta'], state['arrays'], self.writer)

    def write_behind(self, max_pending: int = 8) -> checkpoint.WriteBehind:
        """From now on the run dir's files are written behind, in order, on a writer thread
        (``checkpoint.WriteBehind``): the loop no longer waits on the disk's fsyncs.  An iteration
        is then on disk up to ``max_pending`` writes after its record is reported; a crash
        (SIGKILL, power loss) loses at most those (a resume redoes them).  Call
        ``close_writer`` before the process ends: it waits until everything is written."""
        if self.writer is None:
            self.writer = checkpoint.WriteBehind(max_pending)
        return self.writer

    def sync_periodically(self, period_s: float) -> checkpoint.PeriodicSync:
        """From now on the run dir's files are written as before but fsync'd together at most every
        ``period_s`` seconds (``checkpoint.PeriodicSync``): a SIGKILL still loses nothing, a power
        loss at most the iterations since the last sync, which a resume redoes from
        checkpoint.durable.npz (their real episodes run again).  ``close_writer`` syncs the rest."""
        if self.writer is None:
            self.writer = checkpoint.PeriodicSync(period_s)
        return self.writer

    def close_writer(self) -> None:
        """Wait until every queued write is on disk (a failed one raises CheckpointError), then
        write synchronously again."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()

    def attach_run_dir(self, run_dir) -> bool:
        """Persist this run in ``run_dir`` from now on; resume it from there if it holds a
        checkpoint.  Returns True when it resumed.

        Guarantees (a crash = SIGKILL or power loss at any instant):
          * every completed outer iteration (one ``record``) is in checkpoint.npz before the
            progress callback hears of it; a resumed run continues at the next iteration;
          * every real batch is in RUN_DIR/real/ before the run uses it; a resumed run takes it
            from there (with the RNG state collecting it left), so no episode is collected twice
            and none collected is lost;
          * in process, with the same seed, the resumed run's theta trajectory and records
            equal the uninterrupted run's bit for bit (wall times aside).
        A record still waiting for its evaluation (``record``) is in the checkpoint with its
        policy and is evaluated, stored and reported on resume.  With ``sync_periodically`` the
        first two hold for a SIGKILL; a power loss loses at most the iterations since the last
        sync: the resume falls back to checkpoint.durable.npz (logged, ``resumed_from``), sets
        later real batches that no longer read aside and collects them again.
        Not covered: work in flight at the crash (an inner solve, a sensitivity) is redone;
        a real batch whose episodes ran but whose data never reached this process (a remote
        robot) cannot be recovered here."""
        self.run_dir = Path(run_dir)
        refused = []
        for name, meta, arrays in checkpoint.checkpoint_candidates(self.run_dir):
            try:
                self.load_state_dict({'meta': meta, 'arrays': arrays})
            except checkpoint.CheckpointError as err:     # refers to history lines or batches not on disk
                refused.append(f'{name}: {err}')
                continue
            self.resumed_from = name
            if name != checkpoint.CHECKPOINT or refused:
                moved = checkpoint.set_aside_unreadable_batches(self.run_dir, self.real_batch_count)
                log.warning('%s: resumed from %s (iteration %d), not from the newest checkpoint, which is torn or '
                            'refers to files not (whole) on disk -- a power loss before their sync? %s; unreadable '
                            'later real batches set aside, to be collected again: %s', self.run_dir, name,
                            self.iteration, '; '.join(refused), [p.name for p in moved] or 'none')
            return True
        if refused:
            raise checkpoint.CheckpointError(f'{self.run_dir}: no checkpoint whose files are all there: '
                                             + '; '.join(refused))
        return False


AUTO_ANCHOR_MIN_EPISODES = 5
"""``anchor: auto`` warns below this many real episodes per iteration (its test has little power)."""


def separable_gap(episodes: int, confidence: float) -> float:
    """How many standard deviations of one episode's return two means of ``episodes`` episodes each
    must lie apart for their Student-t intervals at ``confidence`` not to overlap (inf below 2)."""
    if episodes < 2:
        return float('inf')
    from scipy.stats import t
    return float(2.0 * t.ppf(0.5 + confidence / 2, episodes - 1) / np.sqrt(episodes))


def warn_small_auto_batches(source: str, config: OuterConfig) -> None:
    """``anchor: auto`` below ``AUTO_ANCHOR_MIN_EPISODES`` real episodes per iteration: a warning
    saying how far apart two batches' returns must be for its test to release."""
    episodes = config.real_episodes
    if episodes >= AUTO_ANCHOR_MIN_EPISODES:
        return
    reach = ('one episode has no interval: it never releases' if episodes < 2 else
             f'at {episodes} episodes they only separate returns more than '
             f'{separable_gap(episodes, config.confidence):.3g} standard deviations of an episode apart: '
             'it will rarely release (the pendulum at 2 never did: bench/results/anchor_sysid/generated_urdf_auto/)')
    log.warning('%s: anchor: auto with %d real episode(s) per iteration: its release test compares the %g %% '
                't-intervals of single batches, and %s.  Use %d or more real episodes per iteration, or '
                'anchor: none', source, episodes, 100 * config.confidence, reach, AUTO_ANCHOR_MIN_EPISODES)


def absorbed_offset(offset: np.ndarray, refit_move: np.ndarray) -> np.ndarray:
    """``anchor_offset: absorb``: each entry of ``offset`` that the refit moved the same way
    (``refit_move``, the new fit minus the previous one) shrinks by that move, to 0 at most; the
    others are kept."""
    same = offset * refit_move > 0
    return np.where(same, np.sign(offset) * np.maximum(np.abs(offset) - np.abs(refit_move), 0.0), offset)


def save_best_policy(state: dict, name: str, policy: BestPolicy) -> None:
    """Put ``policy`` into a ``state_dict`` under ``name`` (its numbers in the metadata, its arrays
    as ``NAME.theta``, ``NAME.phi``, ``NAME.returns`` and ``NAME.<optimiser array>``)."""
    state['meta'][name] = {'iteration': int(policy.iteration), 'inner_grad_norm': float(policy.inner_grad_norm),
                           'optimizer': {k: v for k, v in policy.optimizer.items() if not isinstance(v, np.ndarray)}}
    state['arrays'].update({f'{name}.theta': policy.theta, f'{name}.phi': policy.phi,
                            f'{name}.returns': policy.returns})
    state['arrays'].update({f'{name}.{k}': v for k, v in policy.optimizer.items() if isinstance(v, np.ndarray)})


def load_best_policy(state: dict, name: str) -> Optional[BestPolicy]:
    """The policy ``save_best_policy`` put under ``name`` (None: none there)."""
    meta, arrays = state['meta'], state['arrays']
    if name not in meta:
        return None
    saved, prefix = meta[name], f'{name}.'
    own = {f'{prefix}theta', f'{prefix}phi', f'{prefix}returns'}
    optimizer = dict(saved['optimizer'])
    optimizer.update({k[len(prefix):]: np.array(v) for k, v in arrays.items() if k.startswith(prefix) and k not in own})
    return BestPolicy(iteration=int(saved['iteration']), theta=np.array(arrays[f'{prefix}theta']),
                      phi=np.array(arrays[f'{prefix}phi']), inner_grad_norm=float(saved['inner_grad_norm']),
                      returns=np.array(arrays[f'{prefix}returns']), optimizer=optimizer)


class BilevelOuterLoop(MethodRun):
    """Algorithm 1: real policy gradient pulled back to theta through d phi*/d theta."""

    name = 'bilevel'

    def __init__(self, problem: BilevelProblem, config: OuterConfig, seed: int = 0,
                 progress: Optional[Callable[[IterationRecord], None]] = None,
                 evaluator: Optional[Evaluator] = None):
        super().__init__(problem, config, seed, progress, evaluator)
        self.learn_mask = self._learn_mask()
        self.step_units = self._step_units()
        self.adam = Adam(self.theta.size, config.step_size, config.adam_betas, scale=self.step_units,
                         shrink_on_flip=config.step_shrink_on_flip,
                         reset_on_reversal=config.step_reset_on_reversal)
        self.offset = np.zeros(self.theta.size)
        """``anchor: sysid``: what the outer steps added to the dynamics entries on top of sysid's fit."""
        self.anchor_reference: Optional[BestPolicy] = None
        """``anchor: auto``: the first deployed policy (before any fit), what anchored ones are held to."""
        self.anchor_released = False
        """``anchor: auto``: the real data said the fit hurt; bi-level without the anchor since."""
        self.anchor_reference_batch = -1
        """``anchor: auto``: the number of the reference's real batch (``kept_batch_numbers``)."""
        self.last_fit: Optional[np.ndarray] = None
        """Anchored: sysid's fit behind the current theta (``anchor_offset: absorb`` compares the next one with it)."""
        if config.anchor == 'auto':
            warn_small_auto_batches(problem.source, config)

    @property
    def anchored(self) -> bool:
        return self.config.anchor == 'sysid' or (self.config.anchor == 'auto' and not self.anchor_released)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.anchored:
            state['arrays']['anchor.offset'] = self.offset
            if self.last_fit is not None:
                state['arrays']['anchor.last_fit'] = self.last_fit
        if self.config.anchor == 'auto':
            state['meta']['anchor_released'] = bool(self.anchor_released)
            state['meta']['anchor_reference_batch'] = int(self.anchor_reference_batch)
            if self.anchor_reference is not None:
                save_best_policy(state, 'anchor_reference', self.anchor_reference)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.learn_mask = self._learn_mask()
        self.step_units = self._step_units()
        self.offset = np.array(state['arrays'].get('anchor.offset', np.zeros(self.theta.size)), dtype=np.float64)
        last_fit = state['arrays'].get('anchor.last_fit')
        self.last_fit = None if last_fit is None else np.array(last_fit, dtype=np.float64)
        self.anchor_released = bool(state['meta'].get('anchor_released', False))
        self.anchor_reference_batch = int(state['meta'].get('anchor_reference_batch', -1))
        self.anchor_reference = load_best_policy(state, 'anchor_reference')

    def optimizer_state(self) -> dict:
        """Adam's state and, anchored, the offset (a backtrack restores both)."""
        state = super().optimizer_state()
        if self.anchored:
            state['anchor.offset'] = self.offset.copy()
        return state

    def restore_optimizer_state(self, state: dict) -> None:
        super().restore_optimizer_state(state)
        if 'anchor.offset' in state:
            self.offset = state['anchor.offset'].copy()

    def _step_units(self) -> np.ndarray:
        """What ``step_size`` multiplies, per theta coordinate: its bound range with ``step_per_range``,
        else 1."""
        if not self.config.step_per_range:
            return np.ones(self.theta.size)
        ranges = self.upper - self.lower
        bad = ~(np.isfinite(ranges) & (ranges > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f'step_per_range: theta coordinate {i} of {self.problem.source} has bounds '
                             f'[{self.lower[i]:g}, {self.upper[i]:g}]; expected a finite range > 0 (or set '
                             f'step_per_range: false and an absolute step_size)')
        return ranges

    def _learn_mask(self) -> np.ndarray:
        if self.config.learn == 'all':
            return np.ones(self.theta.size, dtype=bool)
        groups = self.problem.theta_groups()
        key = 'dynamics' if self.config.learn == 'dynamics' else 'reward'
        mask = np.asarray(groups[key], dtype=bool)
        if not mask.any():
            raise ValueError(f'learn={self.config.learn!r}: the problem {self.problem.source} has no '
                             f'learnable {key} entries')
        return mask

    def outer_gradient(self, phi: np.ndarray, theta: np.ndarray, real_gradient: np.ndarray) -> np.ndarray:
        """dJ_real/dtheta = (d phi*/d theta)^T g by one implicit-function solve (or, solver 'resolve',
        by re-solving the inner problem: ``resolved_outer_gradient``; also where the inner solve ended
        far from stationary with ``far_from_stationary: resolve``)."""
        solver, why = sensitivity_solver(self.config, self.problem, self.inner_grad_norm)
        if why:
            self.event = why
        if solver is None:
            gradient, _ = resolved_outer_gradient(self.problem, phi, theta, real_gradient,
                                                  resolve_steps(self.problem, self.config.resolve_step),
                                                  self.learn_mask, workers=self.config.resolve_workers)
            return gradient
        trajectories = None
        if self.config.sensitivity_method == 'sampled':
            n = self.config.sim_episodes or self.problem.default_sim_episodes
            horizon = self.config.sim_horizon or self.problem.default_sim_horizon
            trajectories = self.problem.simulate(phi, theta, n, horizon, self.rng)
        terms = self.problem.sensitivity_terms(phi, theta, method=self.config.sensitivity_method,
                                               trajectories=trajectories, rng=self.rng)
        return np.asarray(implicit.outer_gradient(terms, real_gradient, solver), dtype=np.float64)

    def iterate(self) -> tuple[float, float, dict]:
        timing = {}
        t0 = time.perf_counter()
        batch = self.collect_real(self.phi)
        if not self.anchored:                  # anchored: every batch stays, for the fit
            self.real_batches = self.real_batches[-self.config.real_history:]
        timing['real_s'] = time.perf_counter() - t0
        if (self.config.theta_start == 'sysid' or self.anchored) and self.iteration == 0:
            if self.config.anchor == 'auto':
                # the policy just deployed: the first, fitted to nothing (a copy: later batches pool into best)
                self.anchor_reference = copy.deepcopy(self.best)
                self.anchor_reference_batch = self.kept_batch_numbers[-1]
            self.check_actuation_delay(timing)
            return self.start_from_identification(batch, timing)
        if self.anchor_hurts():
            return self.outer_step(self.release_anchor(), batch, timing)
        if self.anchored:
            self.check_actuation_delay(timing)
        if self.config.safe_improvement and self.last_deployed is not None and self.best is not None \
                and self.last_deployed.significantly_below(self.best.estimate(self.config.confidence)):
            t2 = time.perf_counter()
            self.backtrack(f'backtracked: the deployed policy\'s estimated real return '
                           f'{self._interval(self.last_deployed)} is below the best\'s')
            timing['inner_s'] = time.perf_counter() - t2
            return float('nan'), self.mean_real_return(batch), timing

        return self.outer_step(self.real_data(), batch, timing)

    def outer_step(self, data: list[Trajectories], batch: Trajectories, timing: dict) -> tuple[float, float, dict]:
        """The outer step from the current policy, whose real episodes are ``data[-1]``, and the tail
        of the iteration (``move_and_solve``); ``batch``: the iteration's real batch (its record)."""
        t1 = time.perf_counter()
        if self.skips_far_steps():
            far = far_from_stationary(self.config, self.problem, self.inner_grad_norm)
            if far:
                self.event = (self.event + '; ' if self.event else '') + f'no outer step: {far}'
                return self.solve_without_step(batch, timing)
        real_gradient = self.problem.real_policy_gradient(self.phi, data, theta=self.theta)
        gradient = self.outer_gradient(self.phi, self.theta, real_gradient)
        gradient = np.where(self.learn_mask, gradient, 0.0)
        timing['sensitivity_s'] = time.perf_counter() - t1
        if not np.all(np.isfinite(gradient)):
            raise FloatingPointError(f'outer gradient is not finite at iteration {self.iteration + 1}: '
                                     f'{gradient}')
        stepped = self.apply_step(gradient)
        if self.anchored:
            self.offset = self.offset + np.where(self.anchor_mask(), stepped - self.theta, 0.0)
        return self.move_and_solve(stepped, float(np.linalg.norm(gradient)), batch, timing)

    def skips_far_steps(self) -> bool:
        """Whether a policy far from stationary gets no outer step: ``far_from_stationary: skip``,
        and ``anchor: auto`` while it is anchored (the refit moves theta; an offset step from an
        unconverged policy stays in the offset for the rest of the run)."""
        return self.config.far_from_stationary == 'skip' or (self.config.anchor == 'auto' and self.anchored)

    def solve_without_step(self, batch: Trajectories, timing: dict) -> tuple[float, float, dict]:
        """An iteration without an outer step: theta stays (anchored: refitted, offset kept) and
        the policy is solved on there."""
        return self.move_and_solve(self.theta, float('nan'), batch, timing)

    def move_and_solve(self, theta: np.ndarray, gradient_norm: float, batch: Trajectories,
                       timing: dict) -> tuple[float, float, dict]:
        """The tail of an iteration: theta moves to ``theta`` (anchored: its anchored entries
        refitted, plus the offset), the policy is solved there and checked before deployment."""
        if self.anchored:
            t1 = time.perf_counter()
            theta = self.anchored_theta(theta)
            timing['sysid_s'] = time.perf_counter() - t1
        self.theta = theta
        t2 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, self.phi))
        timing['inner_s'] = time.perf_counter() - t2
        if self.config.safe_improvement and self.best is not None:
            self.check_before_deploying()
        return gradient_norm, self.mean_real_return(batch), timing

    def start_from_identification(self, batch: Trajectories, timing: dict) -> tuple[float, float, dict]:
        """``theta_start: sysid``: theta's learnable dynamics entries fitted to the real data (the
        first batch; in mixed mode the recorded dataset too), the policy re-solved there (warm)."""
        if self.anchored:                        # the offset is 0: theta is the fit
            return self.solve_without_step(batch, timing)
        t1 = time.perf_counter()
        identified = np.clip(self.problem.system_identification(self.real_data(), self.theta),
                             self.lower, self.upper)
        self.theta = np.where(self.anchor_mask(), identified, self.theta)
        timing['sysid_s'] = time.perf_counter() - t1
        t2 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, self.phi))
        timing['inner_s'] = time.perf_counter() - t2
        return float('nan'), self.mean_real_return(batch), timing

    def anchor_hurts(self) -> bool:
        """``anchor: auto``: whether the anchored policy deployed last is significantly below the
        first policy (the nominal one) while that one is still the best deployed."""
        reference = self.anchor_reference
        if self.config.anchor != 'auto' or self.anchor_released or reference is None or self.last_deployed is None:
            return False
        if self.best is None or not np.array_equal(self.best.phi, reference.phi):
            return False          # an anchored policy was the best deployed: safe improvement's business
        return self.last_deployed.significantly_below(self.best.estimate(self.config.confidence))

    def release_anchor(self) -> list[Trajectories]:
        """``anchor: auto``: theta, the policy and the optimiser back to the first policy's, no anchor
        from now on; returns the real data for a bi-level step from there at once, ending with that
        policy's own batch (the estimators' newest batch is the current policy's), so that no real
        episode is spent on deploying it again."""
        reference = self.best
        numbers = self.kept_numbers()
        own = [b for n, b in zip(numbers, self.real_batches) if n == self.anchor_reference_batch]
        if not own:
            raise RuntimeError(f'anchor: auto: the first policy\'s real batch {self.anchor_reference_batch} '
                               f'is not among the kept ones {numbers}')
        others = [b for b in self.real_data() if b is not own[0]]        # mixed mode: the dataset's too
        data = others[-(self.config.real_history - 1):] if self.config.real_history > 1 else []
        self.anchor_released = True
        self.offset = np.zeros(self.theta.size)
        self.theta = reference.theta.copy()
        self.restore_optimizer_state(reference.optimizer)
        self.restore_policy(reference)
        self.event = (f'anchor released: the anchored policy\'s estimated real return '
                      f'{self._interval(self.last_deployed)} is below the first policy\'s '
                      f'{self._interval(reference.estimate(self.config.confidence))} (iteration '
                      f'{reference.iteration}); theta back to it, bi-level without the sysid anchor from there')
        return data + own

    def anchor_mask(self) -> np.ndarray:
        """The entries sysid's fit sets: the learnable dynamics ones."""
        return self.learn_mask & np.asarray(self.problem.theta_groups()['dynamics'], dtype=bool)

    def anchored_theta(self, theta: np.ndarray) -> np.ndarray:
        """``anchor: sysid``: ``theta`` with its anchored entries replaced by sysid's fit on every kept
        real batch plus ``offset``, inside the bounds."""
        identified = np.clip(self.identify(), self.lower, self.upper)
        mask = self.anchor_mask()
        if self.config.anchor_offset == 'absorb' and self.last_fit is not None:
            self.offset = absorbed_offset(self.offset, np.where(mask, identified - self.last_fit, 0.0))
        self.last_fit = identified
        return np.where(mask, np.clip(identified + self.offset, self.lower, self.upper), theta)

    def real_data(self) -> list[Trajectories]:
        """The real batches the real-gradient estimator and the safety check see: the
        ``real_history`` most recent kept ones (mixed mode puts the recorded dataset before them)."""
        return self.real_batches[-self.config.real_history:]

    def check_before_deploying(self) -> None:
        """Refuse the new policy before it runs on the real system when the real data already
        collected says its return is significantly below the best's: the problem's
        ``predict_improvement(phi, best_phi, batches, confidence)`` estimates J(phi) - J(best)
        with an interval (tabular: both evaluated on the count model of all real episodes,
        paired bootstrap); refused when that interval lies below 0.  Problems without it are
        checked after their batch only."""
        predict = getattr(self.problem, 'predict_improvement', None)
        if predict is None or np.array_equal(self.phi, self.best.phi):
            return
        predicted = predict(self.phi, self.best.phi, self.real_data(), self.config.confidence)
        if predicted is not None and predicted.high < 0:
            self.backtrack(f'refused before deployment: predicted change of the real return '
                           f'{self._interval(predicted)} against the best')

    def backtrack(self, reason: str) -> None:
        """theta, phi and the optimiser state back to the best deployed policy's; the step shrinks."""
        best = self.best
        self.backtracks += 1
        self.step_scale *= self.config.backtrack_shrink
        self.theta = best.theta.copy()
        self.restore_optimizer_state(best.optimizer)
        self.restore_policy(best)
        self.event = (f'{reason} {self._interval(best.estimate(self.config.confidence))} (iteration '
                      f'{best.iteration}); theta back to it, step x{self.step_scale:g}')

    def restore_policy(self, best: BestPolicy) -> None:
        """Make the best policy the current one (a ROS node re-registers it with the graph)."""
        self.phi, self.inner_grad_norm = best.phi.copy(), best.inner_grad_norm

    @staticmethod
    def _interval(estimate: ReturnEstimate) -> str:
        return f'{estimate.mean:.4g} [{estimate.low:.4g}, {estimate.high:.4g}]'

    def apply_step(self, gradient: np.ndarray) -> np.ndarray:
        if self.config.normalize_gradient:
            norm = np.linalg.norm(gradient)
            gradient = gradient / norm if norm > 0 else gradient
        if self.config.optimizer == 'adam':
            direction = self.adam.direction(gradient)
        else:
            direction = self.config.step_size * self.step_units * gradient
        if self.config.safe_improvement:
            direction = direction * self.step_scale
        direction = np.where(self.learn_mask, direction, 0.0)
        return np.clip(self.theta + direction, self.lower, self.upper)
