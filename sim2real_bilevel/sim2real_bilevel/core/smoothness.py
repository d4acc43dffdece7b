"""Is the policy the outer loop deploys a smooth function of theta?  A simulator-only check.

Every bi-level outer step (and the implicit-function sensitivity behind it) assumes that the policy the
loop deploys -- the problem's warm inner solve S(theta, phi) from the current policy -- changes smoothly
with theta at the scale of an outer step.  On the iiwa payload task it does not: a tenfold smaller change of
theta moved the policy only 1-5x less, and the real return's slope in theta changed sign
(bench/results/theta_start/README.md, "Is the warm solve a smooth function of theta?").  Where that happens
no sensitivity can point the outer step the right way, so a user should know it before spending real
episodes.

The check needs no real data and no hidden model: per learnable theta coordinate i and step delta,
||S(theta + delta e_i, phi) - S(theta - delta e_i, phi)||, for two steps a factor apart.  For a
differentiable S the distance shrinks by that factor (linearity 1); a solve whose output jumps keeps its
distance (linearity near the inverse of the factor)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

SMOOTH_LINEARITY = 0.5
"""The linearity at or above which a coordinate's response counts as consistent with a differentiable
solve: the distance shrank by at least half the factor between the steps."""


@dataclass
class CoordinateResponse:
    name: str
    steps: tuple[float, ...]
    distances: tuple[float, ...]
    """||S(theta + step e_i) - S(theta - step e_i)|| per step."""

    @property
    def linearity(self) -> float:
        """(distance ratio) / (step ratio) between the largest and the smallest step: 1 for a
        differentiable solve, ~ smallest/largest step for one whose output jumps; NaN when the largest
        step moved nothing (the policy does not depend on this coordinate)."""
        small, large = int(np.argmin(self.steps)), int(np.argmax(self.steps))
        if not self.distances[large] > 0:
            return float('nan')
        distance_ratio = self.distances[large] / max(self.distances[small], 1e-300)
        return distance_ratio / (self.steps[large] / self.steps[small])

    @property
    def smooth(self) -> bool:
        value = self.linearity
        # above 1 is smooth too: a coordinate whose first derivative vanishes shrinks faster than the step
        return bool(np.isnan(value) or value >= SMOOTH_LINEARITY)


def solve_response(problem, theta: np.ndarray, phi: np.ndarray, steps: Sequence[float] = (0.1, 0.01),
                   progress: Optional[Callable[[str], None]] = None) -> list[CoordinateResponse]:
    """The warm solve's response per learnable theta coordinate (``problem.inner_solve(theta', phi)``, the
    solve the outer loop deploys), at theta +- each step: 2 x len(steps) x len(theta) warm solves."""
    theta = np.asarray(theta, dtype=np.float64)
    steps = tuple(float(s) for s in steps)
    if len(steps) < 2 or len(set(steps)) < 2 or min(steps) <= 0 or not np.all(np.isfinite(steps)):
        raise ValueError(f'steps = {list(steps)}: expected two or more different finite steps > 0')
    responses = []
    for i, name in enumerate(problem.theta_names):
        distances = []
        for step in steps:
            solved = []
            for sign in (+1, -1):
                shifted = theta.copy()
                shifted[i] += sign * step
                solved.append(problem.inner_solve(shifted, phi).phi)
            distances.append(float(np.linalg.norm(solved[0] - solved[1])))
        responses.append(CoordinateResponse(name, steps, tuple(distances)))
        if progress is not None:
            progress(format_row(responses[-1]))
    return responses


def format_row(response: CoordinateResponse) -> str:
    distances = ', '.join(f'{d:.3g} at +-{s:g}' for s, d in zip(response.steps, response.distances))
    verdict = 'consistent with a differentiable solve' if response.smooth else 'NOT smooth'
    return f'{response.name}: |phi(+step) - phi(-step)| {distances}; linearity {response.linearity:.2f} ({verdict})'


def summary(responses: Sequence[CoordinateResponse]) -> str:
    rough = [r.name for r in responses if not r.smooth]
    if not rough:
        return f'every coordinate: consistent with a differentiable warm solve (linearity >= {SMOOTH_LINEARITY:g})'
    return (f'{len(rough)} of {len(responses)} coordinates ({", ".join(rough)}): the warm solve is not a smooth '
            'function of theta there, so no sensitivity can point the outer step along them and bi-level\'s '
            'steps there follow noise (bench/results/theta_start/README.md); the sysid baseline does not rely '
            'on this derivative')
