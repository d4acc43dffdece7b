"""Generated robot descriptions: random kinematic trees as URDF text, for checking the URDF path
(the simulator's rigid-body terms, the stand-in, the link poses for rviz) by class rather than on
the few robots this package ships or was written for.

``random_robot(seed, **options)`` draws, from the seed only: a tree of links (a chain when
``tree`` is False) joined by revolute, continuous and prismatic joints and, between them, fixed
ones; every joint origin has a random offset and rotation (``rpy``), every axis a random
direction, and every link a random mass, centre of mass and full (rotated, off-diagonal) inertia
that satisfies the triangle inequality, with a rotated inertial frame; every moving joint a
random viscous damping.  Users' files do all of
these; the shipped robots do few (their prismatic joints have unrotated origins, their base
inertials no rotation).  Options make the file less regular as users' files are:
``axis_length`` scales every axis (URDF asks for unit axes; files are not always so), and
``axisless`` is the share of joints written without ``<axis>`` (URDF's default (1 0 0)) and
``originless`` the share without ``<origin>`` (the identity); ``inertial_rotation`` False writes
every inertial frame unrotated (the inertia tensor stays full).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MOVING = ('revolute', 'continuous', 'prismatic')
FIXED_SHARE = 0.2              # of the joints drawn, this share is fixed (moving joints are drawn until `joints`)
JOINT_OFFSET = 0.5             # m, each joint origin coordinate in [-JOINT_OFFSET, JOINT_OFFSET]
COM_OFFSET = 0.2               # m, each centre-of-mass coordinate in the link frame
MASS_RANGE = (0.2, 3.0)        # kg
RADIUS_RANGE = (0.1, 0.3)      # m, principal moments are mass x radius^2 (the third drawn within the triangle inequality)
PRISMATIC_RANGE = 2.0          # m, a prismatic joint's limits (wide: 1 s rollouts under small torques stay within them)
DAMPING_MAX = 0.2              # N m s / rad (N s / m), each moving joint's <dynamics damping> in [0, DAMPING_MAX]
ROBOT_TAG = 3                  # first word of every seed sequence (the problem generators use 1 and 2)


@dataclass(frozen=True)
class GeneratedRobot:
    seed: int
    text: str                  # the URDF
    joints: tuple[str, ...]    # the moving joints, in the order drawn (the controlled joints of a task)
    types: tuple[str, ...]     # their types
    links: tuple[str, ...]     # every link, the base first, in the order drawn


def _numbers(values) -> str:
    return ' '.join(repr(float(v)) for v in values)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix."""
    quaternion = rng.normal(size=4)
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _inertial(rng: np.random.Generator, rotated: bool) -> str:
    mass = rng.uniform(*MASS_RANGE)
    first, second = mass * rng.uniform(*RADIUS_RANGE, size=2) ** 2
    third = rng.uniform(abs(first - second), first + second)      # the triangle inequality
    rotation = _rotation(rng)
    inertia = rotation @ np.diag([first, second, third]) @ rotation.T
    keys = ('ixx', 'ixy', 'ixz', 'iyy', 'iyz', 'izz')
    values = (inertia[0, 0], inertia[0, 1], inertia[0, 2], inertia[1, 1], inertia[1, 2], inertia[2, 2])
    moments = ' '.join(f'{key}="{value!r}"' for key, value in zip(keys, map(float, values)))
    return (f'<inertial><origin xyz="{_numbers(rng.uniform(-COM_OFFSET, COM_OFFSET, 3))}" '
            f'rpy="{_numbers(rng.uniform(-math.pi, math.pi, 3) * rotated)}"/><mass value="{mass!r}"/>'
            f'<inertia {moments}/></inertial>')


def random_robot(seed: int, *, joints: int | None = None, types: tuple[str, ...] = MOVING, tree: bool = True,
                 fixed_joints: bool = True, axis_length: float = 1.0, axisless: float = 0.0,
                 originless: float = 0.0, inertial_rotation: bool = True) -> GeneratedRobot:
    """The robot of ``seed``: ``joints`` moving joints (default: 1-6, drawn) of ``types``."""
    unknown = [kind for kind in types if kind not in MOVING]
    if unknown or not types:
        raise ValueError(f'random_robot: types={types!r}: expected a non-empty subset of {MOVING}')
    if joints is not None and not 1 <= joints <= 32:
        raise ValueError(f'random_robot: joints={joints!r}: expected 1..32')
    if not axis_length > 0 or not 0 <= axisless <= 1 or not 0 <= originless <= 1:
        raise ValueError(f'random_robot: axis_length={axis_length!r} (> 0), axisless={axisless!r}, '
                         f'originless={originless!r} (each in [0, 1])')
    rng = np.random.default_rng([ROBOT_TAG, int(seed)])
    damping_rng = np.random.default_rng([ROBOT_TAG, int(seed), 1])     # its own stream: the geometry does not depend on it
    count = int(joints) if joints is not None else int(rng.integers(1, 7))
    lines = ['<?xml version="1.0"?>', f'<robot name="generated_{seed}">', f'<link name="base">{_inertial(rng, inertial_rotation)}</link>']
    links, moving, kinds = ['base'], [], []
    while len(moving) < count:
        parent = links[int(rng.integers(len(links)))] if tree else links[-1]
        kind = 'fixed' if fixed_joints and rng.uniform() < FIXED_SHARE else str(types[int(rng.integers(len(types)))])
        child = f'link{len(links)}'
        direction = rng.normal(size=3)
        direction *= axis_length / np.linalg.norm(direction)
        axis = '' if rng.uniform() < axisless else f'<axis xyz="{_numbers(direction)}"/>'
        origin = ('' if rng.uniform() < originless else f'<origin xyz="{_numbers(rng.uniform(-JOINT_OFFSET, JOINT_OFFSET, 3))}" '
                  f'rpy="{_numbers(rng.uniform(-math.pi, math.pi, 3))}"/>')
        bound = PRISMATIC_RANGE if kind == 'prismatic' else math.pi
        limit = (f'<limit lower="{-bound!r}" upper="{bound!r}" effort="100" velocity="10"/>'
                 if kind in ('revolute', 'prismatic') else '')
        if kind != 'fixed':
            limit += f'<dynamics damping="{damping_rng.uniform(0.0, DAMPING_MAX)!r}" friction="0"/>'
        lines.append(f'<link name="{child}">{_inertial(rng, inertial_rotation)}</link>')
        lines.append(f'<joint name="joint{len(links)}" type="{kind}"><parent link="{parent}"/><child link="{child}"/>'
                     f'{origin}{axis}{limit}</joint>')
        if kind != 'fixed':
            moving.append(f'joint{len(links)}')
            kinds.append(kind)
        links.append(child)
    lines.append('</robot>')
    return GeneratedRobot(seed=int(seed), text='\n'.join(lines) + '\n', joints=tuple(moving), types=tuple(kinds),
                          links=tuple(links))
