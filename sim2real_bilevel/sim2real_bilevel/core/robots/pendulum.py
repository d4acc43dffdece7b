"""The "physical" pendulum: a pybullet model with hidden true parameters.

A rigid rod (length ``link_length``, known uniform mass ``rod_mass``) carrying an unknown
point payload at its tip, on a torque-controlled revolute joint ``pendulum_joint`` about the
world y axis.  Joint angle 0 is upright (the unstable
equilibrium), positive angles tip the rod towards +x.

What the rest of the system never sees (the ``real:`` section of a problem file) lives in
``PendulumParameters``: payload mass, viscous joint damping, Coulomb friction (pybullet's
velocity-motor constraint: true stiction, not a smooth curve), motor gain (torque per unit
of commanded effort), actuation delay in control periods, effort limit (the motor's torque
saturation) and sensor noise.

``PendulumEmulator`` is the piece the ``robot_emulator`` ROS node wraps: ``reset(seed)``,
``apply_effort(effort)`` (the latest command, as forward_command_controller would forward
it), ``step()`` (one fixed control period; returns what sensor_msgs/JointState would carry).
It runs in pybullet DIRECT mode, is deterministic given the seed and runs far faster than
real time.
"""
from __future__ import annotations

import math
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

JOINT_NAME = 'pendulum_joint'
BASE_LINK = 'base_link'
PENDULUM_LINK = 'pendulum_link'
ROD_RADIUS = 0.02


def load_urdf_text(pybullet, client: int, text: str) -> int:
    """pybullet's body of URDF ``text`` (fixed base, the file's inertias): pybullet loads files only,
    so the text goes to a temporary file that is gone once loaded -- none is left behind by a
    process that is killed, or whose objects are never closed."""
    with tempfile.TemporaryDirectory(prefix='sim2real_urdf_') as folder:
        path = Path(folder) / 'robot.urdf'
        path.write_text(text)
        return pybullet.loadURDF(str(path), useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
                                 physicsClientId=client)


@dataclass(frozen=True)
class SensorNoise:
    """Standard deviations of the additive Gaussian measurement noise."""
    position: float = 0.0      # rad
    velocity: float = 0.0      # rad/s
    effort: float = 0.0        # N m


@dataclass(frozen=True)
class PendulumParameters:
    """True physical parameters of the emulated robot (hidden from learning methods)."""
    payload_mass: float                # kg, point mass at the rod's tip
    damping: float                     # N m s / rad, viscous joint damping
    coulomb_friction: float            # N m, dry friction (with stiction) in the joint
    motor_gain: float                  # applied torque per commanded N m
    actuation_delay_steps: int = 0     # control periods between a command and its effect
    effort_limit: float = math.inf     # N m, saturation of the applied motor torque
    sensor_noise: SensorNoise = field(default_factory=SensorNoise)

    def __post_init__(self):
        checks = [
            (self.payload_mass >= 0 and math.isfinite(self.payload_mass), 'payload_mass', 'a finite number >= 0'),
            (self.damping >= 0 and math.isfinite(self.damping), 'damping', 'a finite number >= 0'),
            (self.coulomb_friction >= 0 and math.isfinite(self.coulomb_friction), 'coulomb_friction',
             'a finite number >= 0'),
            (self.motor_gain > 0 and math.isfinite(self.motor_gain), 'motor_gain', 'a finite number > 0'),
            (isinstance(self.actuation_delay_steps, int) and self.actuation_delay_steps >= 0,
             'actuation_delay_steps', 'an integer >= 0'),
            (self.effort_limit > 0, 'effort_limit', 'a number > 0 (inf: no limit)'),
        ]
        for name in ('position', 'velocity', 'effort'):
            value = getattr(self.sensor_noise, name)
            checks.append((value >= 0 and math.isfinite(value), f'sensor_noise.{name}', 'a finite number >= 0'))
        for ok, name, expected in checks:
            if not ok:
                value = getattr(self.sensor_noise, name.split('.')[1]) if '.' in name else getattr(self, name)
                raise ValueError(f'pendulum parameters: {name} = {value!r}: expected {expected}')


@dataclass
class JointStateSample:
    """What one sensor_msgs/JointState message carries (stamp in seconds of sim time)."""
    stamp: float
    name: list[str]
    position: list[float]
    velocity: list[float]
    effort: list[float]


def pendulum_urdf(link_length: float, rod_mass: float, payload_mass: float = 0.0,
                  radius: float = ROD_RADIUS) -> str:
    """URDF text of the pendulum (also usable as ``robot_description`` for rviz).

    One link carries the rod (a solid cylinder) and the tip payload (a point mass): its
    inertial frame sits at their joint centre of mass on the rod axis.
    """
    if not (link_length > 0 and rod_mass > 0 and payload_mass >= 0 and radius > 0):
        raise ValueError(f'pendulum_urdf: link_length={link_length!r}, rod_mass={rod_mass!r}, '
                         f'payload_mass={payload_mass!r}, radius={radius!r}: expected positive numbers '
                         '(payload_mass >= 0)')
    mass = rod_mass + payload_mass
    half = link_length / 2.0
    center = (rod_mass * half + payload_mass * link_length) / mass
    across = (rod_mass * (3 * radius ** 2 + link_length ** 2) / 12.0 + rod_mass * (half - center) ** 2
              + payload_mass * (link_length - center) ** 2)     # parallel-axis theorem
    along = rod_mass * radius ** 2 / 2.0
    return f"""<?xml version="1.0"?>
<robot name="pendulum">
  <link name="{BASE_LINK}">
    <inertial><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>
    <visual><geometry><box size="0.06 0.06 0.06"/></geometry></visual>
  </link>
  <link name="{PENDULUM_LINK}">
    <inertial>
      <origin xyz="0 0 {center!r}"/>
      <mass value="{mass!r}"/>
      <inertia ixx="{across!r}" ixy="0" ixz="0" iyy="{across!r}" iyz="0" izz="{along!r}"/>
    </inertial>
    <visual>
      <origin xyz="0 0 {half!r}"/>
      <geometry><cylinder radius="{radius!r}" length="{link_length!r}"/></geometry>
    </visual>
  </link>
  <joint name="{JOINT_NAME}" type="continuous">
    <parent link="{BASE_LINK}"/>
    <child link="{PENDULUM_LINK}"/>
    <origin xyz="0 0 0"/>
    <axis xyz="0 1 0"/>
  </joint>
</robot>
"""


def angle_about_y(quaternion_wxyz: Sequence[float]) -> float:
    """Rotation angle about the world y axis of an orientation given as (w, x, y, z):
    the angle that takes +z to the rotated z axis, measured towards +x."""
    from transforms3d.quaternions import quat2mat
    rotation = quat2mat(np.asarray(quaternion_wxyz, dtype=np.float64))
    return math.atan2(rotation[0, 2], rotation[2, 2])


BASE_FRAME = 'pendulum_base'


def tip_pose(angle: float, length: float) -> tuple[list[float], list[float]]:
    """The pendulum tip in the frame ``BASE_FRAME`` (x forward, z up; the joint turns about y,
    angle 0 upright): position L (sin q, 0, cos q) and orientation (w, x, y, z), the rotation by
    q about y."""
    from transforms3d.euler import euler2quat
    w, x, y, z = euler2quat(0.0, angle, 0.0, 'sxyz')
    return ([length * math.sin(angle), 0.0, length * math.cos(angle)],
            [float(w), float(x), float(y), float(z)])


def xyzw_to_wxyz(quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """pybullet's (x, y, z, w) order to transforms3d's (w, x, y, z)."""
    x, y, z, w = quaternion_xyzw
    return np.array([w, x, y, z], dtype=np.float64)


class PendulumEmulator:
    """pybullet stand-in for the physical pendulum.

    Each ``step()`` advances one fixed control period in ``physics_substeps`` pybullet steps.
    The effort applied during a period is the command received ``actuation_delay_steps``
    periods earlier (zero before any command), scaled by the motor gain and saturated at the
    effort limit.  Initial states are drawn uniformly from the given ranges with the reset
    seed, and so is the sensor noise: a reset with the same seed and the same commands
    reproduces the same measurements exactly.
    """

    joint_names = (JOINT_NAME,)

    def __init__(self, parameters: PendulumParameters, *, link_length: float = 0.5,
                 rod_mass: float = 0.4, rod_radius: float = ROD_RADIUS, gravity: float = 9.81, control_period: float = 0.02, physics_substeps: int = 4,
                 initial_position_range: tuple[float, float] = (-0.5, 0.5),
                 initial_velocity_range: tuple[float, float] = (-1.0, 1.0)):
        import pybullet
        if not (control_period > 0 and isinstance(physics_substeps, int) and physics_substeps >= 1):
            raise ValueError(f'control_period={control_period!r}, physics_substeps={physics_substeps!r}: '
                             'expected a period > 0 and an integer >= 1')
        self.parameters = parameters
        self.link_length = float(link_length)
        self.rod_mass = float(rod_mass)
        self.rod_radius = float(rod_radius)
        self.gravity = float(gravity)
        self.control_period = float(control_period)
        self.physics_substeps = physics_substeps
        self.initial_position_range = tuple(map(float, initial_position_range))
        self.initial_velocity_range = tuple(map(float, initial_velocity_range))
        self._pb = pybullet
        self._client = pybullet.connect(pybullet.DIRECT)
        self._urdf_text = pendulum_urdf(self.link_length, self.rod_mass, parameters.payload_mass, self.rod_radius)
        self._body = None
        self._rng = np.random.default_rng(0)
        self._command = 0.0
        self._pending: deque = deque()
        self._applied_torque = 0.0
        self._steps = 0
        self._last_sample: Optional[JointStateSample] = None
        self._load()

    # --- setup ---------------------------------------------------------------------------------
    def _call(self, function, *args, **kwargs):
        return function(*args, physicsClientId=self._client, **kwargs)

    def _load(self) -> None:
        pb = self._pb
        self._call(pb.resetSimulation)
        self._call(pb.setTimeStep, self.control_period / self.physics_substeps)
        self._call(pb.setGravity, 0.0, 0.0, -self.gravity)
        self._body = load_urdf_text(pb, self._client, self._urdf_text)
        # No air drag on the link; the joint's viscous damping is pybullet's joint damping
        # (an explicit -b * velocity torque each physics step).
        self._call(pb.changeDynamics, self._body, 0, linearDamping=0.0, angularDamping=0.0,
                   jointDamping=self.parameters.damping)
        # Dry friction with stiction: a velocity motor held at zero speed whose force is capped
        # at the friction torque (pybullet's usual joint-friction idiom).
        self._call(pb.setJointMotorControl2, self._body, 0, pb.VELOCITY_CONTROL, targetVelocity=0.0,
                   force=self.parameters.coulomb_friction)

    def close(self) -> None:
        if self._client is not None:
            self._call(self._pb.disconnect)
            self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: pybullet may already be gone
            pass

    # --- the robot-facing API --------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return self._steps * self.control_period

    def reset(self, seed: int, initial_state: Optional[Sequence[float]] = None) -> JointStateSample:
        """Start an episode: draw the initial (angle, velocity) and the noise stream from
        ``seed`` (or use ``initial_state``), clear the command and the delay line."""
        self._rng = np.random.default_rng(seed)
        if initial_state is None:
            position = self._rng.uniform(*self.initial_position_range)
            velocity = self._rng.uniform(*self.initial_velocity_range)
        else:
            position, velocity = (float(v) for v in initial_state)
        self._call(self._pb.resetJointState, self._body, 0, position, velocity)
        self._command = 0.0
        self._pending = deque([0.0] * self.parameters.actuation_delay_steps)
        self._applied_torque = 0.0
        self._steps = 0
        self._last_sample = self._measure()
        return self._last_sample

    def apply_effort(self, effort) -> None:
        """Set the commanded effort (N m), held until the next command.  Accepts a float or a
        one-element sequence ordered as ``joint_names``."""
        values = np.atleast_1d(np.asarray(effort, dtype=np.float64))
        if values.shape != (len(self.joint_names),) or not np.all(np.isfinite(values)):
            raise ValueError(f'apply_effort: {effort!r}: expected {len(self.joint_names)} finite value(s) '
                             f'for joints {list(self.joint_names)}')
        self._command = float(values[0])

    def step(self, dt: Optional[float] = None) -> JointStateSample:
        """Advance one control period (``dt``, if given, must equal it) and measure."""
        if dt is not None and abs(dt - self.control_period) > 1e-9 * self.control_period:
            raise ValueError(f'step: dt={dt!r}: the emulator runs at a fixed control period of '
                             f'{self.control_period!r} s')
        self._pending.append(self._command)
        command = self._pending.popleft()
        limit = self.parameters.effort_limit
        torque = min(max(self.parameters.motor_gain * command, -limit), limit)
        self._applied_torque = torque
        pb = self._pb
        for _ in range(self.physics_substeps):
            # pybullet clears external joint torques after every physics step.
            self._call(pb.setJointMotorControl2, self._body, 0, pb.TORQUE_CONTROL, force=torque)
            self._call(pb.stepSimulation)
        self._steps += 1
        self._last_sample = self._measure()
        return self._last_sample

    def joint_state(self) -> JointStateSample:
        """The latest measurement (as published on ``joint_states``)."""
        if self._last_sample is None:
            raise RuntimeError('joint_state: call reset(seed) first')
        return self._last_sample

    # --- ground truth (tests, visualisation; never for learning) -------------------------------
    def true_state(self) -> np.ndarray:
        """Noise-free (angle, velocity)."""
        position, velocity, _, _ = self._call(self._pb.getJointState, self._body, 0)
        return np.array([position, velocity])

    def link_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World pose of the pendulum link frame (at the joint): position and (w, x, y, z)."""
        state = self._call(self._pb.getLinkState, self._body, 0, computeForwardKinematics=True)
        return np.asarray(state[4], dtype=np.float64), xyzw_to_wxyz(state[5])

    def tip_position(self) -> np.ndarray:
        """World position of the rod's free end (e.g. for an rviz marker)."""
        from transforms3d.quaternions import quat2mat
        origin, orientation = self.link_pose()
        return origin + quat2mat(orientation) @ np.array([0.0, 0.0, self.link_length])

    def link_angle(self) -> float:
        """The joint angle recovered from the link orientation (a kinematic cross-check)."""
        return angle_about_y(self.link_pose()[1])

    # --- internals -------------------------------------------------------------------------------
    def _measure(self) -> JointStateSample:
        position, velocity = self.true_state()
        noise = self.parameters.sensor_noise
        # Draw all three every time so the noise stream does not depend on which stds are zero.
        draws = self._rng.standard_normal(3)
        return JointStateSample(
            stamp=self.time,
            name=list(self.joint_names),
            position=[float(position + noise.position * draws[0])],
            velocity=[float(velocity + noise.velocity * draws[1])],
            effort=[float(self._applied_torque + noise.effort * draws[2])],
        )
