"""Reading and validating a ``kind: lqr`` problem file (the format is in the package docstring)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ...config import MAX_HORIZON, FieldReader, ProblemConfigError, check_symmetric_psd
from ...settings import read_settings, setting
from ...outer import OuterConfig
from ..common import default_step_rule, read_outer_section
from .maths import UnstableClosedLoopError, correlation_of, discounted_riccati, sym
from .simulator import SimulatorFamily

TOP_LEVEL_FIELDS = {'kind', 'gamma', 'real', 'cost', 'initial_state', 'policy', 'simulator', 'inner', 'outer'}
REAL_FIELDS = {'A', 'B', 'noise_covariance', 'horizon'}
COST_FIELDS = {'Q', 'R'}
INITIAL_FIELDS = {'mean', 'covariance'}
POLICY_FIELDS = {'std'}
SIMULATOR_FIELDS = {'A', 'learn_A', 'B', 'learn_B', 'Q', 'learn_Q', 'R', 'learn_R', 'noise_covariance',
                    'dynamics_bound', 'cost_scale_bound', 'correlation_bound'}
MAX_CORRELATION_VERTICES = 2 ** 12


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
    """Sampled solver: stop when the held-out estimate of ||F|| falls below this (||F|| shrinks
    with the distance to the Riccati gain, in units set by the problem's scale)."""
    sampled_max_iterations: int = setting(300, low=1)
    """Sampled solver: iteration cap."""
    sampled_moment_window: int = setting(5, low=1)
    """Sampled solver: the stopping rule's S_hat averages this many most recent batches."""
    critic_dynamics_term: str = setting('pathwise', choices=('pathwise', 'score'))
    """Sampled sensitivities: how the dynamics term gamma d/dtheta E[V(x')|z] of the critic-
    sensitivity recursion is estimated per transition: 'pathwise' (2 x'' P_hat (dA x + dB u),
    the reparametrised derivative through the differentiable simulator) or 'score'
    (score_theta (V_hat(x') - V_hat(x_bar')), the likelihood-ratio form of the paper's
    Theorem 1).  Both are unbiased; the package docstring compares their variance."""
    sensitivity_episodes: int = setting(4000, low=1)
    """Default number n of simulated trajectories for sampled sensitivities (with the default
    horizon, enough for the sampled d phi*/d theta to stay within the tests' 5 % of finite
    differences on config/lqr.yaml; ``bench/accuracy_tables.py`` tabulates the error)."""
    sensitivity_horizon: int = setting(25, low=1)
    """Default trajectory length N for sampled sensitivities (short: the variance of the score
    weights W_k grows with k)."""


def read_problem_file(data: dict, source: str) -> dict:
    """The ``LQRProblem`` constructor arguments of a loaded problem file (see the package docstring)."""
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
    return dict(gamma=gamma, real_a=real_a, real_b=real_b, real_noise=real_noise, cost_q=cost_q, cost_r=cost_r,
                initial_mean=initial_mean, initial_covariance=initial_covariance, std=std, family=family,
                sim_noise=sim_noise, real_horizon=horizon,
                inner=read_settings(InnerSettings, root.section('inner', {})),
                outer_defaults=outer_defaults(read_outer_section(root), n, m, horizon), source=source)


# Outer-loop default derived from the estimator (issue 11 item 3), used where the file's ``outer:``
# section does not set it; it reproduces config/lqr.yaml's hand-tuned real_history 100000.
ALL_REAL_DATA = 100000
STEP_PER_BOUND_RANGE = 0.03
"""Adam's step of each theta coordinate as a fraction of its bound range (about 33 steps cross it).
Measured with the exact real gradient, 200 iterations, generated problems 14 / 19 / 6: 0.01 ->
0.849 / 0.975 / 1.000, 0.02 -> 0.861 / 0.996 / 1.000, 0.03 -> 0.978 / 0.9996 / 1.000 (problem 14 is a
long curved plateau at ~0.83 once its dynamics entries reach their bounds).  On problems 0-19 the
exact-gradient runs: 18/20 -> 19/20 reach 0.95 (14 and 19 gained; 11 lost: its last log cost scale
reaches its bound within 30 iterations, 0.995 -> 0.939), median iterations to 0.95 12 -> 16
(bench/results/suite_after/lqr11/)."""


COEFFICIENT_MARGIN = 2
"""Each real batch holds at least this many times the LSTD-Q critic's coefficient count in transitions."""
MIN_REAL_EPISODES = 5
"""At least five episodes per batch.  Measured on the LQR suite, 50 problems x 3 seeds, with the reference
(exact real gradient) alongside (bench/results/suite_after/lqr_floor5/): a floor of 2 needed the least data
(median 2 248 real transitions to 0.95) but left 141/150 runs reaching 0.95 (94 %: estimator failures on
problems 3, 14, 17 and 25) and 4 runs deploying a policy > 0.05 below the start (worst -0.250); a floor of
5 gives 143/150 (the landscape problem 11 and the estimator problems 20 and 25), median 5 000
transitions, worst deployed -0.046; the old fixed 10 gave 145/150 at 9 800.  Two is the least the
Student-t interval of a deployed policy's return needs."""


def lstdq_coefficients(n: int, m: int) -> int:
    """Coefficients of the LSTD-Q real critic: a quadratic form in z = (x, u) plus a constant."""
    return (n + m) * (n + m + 1) // 2 + 1


def real_episodes_rule(n: int, m: int, horizon: int) -> int:
    """Default real episodes per outer iteration: max(MIN_REAL_EPISODES = 5, ceil(2 p / horizon)), p = ``lstdq_coefficients``.

    Every real batch is kept (``real_history`` = all; LSTD-Q is off-policy), so the information of an
    iteration comes mostly from the data already collected: a batch only has to determine the critic's
    p coefficients with margin on its own (the first one does so before any other exists), and no more.
    The old fixed 10 episodes (500 transitions for 7 coefficients on a 2 x 1 problem) spent the real
    data ~5x faster per iteration than the estimate needed (measured on the LQR suite:
    bench/results/suite_after/lqr6/)."""
    return max(MIN_REAL_EPISODES, math.ceil(COEFFICIENT_MARGIN * lstdq_coefficients(n, m) / horizon))


def outer_defaults(outer: dict, n: int, m: int, horizon: int) -> dict:
    """``outer`` with ``real_history`` = every real batch unless set, the per-coordinate step
    rule (``default_step_rule``) unless it sets a step, and ``real_episodes`` = ``real_episodes_rule``
    (n states, m inputs, ``horizon`` steps per real episode) unless it sets it.  The black-box
    methods' candidate scores are not reused, so they keep ``OuterConfig``'s default 10 episodes
    per score (``score_episodes``) where the rule applies.

    The LSTD-Q real critic is valid off-policy, so every real transition may feed it; the fixed
    default 1 kept only the newest 10 episodes, too few for the critic's H_uu when the policy
    std is small (generated seed 17, 5 x 3, std 0.055, 200 iterations: 0.913 -> 0.986).

    The Adam step: the fixed 0.05
    is too short for the log cost diagonals (+- ln 100; generated seed 14 stays at 0.854 after
    200 iterations even with the exact real gradient, 0.98 at 0.2), but one scalar step that long
    also moves the A, B entries (ranges ~1) by 0.18 per iteration, which destabilised the real
    closed loop of generated seed 6 (6 x 1, open-loop unstable: 0.994 -> 0.000).  A step per
    coordinate in proportion to its range (``default_step_rule``, STEP_PER_BOUND_RANGE) serves both."""
    values = default_step_rule(outer, STEP_PER_BOUND_RANGE)
    values.setdefault('real_history', ALL_REAL_DATA)
    if 'real_episodes' not in values:
        values['real_episodes'] = real_episodes_rule(n, m, horizon)
        values.setdefault('score_episodes', OuterConfig.real_episodes)
    return values


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
    return sym(value)


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
    correlation = correlation_of(values)
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
