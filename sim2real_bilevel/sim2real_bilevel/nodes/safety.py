"""Command safety of the hardware bridge, free of ROS so it can be tested exhaustively.

``CommandFilter`` turns what the policy asks for into what may reach the motors:
non-finite requests become 0, each joint's effort is clamped to +-its effort limit and its
change per control step to +-its rate limit (the first command of an episode is
rate-limited from 0), and every clamp is counted.  ``JointBounds`` holds every joint's limits
(``nodes/joints.py`` builds them by name) and names the first joint outside its position /
velocity bounds (the episode must then stop); ``state_violation`` is the same check with one
symmetric bound for all joints."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

Limit = Union[float, Sequence[float], np.ndarray]


@dataclass
class CommandFilter:
    effort_limit: Limit              # one number for every joint, or one per joint
    max_effort_rate: Limit
    joints: int = 1
    clamped: int = 0                 # commands changed by the effort limit
    rate_limited: int = 0            # commands changed by the rate limit
    non_finite: int = 0              # non-finite requests replaced by 0
    previous: np.ndarray = field(default=None)

    def __post_init__(self):
        for name in ('effort_limit', 'max_effort_rate'):
            value = getattr(self, name)
            try:
                array = np.broadcast_to(np.asarray(value, dtype=np.float64), (self.joints,))
            except (TypeError, ValueError):
                array = None
            if array is None or isinstance(value, bool) or not np.all(array > 0):
                raise ValueError(f'{name} = {value!r}: expected a number > 0, or {self.joints} (one per joint)')
            setattr(self, name, array.copy())
        self.reset()

    def reset(self) -> None:
        """A new episode: the robot starts from a zero command."""
        self.previous = np.zeros(self.joints)

    def __call__(self, requested) -> np.ndarray:
        requested = np.asarray(requested, dtype=np.float64).reshape(self.joints)
        finite = np.isfinite(requested)
        self.non_finite += int((~finite).sum())
        command = np.where(finite, requested, 0.0)
        limited = np.clip(command, -self.effort_limit, self.effort_limit)
        self.clamped += int((limited != command).sum())
        step = np.clip(limited - self.previous, -self.max_effort_rate, self.max_effort_rate)
        rated = self.previous + step
        self.rate_limited += int((rated != limited).sum())
        self.previous = rated
        return rated

    def counts(self) -> dict:
        return {'clamped': self.clamped, 'rate_limited': self.rate_limited, 'non_finite': self.non_finite}


@dataclass(frozen=True)
class JointBounds:
    """Every controlled joint's limits, one entry per joint in ``names`` order (inf: none)."""
    names: tuple
    effort: np.ndarray
    effort_rate: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray

    def command_filter(self) -> CommandFilter:
        return CommandFilter(self.effort, self.effort_rate, joints=len(self.names))

    def violation(self, positions, velocities) -> Optional[str]:
        """None if every joint is inside its position and velocity bounds, else the first that is not."""
        for name, q, qd, lower, upper, limit in zip(self.names, positions, velocities, self.lower, self.upper,
                                                   self.velocity):
            if not (math.isfinite(q) and lower <= q <= upper):
                bounds = f'+-{upper:g}' if lower == -upper else f'[{lower:g}, {upper:g}]'
                return f'joint {name!r} position {q:.4g} outside {bounds}'
            if not (math.isfinite(qd) and abs(qd) <= limit):
                return f'joint {name!r} velocity {qd:.4g} outside +-{limit:g}'
        return None

    def describe(self) -> str:
        """One line per joint, for logs."""
        return '; '.join(f'{name}: effort +-{e:g}, rate +-{r:g}/step, position [{lo:g}, {hi:g}], velocity +-{v:g}'
                         for name, e, r, lo, hi, v in zip(self.names, self.effort, self.effort_rate, self.lower,
                                                         self.upper, self.velocity))


def effort_below_actuator(bounds: JointBounds, actuator_range) -> Optional[str]:
    """Which joints' effort limits clamp commands below the simulator's actuator range (the
    problem's ``actuator_range()``, same order), in words; None when none does or the range is
    unknown."""
    if actuator_range is None or len(actuator_range) != len(bounds.names):
        return None
    below = [f'{name} {limit:g} < {actuator:g}' for name, limit, actuator in zip(bounds.names, bounds.effort,
                                                                                actuator_range)
             if limit < actuator]
    return ', '.join(below) or None


def state_violation(names, positions, velocities, position_limit: float,
                    velocity_limit: float) -> Optional[str]:
    """None if every joint is inside |q| <= position_limit and |qd| <= velocity_limit, else why."""
    n = len(names)
    return JointBounds(tuple(names), np.full(n, math.inf), np.full(n, math.inf), np.full(n, -position_limit),
                       np.full(n, position_limit), np.full(n, velocity_limit)).violation(positions, velocities)
