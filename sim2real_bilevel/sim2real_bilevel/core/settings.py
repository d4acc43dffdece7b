"""One reader for the settings sections of a problem file (``inner:``) and their runtime
overrides, driven by a dataclass.

Each field of the dataclass is one setting; its default is the default value and its
``metadata`` (written with ``setting``) holds the checks: ``low`` / ``high`` bounds (with
``low_open`` / ``high_open`` for open intervals) for numbers, ``choices`` for strings.  The
default's type picks the check: an ``int`` default reads an integer, a ``float`` default a
real number, a ``str`` default one of ``choices``.  Every failure is a ``ProblemConfigError``
naming the file, the field (``inner.episodes``), the bad value and what was expected.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from .config import FieldReader, ProblemConfigError


class UnknownOptionError(ProblemConfigError, TypeError):
    """A runtime override names no setting: a ``ProblemConfigError`` that is also the
    ``TypeError`` Python raises for an unexpected keyword argument."""


def setting(default: Any, *, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, high_open: bool = False, choices: Optional[tuple] = None) -> Any:
    """A dataclass field with its default and the checks ``read_settings`` applies."""
    checks = {'low': low, 'high': high, 'low_open': low_open, 'high_open': high_open, 'choices': choices}
    return dataclasses.field(default=default, metadata={key: value for key, value in checks.items()
                                                        if value is not None and value is not False})


def read_settings(cls, reader: FieldReader, limits: Optional[Mapping[str, Mapping]] = None):
    """An instance of the dataclass ``cls`` from the mapping ``reader`` holds: unknown keys
    rejected, missing ones at their defaults, each present one checked.  ``limits`` overrides
    a field's metadata for this read (bounds that depend on other sections)."""
    reader.reject_unknown({spec.name for spec in dataclasses.fields(cls)})
    return cls(**{spec.name: _read(reader, spec, spec.default, limits) for spec in dataclasses.fields(cls)})


def override_settings(settings, options: Mapping[str, Any], *, source: str, prefix: str = 'inner',
                      fixed: frozenset = frozenset(), what: str = 'inner_solve'):
    """A copy of the dataclass ``settings`` with the keyword ``options`` (checked like the file's
    fields); ``settings`` itself when there are none.  Names in ``fixed`` are part of the
    problem, not of the solver, and cannot be overridden."""
    if not options:
        return settings
    known = sorted({spec.name for spec in dataclasses.fields(settings)} - set(fixed))
    for name in options:
        if name not in known:
            why = 'part of the problem, set in its file' if name in fixed else f'unknown option {name!r}'
            raise UnknownOptionError(source, f'{prefix}.{name}', options[name],
                                     f'one of the known {what} options {known} ({why})')
    reader = FieldReader(options, source, prefix)
    return dataclasses.replace(settings, **{spec.name: _read(reader, spec, getattr(settings, spec.name), None)
                                            for spec in dataclasses.fields(settings) if spec.name in options})


def _read(reader: FieldReader, spec: dataclasses.Field, default: Any, limits) -> Any:
    checks = dict(spec.metadata)
    checks.update((limits or {}).get(spec.name, {}))
    name = spec.name
    if isinstance(spec.default, str):
        value = reader.raw(name, default)
        choices = checks['choices']
        if value not in choices:
            raise reader.error(name, value, ' or '.join(map(repr, choices)) if len(choices) == 2
                               else f'one of {list(choices)}')
        return value
    if isinstance(spec.default, int):
        bounds = {key: checks[key] for key in ('low', 'high') if key in checks}
        return reader.integer(name, default, **bounds)
    return reader.scalar(name, default, **{key: value for key, value in checks.items()
                                           if key in ('low', 'high', 'low_open', 'high_open')})
