"""Problem kinds and the loader that dispatches on a problem file's ``kind`` field.

Each kind is a package (``tabular/``, ``lqr/``, ``robot/``) whose ``__init__`` exports its
``BilevelProblem`` subclass; ``LOADERS`` names it.  Adding a kind is a new package and one
entry here: the ROS nodes use only the contract of ``core/problem.py`` (``trajectory_sizes``,
``real_system``, ``controller``, ...), never a kind's name or attributes.  Packages are imported on first use, so loading an LQR file never imports the
robot's simulator stack.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..config import ProblemConfigError, load_yaml

# kind -> (package, the BilevelProblem subclass it exports; its from_dict reads the file)
LOADERS = {
    'tabular': ('.tabular', 'TabularProblem'),
    'lqr': ('.lqr', 'LQRProblem'),
    'robot': ('.robot', 'RobotProblem'),
    'urdf': ('.urdf', 'UrdfProblem'),
}
KINDS = tuple(LOADERS)


def load_problem(path: str | Path):
    """Load and validate a problem file; returns a ``BilevelProblem``."""
    data, source = load_yaml(path)
    kind = data.get('kind', '<missing>')
    if not isinstance(kind, str) or kind not in LOADERS:
        raise ProblemConfigError(source, 'kind', kind, f'one of {list(KINDS)}')
    package, name = LOADERS[kind]
    problem_class = getattr(importlib.import_module(package, __name__), name)
    return problem_class.from_dict(data, source)
