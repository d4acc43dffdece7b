"""Loading and validating user problem files.

Every error names the file, the field (a dotted path such as ``real.transitions[1][0]``),
the bad value and what was expected.  Nothing is clipped or repaired silently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

PROBABILITY_TOLERANCE = 1e-9
# Largest magnitude of any number in a problem file: squares and discounted sums of such
# numbers (costs, returns, second moments) must stay finite in float64.
MAX_MAGNITUDE = 1e100
# Largest integer field (counts, horizons, seeds): fits a ROS integer parameter and a C int.
MAX_INTEGER = 2 ** 31 - 1
# Longest episode a problem file may ask for (arrays of n x horizon are preallocated).
MAX_HORIZON = 10 ** 6


def builtin_config(name: str | Path) -> Path:
    """Resolve a problem argument: a path, or the name of a shipped config (``lqr``)."""
    path = Path(name)
    if path.exists():
        return path
    here = Path(__file__).resolve().parents[2] / 'config'          # source checkout
    candidates = [here / name, here / f'{name}.yaml']
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('sim2real_bilevel')) / 'config'
        candidates += [share / name, share / f'{name}.yaml']
    except Exception:       # not installed in an ament index: source checkout only
        pass
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return path            # the loader reports the missing file with its name


class ProblemConfigError(ValueError):
    """A problem file is malformed.  ``str(err)`` is a complete, user-facing message."""

    def __init__(self, source: str, field: str, value: Any, expected: str):
        self.source = source
        self.field = field
        self.value = value
        self.expected = expected
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + '...'
        super().__init__(f'{source}: field {field!r} = {shown}: expected {expected}')


class FieldReader:
    """Typed access to a mapping loaded from YAML, raising ``ProblemConfigError``.

    ``prefix`` is the dotted path of this mapping inside the file.
    """

    def __init__(self, data: Any, source: str, prefix: str = ''):
        self.source = source
        self.prefix = prefix
        if not isinstance(data, Mapping):
            raise ProblemConfigError(source, prefix or '<document>', data, 'a mapping of fields')
        self.data = data

    def path(self, key: str) -> str:
        return f'{self.prefix}.{key}' if self.prefix else key

    def error(self, key: str, value: Any, expected: str) -> ProblemConfigError:
        return ProblemConfigError(self.source, self.path(key), value, expected)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.error(key, '<missing>', 'this required field to be present')
            return default
        return self.data[key]

    def section(self, key: str, default: Any = ...) -> 'FieldReader':
        value = self.raw(key, default)
        return FieldReader(value, self.source, self.path(key))

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(str(key), self.data[key],
                                 f'one of the known fields {sorted(allowed)}')

    def scalar(self, key: str, default: Any = ..., *, low: float | None = None,
               high: float | None = None, low_open: bool = False, high_open: bool = False) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, value, 'a real number')
        value = float(value)
        interval = (('(' if low_open else '[') + (str(low) if low is not None else '-inf') + ', '
                    + (str(high) if high is not None else 'inf') + (')' if high_open else ']'))
        if not np.isfinite(value):
            raise self.error(key, value, f'a finite number in {interval}')
        if abs(value) > MAX_MAGNITUDE:
            raise self.error(key, value, f'a number of magnitude at most {MAX_MAGNITUDE:g} in {interval}')
        if low is not None and (value < low or (low_open and value == low)):
            raise self.error(key, value, f'a number in {interval}')
        if high is not None and (value > high or (high_open and value == high)):
            raise self.error(key, value, f'a number in {interval}')
        return value

    def boolean(self, key: str, default: Any = ...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, 'true or false')
        return value

    def integer(self, key: str, default: Any = ..., *, low: int | None = None,
                high: int = MAX_INTEGER) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, value, 'an integer')
        if low is not None and value < low:
            raise self.error(key, value, f'an integer >= {low}')
        if value > high:
            raise self.error(key, value, f'an integer <= {high}')
        return value

    def array(self, key: str, shape: tuple[int | None, ...], default: Any = ...) -> np.ndarray:
        """A finite float64 array of the given shape (``None`` = any length, fixed by the data)."""
        value = self.raw(key, default)
        return to_array(value, shape, self.source, self.path(key))

    def mask(self, key: str, shape: tuple[int, ...], default: Any = True) -> np.ndarray:
        """A 0/1 mask of ``shape``; ``true``/``false`` stand for all ones / all zeros."""
        value = self.raw(key, default)
        if isinstance(value, bool):
            return np.full(shape, value, dtype=bool)
        arr = to_array(value, shape, self.source, self.path(key))
        bad = ~np.isin(arr, (0.0, 1.0))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ProblemConfigError(self.source, self.path(key) + _index(index), arr[index],
                                     '0 or 1 (or true/false for the whole mask)')
        return arr.astype(bool)


def _index(index: tuple[int, ...]) -> str:
    return ''.join(f'[{i}]' for i in index)


def to_array(value: Any, shape: tuple[int | None, ...], source: str, field: str) -> np.ndarray:
    expected = 'x'.join('N' if n is None else str(n) for n in shape)
    described = f'a {expected} array of finite numbers' if shape else 'a finite number'
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProblemConfigError(source, field, value, described + ' (nested lists, rectangular)')
    if arr.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, arr.shape)):
        raise ProblemConfigError(source, field, value,
                                 f'{described}; got shape {"x".join(map(str, arr.shape)) or "scalar"}')
    if not np.all(np.isfinite(arr)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ProblemConfigError(source, field + _index(index), arr[index], 'a finite number')
    if np.any(np.abs(arr) > MAX_MAGNITUDE):
        index = tuple(int(i) for i in np.argwhere(np.abs(arr) > MAX_MAGNITUDE)[0])
        raise ProblemConfigError(source, field + _index(index), arr[index],
                                 f'a number of magnitude at most {MAX_MAGNITUDE:g}')
    return arr


def check_probability_rows(arr: np.ndarray, source: str, field: str) -> None:
    """The last axis of ``arr`` holds probability vectors: entries in [0, 1], sums 1 +- 1e-9."""
    bad = (arr < 0.0) | (arr > 1.0)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ProblemConfigError(source, field + _index(index), arr[index], 'a probability in [0, 1]')
    sums = arr.sum(axis=-1)
    off = np.abs(sums - 1.0) > PROBABILITY_TOLERANCE
    if np.ndim(sums) == 0:
        if off:
            raise ProblemConfigError(source, field, arr.tolist(),
                                     f'probabilities summing to 1 within {PROBABILITY_TOLERANCE:g} '
                                     f'(they sum to {float(sums)!r})')
        return
    if off.any():
        index = tuple(int(i) for i in np.argwhere(off)[0])
        raise ProblemConfigError(source, field + _index(index), arr[index].tolist(),
                                 f'probabilities summing to 1 within {PROBABILITY_TOLERANCE:g} '
                                 f'(they sum to {float(sums[index])!r})')


def check_symmetric_psd(arr: np.ndarray, source: str, field: str, *, definite: bool) -> None:
    """A symmetric positive (semi)definite matrix (symmetry to 1e-9 relative)."""
    kind = 'positive definite' if definite else 'positive semidefinite'
    scale = max(1.0, float(np.abs(arr).max(initial=0.0)))
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ProblemConfigError(source, field, arr.tolist(), f'a square symmetric {kind} matrix')
    if np.abs(arr - arr.T).max(initial=0.0) > 1e-9 * scale:
        raise ProblemConfigError(source, field, arr.tolist(), f'a symmetric {kind} matrix (it is not symmetric)')
    smallest = float(np.linalg.eigvalsh(arr).min()) if arr.size else 0.0
    if (definite and smallest <= 1e-12 * scale) or (not definite and smallest < -1e-9 * scale):
        raise ProblemConfigError(source, field, arr.tolist(),
                                 f'a symmetric {kind} matrix (smallest eigenvalue {smallest:.3g})')


def load_yaml(path: str | Path) -> tuple[dict, str]:
    """Read a YAML problem file; returns (mapping, source name for error messages)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ProblemConfigError(source, '<file>', str(path), f'a readable file ({err.strerror})')
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ProblemConfigError(source, '<document>', text[:80], f'valid YAML ({err})')
    if not isinstance(data, dict):
        raise ProblemConfigError(source, '<document>', data, 'a mapping with a "kind" field')
    return data, source
