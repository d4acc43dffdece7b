"""Problem-file sections shared by every problem kind."""
from __future__ import annotations

from ..config import FieldReader, ProblemConfigError
from ..outer import OuterConfig


def read_outer_section(root: FieldReader) -> dict:
    """The ``outer:`` section, kept as a plain dict (``outer_defaults``) after checking it with
    ``OuterConfig`` -- including each ``methods: {NAME: {...}}`` override merged over it."""
    if not isinstance(root.raw('outer', {}), dict):
        raise root.error('outer', root.raw('outer'), 'a mapping of outer-loop settings')
    section = root.section('outer', {})
    values = dict(section.data)
    shared = {key: value for key, value in values.items() if key != 'methods'}
    per_method = values.get('methods') or {}
    if not isinstance(per_method, dict):
        raise section.error('methods', per_method, 'a mapping from method name to outer-loop fields')
    checks = [('', {})] + [(f'.methods.{name}', overrides) for name, overrides in per_method.items()]
    for suffix, overrides in checks:
        if not isinstance(overrides, dict):
            raise ProblemConfigError(root.source, 'outer' + suffix, overrides, 'a mapping of outer-loop fields')
        try:
            OuterConfig.from_mapping({**shared, **overrides})
        except (TypeError, ValueError) as err:
            raise ProblemConfigError(root.source, 'outer' + suffix, overrides or shared,
                                     f'valid outer-loop settings ({err})')
    return values


# The outer step where a problem file sets none (issue 11 item 3; per coordinate since lqr11).
STEP_PER_BOUND_RANGE = 0.01
"""Tabular: Adam's step of each theta coordinate as a fraction of its own bound range (about 100 steps
cross it; the value measured for the tabular defaults).  LQR uses its own fraction (lqr/config.py)."""


def default_step_rule(outer: dict, fraction: float = STEP_PER_BOUND_RANGE) -> dict:
    """``outer`` with the per-coordinate step rule where it sets neither ``step_size`` nor
    ``step_per_range``: ``step_per_range`` on, ``step_size`` = ``fraction`` (of each coordinate's
    bound range).  A file that sets ``step_size`` keeps one absolute step for every coordinate.

    Measured on generated LQR problems (lqr11): one scalar step cannot serve coordinates whose
    ranges differ by 10x -- log cost scales (range 2 ln 100 = 9.2) next to dynamics entries
    (range 1-2) and cost correlations (range 0.36-1.8).  The old 0.05 left problem 14 at 0.854
    even with the exact real gradient, 0.2 destabilised problem 6, and 0.05 is 8 % of problem
    19's correlation range per iteration: it swung across the maximum it had reached (0.994 ->
    0.906 with the exact gradient)."""
    values = dict(outer)
    if 'step_size' not in values and 'step_per_range' not in values:
        values.update(step_size=fraction, step_per_range=True)
    return values


class SampleSizesFromInnerSettings:
    """``default_sim_episodes`` / ``default_sim_horizon`` (the contract in ``core/problem.py``)
    read from the kind's ``inner:`` settings ``sensitivity_episodes`` / ``sensitivity_horizon``;
    mixed in before ``BilevelProblem``."""

    @property
    def default_sim_episodes(self) -> int:
        return self.inner.sensitivity_episodes

    @property
    def default_sim_horizon(self) -> int:
        return self.inner.sensitivity_horizon
