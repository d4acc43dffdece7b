"""Command safety of the hardware bridge, free of ROS so it can be tested exhaustively.

``CommandFilter`` turns what the policy asks for into what may reach the motors:
non-finite requests become 0, each joint's effort is clamped to +-effort_limit and its
change per control step to +-max_effort_rate (the first command of an episode is
rate-limited from 0), and every clamp is counted.  ``state_violation`` names the first
joint outside its position / velocity bounds (the episode must then stop)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class CommandFilter:
    effort_limit: float
    max_effort_rate: float
    joints: int = 1
    clamped: int = 0                 # commands changed by the effort limit
    rate_limited: int = 0            # commands changed by the rate limit
    non_finite: int = 0              # non-finite requests replaced by 0
    previous: np.ndarray = field(default=None)

    def __post_init__(self):
        for name in ('effort_limit', 'max_effort_rate'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and not math.isnan(value)):
                raise ValueError(f'{name} = {value!r}: expected a number > 0')
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


def state_violation(names, positions, velocities, position_limit: float,
                    velocity_limit: float) -> Optional[str]:
    """None if every joint is inside |q| <= position_limit and |qd| <= velocity_limit, else why."""
    for name, q, qd in zip(names, positions, velocities):
        if not math.isfinite(q) or abs(q) > position_limit:
            return f'joint {name!r} position {q:.4g} outside +-{position_limit:g}'
        if not math.isfinite(qd) or abs(qd) > velocity_limit:
            return f'joint {name!r} velocity {qd:.4g} outside +-{velocity_limit:g}'
    return None
