"""The "physical" robot of a ``kind: urdf`` problem: pybullet loads the user's URDF with hidden
true values of every uncertain quantity, plus what the simulator family cannot represent.

- Link inertials: the file's, each link's mass (and inertia) times its true ``mass_scale``,
  plus true point payloads (mass at a centre of mass in the link frame), merged into the link's
  ``<inertial>`` of a rewritten URDF (pybullet cannot move a centre of mass after loading).
- Joint damping: pybullet's joint damping; motor gain and a HARD effort limit on the applied
  torque; armature: the rotor inertia's torque -armature * qdd, qdd from the previous physics
  step (pybullet has no armature of its own).
- Not representable by the simulator family (the objective mismatch of real hardware):
  stiction -- dry friction as pybullet's velocity motor held at zero speed with its force
  capped at the friction torque (the simulator has a smooth tanh Coulomb curve) -- plus a
  Stribeck bump (extra friction ``stribeck_friction`` at low speed, decaying over
  ``stribeck_velocity``), actuation delay in whole control periods, and sensor noise.
- Gravity compensation by the robot's controller (``gravity_compensation``: the configured load,
  link -> (mass, centre)): each physics step adds the gravity torque of the file's arm with that
  load (pybullet's inverse dynamics of a second body, at the true joint positions) to the
  command, before the motor gain and the effort clip.

``UrdfEmulator`` has the ``PendulumEmulator`` API the problem and the robot emulator node use:
``reset(seed)``, ``apply_effort(values)``, ``step()`` returning a ``JointStateSample``.
Also here: ``PybulletReference``, pybullet's mass matrix, bias forces and rollouts at given
parameters, the reference the differentiable simulator is verified against.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..urdf_robot import MOVING_JOINT_TYPES, dynamics_urdf_text, inertia_tensor, physical_inertia, set_inertia
from .pendulum import JointStateSample, SensorNoise, load_urdf_text

PAYLOAD_INERTIA = 0.0     # a point payload: no rotational inertia about its own centre


@dataclass(frozen=True)
class UrdfRealParameters:
    """True values (hidden from learning methods); per-joint arrays ordered as the controlled joints."""
    mass_scale: dict = field(default_factory=dict)            # link -> factor on the file's mass and inertia
    payloads: dict = field(default_factory=dict)              # link -> (mass, (x, y, z) centre in the link frame)
    damping: Sequence[float] = ()
    coulomb_friction: Sequence[float] = ()
    armature: Sequence[float] = ()
    motor_gain: Sequence[float] = ()
    stribeck_friction: Sequence[float] = ()                   # extra static friction at low speed
    stribeck_velocity: float = 0.1                            # rad/s (or m/s) over which it fades
    actuation_delay_steps: int = 0
    effort_limit: Sequence[float] = ()                        # hard clip of the applied torque
    sensor_noise: SensorNoise = field(default_factory=SensorNoise)


def _rpy_matrix(rpy) -> np.ndarray:
    from transforms3d.euler import euler2mat
    return euler2mat(*rpy, 'sxyz')


def urdf_with_inertials(path, mass_scale: dict, payloads: dict) -> str:
    """The URDF text with each named link's inertial scaled and/or merged with a point payload
    (mass, centre of mass and inertia about it by the parallel-axis theorem, written in the
    link frame)."""
    path = Path(path)
    tree = ElementTree.parse(path)
    root = tree.getroot()
    for link in root.findall('link'):
        name = link.get('name')
        if name not in mass_scale and name not in payloads:
            continue
        inertial = link.find('inertial')
        mass, xyz, inertia = inertial_in_link_axes(inertial, path, name)
        scale = float(mass_scale.get(name, 1.0))
        mass, inertia = scale * mass, scale * inertia
        if name in payloads:
            payload_mass, center = payloads[name]
            center = np.asarray(center, dtype=np.float64)
            total = mass + payload_mass
            com = (mass * xyz + payload_mass * center) / total if total > 0 else xyz

            def shifted(m, d):
                return m * (float(d @ d) * np.eye(3) - np.outer(d, d))

            inertia = inertia + shifted(mass, xyz - com) + PAYLOAD_INERTIA * np.eye(3) + shifted(payload_mass, center - com)
            mass, xyz = total, com
        write_inertial(inertial, mass, xyz, inertia)
    return ElementTree.tostring(root, encoding='unicode')


def inertial_in_link_axes(inertial, path, name: str) -> tuple[float, np.ndarray, np.ndarray]:
    """An ``<inertial>``'s mass, centre of mass and inertia about it, in the link's axes (its
    origin's rpy applied; the inertia as adam reads it, ``physical_inertia``)."""
    origin = inertial.find('origin')
    xyz = np.array([float(v) for v in (origin.get('xyz', '0 0 0') if origin is not None else '0 0 0').split()])
    rpy = [float(v) for v in (origin.get('rpy', '0 0 0') if origin is not None else '0 0 0').split()]
    inertia, _ = physical_inertia(inertia_tensor(inertial.find('inertia'), path, f'link {name!r}'))
    rotation = _rpy_matrix(rpy)
    return float(inertial.find('mass').get('value')), xyz, rotation @ inertia @ rotation.T


def write_inertial(inertial, mass: float, xyz, inertia: np.ndarray) -> None:
    """Replace an ``<inertial>``'s content: origin ``xyz`` with no rotation, ``mass``, ``inertia``."""
    for child in list(inertial):
        inertial.remove(child)
    ElementTree.SubElement(inertial, 'origin', {'xyz': ' '.join(repr(float(v)) for v in xyz), 'rpy': '0 0 0'})
    ElementTree.SubElement(inertial, 'mass', {'value': repr(float(mass))})
    set_inertia(ElementTree.SubElement(inertial, 'inertia'), inertia)


def pybullet_urdf_text(urdf_text: str, joint_names: Sequence[str]) -> str:
    """URDF text that pybullet reads as the simulator (adam-robotics, ``RigidBodyDynamics``) does:
    - no visual or collision geometry (``dynamics_urdf_text``): the text is loaded from a
      temporary folder, where a user's ``package://`` and relative mesh paths do not resolve
      (pybullet then refuses the file), and no contacts are simulated;
    - a link without ``<inertial>`` gets a zero one (the URDF default, and adam's; pybullet
      would give it 1 kg and a unit inertia);
    - a moving joint that is not controlled becomes fixed at its zero position (the simulator
      keeps only the controlled joints; pybullet would let it move freely);
    - inertias repaired as for the simulator (``dynamics_urdf_text``; its warning was given where the simulator read
      the file);
    - the root link's inertial in the link's axes: pybullet places a fixed base by its inertial
      frame, so a rotated one (``<origin rpy>``) would turn the whole robot, and gravity with it,
      against the frame the URDF and the simulator use."""
    root = ElementTree.fromstring(urdf_text)
    children = {joint.find('child').get('link') for joint in root.findall('joint') if joint.find('child') is not None}
    for link in root.findall('link'):
        inertial = link.find('inertial')
        if inertial is None:
            inertial = ElementTree.SubElement(link, 'inertial')
            ElementTree.SubElement(inertial, 'mass', {'value': '0'})
            set_inertia(ElementTree.SubElement(inertial, 'inertia'), np.zeros((3, 3)))
        elif link.get('name') not in children:
            write_inertial(inertial, *inertial_in_link_axes(inertial, '<urdf text>', link.get('name')))
    controlled = set(joint_names)
    for joint in root.findall('joint'):
        if joint.get('type') in MOVING_JOINT_TYPES and joint.get('name') not in controlled:
            joint.set('type', 'fixed')
    return dynamics_urdf_text(root)


class PybulletRobot:
    """A fixed-base pybullet body loaded from URDF text (as ``pybullet_urdf_text`` rewrites it),
    with the controlled joints by name and pybullet's defaults that the simulator family does not
    have switched off (link damping, the default velocity motors).  ``joint_damping``: per
    controlled joint."""

    def __init__(self, urdf_text: str, joint_names: Sequence[str], *, gravity: float, time_step: float,
                 joint_damping: Optional[Sequence[float]] = None):
        import pybullet
        self._pb = pybullet
        self._client = pybullet.connect(pybullet.DIRECT)
        self.call(pybullet.setTimeStep, time_step)
        self.call(pybullet.setGravity, 0.0, 0.0, -gravity)
        self.body = load_urdf_text(pybullet, self._client, pybullet_urdf_text(urdf_text, joint_names))
        names = {}
        self.moving = []          # pybullet indices of every non-fixed joint (the order of its q vectors)
        for index in range(self.call(pybullet.getNumJoints, self.body)):
            info = self.call(pybullet.getJointInfo, self.body, index)
            names[info[1].decode()] = index
            if info[2] != pybullet.JOINT_FIXED:
                self.moving.append(index)
            self.call(pybullet.changeDynamics, self.body, index, linearDamping=0.0, angularDamping=0.0, jointDamping=0.0)
        self.indices = [names[name] for name in joint_names]
        self.call(pybullet.setJointMotorControlArray, self.body, self.moving, pybullet.VELOCITY_CONTROL,
                  forces=[0.0] * len(self.moving))
        if joint_damping is not None:
            for index, value in zip(self.indices, joint_damping):
                self.call(pybullet.changeDynamics, self.body, index, jointDamping=float(value))

    def call(self, function, *args, **kwargs):
        return function(*args, physicsClientId=self._client, **kwargs)

    def _full(self, values) -> list[float]:
        full = [0.0] * len(self.moving)
        for index, value in zip(self.indices, values):
            full[self.moving.index(index)] = float(value)
        return full

    def _controlled(self, full) -> np.ndarray:
        return np.array([full[self.moving.index(index)] for index in self.indices])

    def mass_matrix(self, position) -> np.ndarray:
        matrix = np.array(self.call(self._pb.calculateMassMatrix, self.body, self._full(position)))
        rows = [self.moving.index(index) for index in self.indices]
        return matrix[np.ix_(rows, rows)]

    def bias(self, position, velocity) -> np.ndarray:
        """h(q, qd): the inverse dynamics at zero acceleration (pybullet leaves joint damping out)."""
        full = self.call(self._pb.calculateInverseDynamics, self.body, self._full(position), self._full(velocity),
                         [0.0] * len(self.moving))
        return self._controlled(full)

    def set_state(self, position, velocity) -> None:
        for index, q, qd in zip(self.indices, position, velocity):
            self.call(self._pb.resetJointState, self.body, index, float(q), float(qd))

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        states = self.call(self._pb.getJointStates, self.body, self.indices)
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def step(self, torque) -> None:
        self.call(self._pb.setJointMotorControlArray, self.body, self.indices, self._pb.TORQUE_CONTROL,
                  forces=[float(t) for t in torque])
        self.call(self._pb.stepSimulation)

    def close(self) -> None:
        if self._client is not None:
            self._pb.disconnect(physicsClientId=self._client)
            self._client = None

    def __del__(self):
        try:
            self.close()
        except Exception:    # interpreter shutdown
            pass


class UrdfEmulator:
    """The stand-in robot (see the module docstring): one fixed control period per ``step()``,
    in ``physics_substeps`` pybullet steps; deterministic given the reset seed."""

    def __init__(self, urdf_path, joint_names: Sequence[str], parameters: UrdfRealParameters, *,
                 gravity: float, control_period: float, physics_substeps: int,
                 initial_position_range: np.ndarray, initial_velocity_range: np.ndarray,
                 gravity_compensation: Optional[Sequence] = None):
        self.parameters = parameters
        self.joint_names = tuple(joint_names)
        n = len(self.joint_names)
        self._per_joint = {}
        for name, default in (('damping', 0.0), ('coulomb_friction', 0.0), ('armature', 0.0), ('motor_gain', 1.0),
                              ('stribeck_friction', 0.0), ('effort_limit', math.inf)):
            values = np.asarray(getattr(parameters, name) if len(getattr(parameters, name)) else [default] * n,
                                dtype=np.float64)
            if values.shape != (n,) or np.any(values < 0) or np.any(np.isnan(values)):
                raise ValueError(f'UrdfEmulator: {name}={values.tolist()}: expected {n} numbers >= 0 '
                                 f'(one per joint of {list(self.joint_names)})')
            self._per_joint[name] = values
        self.control_period = float(control_period)
        self.physics_substeps = int(physics_substeps)
        self.time_step = self.control_period / self.physics_substeps
        self.initial_position_range = np.asarray(initial_position_range, dtype=np.float64)
        self.initial_velocity_range = np.asarray(initial_velocity_range, dtype=np.float64)
        text = urdf_with_inertials(urdf_path, parameters.mass_scale, parameters.payloads)
        self.robot = PybulletRobot(text, joint_names, gravity=gravity, time_step=self.time_step,
                                   joint_damping=self._per_joint['damping'])
        self._compensation = None      # the controller's model: the file's arm with its configured load
        if gravity_compensation is not None:
            load = {link: (mass, tuple(center)) for link, mass, center in gravity_compensation}
            self._compensation = PybulletRobot(urdf_with_inertials(urdf_path, {}, load), joint_names,
                                               gravity=gravity, time_step=self.time_step)
        friction = self._per_joint['coulomb_friction'] + self._per_joint['stribeck_friction']
        # stiction: a velocity motor held at zero speed, its force capped at the static friction
        self.robot.call(self.robot._pb.setJointMotorControlArray, self.robot.body, self.robot.indices,
                        self.robot._pb.VELOCITY_CONTROL, targetVelocities=[0.0] * n, forces=friction.tolist())
        self._rng = np.random.default_rng(0)
        self._command = np.zeros(n)
        self._pending: deque = deque()
        self._applied = np.zeros(n)
        self._acceleration = np.zeros(n)
        self._steps = 0
        self._last_sample: Optional[JointStateSample] = None

    @property
    def time(self) -> float:
        return self._steps * self.control_period

    def reset(self, seed: int, initial_state: Optional[Sequence[float]] = None) -> JointStateSample:
        self._rng = np.random.default_rng(seed)
        n = len(self.joint_names)
        if initial_state is None:
            position = self._rng.uniform(self.initial_position_range[:, 0], self.initial_position_range[:, 1])
            velocity = self._rng.uniform(self.initial_velocity_range[:, 0], self.initial_velocity_range[:, 1])
        else:
            state = np.asarray(initial_state, dtype=np.float64)
            position, velocity = state[:n], state[n:]
        self.robot.set_state(position, velocity)
        self._command = np.zeros(n)
        self._pending = deque([np.zeros(n)] * self.parameters.actuation_delay_steps)
        self._applied = np.zeros(n)
        self._acceleration = np.zeros(n)
        self._steps = 0
        self._last_sample = self._measure()
        return self._last_sample

    def apply_effort(self, effort) -> None:
        values = np.atleast_1d(np.asarray(effort, dtype=np.float64))
        if values.shape != (len(self.joint_names),) or not np.all(np.isfinite(values)):
            raise ValueError(f'apply_effort: {effort!r}: expected {len(self.joint_names)} finite value(s) '
                             f'for joints {list(self.joint_names)}')
        self._command = values

    def step(self) -> JointStateSample:
        self._pending.append(self._command)
        command = self._pending.popleft()
        limit = self._per_joint['effort_limit']
        # the Stribeck bump above Coulomb fades with speed: the motor's cap carries it at rest,
        # an opposing torque takes it back as the joint speeds up
        stribeck = self._per_joint['stribeck_friction']
        speed_scale = self.parameters.stribeck_velocity
        for _ in range(self.physics_substeps):
            position, velocity = self.robot.state()
            total = command if self._compensation is None \
                else command + self._compensation.bias(position, np.zeros_like(position))
            torque = np.clip(self._per_joint['motor_gain'] * total, -limit, limit)
            self._applied = torque
            fade = stribeck * (1.0 - np.exp(-(velocity / speed_scale) ** 2)) * np.sign(velocity)
            self.robot.step(torque - self._per_joint['armature'] * self._acceleration + fade)
            _, after = self.robot.state()
            self._acceleration = (after - velocity) / self.time_step
        self._steps += 1
        self._last_sample = self._measure()
        return self._last_sample

    def true_state(self) -> np.ndarray:
        position, velocity = self.robot.state()
        return np.concatenate([position, velocity])

    def _measure(self) -> JointStateSample:
        position, velocity = self.robot.state()
        noise = self.parameters.sensor_noise
        n = len(self.joint_names)
        draws = self._rng.standard_normal((3, n))
        return JointStateSample(stamp=self.time, name=list(self.joint_names),
                                position=(position + noise.position * draws[0]).tolist(),
                                velocity=(velocity + noise.velocity * draws[1]).tolist(),
                                effort=(self._applied + noise.effort * draws[2]).tolist())

    def close(self) -> None:
        self.robot.close()
        if self._compensation is not None:
            self._compensation.close()
