"""The tabular problem one step at a time, for the ros2_control topics: the real MDP as a
``RealSystem`` (robot emulator: state index as the joint position, action index as the
command, the step's reward measured) and the softmax policy as an ``EpisodeController``
(hardware bridge).  Both draw exactly as ``sample_real`` does: one uniform per sampled state."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...problem import EpisodeController, RealSystem, Sample, Trajectories
from .maths import sample_rows


class TabularRealSystem(RealSystem):
    """The real MDP (``real.transitions``, ``real.rewards``, ``initial_distribution``)."""

    control_period = None

    def __init__(self, problem, rng: np.random.Generator):
        self.problem = problem
        self.rng = rng
        self.state: Optional[int] = None

    def _draw(self, probabilities: np.ndarray) -> int:
        return int(sample_rows(probabilities[None], self.rng)[0])

    def reset(self) -> Sample:
        self.state = self._draw(self.problem.initial_distribution)
        return Sample(position=[float(self.state)])

    def command_refusal(self, command: Sequence[float]) -> Optional[str]:
        if len(command) != 1 or not np.isfinite(command[0]):
            return f'{list(command)}: expected one finite action index'
        action = int(round(command[0]))
        if not 0 <= action < self.problem.n_actions or action != command[0]:
            return f'{command[0]}: expected an integer in 0..{self.problem.n_actions - 1}'
        return None

    def step(self, command: Sequence[float]) -> Sample:
        action = int(round(command[0]))
        reward = float(self.problem.real_rewards[self.state, action])
        self.state = self._draw(self.problem.real_transitions[self.state, action])
        return Sample(position=[float(self.state)], reward=reward)

    def describe(self, sample: Sample) -> str:
        return f'state {int(sample.position[0])}'


class TabularController(EpisodeController):
    """pi_phi on the real MDP: the action index as the command, the reward topic per step."""

    commands_are_efforts = False
    needs_reward = True

    def __init__(self, problem, phi: np.ndarray, rng: np.random.Generator):
        self.pi, self.log_pi = problem.policy_table(phi)
        self.rng = rng
        self.horizon = int(problem.real_horizon)
        self.states: list[list[int]] = []
        self.actions: list[list[int]] = []
        self.rewards: list[list[float]] = []

    def start_episode(self) -> None:
        for episodes in (self.states, self.actions, self.rewards):
            episodes.append([])

    def observe(self, position: Sequence[float], velocity: Sequence[float]) -> None:
        self.states[-1].append(int(position[0]))

    def command(self) -> list[float]:
        return [float(self.rng.choice(self.pi.shape[1], p=self.pi[self.states[-1][-1]]))]

    def record(self, applied: Sequence[float], reward: Optional[float]) -> None:
        self.actions[-1].append(int(applied[0]))
        self.rewards[-1].append(float(reward))

    def batch(self, policy_version: int) -> Trajectories:
        n = len(self.states)
        states = np.array(self.states, dtype=np.int64).reshape(n, self.horizon + 1)
        actions = np.array(self.actions, dtype=np.int64).reshape(n, self.horizon)
        rewards = np.array(self.rewards, dtype=np.float64).reshape(n, self.horizon)
        return Trajectories(states=states, actions=actions, rewards=rewards, dones=np.zeros((n, self.horizon), bool),
                            log_probs=self.log_pi[states[:, :-1], actions], source='real',
                            policy_version=policy_version)
