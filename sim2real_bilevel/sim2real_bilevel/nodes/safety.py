"""Command safety of the hardware bridge, free of ROS so it can be tested exhaustively.

``CommandFilter`` turns what the policy asks for into what may reach the motors:
non-finite requests become 0, each joint's effort is clamped to +-its effort limit and its
change per control step to +-its rate limit (the first command of an episode is
rate-limited from 0), and every clamp is counted.  ``JointBounds`` holds every joint's limits
(``nodes/joints.py`` builds them by name) and names the first joint outside its position /
velocity bounds (the episode must then stop); ``state_violation`` is the same check with one
symmetric bound for all joints.  ``checks_on_episodes`` replays both over episodes run without
them (the batched transport's): what the topic transport would have done to them."""
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
        change = limited - self.previous
        # within the rate: the command itself (previous + change may differ from it by rounding,
        # which would count as rate-limited and reach the motor a few ulp off)
        rated = np.where(np.abs(change) <= self.max_effort_rate, limited,
                         self.previous + np.clip(change, -self.max_effort_rate, self.max_effort_rate))
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


@dataclass
class EpisodeChecks:
    """``checks_on_episodes``' answer: the filter's counts, and each episode that crosses the
    state bounds with where (episode, step, the first joint out)."""
    filter_counts: dict
    commands: int
    crossings: list

    def describe(self, episodes: int) -> str:
        """'' when the checks would have changed nothing, else in words."""
        words = []
        if sum(self.filter_counts.values()):
            words.append(f'the command filter would have changed commands ({self.filter_counts} of '
                         f'{self.commands} commands)')
        if self.crossings:
            words.append(f'{len(self.crossings)} of {episodes} episode(s) cross the state bounds, where the '
                         f'topic transport aborts the goal (first: {self.crossings[0]})')
        return '; '.join(words)


def checks_on_episodes(bounds: JointBounds, states: np.ndarray, actions: np.ndarray,
                       alive: np.ndarray) -> EpisodeChecks:
    """The topic transport's per-step checks replayed on episodes that ran without them: each
    episode's commands through a fresh CommandFilter (from a zero command, as an episode starts),
    and its states against the bounds (each state read before a command, and the last).
    ``states`` (n, T + 1, 2 * joints): positions then velocities, ``bounds.names`` order;
    ``actions`` (n, T, joints); ``alive`` (n, T): the steps commanded (an episode that ended at a
    terminal state has fewer).  A replay: the filtered commands would have moved the robot
    elsewhere, so after the first changed command the counts say how often, not what."""
    joints = len(bounds.names)
    alive = np.asarray(alive, dtype=bool)
    if _nothing_to_change(bounds, states, actions, alive):        # the common case, without a loop
        return EpisodeChecks({'clamped': 0, 'rate_limited': 0, 'non_finite': 0}, int(alive.sum()), [])
    command_filter = bounds.command_filter()
    crossings, commands = [], 0
    for episode in range(actions.shape[0]):
        command_filter.reset()
        steps = int(alive[episode].sum())
        for t in range(steps + 1):
            violation = bounds.violation(states[episode, t, :joints], states[episode, t, joints:2 * joints])
            if violation is not None:
                crossings.append(f'episode {episode}, step {t}: {violation}')
                break
            if t < steps:
                command_filter(actions[episode, t])
                commands += 1
    return EpisodeChecks(command_filter.counts(), commands, crossings)


def _nothing_to_change(bounds: JointBounds, states: np.ndarray, actions: np.ndarray, alive: np.ndarray) -> bool:
    """Whether every commanded step is inside both filter limits (its change from the step before,
    or from zero, inside the rate limit) and every checked state inside the bounds: then the
    filter passes each command unchanged and nothing crosses (``checks_on_episodes``' loop would
    count nothing)."""
    joints = len(bounds.names)
    changes = np.diff(actions, axis=1, prepend=0.0)
    commands_fit = (np.all(np.abs(actions[alive]) <= bounds.effort)
                    and np.all(np.abs(changes[alive]) <= bounds.effort_rate))
    checked = np.concatenate([np.ones((alive.shape[0], 1), dtype=bool), alive], axis=1)    # state t before command t
    positions, velocities = states[checked][:, :joints], states[checked][:, joints:2 * joints]
    return bool(commands_fit and np.all((bounds.lower <= positions) & (positions <= bounds.upper))
                and np.all(np.abs(velocities) <= bounds.velocity))


def state_violation(names, positions, velocities, position_limit: float,
                    velocity_limit: float) -> Optional[str]:
    """None if every joint is inside |q| <= position_limit and |qd| <= velocity_limit, else why."""
    n = len(names)
    return JointBounds(tuple(names), np.full(n, math.inf), np.full(n, math.inf), np.full(n, -position_limit),
                       np.full(n, position_limit), np.full(n, velocity_limit)).violation(positions, velocities)
