"""Differentiable simulator f_theta, R_theta of a robot described by its URDF (batched torch).

The same interface as ``robot_model.PendulumModel`` (``split``, ``coefficients``,
``step_mean_with``, ``step_mean``, ``log_prob``, ``reward``, ``observation``, ``noise_std``,
``state_dim``, ``action_dim``, ``n_physical``), so the robot problem's rollouts, inner solvers,
sensitivities and estimators serve both.

State s = (q, qd) of the n controlled joints; action u = one commanded effort per joint.
theta_full = [physical entries..., reward entries...], each the log of a positive quantity:

- ``mass_scale`` of a link (factor on the file's mass and inertia),
- ``payload_mass`` at a link (a point mass at a known centre in the link frame),
- ``payload_distance`` at a link (that payload's centre: this distance along a known direction),
- per joint (or all controlled joints): ``damping``, ``coulomb_friction``, ``armature``, ``motor_gain``,
- ``delay``: the actuation delay d in seconds (every joint; see below),
- reward weights, one per reward term.

Rigid-body terms M(q), h(q, qd) come from adam-robotics (``urdf_robot.RigidBodyDynamics``);
what no library gives is owned here.  Per physics substep (dt = control_period / substeps):

    tau   = gain * U tanh(u / U) - h(q, qd) - D qd
    qd'   = qd + dt E^-1 (tau - f tanh(qd' / v_s)),   E = M(q) + A + dt D
    q'    = q + dt qd'

(U the effort limit, f Coulomb friction smoothed by tanh over v_s, D damping, A armature.)
Semi-implicit Euler with the dissipative terms implicit: the damping through E, the friction at the
step's end (backward Euler for that term; ``implicit_friction``).  qd' is the root of
G(v) = E (v - qd_free) / dt + f tanh(v / v_s), qd_free = qd + dt E^-1 tau: the minimiser of a
strictly convex function, found by Newton's method with a line search (``implicit_friction_velocity``).
Explicit friction (``implicit_friction: false``) is unstable wherever the friction's slope f / v_s
exceeds E / dt: from rest one step multiplies a velocity error by 1 - dt f / (E v_s) (-2.8 for the
iiwa's link 7 at 0.1 N m of friction and 40 ms steps, -37 at 1 N m), so rollouts chatter around
rest and their Jacobians -- the policy gradients, the sensitivities, the pathwise real gradient
-- grow geometrically along the episode.

Actuation delay d (a ``delay`` entry): commands are held for a control period T (zero-order
hold) and reach the motor d seconds late.  The torque of a substep [t, t + dt) is the mean of the
delayed, saturated command over it: sum_i w_i gain U tanh(u_i / U) over the current command and
the ``action_history`` = ceil(d_max / T) previous ones, w_i = (overlap of [t - d, t + dt - d) with
command i's period) / dt -- exact for a held command, piecewise linear (so differentiable almost
everywhere) in d, and whole periods of delay (d = k T) apply u_{t-k} as the pybullet stand-in
does.  The previous commands are an input of the step (``history``, zeros before an episode's
first command); d is clamped to [0, action_history * T].
The implicit damping keeps stiff joints stable: the iiwa's URDF damping 0.5 against link 7's
inertia 1e-3 makes explicit Euler diverge at dt = 10 ms.  Joint position limits act as stiff
one-sided springs (``limit_stiffness``; 0 = none) -- smooth, so gradients exist.

Transition noise: s' ~ N(step_mean, diag(noise_std^2)).
Reward: r = exp(-(sum of weighted cost terms)), in (0, 1]:
  ``angle``: sum_j (1 - cos(q_j - target_j)) (revolute/continuous joints, wrap-safe),
  ``position``: sum_j (q_j - target_j)^2, ``velocity``: |qd|^2, ``effort``: |u|^2.

Termination (``settings.termination``, the task file's ``task.termination``): an episode ends at
the first state outside per-joint position bounds or above per-joint speed bounds (``terminal``);
the transition into it earns its reward, later ones none.  The robot problem's rollouts hold the
state still after the end (so a rollout that passes a speed bound on its way to diverging stays
finite; the bounds are checked once per control period) and weight rewards by that
alive mask (detached: the end's timing carries no gradient); real episodes get the same dones
and rewards from their measured states.

Gravity compensation by the robot's controller (``settings.gravity_compensation``, as torque
modes of arms such as the iiwa's do): the motor receives u + g_c(q), g_c the gravity torque of
the file's arm with the controller's configured load (known, not theta), so tau gains
gain * g_c(q) each substep; a load other than the configured one (a payload entry) is what it
leaves uncompensated.  The effort term of the reward is on u alone.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .urdf_robot import RigidBodyDynamics

PHYSICAL_KINDS = ('mass_scale', 'payload_mass', 'payload_distance', 'damping', 'coulomb_friction', 'armature',
                  'motor_gain', 'delay')
LINK_KINDS = ('mass_scale', 'payload_mass', 'payload_distance')
JOINT_KINDS = ('damping', 'coulomb_friction', 'armature', 'motor_gain')
ROBOT_KINDS = ('delay',)                    # one value for the whole robot: no @LINK / @JOINT
REWARD_TERMS = ('angle', 'position', 'velocity', 'effort')


@dataclass(frozen=True)
class PhysicalEntry:
    """One physical entry of theta: ``kind`` at ``link`` (link kinds) or at ``joints`` (indices
    into the controlled joints; joint kinds)."""
    kind: str
    link: Optional[str] = None
    joints: tuple[int, ...] = ()
    # payload_mass: the payload's centre in the link frame; payload_distance: the direction along
    # which it lies (the centre = the entry's value times the unit direction, replacing the mass's)
    center_of_mass: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def name(self) -> str:
        return self.kind if self.link is None else f'{self.kind}@{self.link}'


@dataclass(frozen=True)
class UrdfSimulatorSettings:
    """What the user states exactly (not learned)."""
    control_period: float
    physics_substeps: int
    effort_limit: tuple[float, ...]           # U per joint: the smooth saturation of the command
    friction_velocity_scale: float = 0.05     # v_s of the smooth Coulomb curve
    limit_stiffness: float = 0.0              # N m / rad beyond a joint's position limit (0: none)
    gravity: float = 9.81
    implicit_damping: bool = True             # False: -D qd explicit, as pybullet (stable only for small dt)
    implicit_friction: bool = True            # False: -f tanh(qd / v_s) explicit (unstable where f / v_s > E / dt)
    reward_targets: tuple[float, ...] = ()    # per joint target of the angle / position terms
    # the robot controller's gravity compensation: None = none; else its configured load, a tuple of
    # (link, mass, (x, y, z) centre in the link frame) point payloads on the file's arm (not theta)
    gravity_compensation: Optional[tuple] = None
    # the task's termination (None: episodes run their whole horizon): a state outside these per-joint
    # position bounds, or with a joint faster than its speed bound, ends its episode
    termination: Optional['Termination'] = None


@dataclass(frozen=True)
class Termination:
    """When an episode ends early (the task file's ``task.termination``): at the first state with a
    joint position outside [position_low, position_high] or a joint speed |qd| above max_speed
    (per joint; infinite: no bound).  The transition INTO that state still earns its reward; none
    after it does."""
    position_low: tuple[float, ...]
    position_high: tuple[float, ...]
    max_speed: tuple[float, ...]

    def outside(self, position, speed) -> tuple:
        """(below, above, too fast): per-joint masks (..., n) of positions below ``position_low``, above
        ``position_high`` and speeds |qd| above ``max_speed``; ``position`` and ``speed`` both torch
        tensors or both numpy arrays (..., n).  The one comparison of the rule: ``UrdfModel.terminal``
        (rollouts, dones) and ``reason`` (the hardware bridge) both use it."""
        if isinstance(position, torch.Tensor):
            bound = lambda values: torch.as_tensor(values, dtype=position.dtype, device=position.device)  # noqa: E731
        else:
            bound = np.asarray
        return (position < bound(self.position_low), position > bound(self.position_high),
                speed > bound(self.max_speed))

    def reason(self, position: Sequence[float], velocity: Sequence[float], joints: Sequence[str]) -> Optional[str]:
        """Why one state (positions and velocities of ``joints``) ends its episode, in words (the first
        joint outside a bound, which bound, its value); None: inside every bound."""
        position, velocity = np.asarray(position, dtype=np.float64), np.asarray(velocity, dtype=np.float64)
        below, above, fast = self.outside(position, np.abs(velocity))
        for i, joint in enumerate(joints):
            if below[i] or above[i]:
                side, bound = ('<', self.position_low[i]) if below[i] else ('>', self.position_high[i])
                return (f'joint {joint} position {position[i]:.4g} {side} {bound:g} (task.termination position bounds '
                        f'[{self.position_low[i]:g}, {self.position_high[i]:g}])')
            if fast[i]:
                return (f'joint {joint} speed |{velocity[i]:.4g}| > {self.max_speed[i]:g} (task.termination '
                        'max_speed)')
        return None


@dataclass
class Coefficients:
    inertias: dict                           # mass_scale and payloads of RigidBodyDynamics.mass_matrix_and_bias
    damping: torch.Tensor                    # (..., n)
    friction: torch.Tensor
    armature: torch.Tensor
    gain: torch.Tensor
    extras: dict = field(default_factory=dict)
    delay: Optional[torch.Tensor] = None     # (...,) seconds; None: no delay entry


def payload_center(distance: torch.Tensor, direction) -> torch.Tensor:
    """The payload's centre (..., 3) at ``distance`` (...,) along the unit ``direction`` (3,);
    coordinates where the direction is zero are constant zeros."""
    unit = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    zero = torch.zeros_like(distance)
    return torch.stack([distance * float(u) if u != 0 else zero for u in unit], -1)


FRICTION_NEWTON_ITERATIONS = 50
"""Cap on the Newton iterations of one implicit friction solve (strictly convex: a handful suffice)."""
FRICTION_NEWTON_TOLERANCE = 1e-10
"""Stop a sample when its Newton step is below this times (v_s + |v|) in every joint; the two
differentiated steps after it take the root to rounding error (Newton converges quadratically)."""


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    magnitude = x.abs()
    return magnitude + torch.log1p(torch.exp(-2.0 * magnitude)) - math.log(2.0)


def implicit_friction_velocity(free: torch.Tensor, effective: torch.Tensor, friction: torch.Tensor,
                               scale: float, dt: float) -> torch.Tensor:
    """The velocity (batch, n) after a substep whose smooth Coulomb friction f tanh(v / v_s) acts at
    its end: the root of G(v) = E (v - free) / dt + f tanh(v / v_s), where ``free`` (batch, n) is
    the velocity the step reaches without friction and ``effective`` E (batch, n, n) the symmetric
    positive definite matrix of its velocity update.  G is the gradient of the strictly convex

        Phi(v) = (v - free)^T E (v - free) / (2 dt) + sum_j f_j v_s log cosh(v_j / v_s),

    so the root is unique (for one joint the friction can stop the joint but never reverse it), and
    d v / d free = (I + dt E^-1 diag(f sech^2 / v_s))^-1 has eigenvalues in (0, 1] for every f >= 0.

    Newton's method with a backtracking line search on Phi, without autograd, to
    ``FRICTION_NEWTON_TOLERANCE``; then two Newton steps with autograd from that root.  At a root
    Newton's map has a zero Jacobian in v, so the first differentiated step carries the exact first
    derivatives (the implicit-function theorem's -H^-1 dG) and the second the exact second
    derivatives, which the sensitivities' Hessian-vector products need."""
    friction = friction.expand_as(free)

    def newton_step(v, free_, effective_, friction_):
        """(H^-1 G(v), G(v)): the Newton step and the residual it solves."""
        tanh = torch.tanh(v / scale)
        residual = (effective_ @ (v - free_)[..., None])[..., 0] / dt + friction_ * tanh
        hessian = effective_ / dt + torch.diag_embed(friction_ * (1.0 - tanh ** 2) / scale)
        return torch.linalg.solve(hessian, residual[..., None])[..., 0], residual

    with torch.no_grad():
        free_, effective_, friction_ = free.detach(), effective.detach(), friction.detach()

        def objective(v):
            offset = v - free_
            return (0.5 / dt) * (offset * (effective_ @ offset[..., None])[..., 0]).sum(-1) \
                + (friction_ * scale * _log_cosh(v / scale)).sum(-1)

        # start from each joint's own sharp Coulomb step (others held): stop it if the friction can
        # within the step, else take dt f / E_jj off its speed -- near the root in both regimes
        reach = dt * friction_ / torch.diagonal(effective_, dim1=-2, dim2=-1)
        v = free_ - torch.maximum(torch.minimum(free_, reach), -reach)
        active = torch.isfinite(v).all(-1) & torch.isfinite(effective_).flatten(-2).all(-1)
        tolerance = max(FRICTION_NEWTON_TOLERANCE, 100.0 * torch.finfo(v.dtype).eps)   # float32 too
        for _ in range(FRICTION_NEWTON_ITERATIONS):
            step, residual = newton_step(v, free_, effective_, friction_)
            active = active & ~(step.abs() <= tolerance * (scale + v.abs())).all(-1)
            if not active.any():
                break
            step = torch.where(active[..., None], step, torch.zeros_like(step))
            decrease = (residual * step).sum(-1)                                 # Newton decrement^2 >= 0
            current = objective(v)
            slack = max(1e-12, 10.0 * torch.finfo(v.dtype).eps) * current.abs()   # Phi >= 0: its rounding
            length = torch.ones_like(current)
            for _ in range(40):                   # Armijo on Phi; a full Newton step near the root
                trial = v - length[..., None] * step
                accepted = ~active | (objective(trial) <= current - 1e-4 * length * decrease + slack)
                if accepted.all():
                    break
                length = torch.where(accepted, length, 0.5 * length)
            v = v - length[..., None] * step
            active = active & torch.isfinite(v).all(-1)
        root = v
    for _ in range(2):                 # always: under torch.func.grad the inputs need not say requires_grad
        root = root - newton_step(root, free, effective, friction)[0]
    return root


class UrdfModel:
    """f_theta and R_theta of a URDF robot (see the module docstring)."""

    def __init__(self, dynamics: RigidBodyDynamics, settings: UrdfSimulatorSettings,
                 physical: Sequence[PhysicalEntry], reward_terms: Sequence[str], noise_std, *,
                 default_damping: Sequence[float], default_friction: Sequence[float],
                 joint_lower: Sequence[float], joint_upper: Sequence[float], angular: Sequence[bool],
                 max_delay: float = 0.0):
        self.dynamics = dynamics
        self.settings = settings
        self.physical = tuple(physical)
        self.reward_terms = tuple(reward_terms)
        n = dynamics.n_joints
        self.n_joints = n
        self.state_dim = 2 * n
        self.action_dim = n
        self.angular = np.asarray(angular, dtype=bool)
        self._angular_mask = torch.as_tensor(self.angular)
        self.observation_dim = int(2 * self.angular.sum() + (~self.angular).sum() + n)
        self.n_physical = len(self.physical)
        masses = {entry.link for entry in self.physical if entry.kind == 'payload_mass'}
        for entry in self.physical:
            if entry.kind == 'payload_distance' and (entry.link not in masses or not any(entry.center_of_mass)):
                raise ValueError(f'UrdfModel: payload_distance@{entry.link}: expected a payload_mass entry at '
                                 f'{entry.link} and a non-zero direction (got {entry.center_of_mass})')
        noise_std = torch.as_tensor(noise_std, dtype=torch.float64)
        if noise_std.shape != (self.state_dim,) or not bool(torch.all(noise_std > 0)):
            raise ValueError(f'UrdfModel: noise_std={noise_std.tolist()}: expected {self.state_dim} positive numbers')
        self.noise_std = noise_std
        self._default = {'damping': torch.as_tensor(default_damping, dtype=torch.float64),
                         'coulomb_friction': torch.as_tensor(default_friction, dtype=torch.float64),
                         'armature': torch.zeros(n, dtype=torch.float64),
                         'motor_gain': torch.ones(n, dtype=torch.float64)}
        self._lower = torch.as_tensor(joint_lower, dtype=torch.float64)
        self._upper = torch.as_tensor(joint_upper, dtype=torch.float64)
        self._effort_limit = torch.as_tensor(settings.effort_limit, dtype=torch.float64)
        targets = settings.reward_targets or (0.0,) * n
        self._compensation = None if settings.gravity_compensation is None else {
            link: (torch.tensor(float(mass), dtype=torch.float64), torch.tensor(center, dtype=torch.float64))
            for link, mass, center in settings.gravity_compensation}
        self._targets = torch.as_tensor(targets, dtype=torch.float64)
        # previous commands a step needs (ceil(d_max / T)); 0 without a delay entry
        self.action_history = 0
        if any(entry.kind == 'delay' for entry in self.physical):
            if not max_delay > 0 or not math.isfinite(max_delay):
                raise ValueError(f'UrdfModel: max_delay={max_delay!r}: expected the delay entry\'s upper bound '
                                 '(seconds, > 0)')
            self.action_history = max(1, math.ceil(max_delay / settings.control_period - 1e-9))

    def to(self, device) -> 'UrdfModel':
        """This model with its rigid-body dynamics on ``device``; every other tensor follows the
        state's device at use, so a rollout runs where its inputs are."""
        moved = copy.copy(self)
        moved.dynamics = self.dynamics.to(device)
        return moved

    # --- theta bookkeeping -----------------------------------------------------------------------
    def split(self, theta_full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return theta_full[..., :self.n_physical], theta_full[..., self.n_physical:]

    def coefficients(self, theta_phys: torch.Tensor) -> Coefficients:
        """Natural values of the physical entries (batch shape of theta_phys kept)."""
        values = torch.exp(theta_phys)
        batch = theta_phys.shape[:-1]
        per_joint = {kind: default.to(theta_phys).expand(batch + (self.n_joints,))
                     for kind, default in self._default.items()}
        mass_scale, payloads, delay = {}, {}, None
        for index, entry in enumerate(self.physical):
            value = values[..., index]
            if entry.kind == 'delay':
                delay = value
            elif entry.kind == 'mass_scale':
                mass_scale[entry.link] = value
            elif entry.kind == 'payload_mass':
                payloads[entry.link] = (value, torch.as_tensor(entry.center_of_mass, dtype=theta_phys.dtype,
                                                                device=theta_phys.device))
            elif entry.kind == 'payload_distance':
                continue
            else:
                mask = torch.zeros(self.n_joints, dtype=theta_phys.dtype, device=theta_phys.device)
                mask[list(entry.joints)] = 1.0
                per_joint[entry.kind] = per_joint[entry.kind] * (1 - mask) + value[..., None] * mask
        for index, entry in enumerate(self.physical):
            if entry.kind == 'payload_distance':
                payloads[entry.link] = (payloads[entry.link][0], payload_center(values[..., index], entry.center_of_mass))
        return Coefficients(inertias={'mass_scale': mass_scale, 'payloads': payloads},
                            damping=per_joint['damping'], friction=per_joint['coulomb_friction'],
                            armature=per_joint['armature'], gain=per_joint['motor_gain'], delay=delay)

    # --- dynamics -------------------------------------------------------------------------------------
    def step_mean(self, state: torch.Tensor, action: torch.Tensor, theta_phys: torch.Tensor,
                  history: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.step_mean_with(state, action, self.coefficients(theta_phys), history)

    def step_mean_with(self, state: torch.Tensor, action: torch.Tensor, coefficients: Coefficients,
                       history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Next state (..., 2n) from state (..., 2n) and efforts (..., n); ``history``
        (..., action_history, n): the previous commands, oldest first (None: zeros; read only
        with a delay entry)."""
        s = self.settings
        dt = s.control_period / s.physics_substeps
        shape = state.shape[:-1]
        n = self.n_joints
        flat_state = state.reshape(-1, 2 * n)
        batch = flat_state.shape[0]

        def per_sample(value):       # (..., n) broadcast to the flat batch (batch, n)
            return value.expand(shape + (n,)).reshape(batch, n)

        def per_sample_scalar(value):
            return value.expand(shape).reshape(batch)

        inertias = coefficients.inertias
        mass_scale = {link: per_sample_scalar(v) if v.ndim else v for link, v in inertias['mass_scale'].items()}
        payloads = {link: (per_sample_scalar(m) if m.ndim else m, c.expand(shape + (3,)).reshape(batch, 3) if c.ndim > 1 else c)
                    for link, (m, c) in inertias['payloads'].items()}
        damping, friction = per_sample(coefficients.damping), per_sample(coefficients.friction)
        armature, gain = per_sample(coefficients.armature), per_sample(coefficients.gain)
        limit = self._effort_limit.to(state)
        motor = gain * limit * torch.tanh(action.reshape(batch, n) / limit)
        delayed = None
        if coefficients.delay is not None:
            delayed = self._delayed_commands(action.reshape(batch, n), history, shape, gain, limit,
                                             per_sample_scalar(coefficients.delay))
        position, velocity = flat_state[:, :n], flat_state[:, n:]
        eye = torch.eye(n, dtype=state.dtype, device=state.device)
        for substep in range(s.physics_substeps):
            if delayed is not None:
                motor = delayed(substep)
            mass_matrix, bias = self.dynamics.mass_matrix_and_bias(position, velocity, mass_scale=mass_scale,
                                                                   payloads=payloads)
            if s.implicit_friction:
                torque = motor - bias - damping * velocity
            else:                   # the expression of the explicit integrator before implicit friction
                torque = (motor - friction * torch.tanh(velocity / s.friction_velocity_scale) - bias
                          - damping * velocity)
            if self._compensation is not None:
                torque = torque + gain * self.gravity_compensation(position)
            if s.limit_stiffness > 0:
                torque = torque - s.limit_stiffness * (torch.relu(position - self._upper.to(state))
                                                       - torch.relu(self._lower.to(state) - position))
            implicit = dt * damping if s.implicit_damping else torch.zeros_like(damping)
            effective = mass_matrix + (armature + implicit)[..., None] * eye
            velocity = velocity + dt * torch.linalg.solve(effective, torque)
            if s.implicit_friction:
                velocity = implicit_friction_velocity(velocity, effective, friction, s.friction_velocity_scale, dt)
            position = position + dt * velocity
        return torch.cat([position, velocity], -1).reshape(shape + (2 * n,))

    def gravity_compensation(self, position: torch.Tensor) -> torch.Tensor:
        """g_c(q) (batch, n): the controller's gravity torque (h at zero speed of the file's arm
        with its configured load; module docstring)."""
        payloads = {link: (mass.to(position), center.to(position)) for link, (mass, center) in self._compensation.items()}
        return self.dynamics.gravity_torque(position, payloads=payloads)

    def _delayed_commands(self, action, history, shape, gain, limit, delay):
        """substep -> motor torque (batch, n): the mean of the delayed, saturated held command
        over the substep (module docstring); ``delay`` (batch,) in seconds."""
        s = self.settings
        length, n = self.action_history, self.n_joints
        batch = action.shape[0]
        if history is None:
            history = torch.zeros(batch, length, n, dtype=action.dtype, device=action.device)
        else:
            if history.shape[-2:] != (length, n):
                raise ValueError(f'UrdfModel.step_mean_with: history of shape {tuple(history.shape)}: expected '
                                 f'(..., {length}, {n}) (the previous {length} commands, oldest first)')
            history = history.to(action).expand(shape + (length, n)).reshape(batch, length, n)
        commands = torch.cat([history, action[:, None]], 1)                      # u_{k-L} .. u_k
        torques = gain[:, None] * limit * torch.tanh(commands / limit)            # (batch, L + 1, n)
        lag = torch.clamp(delay / s.control_period, 0.0, float(length))[:, None]  # d / T
        starts = torch.arange(-length, 1, dtype=action.dtype, device=action.device)   # command i holds [i, i + 1)
        substeps = s.physics_substeps

        def motor(substep: int) -> torch.Tensor:
            begin, end = substep / substeps - lag, (substep + 1) / substeps - lag
            overlap = torch.clamp(torch.minimum(end, starts + 1) - torch.maximum(begin, starts), min=0.0)
            return (overlap[..., None] * substeps * torques).sum(1)
        return motor

    def log_prob(self, next_state: torch.Tensor, state: torch.Tensor, action: torch.Tensor,
                 theta_phys: torch.Tensor, history: Optional[torch.Tensor] = None) -> torch.Tensor:
        std = self.noise_std.to(next_state)
        z = (next_state - self.step_mean(state, action, theta_phys, history)) / std
        return (-0.5 * z ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def terminal(self, state: torch.Tensor) -> Optional[torch.Tensor]:
        """Whether each state (..., 2n) ends its episode (bool (...)); None: the task has no termination."""
        rule = self.settings.termination
        if rule is None:
            return None
        n = self.n_joints
        below, above, fast = rule.outside(state[..., :n], state[..., n:].abs())
        return (below | above | fast).any(-1)

    def termination_reason(self, state: Sequence[float], joints: Sequence[str]) -> Optional[str]:
        """Why one state (2n: positions of ``joints``, then velocities) ends its episode, in words
        (``Termination.reason``); None: it does not, or the task has no termination."""
        rule = self.settings.termination
        if rule is None:
            return None
        n = self.n_joints
        return rule.reason(state[:n], state[n:2 * n], joints)

    # --- reward and observation -----------------------------------------------------------------------
    def reward(self, state: torch.Tensor, action: torch.Tensor, theta_reward: torch.Tensor) -> torch.Tensor:
        weights = torch.exp(theta_reward)
        n = self.n_joints
        position, velocity = state[..., :n], state[..., n:]
        error = position - self._targets.to(state)
        terms = {'angle': lambda: (1.0 - torch.cos(error[..., self._angular_mask])).sum(-1),
                 'position': lambda: (error ** 2).sum(-1),
                 'velocity': lambda: (velocity ** 2).sum(-1),
                 'effort': lambda: (action ** 2).sum(-1)}
        cost = sum(weights[..., i] * terms[name]() for i, name in enumerate(self.reward_terms))
        return torch.exp(-cost)

    def observation(self, state: torch.Tensor) -> torch.Tensor:
        """(sin q, cos q) of angular joints, q of the others, then qd / 4."""
        n = self.n_joints
        position, velocity = state[..., :n], state[..., n:]
        angular = self._angular_mask
        parts = []
        if bool(angular.any()):
            parts += [torch.sin(position[..., angular]), torch.cos(position[..., angular])]
        if bool((~angular).any()):
            parts.append(position[..., ~angular])
        parts.append(velocity / 4.0)
        return torch.cat(parts, -1)
