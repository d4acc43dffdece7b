"""Reading and validating a ``kind: robot`` problem file."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...config import MAX_HORIZON, FieldReader
from ...robot_model import PHYSICAL_NAMES, REWARD_NAMES, STATE_DIM, PendulumGeometry
from ...settings import read_settings, setting
from ..common import read_outer_section
from .simulator import InitialStateRange


REAL_GRADIENT_ESTIMATORS = ('pathwise', 'reinforce')
REAL_GRADIENT_MODELS = ('identified', 'simulator')
TOP_LEVEL_FIELDS = {'kind', 'robot', 'gamma', 'horizon', 'geometry', 'initial_state', 'task', 'real',
                    'simulator', 'policy', 'inner', 'evaluation', 'real_gradient', 'outer'}


@dataclass(frozen=True)
class InnerSettings:
    """How the inner problem is posed and solved (the ``inner:`` section)."""
    episodes: int = setting(32, low=1)                 # CRN rollouts in J_sim
    seed: int = setting(0, low=0)                      # seed of the CRN set (and of the initial policy)
    entropy: float = setting(0.1, low=0.0)             # entropy bonus on sum log sigma
    l2: float = setting(1e-4, low=0.0)                 # ridge on phi
    tolerance: float = setting(0.2, low=0.0, low_open=True)    # stop when ||F|| <= tolerance
    # per warm-started solve: L-BFGS iterations (exact) / Adam steps (sampled)
    max_iterations: int = setting(60, low=1)
    cold_iterations: int = setting(300, low=1)         # the same budget for a solve without a warm start
    warmup_iterations: int = setting(150, low=0)       # Adam steps before L-BFGS when there is no warm start
    learning_rate: float = setting(1e-2, low=0.0, low_open=True)   # Adam step size
    oracle_iterations: int = setting(600, low=1)       # iteration budget of the oracle's (cold) solve
    # a cold exact solve that ends above 100 x tolerance is solved again from up to this many other
    # initial policies (stopping at one that ends within it); the best J_sim on the CRN set is kept
    cold_restarts: int = setting(2, low=0)
    sampled_episodes: int = setting(32, low=1)         # fresh rollouts per stochastic gradient ('sampled')
    # a warm-started exact solve: 'warm' keeps it; 'best' also solves cold at the same theta (from the
    # initial policy, cached per theta) and keeps the one with the higher J_sim on the CRN set
    start: str = setting('warm', choices=('warm', 'best'))
    # local domain randomisation (opt-in): each rollout of J_sim's CRN set runs at theta plus a fixed offset
    # of every learnable physical entry, drawn once, uniform within +- this fraction of the entry's (log)
    # bound range; the inner problem then trains for simulators around theta, and theta stays its centre
    # (d J_sim / d theta and the sensitivities are taken through the offsets).  0: off
    randomize: float = setting(0.0, low=0.0, high=1.0)


def read_problem_file(data: dict, source: str) -> dict:
    """The ``RobotProblem`` constructor arguments of a loaded problem file (all but ``policy``)."""
    from ...robots import PendulumParameters, SensorNoise
    root = FieldReader(data, source)
    root.reject_unknown(TOP_LEVEL_FIELDS)
    robot = root.raw('robot', 'pendulum')
    if robot != 'pendulum':
        raise root.error('robot', robot, "'pendulum' (the only robot so far)")
    gamma = root.scalar('gamma', low=0.0, high=1.0, low_open=True, high_open=True)
    horizon = root.integer('horizon', low=1, high=MAX_HORIZON)

    geo = root.section('geometry', {})
    geo.reject_unknown({'link_length', 'rod_radius', 'rod_mass', 'gravity', 'control_period'})
    sim = root.section('simulator')
    sim.reject_unknown({'physics_substeps', 'effort_limit', 'friction_velocity_scale', 'transition_noise_std',
                        'parameters', 'reward_weights'})
    geometry = PendulumGeometry(
        link_length=geo.scalar('link_length', 0.5, low=0.0, low_open=True),
        rod_radius=geo.scalar('rod_radius', 0.02, low=0.0, low_open=True),
        rod_mass=geo.scalar('rod_mass', 0.4, low=0.0, low_open=True),
        gravity=geo.scalar('gravity', 9.81, low=0.0),
        control_period=geo.scalar('control_period', 0.02, low=0.0, low_open=True),
        physics_substeps=sim.integer('physics_substeps', 2, low=1),
        effort_limit=sim.scalar('effort_limit', low=0.0, low_open=True),
        friction_velocity_scale=sim.scalar('friction_velocity_scale', 0.05, low=0.0, low_open=True))
    transition_noise_std = sim.array('transition_noise_std', (STATE_DIM,))
    if np.any(transition_noise_std <= 0):
        raise sim.error('transition_noise_std', transition_noise_std.tolist(), 'two numbers > 0 (rad, rad/s)')

    init = root.section('initial_state')
    init.reject_unknown({'position_range', 'velocity_range'})
    initial = InitialStateRange(_range(init, 'position_range'), _range(init, 'velocity_range'))

    task = root.section('task')
    task.reject_unknown({'reward_weights'})
    weights = task.section('reward_weights')
    weights.reject_unknown(set(REWARD_NAMES))
    task_weights = np.array([weights.scalar(n, low=0.0, low_open=True) for n in REWARD_NAMES])

    real = root.section('real')
    real.reject_unknown(set(PHYSICAL_NAMES) | {'actuation_delay_steps', 'effort_limit', 'sensor_noise',
                                               'physics_substeps'})
    noise = real.section('sensor_noise', {})
    noise.reject_unknown({'position', 'velocity', 'effort'})
    real_parameters = PendulumParameters(
        payload_mass=real.scalar('payload_mass', low=0.0),
        damping=real.scalar('damping', low=0.0),
        coulomb_friction=real.scalar('coulomb_friction', low=0.0),
        motor_gain=real.scalar('motor_gain', low=0.0, low_open=True),
        actuation_delay_steps=real.integer('actuation_delay_steps', 0, low=0),
        effort_limit=real.scalar('effort_limit', low=0.0, low_open=True) if real.has('effort_limit') else math.inf,
        sensor_noise=SensorNoise(*(noise.scalar(n, 0.0, low=0.0) for n in ('position', 'velocity', 'effort'))))
    real_substeps = real.integer('physics_substeps', 8, low=1)

    nominal, learn, lower, upper = [], [], [], []
    for section_name, names in (('parameters', PHYSICAL_NAMES), ('reward_weights', REWARD_NAMES)):
        section = sim.section(section_name)
        section.reject_unknown(set(names))
        for name in names:
            entry = section.section(name)
            entry.reject_unknown(THETA_ENTRY_FIELDS)
            for values, value in zip((nominal, learn, lower, upper), read_theta_entry(entry)):
                values.append(value)
    if not any(learn):
        raise sim.error('parameters', '<no learn: true>', 'at least one learnable entry (learn: true)')

    learning = read_learning_sections(root, horizon)
    return dict(source=source, gamma=gamma, horizon=horizon, geometry=geometry, initial=initial,
                task_weights=task_weights, real_parameters=real_parameters, real_substeps=real_substeps,
                nominal_full=np.array(nominal), learn_mask=np.array(learn), lower_full=np.array(lower),
                upper_full=np.array(upper), transition_noise_std=transition_noise_std,
                **learning)


THETA_ENTRY_FIELDS = {'value', 'learn', 'bounds'}


def read_theta_entry(entry: FieldReader) -> tuple[float, bool, float, float]:
    """One positive theta quantity {value, learn, bounds}: (log value, learns, log low, log high);
    an entry that is not learned has bounds [value, value]."""
    value = entry.scalar('value', low=0.0, low_open=True)
    learns = entry.boolean('learn', False)
    if entry.has('bounds') or learns:
        low, high = _range(entry, 'bounds', positive=True)
        if not low <= value <= high:
            raise entry.error('value', value, f'a value inside bounds [{low!r}, {high!r}]')
    else:
        low = high = value
    return math.log(value), learns, math.log(low), math.log(high)


OUTER_DEFAULTS = {'solver': 'cg', 'damping': 1.0, 'cg_maxiter': 10, 'cg_tol': 1e-3}
"""The robot kinds' implicit-function solve unless the file's ``outer:`` says otherwise: CG on the
damped Hessian, a few Hessian-vector products.  OuterConfig's general default (``dense``) forms
the Hessian from one product per policy parameter: on a 6-joint generated robot with a [16]
policy (198 parameters) that was 48 s of an iteration whose inner solve took 1 s; a 7-joint arm
with the default [32, 32] policy has ~2 000.  The CRN Hessian of an MLP policy is ill-conditioned
(flat directions), hence the ridge of 1.0: what every shipped robot file had set by hand."""


def read_learning_sections(root: FieldReader, horizon: int) -> dict:
    """The policy, inner, evaluation, real_gradient and outer sections (constructor arguments)."""
    pol = root.section('policy', {})
    pol.reject_unknown({'hidden_sizes', 'initial_std'})
    hidden = pol.raw('hidden_sizes', [32, 32])
    if (not isinstance(hidden, list) or not hidden
            or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)):
        raise pol.error('hidden_sizes', hidden, 'a non-empty list of positive integers')
    initial_std = pol.scalar('initial_std', 0.3, low=0.0, low_open=True)

    # the fixed CRN set holds n x T random numbers per dimension: bound n so that it fits in memory
    inner = read_settings(InnerSettings, root.section('inner', {}),
                          limits={'episodes': {'high': 10 ** 7 // horizon}})

    ev = root.section('evaluation', {})
    ev.reject_unknown({'episodes', 'seed'})
    real_gradient = root.section('real_gradient', {})
    real_gradient.reject_unknown({'gae_lambda', 'estimator', 'model'})
    gae_lambda = real_gradient.scalar('gae_lambda', 1.0, low=0.0, high=1.0)
    estimator = real_gradient.raw('estimator', 'pathwise')
    if estimator not in REAL_GRADIENT_ESTIMATORS:
        raise real_gradient.error('estimator', estimator, f'one of {list(REAL_GRADIENT_ESTIMATORS)}')
    gradient_model = real_gradient.raw('model', 'identified')
    if gradient_model not in REAL_GRADIENT_MODELS:
        raise real_gradient.error('model', gradient_model, f'one of {list(REAL_GRADIENT_MODELS)}')
    outer = {**OUTER_DEFAULTS, **read_outer_section(root)}
    return dict(hidden_sizes=tuple(hidden), initial_std=initial_std, inner=inner,
                evaluation_episodes=ev.integer('episodes', 32, low=1),
                evaluation_seed=ev.integer('seed', 100000, low=0), outer_defaults=outer,
                real_gradient_lambda=gae_lambda, real_gradient_estimator=estimator,
                real_gradient_model=gradient_model)


def _range(reader: FieldReader, key: str, positive: bool = False) -> tuple[float, float]:
    value = reader.array(key, (2,))
    low, high = float(value[0]), float(value[1])
    if low > high or (positive and low <= 0):
        expected = '[low, high] with 0 < low <= high' if positive else '[low, high] with low <= high'
        raise reader.error(key, value.tolist(), expected)
    return low, high
