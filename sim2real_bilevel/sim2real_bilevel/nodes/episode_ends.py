"""Episodes the hardware bridge ends at a terminal state of the task -- for every transport.

The task's termination is the problem's (``termination_reason`` in ``core/problem.py``: the rule its
batches' ``dones`` come from); the bridge does not judge states itself.  On the topic transport (both
loops) the controller tells, after each observed state, whether it ends the episode
(``EpisodeController.terminal``): at the first such state (0 < step < horizon) the bridge stops
the policy, sends its zero command (efforts; other commands: nothing more is sent), logs and counts
the end, reports it on the goal's feedback and on /diagnostics (``terminated_episodes``,
``last_termination``) and goes on to the next episode's reset.  It is not an e-stop and the goal
does not fail.  On the batched transport the emulator's real system stops such episodes itself
(``sample_real``); the bridge reads the ends from the returned ``dones`` and reports them the same
way.  Either way the batch holds the terminal state with zero commands up to the horizon, ``dones``
marking the end, and the goal's result message lists the ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class EpisodeEnd:
    """One episode ended at ``step`` (its terminal state s_step, after ``step`` commands)."""
    episode: int
    step: int
    horizon: int
    reason: str

    def describe(self) -> str:
        return (f'episode {self.episode} ended at step {self.step} of {self.horizon}, a terminal state of the task: '
                f'{self.reason}')


class EpisodeEnds:
    """The terminal-state ends of one goal's episodes on ``bridge`` (``BridgeFacilities``)."""

    def __init__(self, bridge, horizon: int):
        self.bridge = bridge
        self.horizon = int(horizon)
        self.ends: list[EpisodeEnd] = []

    def check(self, controller, episode: int, step: int) -> Optional[EpisodeEnd]:
        """The episode's end when the state ``controller`` observed last (s_step) is terminal and
        the episode has steps left (0 < step < horizon); None otherwise (go on)."""
        if not 0 < step < self.horizon:
            return None
        reason = controller.terminal()
        return None if reason is None else self.ended(episode, step, reason)

    def ended(self, episode: int, step: int, reason: str) -> EpisodeEnd:
        end = EpisodeEnd(int(episode), int(step), self.horizon, reason)
        self.ends.append(end)
        self.bridge.episode_ended(end.describe())
        return end

    def from_batch(self, msg) -> None:
        """The ends of a batched result's episodes (a TrajectoryBatch whose episodes the robot
        emulator ran): those done before their last step, with the problem's reason at the state
        they ended in."""
        n, horizon, state_dim = int(msg.n_episodes), int(msg.horizon), int(msg.state_dim)
        if n * horizon != len(msg.dones) or n * (horizon + 1) * state_dim != len(msg.states) or horizon < 2:
            return                                   # malformed: the receiver's checks refuse it
        dones = np.asarray(msg.dones, dtype=bool).reshape(n, horizon)
        early = dones[:, :-1].any(axis=1)
        if not early.any():
            return
        states = np.asarray(msg.states, dtype=np.float64).reshape(n, horizon + 1, state_dim)
        self.horizon = horizon
        for episode in np.flatnonzero(early):
            step = int(np.argmax(dones[episode])) + 1
            reason = self.bridge.problem.termination_reason(states[episode, step])
            if reason is not None:                   # dones of the task's termination, not of another rule
                self.ended(int(episode), step, reason)

    def message(self, episodes: int) -> str:
        """The ends for the goal's result message ('' when every episode ran its whole horizon)."""
        if not self.ends:
            return ''
        return (f'{len(self.ends)} of {episodes} episode(s) stopped at a terminal state of the task: '
                + '; '.join(end.describe() for end in self.ends) + '. ')
