"""The pendulum simulator family: ``core.robot_model.PendulumModel`` with theta the learnable
log parameters, rolled out with reparametrised (common) random numbers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ...problem import Trajectories
from ...robot_model import ACTION_DIM, OBSERVATION_DIM

DTYPE = torch.float64


def action_histories(actions: torch.Tensor, length: int) -> torch.Tensor:
    """The ``length`` commands before each step of episodes ``actions`` (T, N, n), oldest first,
    zeros before the first: (T, N, length, n) (a delayed simulator's ``history`` input)."""
    steps, episodes, n = actions.shape
    padded = torch.cat([actions.new_zeros((length, episodes, n)), actions], 0)
    return padded.unfold(0, length, 1)[:steps].permute(0, 1, 3, 2)


def history_arguments(model, actions: torch.Tensor) -> dict:
    """``{'history': ...}`` for a model whose step reads previous commands (``action_history`` >
    0: a delayed actuator), else {} (every other model's step takes (state, action) alone)."""
    length = getattr(model, 'action_history', 0)
    return {'history': action_histories(actions, length)} if length else {}


@dataclass(frozen=True)
class InitialStateRange:
    position: tuple[float, float]
    velocity: tuple[float, float]


@dataclass(frozen=True)
class CommonNoise:
    """Random numbers that make a simulated rollout a deterministic function of (phi, theta)."""
    initial_states: torch.Tensor      # (N, 2)
    action_noise: torch.Tensor        # (T, N, 1) standard normal
    transition_noise: torch.Tensor    # (T, N, 2) standard normal

    @staticmethod
    def draw(episodes: int, horizon: int, initial: InitialStateRange, rng: np.random.Generator) -> 'CommonNoise':
        """``initial``: (low, high) of one joint, or one (low, high) row per joint (n joints:
        states (q_1..q_n, qd_1..qd_n), one effort per joint)."""
        position = np.asarray(initial.position, dtype=np.float64).reshape(-1, 2)
        velocity = np.asarray(initial.velocity, dtype=np.float64).reshape(-1, 2)
        low = np.concatenate([position[:, 0], velocity[:, 0]])
        high = np.concatenate([position[:, 1], velocity[:, 1]])
        state_dim, action_dim = low.size, position.shape[0]
        return CommonNoise(
            initial_states=torch.as_tensor(rng.uniform(low, high, size=(episodes, state_dim)), dtype=DTYPE),
            action_noise=torch.as_tensor(rng.standard_normal((horizon, episodes, action_dim)), dtype=DTYPE),
            transition_noise=torch.as_tensor(rng.standard_normal((horizon, episodes, state_dim)), dtype=DTYPE))


def make_policy(hidden_sizes: tuple[int, ...], initial_std: float, observation_dim: int = OBSERVATION_DIM,
                action_dim: int = ACTION_DIM):
    from ...policies.mlp_gaussian import MLPGaussianPolicy
    return MLPGaussianPolicy(observation_dim, action_dim, hidden=hidden_sizes, log_std_init=math.log(initial_std))


class PendulumSimulatorFamily:
    """The differentiable simulator family of ``RobotProblem`` (a mixin over its ``model``,
    ``policy``, nominal log parameters ``nominal_full``, mask ``learn_index`` and CRN set)."""

    def theta0(self) -> np.ndarray:
        return self.nominal_full[self.learn_index].copy()

    def theta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lower_full[self.learn_index].copy(), self._upper_full[self.learn_index].copy()

    def theta_groups(self) -> dict[str, np.ndarray]:
        dynamics = self.learn_index < self.model.n_physical
        return {'dynamics': dynamics, 'reward': ~dynamics}

    def full_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """The full vector of log parameters with the learnable entries replaced by ``theta``
        (..., D) -> (..., F): a product with a fixed 0/1 selection matrix, so a batch of thetas
        (one simulator per row) works too."""
        base = torch.as_tensor(self.nominal_full, dtype=theta.dtype)
        selection = torch.zeros(len(self.learn_index), base.numel(), dtype=theta.dtype)
        selection[torch.arange(len(self.learn_index)), torch.as_tensor(self.learn_index)] = 1.0
        return base * (1.0 - selection.sum(0)) + theta @ selection

    def terminal_states(self, states: torch.Tensor) -> Optional[torch.Tensor]:
        """Whether each state (..., 2n) ends its episode (the task's termination, bool (...)); None
        when the task has none (every episode runs its whole horizon)."""
        terminal = getattr(self.model, 'terminal', None)
        return None if terminal is None else terminal(states)

    def termination_bounds(self):
        """``BilevelProblem.termination_bounds``: the task file's ``task.termination``
        (``core.urdf_model.Termination``), None without one."""
        return getattr(getattr(self.model, 'settings', None), 'termination', None)

    def termination_reason(self, state) -> Optional[str]:
        """Why one state (2n: joint positions, then velocities; a row of a batch's states) ends its
        episode, in words: which bound of the task's termination, which joint, which value (the rule
        of ``terminal_states``); None when it does not or the task has none."""
        describe = getattr(self.model, 'termination_reason', None)
        if describe is None:
            return None
        return describe(np.asarray(state, dtype=np.float64), [joint.name for joint in self.joints()])

    def episode_dones(self, states: np.ndarray) -> np.ndarray:
        """dones (n, T) of episodes with states (n, T+1, 2n): True at the first transition into a
        terminal state, else at the last step (``alive_mask`` keeps the rewards up to it)."""
        n, horizon = states.shape[0], states.shape[1] - 1
        dones = np.zeros((n, horizon), dtype=bool)
        ends = self.terminal_states(torch.as_tensor(states[:, 1:], dtype=DTYPE))
        if ends is not None:
            ends = ends.numpy()
            dones = ends & (np.cumsum(ends, axis=1) == 1)
        dones[~dones.any(axis=1), -1] = True
        return dones

    def rollout(self, phi: torch.Tensor, theta_full: torch.Tensor, noise: CommonNoise):
        """Reparametrised rollout: states (T+1, N, 2), actions (T, N, 1), rewards (T, N).

        With a termination (``terminal_states``): after an episode's first terminal state its state
        is held and its rewards are zero (an alive mask, detached: when an episode ends carries no
        gradient, as the end is a step function of the state)."""
        theta_phys, theta_reward = self.model.split(theta_full)
        coefficients = self.model.coefficients(theta_phys)      # once per rollout, not per step
        noise_std = self.model.noise_std.to(phi)
        std = torch.exp(self.policy.log_std(phi))
        state = noise.initial_states.to(phi)
        states, actions = [state], []
        length = getattr(self.model, 'action_history', 0)         # previous commands a delayed step reads
        history = {}
        terminates = self.terminal_states(state) is not None
        alive = torch.ones(state.shape[:-1], dtype=torch.bool, device=state.device)
        alive_steps = []
        for t in range(noise.action_noise.shape[0]):
            action = self.policy.mean(phi, self.model.observation(state)) + std * noise.action_noise[t]
            if length:
                recent = actions[-length:]
                padding = [torch.zeros_like(action)] * (length - len(recent))
                history = {'history': torch.stack(padding + recent, -2)}
            following = (self.model.step_mean_with(state, action, coefficients, **history)
                         + noise_std * noise.transition_noise[t])
            if terminates:
                alive_steps.append(alive)
                following = torch.where(alive[..., None], following, state)
                alive = alive & ~self.terminal_states(following.detach())
            state = following
            states.append(state)
            actions.append(action)
        states, actions = torch.stack(states), torch.stack(actions)
        # Rewards in one batched call after the loop: one autograd node instead of one per step.
        rewards = self.model.reward(states[:-1], actions, theta_reward)
        if terminates:
            rewards = rewards * torch.stack(alive_steps).to(rewards.dtype)
        return states, actions, rewards

    def sim_objective(self, phi: torch.Tensor, theta: torch.Tensor, noise: Optional[CommonNoise] = None,
                      *, full: bool = False) -> torch.Tensor:
        """J_sim(phi, theta) on ``noise`` (default: the fixed CRN set); ``theta`` is the
        learnable vector, or the full vector when ``full``.  On the CRN set with ``inner.randomize``, each
        rollout runs at theta plus its fixed offset (``_crn_offsets``)."""
        noise = self._crn if noise is None else noise
        theta_full = theta if full else self.full_theta(theta)
        offsets = getattr(self, '_crn_offsets', None)
        if offsets is not None and noise is self._crn and theta_full.dim() == 1:   # inner.randomize
            theta_full = theta_full + offsets.to(theta_full)
        _, _, rewards = self.rollout(phi, theta_full, noise)
        discounted = (self._discounts[:rewards.shape[0], None].to(rewards) * rewards).sum(0).mean()
        return (discounted + self.inner.entropy * self.policy.log_std(phi).sum()
                - 0.5 * self.inner.l2 * (phi ** 2).sum())

    def simulate(self, phi: np.ndarray, theta: np.ndarray, n_episodes: int, horizon: int,
                 rng: np.random.Generator) -> Trajectories:
        phi_t = torch.as_tensor(phi, dtype=DTYPE)
        theta_t = torch.as_tensor(theta, dtype=DTYPE)
        theta_full = self.full_theta(theta_t)
        noise = CommonNoise.draw(n_episodes, horizon, self.initial, rng)
        with torch.no_grad():
            states, actions, rewards = self.rollout(phi_t, theta_full, noise)
            log_probs = self.policy.log_prob(phi_t, self.model.observation(states[:-1]), actions)
        # grad_theta log f per transition: one copy of theta per transition, one backward pass
        # (each copy's gradient is its own transition's score; the model takes a theta per sample)
        state_dim, action_dim = states.shape[-1], actions.shape[-1]
        theta_rows = theta_t.expand(horizon * n_episodes, theta_t.numel()).clone().requires_grad_(True)
        history = {key: value.reshape((-1,) + value.shape[2:])
                   for key, value in history_arguments(self.model, actions).items()}
        log_prob = self.model.log_prob(states[1:].reshape(-1, state_dim), states[:-1].reshape(-1, state_dim),
                                       actions.reshape(-1, action_dim), self.model.split(self.full_theta(theta_rows))[0],
                                       **history)
        (score,) = torch.autograd.grad(log_prob.sum(), theta_rows)
        dones = self.episode_dones(states.transpose(0, 1).numpy())
        return Trajectories(
            states=states.transpose(0, 1).numpy(), actions=actions.transpose(0, 1).numpy(),
            rewards=rewards.T.numpy(), dones=dones, log_probs=log_probs.T.numpy(), source='sim',
            score_theta=score.reshape(horizon, n_episodes, -1).transpose(0, 1).numpy())

    def noise_of(self, phi: np.ndarray, theta: np.ndarray, trajectories: Trajectories) -> CommonNoise:
        """The standard random numbers that reproduce simulated ``trajectories`` exactly
        (actions and transitions are reparametrised, so they can be solved for)."""
        phi_t = torch.as_tensor(phi, dtype=DTYPE)
        theta_phys = self.model.split(self.full_theta(torch.as_tensor(theta, dtype=DTYPE)))[0]
        states = torch.as_tensor(trajectories.states, dtype=DTYPE).transpose(0, 1)     # (T+1, N, 2n)
        actions = torch.as_tensor(trajectories.actions, dtype=DTYPE).transpose(0, 1)   # (T, N, n)
        with torch.no_grad():
            mean = self.policy.mean(phi_t, self.model.observation(states[:-1]))
            action_noise = (actions - mean) / torch.exp(self.policy.log_std(phi_t))
            transition_noise = ((states[1:] - self.model.step_mean(states[:-1], actions, theta_phys,
                                                                   **history_arguments(self.model, actions)))
                                / self.model.noise_std)
        return CommonNoise(states[0], action_noise, transition_noise)
