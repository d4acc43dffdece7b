"""Problem kinds and the loader that dispatches on a problem file's ``kind`` field."""
from __future__ import annotations

from pathlib import Path

from ..config import ProblemConfigError, load_yaml

KINDS = ('tabular', 'lqr', 'robot')


def load_problem(path: str | Path):
    """Load and validate a problem file; returns a ``BilevelProblem``."""
    data, source = load_yaml(path)
    kind = data.get('kind', '<missing>')
    if kind == 'tabular':
        from .tabular import TabularProblem
        return TabularProblem.from_dict(data, source)
    if kind == 'lqr':
        from .lqr import LQRProblem
        return LQRProblem.from_dict(data, source)
    if kind == 'robot':
        from .robot import RobotProblem
        return RobotProblem.from_dict(data, source)
    raise ProblemConfigError(source, 'kind', kind, f'one of {list(KINDS)}')
