"""Controlled joints by name, for the robot emulator and the hardware bridge (free of ROS).

The problem names its controlled joints (``BilevelProblem.joints()``, in the order of the
controller's positions and commands, the *problem order*).  A robot's command array follows
its own controller's joint list (ros2_control's forward_command_controller ``joints``), the
*command order*: the nodes' ``joints`` parameter, a permutation of the problem's joints (empty:
the problem's order).  joint_states may list the joints in any order, with other joints too;
they are read by name, and a controlled joint missing from it is an error naming it.
Problems without joints (tabular: the state index as the position of one pseudo-joint) take the
``joints`` parameter as it is (empty: ``[state]``).

Limits per joint (``joint_bounds``): the bridge's blanket parameters (``effort_limit``,
``max_effort_rate``, ``position_limit`` as +-, ``velocity_limit``) cap every joint; the
problem's limits (the URDF's ``<limit>``) tighten them per joint; an entry of the bridge's
``joint_limits`` (``JOINT.FIELD=VALUE``) sets one joint's value outright, in either direction.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .safety import JointBounds

PSEUDO_JOINT = 'state'          # the one "joint" of a problem without joints: its state index
LIMIT_FIELDS = ('effort', 'effort_rate', 'lower', 'upper', 'velocity')


def controlled_joints(parameter: Optional[Sequence[str]], problem_joints) -> tuple[list[str], list[int]]:
    """(joint names in problem order, command index): command slot k carries the problem's joint
    ``command_index[k]``.  ``parameter``: the node's ``joints`` (command order; empty or None: the
    problem's order); ``problem_joints``: ``problem.joints()`` (None: a problem without joints).
    ValueError naming the joints missing from, or foreign to, the parameter."""
    given = [str(name) for name in (parameter or [])]
    if problem_joints is None:
        names = given or [PSEUDO_JOINT]
        return names, list(range(len(names)))
    names = [joint.name for joint in problem_joints]
    if not given:
        return names, list(range(len(names)))
    missing = [name for name in names if name not in given]
    foreign = [name for name in given if name not in names]
    if missing or foreign or len(given) != len(names):
        parts = ([f'lacks the controlled joint(s) {missing}'] if missing else []) + \
                ([f'names joint(s) {foreign} the problem does not control'] if foreign else [])
        raise ValueError(f'joints = {given}: {" and ".join(parts) or "repeats a joint"}; expected the problem\'s '
                         f'controlled joints {names} in the robot controller\'s command order (or [] for this order)')
    return names, [names.index(name) for name in given]


def to_command_order(values: Sequence[float], command_index: Sequence[int]) -> list[float]:
    """Values in problem order as the robot's command array."""
    return [float(values[i]) for i in command_index]


def from_command_order(values: Sequence[float], command_index: Sequence[int]) -> list[float]:
    """A command array (command order) in problem order."""
    ordered = [0.0] * len(command_index)
    for slot, joint in enumerate(command_index):
        ordered[joint] = float(values[slot])
    return ordered


def read_joint_state(names: Sequence[str], positions: Sequence[float], velocities: Sequence[float],
                     joints: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities of ``joints`` (in that order) from a joint_states message's
    fields; velocities empty when the message has none.  ValueError naming the joints it lacks
    (or the fields that are too short)."""
    names = list(names)
    missing = [joint for joint in joints if joint not in names]
    if missing:
        raise ValueError(f'joint_states lacks the controlled joint(s) {missing} (it names {names})')
    index = [names.index(joint) for joint in joints]
    if len(positions) != len(names) or (len(velocities) and len(velocities) != len(names)):
        raise ValueError(f'joint_states names {len(names)} joints {names} but has {len(positions)} position(s) and '
                         f'{len(velocities)} velocit(ies): expected one each per name (velocities may be empty)')
    position = np.array([positions[i] for i in index], dtype=np.float64)
    velocity = np.array([velocities[i] for i in index] if len(velocities) else [], dtype=np.float64)
    return position, velocity


def named_numbers(text: str, parameter: str, form: str, example: str,
                  what: str = 'value') -> list[tuple[str, str, float]]:
    """The entries of a 'KEY=NUMBER, ...' parameter (blank: none) as (entry, key, number), in
    order.  ValueError naming the parameter and the bad entry: not ``form`` (e.g. ``example``), or
    its ``what`` not a finite number."""
    entries = []
    for entry in ([part.strip() for part in text.split(',')] if text.strip() else []):
        key, separator, value_text = (part.strip() for part in entry.partition('='))
        if not separator:
            raise ValueError(f"{parameter} entry {entry!r}: expected '{form}', e.g. '{example}'")
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(f'{parameter} entry {entry!r}: {what} {value_text!r} is not a number') from None
        if not math.isfinite(value):
            raise ValueError(f'{parameter} entry {entry!r}: {what} {value_text!r} is not finite')
        entries.append((entry, key, value))
    return entries


def parse_joint_limits(text: str, joints: Sequence[str]) -> dict[tuple[str, str], float]:
    """The ``joint_limits`` parameter, 'JOINT.FIELD=VALUE, ...' with FIELD one of ``LIMIT_FIELDS``,
    as {(joint, field): value}.  ValueError naming the bad entry."""
    overrides: dict[tuple[str, str], float] = {}
    form = f'JOINT.FIELD=VALUE (FIELD one of {list(LIMIT_FIELDS)})'
    for entry, key, value in named_numbers(text, 'joint_limits', form, f'{joints[0]}.effort=1.5'):
        joint, dot, field = key.rpartition('.')
        if not dot:
            raise ValueError(f"joint_limits entry {entry!r}: expected '{form}', e.g. '{joints[0]}.effort=1.5'")
        if joint not in joints:
            raise ValueError(f'joint_limits entry {entry!r}: {joint!r} is not one of the joints {list(joints)}')
        if field not in LIMIT_FIELDS:
            raise ValueError(f'joint_limits entry {entry!r}: field {field!r} is not one of {list(LIMIT_FIELDS)}')
        if field not in ('lower', 'upper') and not value > 0:
            raise ValueError(f'joint_limits entry {entry!r}: expected a number > 0 for {field}')
        overrides[(joint, field)] = value
    for joint in joints:
        lower, upper = overrides.get((joint, 'lower')), overrides.get((joint, 'upper'))
        if lower is not None and upper is not None and lower > upper:
            raise ValueError(f'joint_limits: {joint}.lower = {lower:g} > {joint}.upper = {upper:g}')
    return overrides


def joint_bounds(joints: Sequence[str], problem_joints, *, effort_limit: float, max_effort_rate: float,
                 position_limit: float, velocity_limit: float,
                 overrides: Optional[dict[tuple[str, str], float]] = None) -> JointBounds:
    """Per-joint limits (problem order, see the module docstring); ValueError when an override
    leaves a joint with lower > upper."""
    by_name = {joint.name: joint for joint in (problem_joints or ())}
    overrides = overrides or {}
    rows = []
    for name in joints:
        limits = by_name.get(name)
        values = {'effort': min(effort_limit, limits.effort if limits else math.inf),
                  'effort_rate': max_effort_rate,
                  'lower': max(-position_limit, limits.lower if limits else -math.inf),
                  'upper': min(position_limit, limits.upper if limits else math.inf),
                  'velocity': min(velocity_limit, limits.velocity if limits else math.inf)}
        values.update({field: value for (joint, field), value in overrides.items() if joint == name})
        if values['lower'] > values['upper']:
            raise ValueError(f'joint {name!r}: position limits [{values["lower"]:g}, {values["upper"]:g}] are empty '
                             f'(position_limit {position_limit:g}, the problem\'s '
                             f'[{limits.lower if limits else -math.inf:g}, {limits.upper if limits else math.inf:g}], '
                             'joint_limits overrides)')
        rows.append(values)
    return JointBounds(tuple(joints), *(np.array([row[field] for row in rows], dtype=np.float64)
                                        for field in LIMIT_FIELDS))


BLANKET_LIMITS = ('effort_limit', 'max_effort_rate', 'position_limit', 'velocity_limit')
"""The hardware bridge's parameters that cap every joint (``joint_bounds``'s keyword arguments)."""


def bridge_joint_bounds(joints: Sequence[str], problem_joints, parameters,
                        overrides: Optional[dict[tuple[str, str], float]] = None) -> JointBounds:
    """``joint_bounds`` from the bridge's parameters (its own, or a params file's
    ``ros__parameters``: anything indexable by the BLANKET_LIMITS names)."""
    return joint_bounds(joints, problem_joints, overrides=overrides, **{key: parameters[key] for key in BLANKET_LIMITS})

