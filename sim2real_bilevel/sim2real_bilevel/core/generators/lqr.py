"""LQR problems with a built-in objective mismatch (``generate lqr``).

A candidate:
- the real system: A = a Gaussian n x n matrix scaled to a drawn spectral radius (0.6-0.95 for
  ``--open-loop stable``, 1.03-1.25 for ``unstable``), B Gaussian n x m, small diagonal noise,
  diagonal task costs Q, R, a random initial mean;
- the simulator FORGETS some couplings: 1 to n/2 of the largest off-diagonal entries of A are
  fixed (not learnable) at 0, or at a fraction of the real value; its actuator is optimistic
  (all of B times 1.3-2); its learnable A entries (the diagonal and a few others) are off by
  N(0, 0.1).  The family cannot represent the real system (a fixed entry is wrong).
- learnable: those A entries, a random non-empty subset of B (bound +-0.5 around nominal), the
  in-sim state cost Q_hat (log diagonals and a few correlations) and sometimes R_hat's diagonal.

Checks on the loaded candidate (exact unless said): the nominal Riccati gain stabilises the real
system (spectral radius of A - B K < 1, undiscounted) and reaches <= MAX_BASELINE normalised real
return; system identification (generalised least squares of the learnable A, B entries on 20000
real transitions of the nominal policy, projected onto the bounds; refitted once with as many
transitions of its own policy added) gives a gain that still stabilises the real system and
reaches <= MAX_BASELINE; and L-BFGS-B on the exact real cost over theta inside the bounds
(gradient: the real cost's gradient in K through dK*/dtheta, ``riccati_gain_derivative``) finds
a witness reaching >= MIN_REACHABLE.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..config import ProblemConfigError
from . import (CHOICES, MAX_BASELINE, MAX_DRAWS, MIN_REACHABLE, RANGES, derived_rng, GenerationFailed,
               header_opening, int_matrix, iterated_sysid, load_text, matrix, number, redraw_summary,
               rounded_inside, row, wrap_comment)

DYNAMICS_BOUND = 0.5
SYSID_TRANSITIONS = 20000
MAX_LEARNED_CORRELATIONS = 8       # the loader checks PSD at 2^pairs vertices


def draw_settings(seed: int, options: dict) -> dict:
    """Choices not tied to a candidate, drawn from the seed in a fixed order (uniforms first,
    so that a given option leaves the other draws unchanged), then the options given."""
    rng = derived_rng('lqr', seed)
    u_states, u_inputs = rng.random(), rng.random()
    open_loop = str(rng.choice(CHOICES['lqr']['open_loop']))
    horizon = int(rng.integers(20, 101)) if rng.random() < 0.7 else 'none'
    gamma = round(float(rng.uniform(0.9, 0.99)), 2)
    std = float(f'{10 ** rng.uniform(math.log10(0.05), math.log10(0.5)):.2g}')
    low_n, high_n = RANGES['lqr']['states']
    low_m, high_m = RANGES['lqr']['inputs']
    inputs = options.get('inputs')
    states = options.get('states')
    if states is None:
        low = max(low_n, inputs or low_n)
        states = low + int(u_states * (high_n - low + 1))
    if inputs is None:
        inputs = low_m + int(u_inputs * (min(high_m, states) - low_m + 1))
    return {'states': states, 'inputs': inputs, 'open_loop': options.get('open_loop', open_loop),
            'horizon': options.get('horizon', horizon), 'gamma': gamma, 'std': std}


def spectral_radius(a: np.ndarray) -> float:
    return float(np.abs(np.linalg.eigvals(a)).max())


def draw_candidate(rng: np.random.Generator, settings: dict) -> dict:
    n, m = settings['states'], settings['inputs']
    target = rng.uniform(0.6, 0.95) if settings['open_loop'] == 'stable' else rng.uniform(1.03, 1.25)
    raw = rng.normal(size=(n, n))
    a = np.round(raw * target / spectral_radius(raw), 3)
    b = np.round(rng.normal(size=(n, m)) * rng.uniform(0.3, 1.0), 3)
    noise = np.diag(np.round(10 ** rng.uniform(-3, -2, n), 4))
    q = np.diag(np.round(rng.uniform(0.2, 2.0, n), 2))
    r = np.diag(np.round(10 ** rng.uniform(-1.5, 0, m), 3))
    mean = np.round(rng.normal(0.0, 1.0, n), 2)
    covariance = np.diag(np.round(rng.uniform(0.05, 0.2, n), 3))

    learn_a = np.eye(n, dtype=bool) | (rng.random((n, n)) < 0.15)
    fixed_off = [(i, j) for i in range(n) for j in range(n) if i != j and not learn_a[i, j]]
    fixed_off.sort(key=lambda ij: -abs(a[ij]))
    forgotten_count = int(rng.integers(1, max(1, n // 2) + 1))
    sim_a = a.copy()
    mismatch = []
    for i, j in fixed_off[:forgotten_count]:
        if rng.random() < 0.6:
            sim_a[i, j] = 0.0
            mismatch.append(f'A[{i}][{j}] = {a[i, j]:g} forgotten (0, fixed)')
        else:
            sim_a[i, j] = round(a[i, j] * rng.uniform(-0.5, 0.5), 3)
            mismatch.append(f'A[{i}][{j}] = {a[i, j]:g} written {sim_a[i, j]:g} (fixed)')
    sim_a[learn_a] = np.round(a[learn_a] + rng.normal(0.0, 0.1, int(learn_a.sum())), 3)
    gain = rng.uniform(1.3, 2.0)
    sim_b = np.round(b * gain, 3)
    learn_b = rng.random((n, m)) < 0.5
    if not learn_b.any():
        learn_b[int(rng.integers(n)), int(rng.integers(m))] = True
    mismatch.append(f'actuator optimistic: B written {gain:.2f} x the real B')

    learn_q = np.eye(n, dtype=bool)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.5]
    for i, j in pairs[:MAX_LEARNED_CORRELATIONS]:
        learn_q[i, j] = learn_q[j, i] = True
    learn_r = np.eye(m, dtype=bool) if rng.random() < 0.5 else np.zeros((m, m), dtype=bool)
    return {'gamma': settings['gamma'], 'a': a, 'b': b, 'noise': noise, 'q': q, 'r': r, 'mean': mean,
            'covariance': covariance, 'std': settings['std'], 'horizon': settings['horizon'], 'sim_a': sim_a,
            'learn_a': learn_a, 'sim_b': sim_b, 'learn_b': learn_b, 'learn_q': learn_q, 'learn_r': learn_r,
            'mismatch': mismatch, 'open_loop': settings['open_loop']}


def write(candidate: dict, header: list[str]) -> str:
    c = candidate
    lines = [f'# {line}' if line else '#' for line in header]
    lines += ['kind: lqr', f'gamma: {number(c["gamma"], 2)}', 'real:',
              f'  A: {matrix(c["a"], 3)}', f'  B: {matrix(c["b"], 3)}',
              f'  noise_covariance: {matrix(c["noise"], 4)}']
    if c['horizon'] != 'none':
        lines.append(f'  horizon: {int(c["horizon"])}               # steps per real episode')
    lines += ['cost:                       # real stage cost x\'Qx + u\'Ru',
              f'  Q: {matrix(c["q"], 2)}', f'  R: {matrix(c["r"], 3)}',
              'initial_state:', f'  mean: {row(c["mean"], 2)}', f'  covariance: {matrix(c["covariance"], 3)}',
              'policy:', f'  std: {c["std"]!r}                 # u = -K x + std eps',
              'simulator:',
              f'  A: {matrix(c["sim_a"], 3)}', f'  learn_A: {int_matrix(c["learn_a"])}',
              f'  B: {matrix(c["sim_b"], 3)}', f'  learn_B: {int_matrix(c["learn_b"])}',
              f'  Q: {matrix(c["q"], 2)}           # in-sim cost starts at the task cost',
              f'  learn_Q: {int_matrix(c["learn_q"])}',
              f'  R: {matrix(c["r"], 3)}',
              '  learn_R: ' + (int_matrix(c['learn_r']) if c['learn_r'].any() else 'false'),
              '  # noise_covariance: default = real.noise_covariance',
              f'  dynamics_bound: {{A: {DYNAMICS_BOUND}, B: {DYNAMICS_BOUND}}}   # learnable A, B entries in nominal +- 0.5',
              '  # cost_scale_bound: default 100 (learnable cost diagonals within nominal */ 100)',
              '  # correlation_bound: default 0.9 / (n - 1)']
    return '\n'.join(lines) + '\n'


def real_radius(problem, phi) -> float:
    """Spectral radius of the real closed loop A - B K (undiscounted: < 1 is stable)."""
    return spectral_radius(problem.real_a - problem.real_b @ problem.gain(phi))


def sysid_gains(problem, phi_nominal, rng):
    """[(normalised return, real closed-loop radius)] of the sysid fit on plentiful real data of
    the nominal policy (projected onto the bounds, as the baseline does), then refitted with as
    many transitions of the fitted policy added.  Raises ``UnstableClosedLoopError`` when a
    fitted simulator has no stabilising Riccati solution."""
    policies = iterated_sysid(problem, phi_nominal, rng, SYSID_TRANSITIONS,
                              keep_going=lambda phi: real_radius(problem, phi) < 1.0)
    return [(problem.normalized_return(phi), real_radius(problem, phi)) for phi in policies]


def find_witness(problem, target: float = 0.995) -> tuple[float, np.ndarray]:
    """L-BFGS-B on log(real cost) over theta in the bounds, from the nominal theta, until the
    normalised return reaches ``target``; returns the best (normalised return, theta rounded to
    4 decimals and clipped)."""
    from scipy.optimize import minimize

    from ..problems.lqr import UnstableClosedLoopError

    lower, upper = problem.theta_bounds()
    best = [-1.0, problem.theta0()]

    class Reached(Exception):
        """Stops the search once the witness is good enough (each step costs a Jacobian)."""

    def objective(theta):
        try:
            phi = problem.inner_solve(theta).phi
            loop = problem.real_closed_loop(phi)
        except UnstableClosedLoopError:
            return 1e6, np.zeros_like(theta)
        cost = problem.cost_of(loop)
        value = problem.real_optimum()[1] / cost
        if value > best[0]:
            best[:] = [value, theta.copy()]
        if value >= target:
            raise Reached
        gradient_k = -loop.gradient.reshape(-1) / cost            # d log cost / d vec K
        return math.log(cost), problem.riccati_gain_derivative(theta).T @ gradient_k

    try:
        minimize(objective, problem.theta0(), jac=True, method='L-BFGS-B', bounds=list(zip(lower, upper)),
                 options={'maxiter': 200})
    except Reached:
        pass
    theta = rounded_inside(best[1], lower, upper, 4)
    try:
        return problem.normalized_return(problem.inner_solve(theta).phi), theta
    except UnstableClosedLoopError:
        return 0.0, theta


def generate_lqr(seed: int, options: dict):
    from ..problems.lqr import UnstableClosedLoopError

    settings = draw_settings(seed, options)
    rejected = Counter()

    for draw in range(1, MAX_DRAWS + 1):
        candidate = draw_candidate(derived_rng('lqr', seed, draw), settings)
        radius = spectral_radius(candidate['a'])
        if (radius < 1.0) != (settings['open_loop'] == 'stable') or abs(radius - 1.0) < 0.02:
            rejected['open-loop class'] += 1
            continue
        try:
            problem = load_text(write(candidate, []))
        except ProblemConfigError:              # e.g. the nominal simulator is not stabilisable
            rejected['invalid'] += 1
            continue
        phi_nominal = problem.inner_solve(problem.theta0()).phi
        nominal = problem.normalized_return(phi_nominal)
        if real_radius(problem, phi_nominal) >= 1.0:
            rejected['nominal destabilises'] += 1
            continue
        if nominal > MAX_BASELINE:
            rejected['nominal'] += 1
            continue
        try:
            sysid = sysid_gains(problem, phi_nominal, derived_rng('lqr', seed, draw, 1))
        except UnstableClosedLoopError:
            rejected['sysid unsolvable'] += 1
            continue
        if any(radius >= 1.0 for _, radius in sysid):
            rejected['sysid destabilises'] += 1
            continue
        if max(value for value, _ in sysid) > MAX_BASELINE:
            rejected['sysid'] += 1
            continue
        reached, witness = find_witness(problem)
        if reached < MIN_REACHABLE:
            rejected['unreachable'] += 1
            continue
        info = {'states': settings['states'], 'inputs': settings['inputs'], 'open_loop': settings['open_loop'],
                'open_loop_radius': radius, 'gamma': settings['gamma'], 'std': settings['std'],
                'horizon': settings['horizon'], 'nominal': nominal, 'sysid': sysid[0][0],
                'sysid_refit': sysid[-1][0], 'reachable': reached, 'theta_size': len(problem.theta_names),
                'rejected': dict(rejected)}
        header = _header(seed, options, settings, candidate, problem, draw, rejected, info, witness,
                         nominal_radius=real_radius(problem, phi_nominal))
        return write(candidate, header), draw, info
    raise GenerationFailed(f'lqr seed {seed}: no candidate passed the checks in {MAX_DRAWS} draws '
                           f'(rejected: {dict(rejected)}); try another seed or other sizes')


def _header(seed, options, settings, candidate, problem, draw, rejected, info, witness, nominal_radius):
    from ..problems.lqr.config import MIN_REAL_EPISODES, lstdq_coefficients, real_episodes_rule
    n, m = settings['states'], settings['inputs']
    k_star, cost_star = problem.real_optimum()
    n_a, n_b = int(candidate['learn_a'].sum()), int(candidate['learn_b'].sum())
    n_corr = int(np.triu(candidate['learn_q'], 1).sum())
    lines = header_opening('lqr', seed, options, f'{n} states, {m} input(s), gamma {settings["gamma"]}, policy std '
                           f'{settings["std"]}', settings['horizon'], 'gamma, std and the candidate') + [
        f'The real system is open-loop {settings["open_loop"]}: spectral radius of A = {info["open_loop_radius"]:.3f}.',
        '',
        'Built-in mismatch (the family cannot represent the real system):',
    ]
    lines += [f'  - {item}' for item in candidate['mismatch']]
    lines += [
        f'Learnable: {n_a} A entries (the diagonal and a few more, nominal = real + N(0, 0.1)),',
        f'  {n_b} of {n * m} B entries (bounds +-{DYNAMICS_BOUND} around nominal), Q_hat\'s {n} log diagonals'
        f' and {n_corr} correlation(s),',
        '  ' + (f'R_hat\'s {m} log diagonal(s).' if candidate['learn_r'].any() else 'R_hat fixed.')
        + f'  theta has {info["theta_size"]} entries.',
        '',
        'Measured at generation (exact):',
        f'  real optimum: cost {cost_star:.6g} (J* = {-cost_star:.6g}) at K* = {matrix(problem.gain(k_star), 3)}',
        f'  nominal simulator\'s gain: normalised real return {info["nominal"]:.4f}; it stabilises the real',
        f'    system (spectral radius of A - B K = {nominal_radius:.3f})',
        f'  sysid (least squares of the {n_a + n_b} learnable A, B entries on {SYSID_TRANSITIONS} real transitions of',
        f'    the nominal policy, projected onto the bounds): {info["sysid"]:.4f}; refitted with as many',
        f'    transitions of its own policy added: {info["sysid_refit"]:.4f} (both stabilise the real system)',
        f'  a theta inside the bounds reaches {info["reachable"]:.4f} (L-BFGS-B on the exact real cost through',
        '    dK*/dtheta, from the nominal theta);',
        f'  checked: nominal and sysid <= {MAX_BASELINE}, reachable >= {MIN_REACHABLE}.',
        f'Default real episodes per outer iteration: {real_episodes_rule(n, m, problem.real_horizon)} = max({MIN_REAL_EPISODES}, '
        f'ceil(2 x {lstdq_coefficients(n, m)} LSTD-Q coefficients / {problem.real_horizon} steps));',
        '  every real batch is kept for the real critic (outer.real_episodes sets another number).',
        redraw_summary(draw, rejected),
        'Witness theta (theta_names order: A, B, Q, R entries row-major; cost diagonals as logs):',
    ]
    lines += [line[2:] for line in wrap_comment(row(witness, 4), width=98)]
    return lines
