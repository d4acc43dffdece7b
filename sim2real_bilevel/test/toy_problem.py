"""A bi-level problem with a closed form, for testing the generic machinery.

Simulator: J_sim(phi, theta) = -1/2 ||phi - C theta||^2  =>  phi*(theta) = C theta,
d phi*/d theta = C.  Real: J_real(phi) = -1/2 ||phi - phi_real||^2, sampled with Gaussian
noise on the gradient (one 'episode' = one noisy gradient sample, one transition).
"""
from __future__ import annotations

import pathlib
import time

import numpy as np
import torch

from sim2real_bilevel.core.problem import BilevelProblem, InnerResult, SensitivityTerms, Trajectories


class ToyProblem(BilevelProblem):
    kind = 'toy'
    gamma = 0.5
    source = '<toy>'

    def __init__(self, coupling: np.ndarray, phi_real: np.ndarray, noise: float = 0.1):
        self.coupling = np.asarray(coupling, dtype=np.float64)
        self.phi_real = np.asarray(phi_real, dtype=np.float64)
        self.noise = noise
        self.theta_names = [f't{i}' for i in range(self.coupling.shape[1])]
        self.outer_defaults = {'iterations': 30, 'step_size': 0.2, 'real_episodes': 4}

    def theta0(self):
        return np.zeros(self.coupling.shape[1])

    def theta_bounds(self):
        return -10 * np.ones(self.coupling.shape[1]), 10 * np.ones(self.coupling.shape[1])

    def phi_size(self):
        return self.coupling.shape[0]

    def inner_solve(self, theta, phi_init=None, *, method='exact', rng=None, **options):
        return InnerResult(phi=self.coupling @ theta, grad_norm=0.0, iterations=1)

    def inner_gradient(self, phi, theta):
        return torch.as_tensor(self.coupling) @ theta - phi

    def simulate(self, phi, theta, n_episodes, horizon, rng):
        raise NotImplementedError('the toy problem has no trajectories')

    def sensitivity_terms(self, phi, theta, *, method='exact', trajectories=None, rng=None):
        return SensitivityTerms(hessian=-np.eye(self.phi_size()), mixed=self.coupling.copy())

    def sample_real(self, phi, n_episodes, rng):
        gradient = self.phi_real - phi
        samples = gradient + self.noise * rng.standard_normal((n_episodes, phi.size))
        rewards = np.full((n_episodes, 1), float(self.real_objective(torch.as_tensor(phi))))
        return Trajectories(states=samples[:, None, :], actions=np.zeros((n_episodes, 1, 1)),
                            rewards=rewards, dones=np.ones((n_episodes, 1), bool),
                            log_probs=np.zeros((n_episodes, 1)), source='real')

    def real_policy_gradient(self, phi, batches, theta=None):
        return batches[-1].states[:, 0, :].mean(axis=0)

    def real_objective(self, phi):
        return -0.5 * torch.sum((phi - torch.as_tensor(self.phi_real)) ** 2)

    def normalized_return(self, phi):
        return float(np.exp(-0.5 * np.sum((phi - self.phi_real) ** 2)))

    def system_identification(self, batches, theta_init):
        return theta_init

    def theta_groups(self):
        size = self.coupling.shape[1]
        return {'dynamics': np.arange(size) < size // 2, 'reward': np.arange(size) >= size // 2}


class SlowToy(ToyProblem):
    """The toy whose continued solve first creates ``marker`` (a positive signal that a worker process
    is busy with it) and then takes ``seconds``: for tests of what ends a busy solve worker."""

    def __init__(self, marker: str, seconds: float = 600.0):
        super().__init__(coupling=np.eye(2), phi_real=np.zeros(2))
        self.marker, self.seconds = marker, seconds

    def continued_solve(self, theta, phi):
        pathlib.Path(self.marker).touch()
        time.sleep(self.seconds)
        return super().continued_solve(theta, phi)
