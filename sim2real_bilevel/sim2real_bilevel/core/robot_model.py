"""Differentiable torch model f_theta, R_theta of the pendulum (the simulator side).

Everything here is a pure tensor function: no ``.item()``, no Python branching on tensor
values (``torch.tanh`` stands in for the friction sign and the actuator saturation), any
leading batch shape, so it composes with ``torch.func`` (grad, jvp, vmap).

The parameter vector theta_full (7,) is in log space (every entry is positive):

    [log payload_mass, log damping, log coulomb_friction, log motor_gain,     <- dynamics
     log w_angle, log w_velocity, log w_effort]                       <- in-sim reward

Dynamics: a uniform rod (length L, radius r, known mass m_r) with an unknown point payload
m_p at its tip, on a joint; angle q from upright,

    I qdd = g (m_r L/2 + m_p L) sin q + k U tanh(u / U) - b qd - f tanh(qd / v_s),
    I = m_r (L^2/3 + r^2/4) + m_p L^2.

(The payload makes gravity and inertia scale differently, so it is identifiable apart from
the motor gain; a uniform rod's mass would only enter through k/m, b/m and f/m.)

integrated with ``physics_substeps`` semi-implicit Euler steps per control period (the
scheme pybullet uses, so with the true parameters and no delay the two agree closely).

The model is structurally imperfect on purpose, as real simulators are: it has no
actuation delay, a smooth tanh saturation where the motor clips hard, a smooth Coulomb
curve where the joint has stiction, and process noise where the robot has sensor noise.
System identification inside this family therefore cannot reproduce the robot exactly.

Transition noise: s' ~ N(step_mean(s, a), diag(noise_std^2)), so log f_theta(s'|s,a) and
its theta gradient exist for likelihood fits and score-function estimators.

Reward: r_theta(s, a) = exp(-(w_angle (1 - cos q) + w_velocity qd^2 + w_effort u^2)),
in (0, 1] so returns are positive and ratios of returns (normalised return) are meaningful.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PHYSICAL_NAMES = ('payload_mass', 'damping', 'coulomb_friction', 'motor_gain')
REWARD_NAMES = ('angle', 'velocity', 'effort')
THETA_NAMES = tuple(f'log_{name}' for name in PHYSICAL_NAMES) + tuple(f'log_w_{name}' for name in REWARD_NAMES)
N_PHYSICAL = len(PHYSICAL_NAMES)
STATE_DIM = 2
ACTION_DIM = 1
OBSERVATION_DIM = 3


@dataclass(frozen=True)
class PendulumGeometry:
    """What the user knows exactly (not learned): geometry, gravity, timing, actuator limit."""
    link_length: float = 0.5
    rod_radius: float = 0.02
    rod_mass: float = 0.4
    gravity: float = 9.81
    control_period: float = 0.02
    physics_substeps: int = 4
    effort_limit: float = 2.5
    """Commanded effort saturates smoothly at +-effort_limit (before the motor gain)."""
    friction_velocity_scale: float = 0.05
    """Velocity (rad/s) over which the modelled Coulomb friction changes sign."""



class PendulumModel:
    """f_theta and R_theta of the pendulum as pure torch functions.

    ``noise_std`` (2,) is the transition noise on (angle, velocity) after one control period.
    """

    state_dim, action_dim, observation_dim, n_physical = STATE_DIM, ACTION_DIM, OBSERVATION_DIM, N_PHYSICAL

    def __init__(self, geometry: PendulumGeometry, noise_std):
        self.geometry = geometry
        noise_std = torch.as_tensor(noise_std, dtype=torch.float64)
        if noise_std.shape != (STATE_DIM,) or not bool(torch.all(noise_std > 0)):
            raise ValueError(f'PendulumModel: noise_std={noise_std.tolist()}: expected 2 positive numbers')
        self.noise_std = noise_std

    # --- dynamics ----------------------------------------------------------------------------------
    def step_mean(self, state: torch.Tensor, action: torch.Tensor, theta_phys: torch.Tensor) -> torch.Tensor:
        """Deterministic next state (..., 2) from state (..., 2), action (..., 1) and the
        log physical parameters theta_phys (4,) (or (..., 4), broadcast)."""
        return self.step_mean_with(state, action, self.coefficients(theta_phys))

    def coefficients(self, theta_phys: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-step constants of the dynamics, each divided by the inertia:
        (gravity, motor, damping, friction).  Rollouts compute them once, not every step."""
        g = self.geometry
        payload, damping, friction, gain = torch.exp(theta_phys).unbind(-1)
        inertia = g.rod_mass * (g.link_length ** 2 / 3.0 + g.rod_radius ** 2 / 4.0) + payload * g.link_length ** 2
        gravity = g.gravity * (g.rod_mass * g.link_length / 2.0 + payload * g.link_length)
        return gravity / inertia, gain * g.effort_limit / inertia, damping / inertia, friction / inertia

    def step_mean_with(self, state: torch.Tensor, action: torch.Tensor, coefficients) -> torch.Tensor:
        """``step_mean`` given ``coefficients(theta_phys)``."""
        g = self.geometry
        gravity, motor, damping, friction = coefficients
        h = g.control_period / g.physics_substeps
        motor_acceleration = motor * torch.tanh(action[..., 0] / g.effort_limit)
        position, velocity = state[..., 0], state[..., 1]
        for _ in range(g.physics_substeps):
            acceleration = (gravity * torch.sin(position) + motor_acceleration - damping * velocity
                            - friction * torch.tanh(velocity / g.friction_velocity_scale))
            velocity = velocity + h * acceleration
            position = position + h * velocity
        return torch.stack((position, velocity), dim=-1)

    def log_prob(self, next_state: torch.Tensor, state: torch.Tensor, action: torch.Tensor,
                 theta_phys: torch.Tensor) -> torch.Tensor:
        """log f_theta(next_state | state, action), shape (...)."""
        std = self.noise_std.to(next_state.dtype)
        z = (next_state - self.step_mean(state, action, theta_phys)) / std
        return (-0.5 * z ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample_next(self, state: torch.Tensor, action: torch.Tensor, theta_phys: torch.Tensor,
                    standard_noise: torch.Tensor) -> torch.Tensor:
        """Reparametrised transition: step_mean + noise_std * standard_noise."""
        return self.step_mean(state, action, theta_phys) + self.noise_std.to(state.dtype) * standard_noise

    # --- reward and observation ------------------------------------------------------------------
    @staticmethod
    def reward(state: torch.Tensor, action: torch.Tensor, theta_reward: torch.Tensor) -> torch.Tensor:
        """r_theta(s, a) in (0, 1], shape (...); theta_reward (3,) = log weights."""
        return PendulumModel.reward_with(state, action, torch.exp(theta_reward).unbind(-1))

    @staticmethod
    def reward_with(state: torch.Tensor, action: torch.Tensor, weights) -> torch.Tensor:
        """``reward`` given the weights exp(theta_reward) as (w_angle, w_velocity, w_effort)."""
        w_angle, w_velocity, w_effort = weights
        cost = (w_angle * (1.0 - torch.cos(state[..., 0])) + w_velocity * state[..., 1] ** 2
                + w_effort * action[..., 0] ** 2)
        return torch.exp(-cost)

    @staticmethod
    def observation(state: torch.Tensor) -> torch.Tensor:
        """What the policy sees: (sin q, cos q, qd / 4) -- continuous in q across wraps."""
        position, velocity = state[..., 0], state[..., 1]
        return torch.stack((torch.sin(position), torch.cos(position), velocity / 4.0), dim=-1)

    # --- theta bookkeeping -----------------------------------------------------------------------
    @staticmethod
    def split(theta_full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta_phys (4,), theta_reward (3,)) views of the full log-parameter vector."""
        return theta_full[..., :N_PHYSICAL], theta_full[..., N_PHYSICAL:]
