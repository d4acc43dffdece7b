"""The contract between a bi-level problem (tabular, LQR, robot) and the generic machinery.

Conventions used everywhere in ``core``:
- Everything *maximises* return; LQR rewards are minus costs.
- ``theta`` is the vector of learnable simulator entries in optimisation coordinates
  (log space for positive quantities); ``phi`` is the flat policy parameter vector.
- numpy float64 arrays at the interface; torch float64 inside differentiable code.
- The inner optimality residual is F(phi, theta) = grad_phi J_sim(phi, theta) (the in-sim
  policy gradient, written phi_hat in the paper); F(phi*(theta), theta) = 0.
  d phi*/d theta = -(dF/dphi)^{-1} dF/dtheta  (implicit function theorem).
- Methods may only *sample* the real system (``sample_real``); ``real_objective`` and
  ``normalized_return`` are exact and used for reporting and gradchecks only.

What a ``BilevelProblem`` gives (abstract unless a default is named):
- its description: ``kind`` (a label), ``gamma``, ``source`` (the problem file) and
  ``outer_defaults`` (the file's ``outer:`` section; default empty);
- the simulator family: ``theta0``, ``theta_bounds``, ``phi_size``, ``theta_names``,
  ``theta_groups`` (ablations; default: not implemented);
- the inner level: ``inner_solve``, ``inner_gradient``, ``simulate``, ``sensitivity_terms``
  and the sizes of sampled estimates, ``default_sim_episodes`` (default 200) and
  ``default_sim_horizon`` (default 50);
- the real system, sampled in whole episodes: ``sample_real``, ``real_policy_gradient``,
  ``real_objective``, ``normalized_return``, and the baseline ``system_identification``;
- what the ROS nodes need, so that no node switches on ``kind`` or reads a kind's attributes
  (``kind`` is a label for messages only):
  - ``trajectory_sizes()``: the keyword arguments ``nodes.conversions.trajectories_from_msg``
    checks this problem's batches with (default ``{}``: nothing discrete to check);
  - ``real_system(rng)``: the real system as a step-by-step process (``RealSystem``:
    ``reset``/``step`` return a ``Sample``, ``command_refusal``, ``control_period``,
    ``describe``, ``link_pose``), which the robot emulator serves on the ros2_control
    topics; every random draw comes from ``rng``.  Default: ``NotImplementedError`` with
    the reason;
  - ``controller(phi, rng)``: what the hardware bridge runs for pi_phi on those topics, one
    step at a time (``EpisodeController``), ending in a ``Trajectories`` batch; its flags say
    whether the bridge's effort safety applies (``commands_are_efforts``) and whether each
    step waits for a ``reward`` message (``needs_reward``).  Default: ``NotImplementedError``;
  - ``joints()``: the controlled joints in the controller's order, each a ``JointLimits``
    (name; effort, position and velocity limits, inf where the robot's description gives none):
    the robot emulator publishes these names on joint_states, the hardware bridge reads them by
    name and caps each joint by its own limits.  Default None: the problem has no joints
    (tabular: the state index is the position of one pseudo-joint the nodes name by their
    ``joints`` parameter, default ``state``, with no limits; LQR has no step-by-step system);
  - ``robot_description()``: the robot's URDF text (what rviz's RobotModel shows, published on
    ``robot_description``); default None (no robot model);
  - ``link_transforms(position)``: forward kinematics for rviz, ``(root frame, {link: 4x4
    homogeneous transform in the root frame})`` at joint positions ordered like ``joints()``;
    default None (nothing to draw);
  - ``termination_reason(state)``: why one state (a row of this problem's batch states) ends its
    episode -- the task's termination (which bound, which joint, which value), the rule its
    batches' ``dones`` come from -- or None.  The hardware bridge stops an episode there
    (``EpisodeController.terminal``).  Default None: episodes run their whole horizon;
  - ``start_pose()``: the joint positions (one per commanded joint, in command order) that a
    scripted reset drives the robot to with efforts between episodes (hardware bridge
    ``reset_mode: scripted``, ``nodes/resets.py``): the mean of the real initial-state
    distribution.  Default None: efforts cannot drive this problem's robot to an initial state
    (a scripted reset is refused).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

import numpy as np
import torch


@dataclass
class Trajectories:
    """A batch of episodes, simulated or real, as (n_episodes, horizon, ...) arrays.

    states: (n, T+1, ds) float64, or (n, T+1) int64 for tabular;
    actions: (n, T, da) float64, or (n, T) int64; rewards: (n, T); dones: (n, T) bool;
    log_probs: (n, T) log pi(a_t|s_t) of the behaviour policy;
    score_theta: optional (n, T, D): grad_theta log f_theta(s_{t+1}|s_t,a_t) (simulated only).
    state_times, command_times: optional (n, T+1) and (n, T) seconds (ROS time) at which the robot
    sensed each state and each command left the controller (real episodes of a timed control
    loop): the delay the robot really had.
    """
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    log_probs: np.ndarray
    source: str = 'sim'            # 'sim' or 'real'
    policy_version: int = 0
    score_theta: Optional[np.ndarray] = None
    state_times: Optional[np.ndarray] = None
    command_times: Optional[np.ndarray] = None

    @property
    def n_transitions(self) -> int:
        """Transitions that ran: per episode up to and including its first done (all T without one);
        the held steps after an early end (``pad_episodes``) are not counted."""
        return int(alive_mask(np.asarray(self.dones, dtype=bool)).sum())


def alive_mask(dones: np.ndarray) -> np.ndarray:
    """(n, T) mask of the steps at or before each episode's first done: the transitions that ran."""
    return (np.cumsum(dones, axis=1) - dones) == 0


def pad_episodes(states: Sequence, actions: Sequence, horizon: int, state_shape: tuple = (),
                 action_shape: tuple = (), where: str = 'pad_episodes') -> tuple[np.ndarray, np.ndarray]:
    """Episodes of up to ``horizon`` steps (per episode: k+1 states, k actions, 0 <= k <= horizon) in the
    batch shape: states (n, horizon+1, *state_shape), actions (n, horizon, *action_shape).  An episode
    that ended early holds its last state up to the horizon with zero actions after it: what the
    hardware bridge, the stand-in and the simulator's rollouts record after a terminal state (the
    caller zeroes the rewards there and sets ``dones`` at the end)."""
    padded_states = np.zeros((len(states), horizon + 1) + tuple(state_shape))
    padded_actions = np.zeros((len(states), horizon) + tuple(action_shape))
    for i, (observed, applied) in enumerate(zip(states, actions)):
        observed, applied = np.asarray(observed, dtype=np.float64), np.asarray(applied, dtype=np.float64)
        if not 0 < len(observed) <= horizon + 1 or len(applied) != len(observed) - 1:
            raise ValueError(f'{where}: episode {i} has {len(observed)} states and {len(applied)} commands: '
                             f'expected 1..{horizon + 1} states and one command fewer')
        padded_states[i, :len(observed)] = observed
        padded_states[i, len(observed):] = observed[-1]
        if len(applied):
            padded_actions[i, :len(applied)] = applied.reshape((len(applied),) + tuple(action_shape))
    return padded_states, padded_actions


@dataclass
class InnerResult:
    phi: np.ndarray
    grad_norm: float                 # ||F(phi, theta)|| at the returned phi
    iterations: int
    info: dict = field(default_factory=dict)


def require_finite_policy(phi, where: str) -> np.ndarray:
    """``phi`` as a float64 array, or ``FloatingPointError`` naming ``where`` (the problem file
    and the method or call) and the first non-finite entry: a NaN policy is never deployed."""
    values = np.asarray(phi, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise FloatingPointError(f'{where}: refusing to deploy a non-finite policy: phi[{int(bad[0])}] = '
                                 f'{float(values.flat[bad[0]])!r} ({bad.size} of {values.size} entries non-finite); '
                                 f'see the inner solve\'s info["non_finite"] for the cause')
    return values


@dataclass
class SensitivityTerms:
    """The linearisation of F at (phi, theta), as matrices (small problems) or operators.

    hessian: (P, P) dF/dphi; mixed: (P, D) dF/dtheta.  Either may be None when the
    operator form is given instead: hvp(v) = dF/dphi @ v, hvp_t(v) = dF/dphi^T @ v,
    vjp_theta(u) = dF/dtheta^T @ u (all torch float64 vectors).
    """
    hessian: Optional[np.ndarray] = None
    mixed: Optional[np.ndarray] = None
    hvp: Optional[object] = None
    hvp_t: Optional[object] = None
    vjp_theta: Optional[object] = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JointLimits:
    """One controlled joint of a robot: its name and the limits of its description (URDF
    ``<limit>``); inf (or -inf) where none is given."""
    name: str
    effort: float = math.inf          # largest |effort| (N m, N for prismatic joints)
    lower: float = -math.inf          # position limits (rad, m)
    upper: float = math.inf
    velocity: float = math.inf        # largest |velocity| (rad/s, m/s)


@dataclass
class Sample:
    """What the real system reports after a reset or a step: one joint_states message (position;
    velocity and effort may be empty) and the step's reward when the system measures one."""
    position: list[float]
    velocity: list[float] = field(default_factory=list)
    effort: list[float] = field(default_factory=list)
    reward: Optional[float] = None


class RealSystem(abc.ABC):
    """The physical system (or its stand-in) as a step-by-step process: what the robot
    emulator serves on the ros2_control topics.  ``control_period``: seconds of physical time
    per step (None: the system has no physical time, nothing advances a clock)."""

    control_period: Optional[float] = None

    @abc.abstractmethod
    def reset(self) -> Sample:
        """Start an episode; the first measurement."""

    @abc.abstractmethod
    def command_refusal(self, command: Sequence[float]) -> Optional[str]:
        """None if ``step(command)`` may run, else why not: the refused value first, then what
        was expected (the emulator logs 'ignored command ' + this)."""

    @abc.abstractmethod
    def step(self, command: Sequence[float]) -> Sample:
        """Apply one valid command for one step; the measurement after it."""

    def describe(self, sample: Sample) -> str:
        """A short text of a measurement (the answer to the emulator's reset service)."""
        return f'position {list(sample.position)}'

    def link_pose(self, sample: Sample) -> Optional[tuple[Sequence[float], Sequence[float], str]]:
        """(position xyz, orientation quaternion wxyz, frame id) of the robot's link at ``sample``,
        for rviz; None when there is nothing to show."""
        return None


class EpisodeController(abc.ABC):
    """A policy run on the robot one step at a time by the hardware bridge, which owns the
    waits and the safety.  Per episode: ``start_episode()``, then for t = 0..horizon
    ``observe(position, velocity)`` (the joint_states after the reset or the last command) and,
    for t < horizon, ``command()`` (the request) and, once the robot answered,
    ``record(applied, reward)`` (what was sent after the bridge's filter; the step's reward
    message when ``needs_reward``, else None).  ``batch(policy_version)``: the episodes as
    a real ``Trajectories`` batch.

    ``commands_are_efforts``: commands are joint efforts, so the bridge's effort safety applies
    (CommandFilter, state bounds, the joint_states watchdog, a zero command on any failure);
    False for symbolic commands such as a discrete action index.  ``control_period``: the
    physical time of one step, the default period of the bridge's timer-driven loop.

    ``terminal()``: why the state observed last ends the episode (the problem's
    ``termination_reason``), or None.  At such a state (step 0 < t < horizon: the first state never
    ends an episode, as with ``dones``) the bridge stops the episode: no further ``command()``,
    a zero command to the robot, then the next episode's ``start_episode()``.  ``batch`` gives
    such a short episode the problem's shape: its last observed state held and zero commands
    after it (nothing was measured or commanded there; the simulator's rollouts hold the state
    the same way), ``dones`` marking the end."""

    horizon: int
    commands_are_efforts: bool
    needs_reward: bool
    # seconds of physical time per step, the period a timed control loop runs at by default
    # (None: the steps have no physical time, e.g. a discrete action index)
    control_period: Optional[float] = None

    @abc.abstractmethod
    def start_episode(self) -> None: ...

    @abc.abstractmethod
    def observe(self, position: Sequence[float], velocity: Sequence[float]) -> None: ...

    @abc.abstractmethod
    def command(self) -> list[float]: ...

    @abc.abstractmethod
    def record(self, applied: Sequence[float], reward: Optional[float]) -> None: ...

    @abc.abstractmethod
    def batch(self, policy_version: int) -> Trajectories: ...

    def terminal(self) -> Optional[str]:
        """Why the state observed last ends the episode, in words; None (the default): it does not."""
        return None


def warm_torch_func() -> None:
    """torch.func's first transform (grad, jvp, jacfwd, ...) in a process imports torch._dynamo:
    ~2 s on these machines (an lqr run through the graph stalled 1.6-2.4 s in its first outer
    iteration for it, bench/results/ros_overhead_warm_up/).  One tiny transform pays it now."""
    x = torch.zeros(2, dtype=torch.float64)
    torch.func.grad(lambda y: (y * y).sum())(x)
    torch.func.jacfwd(lambda y: y * y)(x)          # forward mode: vmap and jvp's own decompositions


class BilevelProblem(abc.ABC):
    """One sim-to-real problem: a real system to sample and a parametrised simulator."""

    kind: str                     # 'tabular', 'lqr', ...
    gamma: float
    theta_names: list[str]        # one readable name per learnable entry, e.g. 'L[0][1][2]'
    source: str                   # the problem file it came from
    # the file's ``outer:`` section (OuterConfig fields, per-method overrides under ``methods``);
    # read-only, readers copy it
    outer_defaults: Mapping = MappingProxyType({})

    # --- the simulator family ------------------------------------------------------------
    @abc.abstractmethod
    def theta0(self) -> np.ndarray:
        """The nominal simulator's learnable entries (what the user wrote)."""

    @abc.abstractmethod
    def theta_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds in optimisation coordinates; outer steps are projected onto them."""

    @abc.abstractmethod
    def phi_size(self) -> int:
        ...

    # --- inner level ---------------------------------------------------------------------
    @abc.abstractmethod
    def inner_solve(self, theta: np.ndarray, phi_init: Optional[np.ndarray] = None, *,
                    method: str = 'exact', rng: Optional[np.random.Generator] = None,
                    **options) -> InnerResult:
        """phi*(theta). method 'exact' (soft DP / Riccati) or 'sampled' (actor-critic SPG,
        warm-started at phi_init, stopping when ||F|| falls below a tolerance)."""

    def continued_solve(self, theta: np.ndarray, phi: np.ndarray) -> InnerResult:
        """The exact inner solve at ``theta`` continued from ``phi``: what solver 'resolve'
        differentiates by finite differences in theta (``outer.resolved_outer_gradient``), so it
        must be a deterministic function of (theta, phi).  Default: ``inner_solve(theta, phi)``;
        kinds whose warm solve may also run a cold one (robot ``inner.start: best``) keep to the
        continued one."""
        return self.inner_solve(theta, phi, method='exact')

    def warm_up(self) -> None:
        """One-time work that would otherwise fall into the first outer iteration (lazy imports,
        caches), done ahead: the sensitivity node calls it at start-up, so that the first outer
        iteration does not stall on it.  Results are unchanged.  Default: nothing; kinds whose
        sensitivities use torch.func (lqr, robot and its URDF subclass) call ``warm_torch_func``."""

    def inner_tolerance(self) -> Optional[float]:
        """The ||F|| below which ``inner_solve`` calls a policy solved; None for kinds whose exact
        solves are stationary by construction (what ``outer.sensitivity_solver`` compares the
        returned ``grad_norm`` with)."""
        return None

    @abc.abstractmethod
    def inner_gradient(self, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Exact F(phi, theta) as a pure differentiable torch function (float64)."""

    @abc.abstractmethod
    def simulate(self, phi: np.ndarray, theta: np.ndarray, n_episodes: int, horizon: int,
                 rng: np.random.Generator) -> Trajectories:
        """Roll out pi_phi in f_theta, with score_theta filled in."""

    @property
    def default_sim_episodes(self) -> int:
        """How many simulated episodes a sampled sensitivity estimate uses when the caller
        names none (each kind overrides it with the size its estimators need)."""
        return 200

    @property
    def default_sim_horizon(self) -> int:
        """The horizon of those episodes when the caller names none."""
        return 50

    @abc.abstractmethod
    def sensitivity_terms(self, phi: np.ndarray, theta: np.ndarray, *, method: str = 'exact',
                          trajectories: Optional[Trajectories] = None,
                          rng: Optional[np.random.Generator] = None) -> SensitivityTerms:
        """dF/dphi and dF/dtheta at (phi, theta).  'exact': critic sensitivities by linear
        solves + closed-form Markov-chain sensitivities; 'sampled': the same quantities
        estimated from ``trajectories`` (simulated, with score weights)."""

    # --- real system ---------------------------------------------------------------------
    @abc.abstractmethod
    def sample_real(self, phi: np.ndarray, n_episodes: int, rng: np.random.Generator) -> Trajectories:
        ...

    @abc.abstractmethod
    def real_policy_gradient(self, phi: np.ndarray, batches: list[Trajectories],
                             theta: Optional[np.ndarray] = None) -> np.ndarray:
        """Estimate g = grad_phi J_real(phi) from real data; batches[-1] is the newest
        (collected with phi); older batches may be used only where valid off-policy.
        ``theta``: the simulator the outer loop is at, for estimators that use the
        simulator's derivatives along real data (None: the nominal theta)."""

    @abc.abstractmethod
    def real_objective(self, phi: torch.Tensor) -> torch.Tensor:
        """Exact real return of pi_phi (reporting and gradcheck only)."""

    @abc.abstractmethod
    def normalized_return(self, phi: np.ndarray) -> float:
        """Exact normalised real return (see the issue / README for the definition)."""

    # --- baselines -------------------------------------------------------------------------
    @abc.abstractmethod
    def system_identification(self, batches: list[Trajectories], theta_init: np.ndarray) -> np.ndarray:
        """Maximum-likelihood fit of the learnable *dynamics* entries on real transitions
        (reward entries keep their nominal values)."""

    def theta_groups(self) -> dict[str, np.ndarray]:
        """Boolean masks over theta: {'dynamics': ..., 'reward': ...} for ablations."""
        raise NotImplementedError

    # --- what the ROS nodes use (see the module docstring) --------------------------------------------
    def trajectory_sizes(self) -> dict:
        """Keyword arguments of ``trajectories_from_msg`` that check this problem's batches
        (``n_states``, ``n_actions`` for discrete problems)."""
        return {}

    def real_system(self, rng: np.random.Generator) -> RealSystem:
        """The real system as a step-by-step process drawing from ``rng`` (robot emulator)."""
        raise NotImplementedError(f'the {self.kind} problem has no step-by-step real system '
                                  '(its real episodes are sampled whole by sample_real)')

    def controller(self, phi: np.ndarray, rng: np.random.Generator) -> EpisodeController:
        """pi_phi as a step-by-step controller drawing from ``rng`` (hardware bridge, topics)."""
        raise NotImplementedError(f'the {self.kind} problem has no step-by-step controller '
                                  '(its real episodes are sampled whole by sample_real)')

    def joints(self) -> Optional[tuple[JointLimits, ...]]:
        """The controlled joints, names and limits, in the order of the controller's positions and
        commands; None when the problem has no joints (see the module docstring)."""
        return None

    def actuator_range(self) -> Optional[tuple[float, ...]]:
        """Per joint (``joints()`` order), the command magnitude the simulator's actuator model
        saturates at (the policy is trained to use commands up to about this); None when the
        simulator has no such limit.  The hardware bridge warns when its effort limit clamps below
        it: the policy then meets on the robot a filter it was not trained with."""
        return None

    def robot_description(self) -> Optional[str]:
        """The robot's URDF text (for ``robot_description``); None when there is no robot model."""
        return None

    def link_transforms(self, position: Sequence[float]) -> Optional[tuple[str, dict[str, np.ndarray]]]:
        """(root frame, {link: 4x4 transform in the root frame}) at joint positions ordered like
        ``joints()``, for rviz; None when there is nothing to draw."""
        return None

    def termination_reason(self, state: Sequence[float]) -> Optional[str]:
        """Why ``state`` (one row of this problem's batch states) ends its episode, in words; None
        when it does not (the default: no termination, episodes run their whole horizon)."""
        return None

    def termination_bounds(self):
        """The task's termination as per-joint bounds (``joints()`` order; an object with
        ``position_low``, ``position_high`` and ``max_speed`` tuples, infinite where unbounded), for
        the bridge's own bounds to clear; None when the task has none."""
        return None

    def start_pose(self) -> Optional[list[float]]:
        """Joint positions (command order) a scripted reset drives the robot to: the mean of the
        real initial-state distribution; None when efforts cannot drive it there."""
        return None

    def reset_response(self, pose: Optional[Sequence[float]] = None) -> Optional['ResetResponse']:
        """What the user's model (the simulator at the nominal theta) says about holding the
        robot at ``pose`` (command order; default ``start_pose()``), for the scripted reset's
        gains; None when the problem has no such model (the bridge then uses fixed gains and no
        hold command)."""
        return None


@dataclass(frozen=True)
class ResetResponse:
    """The model's one-period answer at a pose, at rest, per joint (command order)."""
    command: np.ndarray      # velocity change (rad/s) over one control period per unit of the joint's command
    position: np.ndarray     # the same per rad of the joint's displacement (> 0: gravity tips it over)
    hold: np.ndarray         # the commands that keep the pose at rest
