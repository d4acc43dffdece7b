"""Accuracy of the sampled sensitivities: tables of the relative error of the sampled
d phi*/d theta against central finite differences of the exact phi*(theta), over the
trajectory length N and the number of trajectories n (and, for tabular problems, over the
critic top-up).  Benchmarks and tests import them; the problems themselves do not.

    from bench.accuracy_tables import sampled_sensitivity_table, format_sensitivity_table
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from sim2real_bilevel.core.gradcheck import finite_difference_jacobians
from sim2real_bilevel.core.problem import BilevelProblem


def finite_difference_gain_jacobian(problem: BilevelProblem, theta: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Central differences of the exact inner optimum phi*(theta) (P x D)."""
    jacobian, _ = finite_difference_jacobians(problem, np.asarray(theta, dtype=np.float64), step)
    return jacobian


def sampled_sensitivity_table(problem: BilevelProblem, theta: Optional[np.ndarray] = None, *,
                              horizons=(10, 25, 50), episodes=(250, 1000, 4000), repeats: int = 3,
                              seed: int = 0, step: float = 1e-5) -> list[dict]:
    """Relative error ||J_sampled - J_fd|| / ||J_fd|| of the sampled d phi*/d theta (dense
    implicit-function solve of the sampled terms at the exact inner optimum) against central
    finite differences of the exact phi*(theta), for each trajectory length N (``horizons``)
    and number of trajectories n (``episodes``), over ``repeats`` seeds."""
    theta = np.asarray(problem.theta0() if theta is None else theta, dtype=np.float64)
    phi = problem.inner_solve(theta).phi
    reference = finite_difference_gain_jacobian(problem, theta, step)
    rows = []
    for horizon in horizons:
        for count in episodes:
            errors, started = [], time.perf_counter()
            for repeat in range(repeats):
                rng = np.random.default_rng([seed, horizon, count, repeat])
                terms = problem.sensitivity_terms(phi, theta, method='sampled',
                                                  trajectories=problem.simulate(phi, theta, count, horizon, rng))
                estimate = -np.linalg.solve(terms.hessian, terms.mixed)
                errors.append(float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference)))
            rows.append({'horizon': horizon, 'episodes': count, 'transitions': horizon * count,
                         'median_error': float(np.median(errors)), 'max_error': float(np.max(errors)),
                         'seconds_per_estimate': (time.perf_counter() - started) / repeats})
    return rows


def sampled_error_table(problem: BilevelProblem, Ns=(10, 25, 50), ns=(250, 1000, 4000),
                        seed: int = 0) -> list[tuple[int, int, float]]:
    """(N, n, relative error) rows: one seeded sampled d phi*/d theta per trajectory length N
    and number of trajectories n, against finite differences at the nominal theta (the compact
    form of ``sampled_sensitivity_table``)."""
    rows = sampled_sensitivity_table(problem, horizons=Ns, episodes=ns, repeats=1, seed=seed)
    return [(row['horizon'], row['episodes'], row['median_error']) for row in rows]


def format_sensitivity_table(rows: list[dict]) -> str:
    header = f'{"N":>5}{"n":>7}{"transitions":>13}{"median rel.err":>16}{"max rel.err":>13}{"s/estimate":>12}'
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(f'{row["horizon"]:>5}{row["episodes"]:>7}{row["transitions"]:>13}{row["median_error"]:>16.4f}'
                     f'{row["max_error"]:>13.4f}{row["seconds_per_estimate"]:>12.3f}')
    return '\n'.join(lines)


# --- tabular problems: the same table per critic top-up --------------------------------------------
def top_up_sensitivity_table(problem, theta: Optional[np.ndarray] = None, *,
                             horizons=(10, 20, 40), episodes=(100, 400, 1600),
                             min_pair_samples=(0, None), repeats: int = 5, seed: int = 0) -> list[dict]:
    """``sampled_sensitivity_table`` of a tabular problem for each critic top-up
    (``min_pair_samples``; None = the problem's ``inner.sensitivity_min_pair_samples``, 0 =
    trajectories only); rows carry 'min_pair_samples' too."""
    configured = problem.inner.sensitivity_min_pair_samples
    rows = []
    try:
        for minimum in min_pair_samples:
            problem.inner.sensitivity_min_pair_samples = configured if minimum is None else int(minimum)
            for row in sampled_sensitivity_table(problem, theta, horizons=horizons, episodes=episodes,
                                                 repeats=repeats, seed=seed):
                rows.append(dict(row, min_pair_samples=problem.inner.sensitivity_min_pair_samples))
    finally:
        problem.inner.sensitivity_min_pair_samples = configured
    return rows


def format_top_up_table(rows: list[dict]) -> str:
    """The table of ``top_up_sensitivity_table`` as text, one block per critic top-up."""
    blocks = []
    for minimum in dict.fromkeys(row['min_pair_samples'] for row in rows):
        blocks.append(f'critic top-up to {minimum} transitions per state-action pair'
                      + (' (trajectories only)' if minimum == 0 else ''))
        blocks.append(format_sensitivity_table([row for row in rows if row['min_pair_samples'] == minimum]))
    return '\n'.join(blocks)
