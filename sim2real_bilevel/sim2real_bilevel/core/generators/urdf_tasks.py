"""Generated URDF tasks with a built-in Sim2Real gap: a random robot, a random reaching task and
hidden real values, for checking the URDF kind's default settings by class rather than on the
three shipped tasks.

``random_urdf_task(seed, joints=None)`` draws, from the seed only:
- a robot (``robots.random_robot``: revolute joints about random axes, rotated frames and full
  inertias), 1-2 controlled joints by default;
- a task: from a random start range, move every joint to a target 0.4-1.2 rad away and hold
  it (angle, velocity and effort terms), 2 s at 25 Hz; the effort limit of each joint is sized
  from the largest gravity torque it meets (pybullet's inverse dynamics over random
  configurations), so that holding any pose is feasible on the robot;
- the gap: the robot carries an unknown payload at its last link, its motors deliver
  55-85 % of the command and clip there, and its joints have more damping and dry friction
  than the user believes; on top, effects no simulator of the family represents (stiction and
  a Stribeck bump, 8 physics substeps against 2, sensor noise, one step of actuation delay for
  half the seeds); and the user's in-sim reward penalises velocity and effort 3-10x more than
  the task does ("for smooth, gentle motion"), as config/pendulum.yaml's user does.
No ``inner:``/``outer:``/``policy:`` sections: default settings, as a user would write it.
There is no rejection step (each check would be a cold inner solve): whether the gap is real
on a drawn task, nominal below the oracle, is measured by ``bench/urdf_generated_tasks.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import number, row
from .robots import random_robot

TASK_TAG = 4                     # first word of every seed sequence (tabular 1, lqr 2, robots 3)
CONTROL_PERIOD = 0.04            # s
HORIZON = 50                     # control periods (2 s)
EFFORT_MARGIN = 1.3              # the robot's torque is this x the largest gravity torque it meets (plus EFFORT_FLOOR)
EFFORT_FLOOR = 0.5               # N m
GRAVITY_SAMPLES = 64             # random configurations the gravity torques are taken over


@dataclass(frozen=True)
class GeneratedTask:
    seed: int
    text: str                    # the task file (kind: urdf); its robot.urdf is ``urdf_name`` beside it
    urdf_text: str
    urdf_name: str
    info: dict                   # what was drawn (for reports)

    def files(self, path) -> dict:
        """path -> text of the two files, the task at ``path`` and its URDF beside it."""
        path = Path(path)
        return {path.parent / self.urdf_name: self.urdf_text, path: self.text}


def with_payload(urdf_text: str, link: str, mass: float, center) -> str:
    """The URDF with a point-like ``mass`` fixed to ``link`` at ``center`` (link frame)."""
    payload = (f'<link name="generated_payload"><inertial><origin xyz="{" ".join(repr(float(c)) for c in center)}"/>'
               f'<mass value="{float(mass)!r}"/><inertia ixx="1e-6" ixy="0" ixz="0" iyy="1e-6" iyz="0" izz="1e-6"/>'
               f'</inertial></link><joint name="generated_payload_joint" type="fixed"><parent link="{link}"/>'
               '<child link="generated_payload"/></joint>')
    return urdf_text.replace('</robot>', payload + '\n</robot>')


def link_mass(urdf_text: str, link: str) -> float:
    import xml.etree.ElementTree as ElementTree
    node = ElementTree.fromstring(urdf_text).find(f"link[@name='{link}']/inertial/mass")
    return float(node.get('value'))


def gravity_torques(urdf_text: str, joints, rng: np.random.Generator, samples: int = GRAVITY_SAMPLES,
                    gravity: float = 9.81) -> np.ndarray:
    """The largest |gravity torque| of each controlled joint over ``samples`` random configurations."""
    from ..robots.urdf_robot import PybulletRobot
    robot = PybulletRobot(urdf_text, joints, gravity=gravity, time_step=0.01)
    try:
        largest = np.zeros(len(joints))
        for _ in range(samples):
            position = rng.uniform(-math.pi, math.pi, len(joints))
            largest = np.maximum(largest, np.abs(robot.bias(position, np.zeros(len(joints)))))
        return largest
    finally:
        robot.close()


def random_urdf_task(seed: int, *, joints: int | None = None) -> GeneratedTask:
    """The task of ``seed`` (see the module docstring); ``joints``: 1-3 (default: 1 or 2, drawn)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f'random_urdf_task: seed={seed!r}: expected an integer >= 0')
    if joints is not None and (isinstance(joints, bool) or not isinstance(joints, int) or not 1 <= joints <= 3):
        raise ValueError(f'random_urdf_task: joints={joints!r}: expected 1..3')
    rng = np.random.default_rng([TASK_TAG, seed])
    n = int(joints) if joints is not None else int(rng.integers(1, 3))
    robot = random_robot(seed, joints=n, types=('revolute',), tree=False)
    names = list(robot.joints)
    last = robot.links[-1]
    gain = float(rng.uniform(0.55, 0.85))
    payload = float(rng.uniform(0.3, 1.0)) * link_mass(robot.text, last)     # kg
    payload_com = rng.uniform(-0.2, 0.2, 3)
    # the robot (with its payload, through its weak motors) holds any pose with EFFORT_MARGIN to spare
    gravity = gravity_torques(with_payload(robot.text, last, payload, payload_com), names, rng)
    rated = EFFORT_MARGIN * gravity / gain + EFFORT_FLOOR
    centre = rng.uniform(-1.0, 1.0, n)
    offset = rng.uniform(0.4, 1.2, n) * rng.choice([-1.0, 1.0], n)
    targets = centre + offset
    damping = rng.uniform(0.05, 0.3, n) * rated / rated.max()
    friction = rng.uniform(0.02, 0.06, n) * rated
    stribeck = rng.uniform(0.0, 0.5, n) * friction
    delay = int(rng.integers(0, 2))
    effort_weight = 0.5 / float(np.mean(rated ** 2))             # the effort term ~0.5 at the rated torque
    # the user's shaped in-sim reward: heavier velocity and effort penalties "for smooth, gentle motion"
    shaping = rng.uniform(3.0, 10.0, 2)
    sim_velocity, sim_effort = 0.02 * float(shaping[0]), effort_weight * float(shaping[1])
    info = {'joints': n, 'rated_torque': rated.round(4).tolist(), 'targets': targets.round(4).tolist(),
            'motor_gain': round(gain, 4), 'payload_mass': round(payload, 4), 'delay_steps': delay,
            'reward_shaping': shaping.round(3).tolist()}
    urdf_name = f'generated_task_{seed}.urdf'
    lines = [
        f'# Generated URDF task, seed {seed} (core/generators/urdf_tasks.py): robot {urdf_name} (random_robot({seed}),',
        f'# {n} revolute joint(s)); move every joint from the start range to its target and hold it.',
        '# No inner:/outer:/policy: sections: default settings.',
        'kind: urdf',
        'robot:',
        f'  urdf: {urdf_name}',
        f'  joints: {names}'.replace("'", ''),
        'gamma: 0.97',
        f'horizon: {HORIZON}',
        f'control_period: {CONTROL_PERIOD}',
        'gravity: 9.81',
        'initial_state:',
        f'  position_range: [{", ".join(row([c - 0.2, c + 0.2]) for c in centre)}]',
        f'  velocity_range: [{", ".join(row([-0.2, 0.2]) for _ in range(n))}]',
        'task:',
        f'  targets: {row(targets)}',
        f'  reward_weights: {{angle: 2.0, velocity: 0.02, effort: {number(effort_weight, 6)}}}',
        '  termination: {max_speed: 40.0}',
        'real:                            # HIDDEN: read only by the stand-in (and the oracle, for reporting)',
        '  payload_mass:',
        f'    {last}: {{mass: {number(payload, 4)}, center_of_mass: {row(payload_com)}}}',
        f'  damping: {row(damping)}',
        f'  coulomb_friction: {row(friction)}',
        f'  stribeck_friction: {row(stribeck)}',
        f'  motor_gain: {number(gain, 4)}',
        f'  effort_limit: {row(gain * rated)}',
        f'  actuation_delay_steps: {delay}',
        '  sensor_noise: {position: 0.002, velocity: 0.02, effort: 0.02}',
        '  physics_substeps: 8',
        'simulator:',
        '  physics_substeps: 2',
        f'  effort_limit: {row(rated)}',
        f'  transition_noise_std: {row([0.002] * n + [0.02] * n)}',
        '  parameters:',
        f'    payload_mass@{last}: {{value: 0.05, learn: true, bounds: [0.01, 3.0], center_of_mass: {row(payload_com)}}}',
        '    damping:          {value: 0.01, learn: true, bounds: [0.001, 1.0]}',
        f'    coulomb_friction: {{value: {number(0.002 * float(rated.mean()), 5)}, learn: true, '
        f'bounds: [{number(0.0005 * float(rated.mean()), 6)}, {number(0.2 * float(rated.mean()), 5)}]}}',
        '    motor_gain:       {value: 1.0,  learn: true, bounds: [0.3, 1.5]}',
        '  reward_weights:',
        '    angle:    {value: 2.0, learn: false}',
        f'    velocity: {{value: {number(sim_velocity, 5)}, learn: true, bounds: [0.002, 0.5]}}',
        f'    effort:   {{value: {number(sim_effort, 6)}, learn: true, '
        f'bounds: [{number(effort_weight / 10, 7)}, {number(effort_weight * 30, 6)}]}}',
    ]
    return GeneratedTask(seed=seed, text='\n'.join(lines) + '\n', urdf_text=robot.text, urdf_name=urdf_name, info=info)
