"""Reading and validating a ``kind: urdf`` problem file (see config/pendulum_urdf.yaml).

Sections: ``robot`` (urdf path or package:// URI, controlled joints by name, optional
``gravity_compensation: {load: {LINK: {mass, center_of_mass}}}``: the robot's controller adds the
gravity torque of the file's arm with that configured load to every command), ``gamma``,
``horizon``, ``control_period``, ``gravity``, ``initial_state`` (one [low, high] per joint),
``task`` (reward terms and weights, per-joint targets, optional ``termination``: ``joint_limits``,
``position_range`` {JOINT: [low, high]}, ``max_speed``), ``real`` (hidden true values and the
stand-in's unmodelled effects), ``simulator`` (theta entries, integrator settings),
and the learning sections shared with ``kind: robot`` (policy, inner, evaluation,
real_gradient, outer).

Theta entries are named ``KIND`` (joint kinds: every controlled joint; ``delay``: the actuation
delay in seconds, one for the robot), ``KIND@JOINT`` (one joint) or ``KIND@LINK`` (link kinds:
``mass_scale``, ``payload_mass`` with its ``center_of_mass``, ``payload_distance`` with its
``direction``: the payload's centre, learnable, at that distance along that direction).  Every
error names the file, the field and the bad value.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...config import MAX_HORIZON, FieldReader
from ...urdf_model import (JOINT_KINDS, LINK_KINDS, REWARD_TERMS, ROBOT_KINDS, PhysicalEntry, Termination,
                           UrdfSimulatorSettings)
from ...urdf_robot import MOVING_JOINT_TYPES, UrdfError, read_urdf, resolve_urdf
from ..robot.config import THETA_ENTRY_FIELDS, read_learning_sections, read_theta_entry
from ..robot.simulator import InitialStateRange

TOP_LEVEL_FIELDS = {'kind', 'robot', 'gamma', 'horizon', 'control_period', 'gravity', 'initial_state', 'task',
                    'real', 'simulator', 'policy', 'inner', 'evaluation', 'real_gradient', 'outer'}
REAL_PER_JOINT = ('damping', 'coulomb_friction', 'armature', 'motor_gain', 'stribeck_friction', 'effort_limit')


def _per_joint(reader: FieldReader, key: str, n: int, default: float, *, low: float = 0.0,
               low_open: bool = False) -> np.ndarray:
    """One number for every joint, or a list with one per joint."""
    value = reader.raw(key, default)
    values = np.full(n, float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else reader.array(key, (n,))
    if np.any(np.isnan(values)) or np.any(values < low) or (low_open and np.any(values == low)):
        raise reader.error(key, value, f'one number or {n} numbers (one per joint), each '
                           f'{">" if low_open else ">="} {low}')
    return values


def _read_termination(task: FieldReader, description, joints: list, initial: InitialStateRange) -> Termination:
    """``task.termination``: ``joint_limits`` (true: the URDF's position limits of the controlled
    joints), ``position_range`` ({JOINT: [low, high]}, intersected with those) and ``max_speed`` (one
    number or one per joint, rad/s or m/s); at least one bound, and every initial state inside."""
    section = task.section('termination')
    section.reject_unknown({'joint_limits', 'position_range', 'max_speed'})
    n = len(joints)
    low, high = np.full(n, -math.inf), np.full(n, math.inf)
    if section.boolean('joint_limits', False):
        low = np.array([description.joints[j].lower for j in joints])
        high = np.array([description.joints[j].upper for j in joints])
    ranges = section.section('position_range', {})
    for joint in ranges.data:
        if joint not in joints:
            raise ranges.error(joint, ranges.data[joint], f'a controlled joint (one of {joints})')
        value = ranges.array(joint, (2,))
        if not value[0] < value[1]:
            raise ranges.error(joint, value.tolist(), '[low, high] with low < high')
        i = joints.index(joint)
        low[i], high[i] = max(low[i], value[0]), min(high[i], value[1])
    max_speed = _per_joint(section, 'max_speed', n, math.inf, low=0.0, low_open=True)
    if np.all(np.isinf(low)) and np.all(np.isinf(high)) and np.all(np.isinf(max_speed)):
        raise task.error('termination', section.data, 'at least one bound: joint_limits true (on joints with '
                         'limits), a position_range {JOINT: [low, high]} or a max_speed')
    position, velocity = np.asarray(initial.position, dtype=float), np.asarray(initial.velocity, dtype=float)
    for i, joint in enumerate(joints):
        starts = (position[i].min(), position[i].max(), np.abs(velocity[i]).max())
        if starts[0] < low[i] or starts[1] > high[i] or starts[2] > max_speed[i]:
            raise task.error('termination', section.data, f'bounds that every initial state satisfies: joint {joint} '
                             f'starts in position [{starts[0]:g}, {starts[1]:g}] and speed up to {starts[2]:g}, the '
                             f'termination bounds are position [{low[i]:g}, {high[i]:g}] and speed {max_speed[i]:g}')
    return Termination(tuple(low.tolist()), tuple(high.tolist()), tuple(max_speed.tolist()))


def read_problem_file(data: dict, source: str) -> dict:
    """The ``UrdfProblem`` constructor arguments of a loaded problem file."""
    from ...robots import SensorNoise
    from ...robots.urdf_robot import UrdfRealParameters
    root = FieldReader(data, source)
    root.reject_unknown(TOP_LEVEL_FIELDS)
    robot = root.section('robot')
    robot.reject_unknown({'urdf', 'joints', 'gravity_compensation'})
    try:
        path = resolve_urdf(robot.raw('urdf'), Path(source).parent, source=source, element='robot.urdf')
        description = read_urdf(path)
    except UrdfError as err:
        raise robot.error('urdf', robot.raw('urdf'), f'a readable URDF ({err})') from None
    joints = robot.raw('joints')
    if not isinstance(joints, list) or not joints or not all(isinstance(j, str) for j in joints):
        raise robot.error('joints', joints, 'a non-empty list of joint names')
    if len(set(joints)) != len(joints):
        raise robot.error('joints', joints, 'distinct joint names')
    for i, name in enumerate(joints):
        joint = description.joints.get(name)
        if joint is None or joint.type not in MOVING_JOINT_TYPES:
            moving = [j.name for j in description.joints.values() if j.type in MOVING_JOINT_TYPES]
            raise robot.error(f'joints[{i}]', name, f'a moving joint of {path}: one of {moving}')
    n = len(joints)
    compensation = None
    if robot.has('gravity_compensation'):       # the controller's own gravity torque, with its configured load
        section = robot.section('gravity_compensation')
        section.reject_unknown({'load'})
        load = section.section('load', {})
        compensation = []
        for link in load.data:
            try:
                description.link(link, f'robot.gravity_compensation.load.{link}', needs_inertial=False)
            except UrdfError as err:
                raise load.error(link, load.data[link], f'a link of the URDF ({err})') from None
            entry = load.section(link)
            entry.reject_unknown({'mass', 'center_of_mass'})
            compensation.append((str(link), entry.scalar('mass', low=0.0),
                                 tuple(entry.array('center_of_mass', (3,)).tolist())))
        compensation = tuple(compensation)
    gamma = root.scalar('gamma', low=0.0, high=1.0, low_open=True, high_open=True)
    horizon = root.integer('horizon', low=1, high=MAX_HORIZON)
    control_period = root.scalar('control_period', low=0.0, low_open=True)
    gravity = root.scalar('gravity', 9.81, low=0.0)

    init = root.section('initial_state')
    init.reject_unknown({'position_range', 'velocity_range'})
    ranges = []
    for key in ('position_range', 'velocity_range'):
        value = init.array(key, (n, 2))
        if np.any(value[:, 0] > value[:, 1]):
            raise init.error(key, value.tolist(), f'{n} rows [low, high] (one per joint) with low <= high')
        ranges.append(value)
    initial = InitialStateRange(ranges[0], ranges[1])

    task = root.section('task')
    task.reject_unknown({'reward_weights', 'targets', 'termination'})
    weights = task.section('reward_weights')
    weights.reject_unknown(set(REWARD_TERMS))
    terms = [name for name in REWARD_TERMS if weights.has(name)]
    if not terms:
        raise task.error('reward_weights', weights.data, f'at least one of {list(REWARD_TERMS)}')
    task_weights = np.array([weights.scalar(name, low=0.0, low_open=True) for name in terms])
    if 'angle' in terms and all(description.joints[name].type == 'prismatic' for name in joints):
        raise weights.error('angle', weights.data['angle'], f'no angle term: the controlled joints {joints} are all '
                            'prismatic (angle covers revolute and continuous joints; use position)')
    targets = task.array('targets', (n,), [0.0] * n)
    termination = _read_termination(task, description, joints, initial) if task.has('termination') else None

    real = root.section('real')
    real.reject_unknown(set(REAL_PER_JOINT) | {'mass_scale', 'payload_mass', 'stribeck_velocity',
                                               'actuation_delay_steps', 'sensor_noise', 'physics_substeps'})
    per_joint = {key: _per_joint(real, key, n, default, low_open=key in ('motor_gain', 'effort_limit'))
                 for key, default in (('damping', 0.0), ('coulomb_friction', 0.0), ('armature', 0.0),
                                      ('motor_gain', 1.0), ('stribeck_friction', 0.0), ('effort_limit', math.inf))}
    scales = real.section('mass_scale', {})
    mass_scale = {}
    for link in scales.data:
        description.link(link, f'{source}: real.mass_scale.{link}')
        mass_scale[link] = scales.scalar(link, low=0.0, low_open=True)
    payload_section = real.section('payload_mass', {})
    payloads = {}
    for link in payload_section.data:
        description.link(link, f'{source}: real.payload_mass.{link}', needs_inertial=False)
        entry = payload_section.section(link)
        entry.reject_unknown({'mass', 'center_of_mass'})
        payloads[link] = (entry.scalar('mass', low=0.0), tuple(entry.array('center_of_mass', (3,)).tolist()))
    noise = real.section('sensor_noise', {})
    noise.reject_unknown({'position', 'velocity', 'effort'})
    real_parameters = UrdfRealParameters(
        mass_scale=mass_scale, payloads=payloads, **{k: tuple(v.tolist()) for k, v in per_joint.items()},
        stribeck_velocity=real.scalar('stribeck_velocity', 0.1, low=0.0, low_open=True),
        actuation_delay_steps=real.integer('actuation_delay_steps', 0, low=0),
        sensor_noise=SensorNoise(*(noise.scalar(k, 0.0, low=0.0) for k in ('position', 'velocity', 'effort'))))
    real_substeps = real.integer('physics_substeps', 8, low=1)

    sim = root.section('simulator')
    sim.reject_unknown({'physics_substeps', 'effort_limit', 'friction_velocity_scale', 'limit_stiffness',
                        'implicit_damping', 'implicit_friction', 'transition_noise_std', 'parameters',
                        'reward_weights'})
    file_effort = [description.joints[j].effort for j in joints]
    effort_limit = _per_joint(sim, 'effort_limit', n, 0.0, low_open=True) if sim.has('effort_limit') \
        else np.array(file_effort)
    if not np.all(np.isfinite(effort_limit)):
        raise sim.error('effort_limit', '<missing>', f'an effort limit per joint (the URDF gives {file_effort})')
    settings = UrdfSimulatorSettings(
        control_period=control_period, physics_substeps=sim.integer('physics_substeps', 1, low=1),
        effort_limit=tuple(effort_limit.tolist()),
        friction_velocity_scale=sim.scalar('friction_velocity_scale', 0.05, low=0.0, low_open=True),
        limit_stiffness=sim.scalar('limit_stiffness', 0.0, low=0.0), gravity=gravity,
        implicit_damping=sim.boolean('implicit_damping', True), implicit_friction=sim.boolean('implicit_friction', True),
        reward_targets=tuple(targets.tolist()), gravity_compensation=compensation, termination=termination)
    noise_std = sim.array('transition_noise_std', (2 * n,))
    if np.any(noise_std <= 0):
        raise sim.error('transition_noise_std', noise_std.tolist(), f'{2 * n} numbers > 0 (positions, then velocities)')

    physical, names, nominal, learn, lower, upper = [], [], [], [], [], []
    parameters = sim.section('parameters')
    for key in parameters.data:
        kind, _, target = str(key).partition('@')
        entry = parameters.section(key)
        if kind in LINK_KINDS:
            if not target:
                raise parameters.error(key, entry.data, f'{kind}@LINK: the link it applies to')
            try:
                description.link(target, f'simulator.parameters.{key}', needs_inertial=kind == 'mass_scale')
            except UrdfError as err:
                raise parameters.error(key, target, f'a link of the URDF ({err})') from None
            extra = {'payload_mass': 'center_of_mass', 'payload_distance': 'direction'}.get(kind)
            entry.reject_unknown(THETA_ENTRY_FIELDS | ({extra} if extra else set()))
            center = tuple(entry.array(extra, (3,)).tolist()) if extra else (0.0, 0.0, 0.0)
            if kind == 'payload_distance':
                if f'payload_mass@{target}' not in parameters.data:
                    raise parameters.error(key, entry.data, f'a payload_mass@{target} entry too (the distance is '
                                           f"that payload's centre along 'direction')")
                if not any(center):
                    raise entry.error('direction', list(center), 'a non-zero vector (x, y, z) in the link frame')
            physical.append(PhysicalEntry(kind, link=target, center_of_mass=center))
        elif kind in JOINT_KINDS:
            if target and target not in joints:
                raise parameters.error(key, target, f'one of the controlled joints {joints}')
            entry.reject_unknown(THETA_ENTRY_FIELDS)
            indices = (joints.index(target),) if target else tuple(range(n))
            physical.append(PhysicalEntry(kind, link=None, joints=indices))
        elif kind in ROBOT_KINDS:
            if target:
                raise parameters.error(key, target, f'{kind} without @: one value for the whole robot')
            entry.reject_unknown(THETA_ENTRY_FIELDS)
            physical.append(PhysicalEntry(kind))
        else:
            raise parameters.error(key, entry.data, f'KIND, KIND@JOINT or KIND@LINK with KIND one of '
                                   f'{list(LINK_KINDS + JOINT_KINDS + ROBOT_KINDS)}')
        names.append(f'log_{key}')
        for values, value in zip((nominal, learn, lower, upper), read_theta_entry(entry)):
            values.append(value)
    reward_section = sim.section('reward_weights')
    reward_section.reject_unknown(set(terms))
    for term in terms:
        entry = reward_section.section(term)
        entry.reject_unknown(THETA_ENTRY_FIELDS)
        names.append(f'log_w_{term}')
        for values, value in zip((nominal, learn, lower, upper), read_theta_entry(entry)):
            values.append(value)
    if not any(learn):
        raise sim.error('parameters', '<no learn: true>', 'at least one learnable entry (learn: true)')

    return dict(source=source, gamma=gamma, horizon=horizon, urdf_path=path, joint_names=tuple(joints),
                description=description, initial=initial, task_weights=task_weights, reward_terms=tuple(terms),
                real_parameters=real_parameters, real_substeps=real_substeps, settings=settings,
                physical=tuple(physical), theta_names_full=tuple(names), nominal_full=np.array(nominal),
                learn_mask=np.array(learn), lower_full=np.array(lower), upper_full=np.array(upper),
                transition_noise_std=noise_std, **read_learning_sections(root, horizon))
