"""Is the policy the outer loop deploys a smooth function of theta?  A simulator-only check.

Every bi-level outer step (and the implicit-function sensitivity behind it) assumes that the policy the
loop deploys -- the problem's warm inner solve S(theta, phi) from the current policy -- changes smoothly
with theta at the scale of an outer step.  On the iiwa payload task it does not: a tenfold smaller change of
theta moved the policy only 1-5x less, and the real return's slope in theta changed sign
(bench/results/theta_start/README.md, "Is the warm solve a smooth function of theta?").  Where that happens
part of what an outer step does to the deployed policy is beyond any sensitivity, and a user may want to
know it before spending real episodes.

The check needs no real data and no hidden model: per learnable theta coordinate i and step delta,
||S(theta + delta e_i, phi) - S(theta - delta e_i, phi)||, for two steps a factor apart.  For a
differentiable S the distance shrinks by that factor (linearity 1); a solve whose output jumps keeps its
distance (linearity near the inverse of the factor).  It holds at one (theta, phi) only, and it is not a
prediction of failure (bench/results/theta_start/smoothness/README.md): the warm solve is not linear in most
coordinates of all three shipped robot tasks at the file's theta, and bi-level still improves the pendulum,
which is flagged in every coordinate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

LINEAR_RANGE = (0.5, 2.0)
"""The linearity (distance ratio over step ratio) within which a coordinate's response counts as linear in
theta over the steps compared: the distance shrank by the step factor to within a factor of 2."""
NEGLIGIBLE = 1e-6
"""A response shorter than this times max(1, |phi|) at the largest step is no measurable effect."""


@dataclass
class CoordinateResponse:
    name: str
    steps: tuple[float, ...]
    distances: tuple[float, ...]
    """||S(theta + step e_i) - S(theta - step e_i)|| per step."""
    policy_norm: float = 1.0

    @property
    def linearity(self) -> float:
        """(distance ratio) / (step ratio) between the largest and the smallest step: 1 for a solve that is
        linear in theta over these steps; well below 1 for one whose output jumps at the small step; well
        above 1 for one that jumps (or curves) only over the large step.  NaN when the largest step moved
        the policy by no measurable amount (``NEGLIGIBLE``: the policy does not depend on this coordinate)."""
        small, large = int(np.argmin(self.steps)), int(np.argmax(self.steps))
        if not self.distances[large] > NEGLIGIBLE * max(1.0, self.policy_norm):
            return float('nan')
        distance_ratio = self.distances[large] / max(self.distances[small], 1e-300)
        return distance_ratio / (self.steps[large] / self.steps[small])

    @property
    def smooth(self) -> bool:
        value = self.linearity
        return bool(np.isnan(value) or LINEAR_RANGE[0] <= value <= LINEAR_RANGE[1])


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
        responses.append(CoordinateResponse(name, steps, tuple(distances),
                                            float(np.linalg.norm(phi)) if phi is not None else 1.0))
        if progress is not None:
            progress(format_row(responses[-1]))
    return responses


def verdict(response: CoordinateResponse) -> str:
    """'no measurable effect', 'linear' or 'not linear'."""
    if np.isnan(response.linearity):
        return 'no measurable effect'
    return 'linear' if response.smooth else 'not linear'


def format_row(response: CoordinateResponse) -> str:
    distances = ', '.join(f'{d:.3g} at +-{s:g}' for s, d in zip(response.steps, response.distances))
    said = {'linear': 'linear over these steps', 'not linear': 'NOT linear'}.get(verdict(response), verdict(response))
    return f'{response.name}: |phi(+step) - phi(-step)| {distances}; linearity {response.linearity:.2f} ({said})'


def summary(responses: Sequence[CoordinateResponse]) -> str:
    rough = [r.name for r in responses if not r.smooth]
    if not rough:
        return (f'every coordinate: the warm solve is linear in theta over these steps (linearity in '
                f'[{LINEAR_RANGE[0]:g}, {LINEAR_RANGE[1]:g}]) or does not depend on it')
    return (f'{len(rough)} of {len(responses)} coordinates ({", ".join(rough)}): the warm solve is not '
            'linear in theta there (its distance does not scale with the step), so part of what an outer step '
            'does to the deployed policy is beyond any sensitivity.  Not a prediction of failure: the '
            'shipped pendulum is flagged in every coordinate and bi-level still improves it '
            '(bench/results/theta_start/smoothness/README.md)')
