"""Messages <-> numpy arrays and core types: the one place where the graph's messages are
built and read.

Every ``*_from_msg`` validates what it reads (array lengths against the declared sizes,
finite values, known kinds and sources, version fields) and raises
``MessageValidationError`` naming the field, the bad value or length and what was
expected, so that a node can log the reason and refuse the message instead of crashing.
``*_to_msg`` check the shapes they are given (a mismatch there is a bug of the caller).

Large float64 arrays are handed to rclpy as ``array.array('d')`` filled from the ndarray's
memory: the generated setters take an ``array.array`` as it is, whereas an ndarray or list
is checked and converted element by element (far slower for large arrays).  They are
read back with ``np.frombuffer`` on the message's own buffer (no per-element objects) and
copied, so the arrays returned never alias a message.
"""
from __future__ import annotations

import array
import math
from typing import Optional, Sequence

import numpy as np
from sim2real_bilevel_interfaces.msg import (OuterGradient, OuterMetrics, PolicyParameters, SimParameters,
                                             TrajectoryBatch)

from ..core.problem import Trajectories

POLICY_KINDS = (PolicyParameters.KIND_FLAT,)
SOURCES = (TrajectoryBatch.SOURCE_SIM, TrajectoryBatch.SOURCE_REAL)
# Largest magnitude of a value that must be finite: squares and sums of such values (costs,
# returns, norms) stay finite in float64; anything larger is garbage, not data.
MAX_MAGNITUDE = 1e100
# Versions count accepted updates one at a time: a version further ahead than this is not
# the next update but a corrupt (or hostile) one, and adopting it would make every genuine
# later version look stale.
MAX_VERSION_STEP = 10 ** 6
# log pi(a|s) of a discrete policy is <= 0; this much above 0 is rounding.
LOG_PROBABILITY_SLACK = 1e-9


class MessageValidationError(ValueError):
    """A message whose content is inconsistent or out of range; the text says which field,
    what it held and what was expected."""


# --- float64 fields ---------------------------------------------------------------------------------------
def vector_to_field(values) -> array.array:
    """A float64[] field value from anything array-like (one copy, no per-element checks)."""
    field = array.array('d')
    field.frombytes(memoryview(np.ascontiguousarray(values, dtype=np.float64).reshape(-1)).cast('B'))
    return field


def vector_from_field(field, what: str, size: Optional[int] = None, *, finite: bool = True,
                      size_rule: str = '') -> np.ndarray:
    """A float64[] field as a fresh 1-D float64 array.

    ``size``: the length expected (``size_rule`` explains where it comes from);
    ``finite``: reject nan, +-inf and magnitudes above ``MAX_MAGNITUDE`` (else only nan is
    rejected)."""
    if isinstance(field, array.array) and field.typecode == 'd':
        values = np.frombuffer(field, dtype=np.float64)
    else:
        try:
            values = np.asarray(field, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            values = None
        if values is None or values.ndim != 1:      # nested lists are not flattened: not a float64[] field
            raise MessageValidationError(f'{what}: {_preview_value(field)} is not a flat sequence of numbers')
    if size is not None and values.size != size:
        rule = f' ({size_rule})' if size_rule else ''
        raise MessageValidationError(f'{what}: {values.size} values, expected {size}{rule}')
    bad = ~np.isfinite(values) if finite else np.isnan(values)
    if bad.any():
        where = np.flatnonzero(bad)
        expected = 'finite numbers' if finite else 'numbers (infinite bounds allowed, nan not)'
        raise MessageValidationError(
            f'{what}: non-finite value {float(values[where[0]])!r} at index {int(where[0])} ({where.size} of '
            f'{values.size} non-finite), expected {expected}')
    huge = np.abs(values) > MAX_MAGNITUDE if finite else np.zeros(values.shape, dtype=bool)
    if huge.any():
        index = int(np.flatnonzero(huge)[0])
        raise MessageValidationError(f'{what}: value {float(values[index])!r} at index {index}, expected a magnitude '
                                     f'of at most {MAX_MAGNITUDE:g}')
    return values.copy()


def _preview_value(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:80] + '...'


def _scalar(value, what: str, *, low: Optional[float] = None) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MessageValidationError(f'{what} = {_preview_value(value)}, expected a number')
    if not np.isfinite(value) or abs(value) > MAX_MAGNITUDE or (low is not None and value < low):
        expected = ('a finite number' + (f' >= {low:g}' if low is not None else '')
                    + f' of magnitude at most {MAX_MAGNITUDE:g}')
        raise MessageValidationError(f'{what} = {value!r}, expected {expected}')
    return value


def _count(value, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MessageValidationError(f'{what} = {_preview_value(value)}, expected an integer')
    value = int(value)
    if value < low:
        raise MessageValidationError(f'{what} = {value}, expected at least {low}')
    return value


def check_version(version: int, current: int, what: str) -> int:
    """``version`` if it may replace ``current``: not older (stale) and not more than
    ``MAX_VERSION_STEP`` ahead (from the future: adopting it would lock out the genuine
    next versions).  Else MessageValidationError."""
    version = _count(version, what, low=0)
    if version < current:
        raise MessageValidationError(f'{what} = {version} is stale: version {current} is already in use')
    if version > current + MAX_VERSION_STEP:
        raise MessageValidationError(f'{what} = {version} is from the future: the current version is {current}, '
                                     f'expected at most {MAX_VERSION_STEP} ahead')
    return version


# --- theta ---------------------------------------------------------------------------------------------------
def theta_to_msg(names: Sequence[str], values, lower, upper, version: int, problem: str = '') -> SimParameters:
    """SimParameters for theta (optimisation coordinates) with its box bounds."""
    names = [str(name) for name in names]
    parts = {'values': values, 'lower': lower, 'upper': upper}
    for field, part in parts.items():
        if np.size(part) != len(names):
            raise MessageValidationError(f'SimParameters.{field}: {np.size(part)} values for {len(names)} names')
    msg = SimParameters(version=int(version), problem=str(problem), names=names)
    msg.values, msg.lower, msg.upper = (vector_to_field(part) for part in parts.values())
    return msg


def theta_from_msg(msg: SimParameters, names: Optional[Sequence[str]] = None,
                   bounds: Optional[tuple[np.ndarray, np.ndarray]] = None) -> tuple[np.ndarray, int]:
    """(theta values, version).  ``names``: the entries the receiver knows, in its order;
    the message must carry exactly these (None: any names).  ``bounds``: the receiver's
    own (lower, upper) box, which the values must respect whatever bounds the message
    declares."""
    try:
        received = [str(name) for name in msg.names]
    except TypeError:
        raise MessageValidationError(f'SimParameters.names = {_preview_value(msg.names)}, expected a list of strings')
    if names is not None and received != list(names):
        expected = list(names)
        mismatch = next((i for i, (a, b) in enumerate(zip(received, expected)) if a != b),
                        min(len(received), len(expected)))
        raise MessageValidationError(
            f'SimParameters.names: {len(received)} entries {_preview(received)}, expected the {len(expected)} '
            f'entries of this problem {_preview(expected)} (first difference at index {mismatch})')
    if len(set(received)) != len(received):
        raise MessageValidationError(f'SimParameters.names: duplicate names in {_preview(received)}, expected '
                                     'distinct names')
    n = len(received)
    rule = 'one per name'
    values = vector_from_field(msg.values, 'SimParameters.values', n, size_rule=rule)
    lower = vector_from_field(msg.lower, 'SimParameters.lower', n, finite=False, size_rule=rule)
    upper = vector_from_field(msg.upper, 'SimParameters.upper', n, finite=False, size_rule=rule)
    for name, low, value, high in zip(received, lower.tolist(), values.tolist(), upper.tolist()):
        if not low <= value <= high:
            raise MessageValidationError(f'SimParameters.values[{name!r}] = {value!r}, expected a value within its '
                                         f'bounds [{low!r}, {high!r}]')
    if bounds is not None:
        own_lower, own_upper = (np.broadcast_to(np.asarray(b, dtype=np.float64), values.shape) for b in bounds)
        outside = np.flatnonzero((values < own_lower) | (values > own_upper))
        if outside.size:
            i = int(outside[0])
            raise MessageValidationError(
                f'SimParameters.values[{received[i]!r}] = {float(values[i])!r}, expected a value within this '
                f'problem\'s bounds [{float(own_lower[i])!r}, {float(own_upper[i])!r}] '
                f'({outside.size} entries outside)')
    return values, _count(msg.version, 'SimParameters.version', low=0)


def _preview(items: list, shown: int = 4) -> str:
    return repr(items) if len(items) <= shown else repr(items[:shown])[:-1] + ', ...]'


# --- policy ----------------------------------------------------------------------------------------------------
def policy_to_msg(phi, version: int, theta_version: int, grad_norm: float,
                  kind: str = PolicyParameters.KIND_FLAT) -> PolicyParameters:
    """PolicyParameters for the flat policy vector phi trained at ``theta_version``."""
    if kind not in POLICY_KINDS:
        raise MessageValidationError(f'PolicyParameters.kind = {kind!r}, expected one of {list(POLICY_KINDS)}')
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    msg = PolicyParameters(kind=kind, shape=[phi.size], version=int(version), theta_version=int(theta_version),
                           inner_grad_norm=float(grad_norm))
    msg.values = vector_to_field(phi)
    return msg


def policy_from_msg(msg: PolicyParameters, size: Optional[int] = None) -> tuple[np.ndarray, int, int]:
    """(phi, version, theta_version).  ``size``: the problem's number of policy parameters."""
    if not isinstance(msg.kind, str) or msg.kind not in POLICY_KINDS:
        raise MessageValidationError(f'PolicyParameters.kind = {_preview_value(msg.kind)}, expected one of '
                                     f'{list(POLICY_KINDS)}')
    try:
        shape = [_count(s, 'PolicyParameters.shape entry', low=0) for s in msg.shape]
        length = len(msg.values)
    except TypeError:
        raise MessageValidationError(f'PolicyParameters.shape, values = {_preview_value(msg.shape)}, '
                                     f'{_preview_value(msg.values)}: expected sequences')
    if len(shape) != 1 or shape[0] != length:
        raise MessageValidationError(f'PolicyParameters.shape = {shape} for {length} values, expected '
                                     f'[{length}] for kind {msg.kind!r}')
    phi = vector_from_field(msg.values, 'PolicyParameters.values', size,
                            size_rule='the problem\'s policy parameters')
    _scalar(msg.inner_grad_norm, 'PolicyParameters.inner_grad_norm', low=0.0)
    return (phi, _count(msg.version, 'PolicyParameters.version', low=0),
            _count(msg.theta_version, 'PolicyParameters.theta_version', low=0))


# --- trajectories ------------------------------------------------------------------------------------------
def trajectories_to_msg(batch: Trajectories) -> TrajectoryBatch:
    """TrajectoryBatch for a core Trajectories batch (integer states and actions: discrete)."""
    if batch.source not in SOURCES:
        raise MessageValidationError(f'Trajectories.source = {batch.source!r}, expected one of {list(SOURCES)}')
    rewards = np.asarray(batch.rewards)
    if rewards.ndim != 2:
        raise MessageValidationError(f'Trajectories.rewards: shape {rewards.shape}, expected (n_episodes, horizon)')
    n, horizon = rewards.shape
    states, actions = np.asarray(batch.states), np.asarray(batch.actions)
    discrete = np.issubdtype(states.dtype, np.integer)
    if discrete != np.issubdtype(actions.dtype, np.integer):
        raise MessageValidationError(f'Trajectories: states of dtype {states.dtype} and actions of dtype '
                                     f'{actions.dtype}, expected both integer (discrete) or both float')
    state_dim = 1 if states.ndim == 2 else (states.shape[-1] if states.ndim == 3 else -1)
    action_dim = 1 if actions.ndim == 2 else (actions.shape[-1] if actions.ndim == 3 else -1)
    expected = {'states': (states, (n, horizon + 1) + (() if states.ndim == 2 else (state_dim,))),
                'actions': (actions, (n, horizon) + (() if actions.ndim == 2 else (action_dim,))),
                'dones': (np.asarray(batch.dones), (n, horizon)),
                'log_probs': (np.asarray(batch.log_probs), (n, horizon))}
    score = None if batch.score_theta is None else np.asarray(batch.score_theta)
    if score is not None:
        expected['score_theta'] = (score, (n, horizon, score.shape[-1] if score.ndim == 3 else -1))
    for field, (value, shape) in expected.items():
        if value.shape != shape or (discrete and field in ('states', 'actions') and value.ndim != 2):
            raise MessageValidationError(f'Trajectories.{field}: shape {value.shape}, expected {shape}'
                                         + (' (discrete: one index per step)' if discrete else ''))
    msg = TrajectoryBatch(source=batch.source, policy_version=int(batch.policy_version), n_episodes=int(n),
                          horizon=int(horizon), state_dim=int(state_dim), action_dim=int(action_dim),
                          discrete=bool(discrete), theta_dim=0 if score is None else int(score.shape[-1]))
    msg.states, msg.actions = vector_to_field(states), vector_to_field(actions)
    msg.rewards, msg.log_probs = vector_to_field(rewards), vector_to_field(batch.log_probs)
    msg.dones = np.asarray(batch.dones, dtype=bool).reshape(-1).tolist()
    if score is not None:
        msg.score_theta = vector_to_field(score)
    for field, shape in (('state_times', (n, horizon + 1)), ('command_times', (n, horizon))):
        times = getattr(batch, field)
        if times is not None:
            if np.shape(times) != shape:
                raise MessageValidationError(f'Trajectories.{field}: shape {np.shape(times)}, expected {shape}')
            setattr(msg, field, vector_to_field(times))
    return msg


def trajectories_from_msg(msg: TrajectoryBatch, n_states: Optional[int] = None,
                          n_actions: Optional[int] = None) -> Trajectories:
    """A core Trajectories batch; discrete batches come back with int64 states and actions.
    ``n_states``, ``n_actions``: the receiver's discrete sizes, which the indices of a
    discrete batch must respect (None: not checked)."""
    if not isinstance(msg.source, str) or msg.source not in SOURCES:
        raise MessageValidationError(f'TrajectoryBatch.source = {_preview_value(msg.source)}, expected one of '
                                     f'{list(SOURCES)}')
    n = _count(msg.n_episodes, 'TrajectoryBatch.n_episodes')
    horizon = _count(msg.horizon, 'TrajectoryBatch.horizon')
    state_dim = _count(msg.state_dim, 'TrajectoryBatch.state_dim')
    action_dim = _count(msg.action_dim, 'TrajectoryBatch.action_dim')
    if msg.discrete and (state_dim, action_dim) != (1, 1):
        raise MessageValidationError(f'TrajectoryBatch.state_dim, action_dim = {state_dim}, {action_dim} in a '
                                     'discrete batch, expected 1, 1 (one index per step)')
    steps, rule = n * horizon, 'n_episodes*horizon'
    states = vector_from_field(msg.states, 'TrajectoryBatch.states', n * (horizon + 1) * state_dim,
                               size_rule=f'n_episodes*(horizon+1)*state_dim = {n}*{horizon + 1}*{state_dim}')
    actions = vector_from_field(msg.actions, 'TrajectoryBatch.actions', steps * action_dim,
                                size_rule=f'n_episodes*horizon*action_dim = {n}*{horizon}*{action_dim}')
    rewards = vector_from_field(msg.rewards, 'TrajectoryBatch.rewards', steps, size_rule=f'{rule} = {n}*{horizon}')
    log_probs = vector_from_field(msg.log_probs, 'TrajectoryBatch.log_probs', steps,
                                  size_rule=f'{rule} = {n}*{horizon}')
    if not isinstance(msg.dones, (list, tuple)) or not all(isinstance(d, bool) for d in msg.dones):
        raise MessageValidationError(f'TrajectoryBatch.dones = {_preview_value(msg.dones)}, '
                                     'expected a list of booleans')
    if len(msg.dones) != steps:
        raise MessageValidationError(f'TrajectoryBatch.dones: {len(msg.dones)} values, expected {steps} '
                                     f'({rule} = {n}*{horizon})')
    dones = np.array(msg.dones, dtype=bool).reshape(n, horizon)
    score = None
    theta_dim = _count(msg.theta_dim, 'TrajectoryBatch.theta_dim', low=0)
    if theta_dim == 0 and len(msg.score_theta):
        raise MessageValidationError(f'TrajectoryBatch.score_theta: {len(msg.score_theta)} values with theta_dim = 0, '
                                     'expected none')
    if theta_dim:
        if msg.source != TrajectoryBatch.SOURCE_SIM:
            raise MessageValidationError(f'TrajectoryBatch.theta_dim = {theta_dim} in a {msg.source!r} batch, '
                                         'expected 0: score terms exist for simulated batches only')
        score = vector_from_field(msg.score_theta, 'TrajectoryBatch.score_theta', steps * theta_dim,
                                  size_rule=f'n_episodes*horizon*theta_dim = {n}*{horizon}*{theta_dim}')
        score = score.reshape(n, horizon, theta_dim)
    if msg.discrete:
        states, actions = _indices(states, 'states', n_states), _indices(actions, 'actions', n_actions)
        above = np.flatnonzero(log_probs > LOG_PROBABILITY_SLACK)
        if above.size:
            raise MessageValidationError(
                f'TrajectoryBatch.log_probs[{int(above[0])}] = {float(log_probs[above[0]])!r} in a discrete batch, '
                'expected log pi(a|s) <= 0 (a probability above 1)')
        states, actions = states.reshape(n, horizon + 1), actions.reshape(n, horizon)
    else:
        states, actions = states.reshape(n, horizon + 1, state_dim), actions.reshape(n, horizon, action_dim)
    times = {field: (vector_from_field(values, f'TrajectoryBatch.{field}', n * steps_per_episode,
                                       size_rule=f'n_episodes*{rule} = {n}*{steps_per_episode} or none')
                     .reshape(n, steps_per_episode) if len(values) else None)
             for field, values, steps_per_episode, rule in (
                 ('state_times', msg.state_times, horizon + 1, '(horizon+1)'),
                 ('command_times', msg.command_times, horizon, 'horizon'))}
    return Trajectories(states=states, actions=actions, rewards=rewards.reshape(n, horizon), dones=dones,
                        log_probs=log_probs.reshape(n, horizon), source=msg.source,
                        policy_version=_count(msg.policy_version, 'TrajectoryBatch.policy_version', low=0),
                        score_theta=score, **times)


def _indices(values: np.ndarray, field: str, count: Optional[int]) -> np.ndarray:
    bad = (values < 0) | (values != np.round(values))
    if count is not None:
        bad |= values >= count
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        expected = 'a non-negative integer index' + (f' below {count}' if count is not None else '')
        raise MessageValidationError(f'TrajectoryBatch.{field}[{index}] = {float(values[index])!r} in a discrete batch, '
                                     f'expected {expected}')
    return values.astype(np.int64)


# --- outer gradient and metrics -----------------------------------------------------------------------------
def gradient_to_msg(gradient, real_gradient, theta_version: int, policy_version: int, *,
                    sensitivity_method: str = '', solver: str = '') -> OuterGradient:
    """OuterGradient for dJ_real/dtheta and the real policy gradient g it was computed from."""
    gradient = np.asarray(gradient, dtype=np.float64).reshape(-1)
    msg = OuterGradient(theta_version=int(theta_version), policy_version=int(policy_version),
                        sensitivity_method=str(sensitivity_method), solver=str(solver),
                        grad_norm=float(np.linalg.norm(gradient)))
    msg.gradient, msg.real_gradient = vector_to_field(gradient), vector_to_field(real_gradient)
    return msg


def gradient_from_msg(msg: OuterGradient, size: Optional[int] = None,
                      real_gradient_size: Optional[int] = None) -> np.ndarray:
    """dJ_real/dtheta.  ``size``: the number of theta entries; ``real_gradient_size``: of
    policy parameters (None: not checked)."""
    gradient = vector_from_field(msg.gradient, 'OuterGradient.gradient', size, size_rule='one per theta entry')
    vector_from_field(msg.real_gradient, 'OuterGradient.real_gradient', real_gradient_size,
                      size_rule='one per policy parameter')
    return gradient


def metrics_to_msg(record, theta_version: int, policy_version: int,
                   theta_names: Sequence[str] = ()) -> OuterMetrics:
    """OuterMetrics for one core ``IterationRecord`` (nan stands for 'not measured')."""
    theta = np.asarray(record.theta, dtype=np.float64).reshape(-1)
    if theta_names and len(theta_names) != theta.size:
        raise MessageValidationError(f'OuterMetrics.theta_names: {len(theta_names)} names for {theta.size} values')
    msg = OuterMetrics(
        iteration=int(record.iteration), normalized_return=float(record.normalized_return),
        real_return=float(record.real_return), real_return_estimate=float(record.real_return_estimate),
        real_return_ci_low=float(getattr(record, 'real_return_ci_low', math.nan)),
        real_return_ci_high=float(getattr(record, 'real_return_ci_high', math.nan)),
        inner_grad_norm=float(record.inner_grad_norm), outer_grad_norm=float(record.grad_norm),
        real_transitions=int(record.real_transitions), real_episodes=int(record.real_episodes),
        wall_time_s=float(record.wall_time_s), theta_version=int(theta_version),
        policy_version=int(policy_version), theta_names=[str(name) for name in theta_names])
    msg.theta = vector_to_field(theta)
    return msg
