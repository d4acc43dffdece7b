"""The pendulum one step at a time, for the ros2_control topics: the pybullet robot with the
hidden true parameters as a ``RealSystem`` (robot emulator: one control period per effort
command; no reward measured) and the MLP Gaussian policy as an ``EpisodeController``
(hardware bridge: efforts, so the bridge's filter, state bounds and watchdog apply; the task
reward is computed from the measured episode at the end, by ``score_episodes``)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ...problem import EpisodeController, RealSystem, Sample, Trajectories, pad_episodes
from ...robots.pendulum import BASE_FRAME, JointStateSample, tip_pose
from .simulator import DTYPE


def _sample(measured: JointStateSample) -> Sample:
    return Sample(position=list(measured.position), velocity=list(measured.velocity), effort=list(measured.effort))


class PendulumRealSystem(RealSystem):
    """``problem.make_emulator()``, each episode seeded from ``rng``."""

    def __init__(self, problem, rng: np.random.Generator):
        self.emulator = problem.make_emulator()
        self.rng = rng
        self.control_period = self.emulator.control_period
        self.geometry = problem.geometry

    def reset(self) -> Sample:
        return _sample(self.emulator.reset(int(self.rng.integers(0, 2 ** 31 - 1))))

    def command_refusal(self, command: Sequence[float]) -> Optional[str]:
        joints = list(self.emulator.joint_names)
        if len(command) != len(joints) or not np.all(np.isfinite(command)):
            expected = 'one finite effort' if len(joints) == 1 else f'{len(joints)} finite efforts (joints {joints})'
            return f'{list(command)}: expected {expected}'
        return None

    def step(self, command: Sequence[float]) -> Sample:
        self.emulator.apply_effort([float(value) for value in command])
        return _sample(self.emulator.step())

    def describe(self, sample: Sample) -> str:
        if len(sample.position) == 1:
            return f'position {sample.position[0]:.3f} rad'
        return 'position [' + ', '.join(f'{value:.3f}' for value in sample.position) + ']'

    def link_pose(self, sample: Sample) -> Optional[tuple[list[float], list[float], str]]:
        if self.geometry is None:        # a URDF robot: its links are not drawn here yet
            return None
        position, orientation = tip_pose(float(sample.position[0]), self.geometry.link_length)
        return position, orientation, BASE_FRAME


class PendulumController(EpisodeController):
    """a = mu_phi(observation) + sigma_phi eps on the measured (angle, velocity)."""

    commands_are_efforts = True
    needs_reward = False

    def __init__(self, problem, phi: np.ndarray, rng: np.random.Generator):
        self.problem = problem
        self.phi = phi
        self.phi_t = torch.as_tensor(phi, dtype=DTYPE)
        self.std = np.exp(problem.policy.log_std(self.phi_t).numpy())
        self.rng = rng
        self.horizon = int(problem.horizon)
        self.control_period = problem.control_period
        self.states: list[list[list[float]]] = []
        self.actions: list[list[list[float]]] = []

    def start_episode(self) -> None:
        self.states.append([])
        self.actions.append([])

    def observe(self, position: Sequence[float], velocity: Sequence[float]) -> None:
        self.states[-1].append([float(v) for v in position] + [float(v) for v in velocity])

    def command(self) -> list[float]:
        with torch.no_grad():
            observation = self.problem.model.observation(torch.as_tensor(np.array(self.states[-1][-1])))
            mean = self.problem.policy.mean(self.phi_t, observation).numpy()
        return [float(m + s * self.rng.standard_normal()) for m, s in zip(mean, self.std)]

    def record(self, applied: Sequence[float], reward: Optional[float]) -> None:
        self.actions[-1].append([float(value) for value in applied])

    def terminal(self) -> Optional[str]:
        """The task's termination at the state observed last (``problem.termination_reason``)."""
        return self.problem.termination_reason(self.states[-1][-1])

    def batch(self, policy_version: int) -> Trajectories:
        """The episodes; one the bridge ended at a terminal state holds that state, with zero
        commands, up to the horizon (the contract: ``EpisodeController``)."""
        model = self.problem.model
        states, actions = pad_episodes(self.states, self.actions, self.horizon, (model.state_dim,), (model.action_dim,),
                                       where='PendulumController.batch')
        rewards, log_probs = self.problem.score_episodes(self.phi, states, actions)
        dones = self.problem.episode_dones(states)
        return Trajectories(states=states, actions=actions, rewards=rewards, dones=dones, log_probs=log_probs,
                            source='real', policy_version=policy_version)
