"""The pendulum one step at a time, for the ros2_control topics: the pybullet robot with the
hidden true parameters as a ``RealSystem`` (robot emulator: one control period per effort
command; no reward measured) and the MLP Gaussian policy as an ``EpisodeController``
(hardware bridge: efforts, so the bridge's filter, state bounds and watchdog apply; the task
reward is computed from the measured episode at the end, by ``score_episodes``)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ...problem import EpisodeController, RealSystem, Sample, Trajectories
from ...robots.pendulum import BASE_FRAME, JointStateSample, tip_pose
from .simulator import DTYPE


def _sample(measured: JointStateSample) -> Sample:
    return Sample(position=list(measured.position), velocity=list(measured.velocity), effort=list(measured.effort))


class PendulumRealSystem(RealSystem):
    """``problem.make_emulator()``, each episode seeded from ``rng``."""

    def __init__(self, problem, rng: np.random.Generator):
        self.emulator = problem.make_emulator()
        self.rng = rng
        self.control_period = problem.geometry.control_period
        self.link_length = problem.geometry.link_length

    def reset(self) -> Sample:
        return _sample(self.emulator.reset(int(self.rng.integers(0, 2 ** 31 - 1))))

    def command_refusal(self, command: Sequence[float]) -> Optional[str]:
        if len(command) != 1 or not np.isfinite(command[0]):
            return f'{list(command)}: expected one finite effort'
        return None

    def step(self, command: Sequence[float]) -> Sample:
        self.emulator.apply_effort([float(command[0])])
        return _sample(self.emulator.step())

    def describe(self, sample: Sample) -> str:
        return f'position {sample.position[0]:.3f} rad'

    def link_pose(self, sample: Sample) -> tuple[list[float], list[float], str]:
        position, orientation = tip_pose(float(sample.position[0]), self.link_length)
        return position, orientation, BASE_FRAME


class PendulumController(EpisodeController):
    """a = mu_phi(observation) + sigma_phi eps on the measured (angle, velocity)."""

    commands_are_efforts = True
    needs_reward = False

    def __init__(self, problem, phi: np.ndarray, rng: np.random.Generator):
        self.problem = problem
        self.phi = phi
        self.phi_t = torch.as_tensor(phi, dtype=DTYPE)
        self.std = float(np.exp(problem.policy.log_std(self.phi_t).numpy())[0])
        self.rng = rng
        self.horizon = int(problem.horizon)
        self.control_period = float(problem.geometry.control_period)
        self.states: list[list[tuple[float, float]]] = []
        self.actions: list[list[list[float]]] = []

    def start_episode(self) -> None:
        self.states.append([])
        self.actions.append([])

    def observe(self, position: Sequence[float], velocity: Sequence[float]) -> None:
        self.states[-1].append((float(position[0]), float(velocity[0])))

    def command(self) -> list[float]:
        with torch.no_grad():
            observation = self.problem.model.observation(torch.as_tensor(np.array(self.states[-1][-1])))
            mean = float(self.problem.policy.mean(self.phi_t, observation).numpy()[0])
        return [mean + self.std * self.rng.standard_normal()]

    def record(self, applied: Sequence[float], reward: Optional[float]) -> None:
        self.actions[-1].append([float(applied[0])])

    def batch(self, policy_version: int) -> Trajectories:
        n = len(self.states)
        states = np.array(self.states, dtype=np.float64).reshape(n, self.horizon + 1, 2)
        actions = np.array(self.actions, dtype=np.float64).reshape(n, self.horizon, 1)
        rewards, log_probs = self.problem.score_episodes(self.phi, states, actions)
        dones = np.zeros((n, self.horizon), dtype=bool)
        dones[:, -1] = True
        return Trajectories(states=states, actions=actions, rewards=rewards, dones=dones, log_probs=log_probs,
                            source='real', policy_version=policy_version)
