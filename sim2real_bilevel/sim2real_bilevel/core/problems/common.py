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
