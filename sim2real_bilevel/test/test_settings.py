"""The one reader of settings sections (core/settings.py): types, bounds, choices, unknown
names and runtime overrides, all reported as ProblemConfigError naming file and field."""
from dataclasses import dataclass

import pytest

from sim2real_bilevel.core.config import FieldReader, ProblemConfigError
from sim2real_bilevel.core.settings import UnknownOptionError, override_settings, read_settings, setting


@dataclass
class Example:
    count: int = setting(3, low=1)
    step: float = setting(0.5, low=0.0, high=1.0, low_open=True)
    mode: str = setting('fast', choices=('fast', 'slow'))
    seed: int = setting(0, low=0)


def read(mapping, **kwargs):
    return read_settings(Example, FieldReader(mapping, 'file.yaml', 'inner'), **kwargs)


def test_defaults_and_values():
    assert read({}) == Example()
    assert read({'count': 7, 'step': 1, 'mode': 'slow'}) == Example(count=7, step=1.0, mode='slow')
    assert isinstance(read({'step': 1}).step, float)


@pytest.mark.parametrize('mapping, field, expected', [
    ({'count': 0}, 'inner.count', 'an integer >= 1'),
    ({'count': 2.5}, 'inner.count', 'an integer'),
    ({'count': True}, 'inner.count', 'an integer'),
    ({'step': 0.0}, 'inner.step', '(0.0, 1.0]'),
    ({'step': 'big'}, 'inner.step', 'a real number'),
    ({'mode': 'medium'}, 'inner.mode', "'fast' or 'slow'"),
    ({'colour': 1}, 'inner.colour', 'one of the known fields'),
])
def test_bad_values_name_file_field_value_and_expectation(mapping, field, expected):
    with pytest.raises(ProblemConfigError) as info:
        read(mapping)
    assert info.value.source == 'file.yaml' and info.value.field == field
    assert expected in str(info.value)


def test_limits_override_a_bound_for_one_read():
    assert read({'count': 4}, limits={'count': {'high': 4}}).count == 4
    with pytest.raises(ProblemConfigError, match='an integer <= 4'):
        read({'count': 5}, limits={'count': {'high': 4}})


def test_overrides_are_checked_like_the_file():
    settings = Example()
    assert override_settings(settings, {}, source='file.yaml') is settings
    assert override_settings(settings, {'count': 9}, source='file.yaml') == Example(count=9)
    assert settings.count == 3
    with pytest.raises(ProblemConfigError, match="'inner.step'"):
        override_settings(settings, {'step': 2.0}, source='file.yaml')
    with pytest.raises(UnknownOptionError, match='unknown option') as info:
        override_settings(settings, {'colour': 1}, source='file.yaml')
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownOptionError, match='part of the problem'):
        override_settings(settings, {'seed': 1}, source='file.yaml', fixed=frozenset({'seed'}))
