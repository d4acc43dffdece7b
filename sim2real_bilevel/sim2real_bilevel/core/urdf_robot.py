"""A robot from its URDF: locating and reading the file, and its rigid-body dynamics from a library.

- ``resolve_urdf(uri, ...)``: a file path (relative paths from the problem file's folder) or a
  ``package://PKG/path`` URI, found through the ament index (AMENT_PREFIX_PATH) and, for
  robots shipped with pybullet (``package://pybullet_data/kuka_iiwa/model.urdf``), pybullet_data.
- ``read_urdf(path)``: joints and links as plain data (``UrdfDescription``); every error names
  the file, the element and the bad value.
- ``RigidBodyDynamics``: the joint-space mass matrix M(q) and bias forces h(q, qd) (Coriolis,
  centrifugal, gravity) of the controlled joints of a FIXED-base robot, batched torch, from
  adam-robotics (``KinDynComputationsBatch``; see docs/dynamics.md for why this library).
  Link mass scales and payloads are inputs of each call: adam reads its link inertias once from
  the file, so ``RigidBodyDynamics`` replaces its cached 6x6 spatial inertias by ones computed
  from them at every call, keeping the graph differentiable in them.

Two adam-robotics 0.5.0 bugs are fixed here, each with a test in test/test_urdf_robot.py:
- an ``<inertial>`` without an ``<origin>`` (legal URDF: the origin defaults to zero) raises
  AttributeError in its parser: ``normalised_urdf_text`` writes the default origin explicitly
  (and leaves out visual and collision geometry, which the dynamics do not read);
- prismatic joints fail (every robot with one, e.g. pybullet_data's cartpole.urdf): the motion
  subspace concatenates scalars with 3-vectors (RuntimeError at construction), and the joint
  transforms multiply a batch of positions (B,) with the axis (3,) and index as if unbatched
  (RuntimeError at every batched call).  ``_fix_prismatic_joints`` replaces those three methods by correct ones for
  prismatic joints only (revolute and fixed joints keep adam's own code).

Speed (``traced=True``, the default): adam builds every call from small Python objects (~3-40 ms
of Python per call whatever the batch).  ``RigidBodyDynamics`` records the library's own M + h
computation once per (batch size, dtype, device) with ``torch.jit.trace`` (and, for
``gravity_torque``, its gravity term alone) -- the link spatial
inertias (B, L, 6, 6) are inputs of the recording, so mass scales and payloads, shared or one per
sample, stay differentiable and cost one call -- and replays it.  The recording is then simplified
by torch's own graph passes (no-op dtype casts dropped, constants folded, common subexpressions
merged, dead code removed); a simplified graph that does not reproduce the recording's output
bit-for-bit is not used.  Nothing of the algorithm is rewritten: the replay runs exactly the
tensor operations adam ran while recorded (tested equal to the library's eager call, values and
first and second derivatives).  torch keeps a recording for the life of the process, so it is made
once per process for each robot, batch size, dtype and device and shared by every instance
(``_SHARED_RECORDINGS``): four nodes of a learning container, each with its own iiwa problem,
recorded 4 times before (3.0-3.8 s and ~50 MiB each), now once.

On CUDA the replay runs with torch's TensorExpr fuser off (``_without_gpu_fusion``): with it on,
the graph executor compiles fused kernels for the ~2000-operation float64 recording on its first
calls at each batch size, and on an H200 the iiwa's inner-loop benchmark at batch 1024 had not
passed its first calls after 150 s; with it off, J_sim and its gradient (25 steps, 1024 rollouts)
took 1.3 s (``bench/urdf_dynamics.py --parts inner``).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

MOVING_JOINT_TYPES = ('revolute', 'continuous', 'prismatic')
AXIS_NORM_TOLERANCE = 1e-3
"""A joint axis further than this from unit length is normalised with a warning (closer: silently, as rounding)."""
XACRO = '{http://www.ros.org/wiki/xacro}'
GRAVITY = 9.81


class UrdfError(ValueError):
    """A URDF problem: the file, the element and the bad value, and what was expected."""

    def __init__(self, path, element: str, value, expected: str):
        self.path, self.element, self.value, self.expected = str(path), element, value, expected
        super().__init__(f'{path}: {element}: {value!r}: expected {expected}')


@dataclass(frozen=True)
class JointInfo:
    name: str
    type: str
    parent: str
    child: str
    lower: float                  # position limits (-inf, inf for continuous joints)
    upper: float
    effort: float                 # effort limit (inf when the file gives none)
    velocity: float
    damping: float                # <dynamics damping=...> (0 when absent)
    friction: float               # <dynamics friction=...> (0 when absent)


@dataclass(frozen=True)
class LinkInfo:
    name: str
    mass: Optional[float]         # None: the link has no <inertial>
    center_of_mass: tuple[float, float, float]


@dataclass(frozen=True)
class UrdfDescription:
    path: Path
    name: str
    joints: dict                  # name -> JointInfo, in file order
    links: dict                   # name -> LinkInfo

    def joint(self, name: str, element: str) -> JointInfo:
        """The joint ``name``, or an error naming ``element`` (where the name was written)."""
        if name not in self.joints:
            moving = [j.name for j in self.joints.values() if j.type in MOVING_JOINT_TYPES]
            raise UrdfError(self.path, element, name, f'the name of a joint of this URDF: one of {moving}')
        return self.joints[name]

    def link(self, name: str, element: str, *, needs_inertial: bool = True) -> LinkInfo:
        if name not in self.links:
            raise UrdfError(self.path, element, name, f'the name of a link of this URDF: one of {list(self.links)}')
        link = self.links[name]
        if needs_inertial and link.mass is None:
            raise UrdfError(self.path, f'link {name!r}', '<no inertial>',
                            'an <inertial> element (mass and inertia) on a link whose mass is uncertain')
        return link


def package_search_roots() -> list[Path]:
    """Where ``package://PKG/...`` is looked for: share/PKG under every AMENT_PREFIX_PATH entry
    and the virtual environment's prefix (where this project's setup installs share/), then
    pybullet_data for PKG = pybullet_data."""
    import sys
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(p) / 'share' for p in prefixes]


def resolve_urdf(uri: str, base_dir: Optional[Path] = None, *, source: str = '<urdf>',
                 element: str = 'robot.urdf') -> Path:
    """The file a URDF path or ``package://`` URI names; an error naming ``source``/``element``
    and every place looked in when it does not exist."""
    if not isinstance(uri, str) or not uri:
        raise UrdfError(source, element, uri, 'a URDF file path or a package://PKG/path URI')
    if uri.startswith('package://'):
        package, _, relative = uri[len('package://'):].partition('/')
        candidates = []
        if package == 'pybullet_data':
            import pybullet_data
            candidates.append(Path(pybullet_data.getDataPath()) / relative)
        else:
            try:
                from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
                try:
                    candidates.append(Path(get_package_share_directory(package)) / relative)
                except (PackageNotFoundError, OSError):      # OSError: AMENT_PREFIX_PATH unset
                    pass
            except ImportError:
                pass
            candidates += [root / package / relative for root in package_search_roots()]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise UrdfError(source, element, uri, 'a package:// URI of an existing file (looked in '
                        f'{[str(c) for c in candidates]}; set AMENT_PREFIX_PATH to the install prefix)')
    path = Path(uri)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise UrdfError(source, element, uri, f'an existing URDF file (no file at {path})')
    return path


def _floats(text: Optional[str], count: int, path, element: str, default: Sequence[float]) -> tuple[float, ...]:
    if text is None:
        return tuple(default)
    try:
        values = tuple(float(v) for v in text.split())
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise UrdfError(path, element, text, f'{count} finite numbers')
    return values


def _float(node, attribute: str, path, element: str, default: float) -> float:
    text = None if node is None else node.get(attribute)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UrdfError(path, f'{element} {attribute}', text, 'a number') from None
    if math.isnan(value):
        raise UrdfError(path, f'{element} {attribute}', text, 'a number')
    return value


INERTIA_KEYS = ('ixx', 'ixy', 'ixz', 'iyy', 'iyz', 'izz')


def inertia_tensor(node, path, element: str) -> np.ndarray:
    """The 3x3 rotational inertia of an ``<inertia>`` element (absent attributes are 0)."""
    values = [_float(node, key, path, element, 0.0) for key in INERTIA_KEYS]
    if not all(math.isfinite(v) for v in values):
        raise UrdfError(path, element, dict(zip(INERTIA_KEYS, values)), 'finite ' + ', '.join(INERTIA_KEYS))
    xx, xy, xz, yy, yz, zz = values
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def physical_inertia(tensor: np.ndarray) -> tuple[np.ndarray, float]:
    """(the tensor, 0) when its principal moments satisfy the triangle inequality (the two smaller
    sum to at least the largest, as every rigid body's do); else (the nearest such tensor along its
    principal axes: half the shortfall added to each of the two smaller moments, and the shortfall).
    pybullet silently sets an inertia failing that test to ZERO, so the stand-in and the simulator
    would be different robots; vendors' URDFs fail it by small amounts (pybullet_data's xarm6:
    link2's two smaller moments 0.7 % short of the largest)."""
    moments, axes = np.linalg.eigh(tensor)
    shortfall = moments[2] - moments[0] - moments[1]
    if shortfall <= 1e-9 * abs(moments[2]):        # the rounding of the file's decimals, no more
        return tensor, 0.0
    raised = moments + np.array([0.5, 0.5, 0.0]) * shortfall * (1 + 1e-6)   # strictly inside: pybullet's test is exact
    return axes @ np.diag(raised) @ axes.T, float(shortfall)


def set_inertia(node, tensor: np.ndarray) -> None:
    """Write ``tensor`` into an ``<inertia>`` element."""
    for key, (i, j) in zip(INERTIA_KEYS, ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
        node.set(key, repr(float(tensor[i, j])))


def _check_inertia(node, path, element: str) -> None:
    """Negative principal moments are an error (no rigid body has them, nor a rounding error);
    a failed triangle inequality is repaired where the dynamics read the file
    (``dynamics_urdf_text``, with a warning)."""
    moments = np.linalg.eigvalsh(inertia_tensor(node, path, element))
    if moments[0] < -1e-9 * abs(moments[2]):
        raise UrdfError(path, element, {k: v for k, v in node.attrib.items() if k in INERTIA_KEYS},
                        f'a physical inertia: principal moments ({", ".join(f"{v:.6g}" for v in moments)}) '
                        'must be >= 0')


def dynamics_urdf_text(root, source=None) -> str:
    """The URDF text of ``root`` (an ElementTree element, modified) as rigid-body dynamics reads it:
    - only links and joints: ``<visual>``, ``<collision>`` and every other element removed
      (meshes need not exist where the text is loaded, nothing here touches geometry: no
      contacts; and the parsers choke on what they do not know: adam's urdf_parser_py fails on
      the ``<transmission>`` of pybullet_data's xarm6, and prints a line per unknown tag);
    - an explicit zero ``<origin>`` in every ``<inertial>`` and ``<joint>`` that has none (the
      URDF default, which adam-robotics 0.5.0 fails to apply: AttributeError);
    - inertias that fail the triangle inequality repaired (``physical_inertia``), with a warning
      naming ``source``, the link and the change (none when ``source`` is None);
    - every moving joint's ``<axis>`` explicit and of unit length (``joint_axis``): URDF's default
      (1 0 0) where there is none, and a non-unit axis normalised, as pybullet, KDL and MoveIt
      read it (adam would scale the joint's motion by its length), with a warning when it is more
      than AXIS_NORM_TOLERANCE from unit length."""
    for child in [c for c in root if c.tag not in ('link', 'joint')]:
        root.remove(child)
    for link in root.iter('link'):
        for child in [c for c in link if c.tag != 'inertial']:
            link.remove(child)
        inertia = link.find('inertial/inertia')
        if inertia is not None:
            tensor = inertia_tensor(inertia, source or '<URDF text>', f'link {link.get("name")!r} inertial/inertia')
            repaired, shortfall = physical_inertia(tensor)
            if shortfall:
                set_inertia(inertia, repaired)
            if shortfall and source is not None:
                warnings.warn(f'{source}: link {link.get("name")!r}: its inertia is not physical (the two smaller '
                              f'principal moments are {shortfall:.3g} short of the largest, '
                              f'{np.linalg.eigvalsh(tensor)[2]:.6g}); raised by half of that each, in the simulator '
                              'and the stand-in alike (pybullet would zero it): better, fix the URDF', stacklevel=2)
    for element in list(root.iter('inertial')) + list(root.iter('joint')):
        if element.find('origin') is None:
            element.insert(0, ElementTree.Element('origin', {'xyz': '0 0 0', 'rpy': '0 0 0'}))
    for joint in root.iter('joint'):
        if joint.get('type') not in MOVING_JOINT_TYPES:
            continue
        axis, norm = joint_axis(joint, source or '<URDF text>')
        if abs(norm - 1.0) > AXIS_NORM_TOLERANCE and source is not None:
            warnings.warn(f'{source}: joint {joint.get("name")!r} axis {joint.find("axis").get("xyz")!r} has length '
                          f'{norm:.6g}: normalised to unit length (URDF asks for a unit axis), in the simulator and '
                          'the stand-in alike', stacklevel=2)
        node = joint.find('axis')
        if node is None:
            node = ElementTree.SubElement(joint, 'axis')
        node.set('xyz', ' '.join(repr(float(v)) for v in axis))
    return ElementTree.tostring(root, encoding='unicode')


def joint_axis(joint, path) -> tuple[np.ndarray, float]:
    """A moving joint's unit axis and the length the file gives it ((1 0 0), 1.0 without ``<axis>``);
    a zero or non-finite axis is an error naming the joint."""
    node = joint.find('axis')
    element = f'joint {joint.get("name")!r} axis xyz'
    axis = np.array(_floats(None if node is None else node.get('xyz'), 3, path, element, (1.0, 0.0, 0.0)))
    norm = float(np.linalg.norm(axis))
    if not norm > 1e-9:
        raise UrdfError(path, element, node.get('xyz'), 'a non-zero direction')
    return axis / norm, norm


def read_urdf(path) -> UrdfDescription:
    """Joints and links of the URDF at ``path`` (checked: names, limits, masses, inertias)."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as err:
        raise UrdfError(path, '<file>', str(path), f'a readable URDF (XML) file ({err})') from None
    if root.tag != 'robot':
        raise UrdfError(path, '<root element>', root.tag, '<robot>')
    macro = next((node.tag.split('}')[-1] for node in root.iter() if node.tag.startswith(XACRO)), None) or next(
        (value for node in root.iter() for value in node.attrib.values() if '${' in value or '$(' in value), None)
    if macro is not None:
        raise UrdfError(path, '<file>', macro, 'a URDF, not xacro: expand it first (`xacro robot.urdf.xacro > '
                        'robot.urdf`, or save what `ros2 param get /robot_state_publisher robot_description` gives)')
    links = {}
    for node in root.findall('link'):
        name = node.get('name')
        inertial = node.find('inertial')
        if inertial is None:
            links[name] = LinkInfo(name, None, (0.0, 0.0, 0.0))
            continue
        mass = _float(inertial.find('mass'), 'value', path, f'link {name!r} inertial/mass', math.nan)
        if not mass >= 0 or not math.isfinite(mass):
            raise UrdfError(path, f'link {name!r} inertial/mass value', mass, 'a finite mass >= 0')
        origin = inertial.find('origin')
        com = _floats(None if origin is None else origin.get('xyz'), 3, path,
                      f'link {name!r} inertial/origin xyz', (0.0, 0.0, 0.0))
        _check_inertia(inertial.find('inertia'), path, f'link {name!r} inertial/inertia')
        links[name] = LinkInfo(name, mass, com)
    joints = {}
    for node in root.findall('joint'):
        name, kind = node.get('name'), node.get('type')
        element = f'joint {name!r}'
        if kind not in MOVING_JOINT_TYPES + ('fixed',):
            raise UrdfError(path, f'{element} type', kind, f'one of {list(MOVING_JOINT_TYPES + ("fixed",))}')
        parent, child = node.find('parent'), node.find('child')
        parent = None if parent is None else parent.get('link')
        child = None if child is None else child.get('link')
        for role, link in (('parent', parent), ('child', child)):
            if link not in links:
                raise UrdfError(path, f'{element} {role} link', link, f'a link of this URDF: one of {list(links)}')
        if kind in MOVING_JOINT_TYPES:
            joint_axis(node, path)
        limit, dynamics = node.find('limit'), node.find('dynamics')
        bounded = kind in ('revolute', 'prismatic') and limit is not None
        lower = _float(limit, 'lower', path, f'{element} limit', 0.0) if bounded else -math.inf
        upper = _float(limit, 'upper', path, f'{element} limit', 0.0) if bounded else math.inf
        if lower > upper:
            raise UrdfError(path, f'{element} limit', [lower, upper], 'lower <= upper')
        effort = _float(limit, 'effort', path, f'{element} limit', math.inf)
        velocity = _float(limit, 'velocity', path, f'{element} limit', math.inf)
        damping = _float(dynamics, 'damping', path, f'{element} dynamics', 0.0)
        friction = _float(dynamics, 'friction', path, f'{element} dynamics', 0.0)
        for field, value in (('limit effort', effort), ('limit velocity', velocity),
                             ('dynamics damping', damping), ('dynamics friction', friction)):
            if value < 0:
                raise UrdfError(path, f'{element} {field}', value, 'a number >= 0')
        joints[name] = JointInfo(name, kind, parent, child, lower, upper, effort, velocity, damping, friction)
    return UrdfDescription(path=path, name=root.get('name', ''), joints=joints, links=links)


def normalised_urdf_text(path) -> str:
    """The file's text for adam-robotics (``dynamics_urdf_text``)."""
    return dynamics_urdf_text(ElementTree.parse(path).getroot(), path)


def point_mass_inertia(mass: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """6x6 spatial inertia (adam's order: linear, angular) of point masses ``mass`` (...,) at
    ``center`` (..., 3) in a link's frame: [[m 1, m S(c)^T], [m S(c), m S(c) S(c)^T]]."""
    x, y, z = center.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                        torch.stack([-y, x, zero], -1)], -2)
    m = mass[..., None, None]
    eye = torch.eye(3, dtype=center.dtype, device=center.device).expand(skew.shape)
    top = torch.cat([m * eye, m * skew.transpose(-1, -2)], -1)
    bottom = torch.cat([m * skew, m * skew @ skew.transpose(-1, -2)], -1)
    return torch.cat([top, bottom], -2)


def payload_moments(mass: torch.Tensor, center: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``point_mass_inertia(mass, center)`` (per sample: mass (B,) or (), center (B, 3)) as
    sum_k weight_k (B,) * inertia_k (6, 6), with fixed matrices inertia_k: the spatial inertia is
    linear in m, m c_i and m c_i c_j, so each term is one library call on one fixed inertia.  A
    coordinate that is zero in every sample drops its terms (a payload along the tool axis costs
    3 calls, not 10), so no derivative with respect to it is formed: right for the centres this
    project builds, d * u with a fixed direction u, whose zero coordinates are constants."""
    dtype, device = center.dtype, center.device
    mass = mass.expand(center.shape[:-1])
    basis = torch.eye(3, dtype=dtype, device=device)
    one = torch.ones((), dtype=dtype, device=device)
    origin = point_mass_inertia(one, torch.zeros(3, dtype=dtype, device=device))
    plus = [point_mass_inertia(one, basis[i]) for i in range(3)]
    minus = [point_mass_inertia(one, -basis[i]) for i in range(3)]
    linear = [(plus[i] - minus[i]) / 2 for i in range(3)]
    square = [(plus[i] + minus[i]) / 2 - origin for i in range(3)]
    live = [i for i in range(3) if bool(torch.any(center[..., i] != 0))]
    terms = [(mass, origin)]
    terms += [(mass * center[..., i], linear[i]) for i in live]
    terms += [(mass * center[..., i] ** 2, square[i]) for i in live]
    for a, i in enumerate(live):
        for j in live[a + 1:]:
            cross = point_mass_inertia(one, basis[i] + basis[j]) - origin - linear[i] - linear[j] - square[i] - square[j]
            terms.append((mass * center[..., i] * center[..., j], cross))
    return terms


def _fix_prismatic_joints() -> None:
    """Patch adam's ``StdJoint.motion_subspace`` (for prismatic joints: the 6-vector (axis, 0, 0, 0)
    in adam's order linear, angular), ``SpatialMath.H_prismatic_joint`` and ``X_prismatic_joint``
    (the joint's transform and its spatial transform, batched over positions (B,)).  Three faults:
    the motion subspace raises, the transforms are not batched, and adam translates along the
    axis in the parent's frame (``xyz + q axis``) where URDF gives the axis in the joint's frame,
    after the origin's rotation (``xyz + R(rpy) q axis``, as pybullet and the motion subspace
    read it) -- wrong M and h whenever a prismatic joint has a rotated origin and a link beyond it
    rotates (``test_generated_robots_match_pybullet``).  Idempotent."""
    from adam.core.spatial_math import SpatialMath
    from adam.model.std_factories.std_joint import StdJoint
    original = StdJoint.motion_subspace
    if getattr(original, 'fixed_prismatic', False):
        return

    def H_prismatic_joint(self, xyz, rpy, axis, q):
        positions = torch.as_tensor(getattr(q, 'array', q))
        rotation = getattr(self.R_from_RPY(rpy), 'array')
        direction = rotation @ getattr(axis, 'array', axis)           # the axis in the parent's frame
        offset = getattr(xyz, 'array', xyz) + positions[..., None] * direction
        rotation = rotation.expand(offset.shape[:-1] + (3, 3))
        return self.homogeneous(self.factory.asarray(rotation), self.factory.asarray(offset))

    def X_prismatic_joint(self, xyz, rpy, axis, q):
        transform = getattr(self.H_prismatic_joint(xyz, rpy, axis, q), 'array')
        rotation = transform[..., :3, :3].transpose(-1, -2)
        offset = -(rotation @ transform[..., :3, 3:4])[..., 0]
        return self.spatial_transform(self.factory.asarray(rotation), self.factory.asarray(offset))

    SpatialMath.H_prismatic_joint = H_prismatic_joint
    SpatialMath.X_prismatic_joint = X_prismatic_joint

    def motion_subspace(self):
        if self.type != 'prismatic':
            return original(self)
        zero = self.math.zeros(1)
        return self.math.vertcat(self.axis[0], self.axis[1], self.axis[2], zero, zero, zero)

    motion_subspace.fixed_prismatic = True
    StdJoint.motion_subspace = motion_subspace


_SHARED_RECORDINGS: dict = {}
"""Recordings by (robot, batch size, dtype, device, gravity only), shared by every instance in the
process: torch keeps each traced function for the life of the process (its compilation unit), so
a recording made again for a second instance of the same robot (the nodes of a container, each
with its own problem; tests and benches) is ~50 MiB more memory for the iiwa, never freed, and
seconds of recording."""
_SHARED_LOCK = threading.Lock()


class RigidBodyDynamics:
    """M(q) and h(q, qd) of the controlled joints of a fixed-base robot (adam-robotics, torch).

    ``joint_names``: the controlled joints, in the order of q; every other moving joint is held
    at zero (adam treats joints it is not given as fixed).  ``gravity``: m/s^2 along -z.
    ``traced``: replay a recording of the library's computation (see the module docstring);
    False calls adam eagerly every time (the reference the recording is tested against).
    """

    def __init__(self, path, joint_names: Sequence[str], *, dtype=torch.float64,
                 device: Optional[torch.device] = None, gravity: float = GRAVITY, traced: bool = True):
        from adam.core.constants import Representations
        from adam.pytorch import KinDynComputationsBatch
        _fix_prismatic_joints()
        self.description = read_urdf(path)
        for i, name in enumerate(joint_names):
            joint = self.description.joint(name, f'joints[{i}]')
            if joint.type not in MOVING_JOINT_TYPES:
                raise UrdfError(self.description.path, f'joints[{i}]', name,
                                f'a moving joint (type {list(MOVING_JOINT_TYPES)}), not a {joint.type} joint')
        self.joint_names = tuple(joint_names)
        self.path, self.gravity = path, float(gravity)
        self.dtype = dtype
        self.device = torch.device('cpu') if device is None else torch.device(device)
        text = normalised_urdf_text(path)
        # what a recording depends on besides its inputs: the file as read, the joints, gravity
        self._robot = (hashlib.sha256(text.encode()).hexdigest(), self.joint_names, self.gravity)
        self._kindyn = KinDynComputationsBatch(
            text, list(joint_names), device=self.device, dtype=dtype,
            gravity=torch.tensor([0.0, 0.0, -gravity, 0.0, 0.0, 0.0], dtype=torch.float64))   # float32 would round g
        # Joint-space velocities and forces, not a mixed frame for the (fixed) base.
        self._kindyn.set_frame_velocity_representation(Representations.BODY_FIXED_REPRESENTATION)
        algorithms = self._kindyn.rbdalgos
        self._node_links = [node.get_elements()[0].name for node in algorithms.model.tree]
        self._base_inertias = [algorithms._spatial_inertias[i] for i in range(len(self._node_links))]
        self._base_stack = torch.stack([inertia.array for inertia in self._base_inertias])     # (L, 6, 6)
        self.n_joints = len(self.joint_names)
        self.traced = bool(traced)
        self._recordings: dict = {}      # (batch, dtype, device, gravity only) -> the shared recording this instance uses

    def __getstate__(self) -> dict:
        """Pickled as its constructor's arguments: adam's model holds modules, and recordings are
        per process (a copy in another process builds its own on first use)."""
        return {'path': self.path, 'joint_names': self.joint_names, 'dtype': self.dtype,
                'device': self.device, 'gravity': self.gravity, 'traced': self.traced}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['path'], state['joint_names'], dtype=state['dtype'], device=state['device'],
                      gravity=state['gravity'], traced=state['traced'])

    def to(self, device) -> 'RigidBodyDynamics':
        """The same robot on ``device`` (a new instance; recordings are made there on first use)."""
        return RigidBodyDynamics(self.path, self.joint_names, dtype=self.dtype, device=device,
                                 gravity=self.gravity, traced=self.traced)

    @property
    def link_names(self) -> list[str]:
        return list(self._node_links)

    def _set_inertias(self, mass_scale: dict, payloads: dict) -> None:
        """Replace adam's cached link spatial inertias by  scale * (the file's) + point payloads
        (unbatched: (6, 6) each); links not named keep the file's."""
        from adam.pytorch.torch_like import TorchLike
        inertias = self._kindyn.rbdalgos._spatial_inertias
        for index, name in enumerate(self._node_links):
            base = self._base_inertias[index]
            value = base.array
            if name in mass_scale:
                value = mass_scale[name] * value
            if name in payloads:
                mass, center = payloads[name]
                value = value + point_mass_inertia(mass, center)
            inertias[index] = base if value is base.array else TorchLike(value)

    def mass_matrix_and_bias(self, position: torch.Tensor, velocity: torch.Tensor, *,
                             mass_scale: Optional[dict] = None,
                             payloads: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """M (B, n, n) and h (B, n) at joint positions and velocities (B, n), with link inertias
        scale * (the file's) + point payloads.  ``mass_scale``: link -> tensor () or (B,);
        ``payloads``: link -> (mass () or (B,), centre (3,) or (B, 3) in the link frame).
        Gradients flow to all of them.  None: the file's values.

        Traced (the default): one replayed call whatever is given per sample (the link inertias
        (B, L, 6, 6) are an input of the recording; a per-sample centre is a per-sample inertia).
        Eager (``traced=False``): one value for the whole batch is one library call.  One value
        per sample uses that M and h are LINEAR in the link inertias (for fixed q, qd): M =
        M(other links) + sum_k scale_k M(link k alone) + sum_j mass_j M(unit payload j alone),
        one library call per term, and a per-sample centre is a sum over the payload's moments
        (``payload_moments``: 3 to 10 calls) -- adam's algorithms take one inertia per link, not
        one per sample."""
        mass_scale, payloads = self._checked_inputs(mass_scale, payloads)
        as_tensor = lambda value: torch.as_tensor(value, dtype=self.dtype, device=self.device)
        if self.traced:
            return self._replay(position, velocity, self.link_inertias(mass_scale, payloads))
        batched = (any(v.ndim for v in mass_scale.values())
                   or any(m.ndim or c.ndim > 1 for m, c in payloads.values()))
        if not batched:
            self._set_inertias(mass_scale, payloads)
            return self._mass_matrix_and_bias(position, velocity)
        zero, one = as_tensor(0.0), as_tensor(1.0)
        everything_off = {name: zero for name in self._node_links}
        self._set_inertias({name: zero for name in mass_scale}, {})
        mass_matrix, bias = self._mass_matrix_and_bias(position, velocity)
        for name, scale in mass_scale.items():
            self._set_inertias({**everything_off, name: one}, {})
            part_mass, part_bias = self._mass_matrix_and_bias(position, velocity)
            mass_matrix = mass_matrix + scale[..., None, None] * part_mass
            bias = bias + scale[..., None] * part_bias
        for name, (mass, center) in payloads.items():
            if center.ndim > 1:          # one centre per sample: a sum over the payload's moments
                for weight, inertia in payload_moments(mass, center):
                    part_mass, part_bias = self._single_link_terms(name, inertia, position, velocity)
                    mass_matrix = mass_matrix + weight[..., None, None] * part_mass
                    bias = bias + weight[..., None] * part_bias
                continue
            self._set_inertias(everything_off, {name: (one, center)})
            part_mass, part_bias = self._mass_matrix_and_bias(position, velocity)
            mass_matrix = mass_matrix + mass[..., None, None] * part_mass
            bias = bias + mass[..., None] * part_bias
        self._set_inertias({}, {})
        return mass_matrix, bias

    def link_inertias(self, mass_scale: dict, payloads: dict) -> torch.Tensor:
        """Spatial inertias (L, 6, 6), or (B, L, 6, 6) when a value is given per sample, of every
        link (``link_names`` order): scale * (the file's) + point payloads (tensors, as
        ``mass_matrix_and_bias`` takes them)."""
        if not mass_scale and not payloads:
            return self._base_stack
        links = []
        for index, name in enumerate(self._node_links):
            value = self._base_stack[index]
            if name in mass_scale:
                value = mass_scale[name][..., None, None] * value
            if name in payloads:
                mass, center = payloads[name]
                shape = torch.broadcast_shapes(mass.shape, center.shape[:-1])     # mass or centre per sample
                value = value + point_mass_inertia(mass.expand(shape), center.expand(shape + (3,)))
            links.append(value)
        batch = torch.broadcast_shapes(*(link.shape[:-2] for link in links))
        return torch.stack([link.expand(batch + (6, 6)) for link in links], -3)

    def gravity_torque(self, position: torch.Tensor, *, mass_scale: Optional[dict] = None,
                       payloads: Optional[dict] = None) -> torch.Tensor:
        """g(q) (B, n): h at zero joint velocity, the torque that holds the arm still (arguments as
        ``mass_matrix_and_bias``).  Traced, it replays a recording of adam's gravity term alone (its
        RNEA at zero velocity, without the mass matrix): on the iiwa at batch 64, 2.6 ms against
        4.0 ms for M + h (bench/results/urdf_compensation)."""
        if not self.traced:
            return self.mass_matrix_and_bias(position, torch.zeros_like(position),
                                             mass_scale=mass_scale, payloads=payloads)[1]
        mass_scale, payloads = self._checked_inputs(mass_scale, payloads)
        return self._replay(position, None, self.link_inertias(mass_scale, payloads))

    def _checked_inputs(self, mass_scale: Optional[dict], payloads: Optional[dict]) -> tuple[dict, dict]:
        """The links named checked (UrdfError otherwise) and every value as a tensor of our dtype."""
        mass_scale, payloads = dict(mass_scale or {}), dict(payloads or {})
        for name in list(mass_scale) + list(payloads):
            self.description.link(name, f'link {name!r}', needs_inertial=name in mass_scale)
        as_tensor = lambda value: torch.as_tensor(value, dtype=self.dtype, device=self.device)
        return ({name: as_tensor(value) for name, value in mass_scale.items()},
                {name: (as_tensor(mass), as_tensor(center)) for name, (mass, center) in payloads.items()})

    def _replay(self, position: torch.Tensor, velocity: Optional[torch.Tensor], inertias: torch.Tensor):
        """M and h (or g alone, when ``velocity`` is None) from the recording for this batch size
        (made on first use)."""
        batch = position.shape[0]
        inertias = inertias.to(self.dtype).expand((batch,) + self._base_stack.shape)
        gravity_only = velocity is None
        key = (batch, self.dtype, self.device, gravity_only)
        function = self._recordings.get(key)
        if function is None:
            with _SHARED_LOCK:
                function = _SHARED_RECORDINGS.get(self._robot + key)
            if function is None:
                function = self._record(position.detach(), None if gravity_only else velocity.detach(),
                                        inertias.detach())
                with _SHARED_LOCK:
                    function = _SHARED_RECORDINGS.setdefault(self._robot + key, function)
            self._recordings[key] = function
        arguments = ((position.to(self.dtype), inertias) if gravity_only
                     else (position.to(self.dtype), velocity.to(self.dtype), inertias))
        if self.device.type == 'cuda':
            with _without_gpu_fusion():
                return function(*arguments)
        return function(*arguments)

    def _record(self, position, velocity, inertias):
        """A torch.jit recording of adam's M + h at this batch size, inertias (B, L, 6, 6) as an input
        (``velocity`` None: of its gravity term alone, from q and the inertias).

        adam tiles each link inertia over the batch in its CRBA (``math.tile``); while recording,
        an inertia that already carries the batch dimension is passed through instead, so one
        inertia per sample is one call.  The library's cache is restored afterwards."""
        from adam.pytorch.torch_like import TorchLike
        algorithms = self._kindyn.rbdalgos
        library_math = algorithms.math
        original_tile = library_math.tile
        cached = list(algorithms._spatial_inertias)

        def tile(array, reps):
            return array if array.array.ndim > 2 else original_tile(array, reps)

        def use(link_inertias):
            for index in range(link_inertias.shape[1]):
                algorithms._spatial_inertias[index] = TorchLike(link_inertias[:, index])

        def computation(q, qd, link_inertias):
            use(link_inertias)
            return self._mass_matrix_and_bias(q, qd)

        def gravity(q, link_inertias):
            use(link_inertias)
            return self._gravity_term(q)

        inputs = (position, inertias) if velocity is None else (position, velocity, inertias)
        library_math.tile = tile
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')          # TracerWarnings about Python numbers recorded as constants
                recording = torch.jit.trace(gravity if velocity is None else computation, inputs, check_trace=False)
        finally:
            del library_math.tile                        # back to the class's method
            algorithms._spatial_inertias[:] = cached
        return _simplified(recording, inputs)

    def _single_link_terms(self, name: str, inertia: torch.Tensor, position: torch.Tensor, velocity: torch.Tensor):
        """M and h with every link's spatial inertia zero but ``name``'s, which is ``inertia``
        (6, 6; any symmetric matrix: the algorithms are linear in the inertias)."""
        from adam.pytorch.torch_like import TorchLike
        inertias = self._kindyn.rbdalgos._spatial_inertias
        for index, link in enumerate(self._node_links):
            inertias[index] = TorchLike(inertia if link == name else torch.zeros_like(self._base_inertias[index].array))
        return self._mass_matrix_and_bias(position, velocity)

    def _mass_matrix_and_bias(self, position: torch.Tensor, velocity: torch.Tensor):
        batch = position.shape[0]
        base = torch.eye(4, dtype=self.dtype, device=self.device).expand(batch, 4, 4)
        base_velocity = torch.zeros(batch, 6, dtype=self.dtype, device=self.device)
        mass_matrix = self._kindyn.mass_matrix(base, position)[:, 6:, 6:]
        bias = self._kindyn.bias_force(base, position, base_velocity, velocity).reshape(batch, -1)[:, 6:]
        return mass_matrix, bias

    def _gravity_term(self, position: torch.Tensor) -> torch.Tensor:
        batch = position.shape[0]
        base = torch.eye(4, dtype=self.dtype, device=self.device).expand(batch, 4, 4)
        return self._kindyn.gravity_term(base, position).reshape(batch, -1)[:, 6:]

    def link_poses(self, position: torch.Tensor) -> dict:
        """World homogeneous transforms (B, 4, 4) of every link at joint positions (B, n)."""
        batch = position.shape[0]
        base = torch.eye(4, dtype=self.dtype, device=self.device).expand(batch, 4, 4)
        return {name: self._kindyn.forward_kinematics(name, base, position) for name in self._node_links}


@contextlib.contextmanager
def _without_gpu_fusion():
    """torch's TensorExpr fuser off for the calls inside (restored after; see the module docstring)."""
    enabled = torch._C._jit_texpr_fuser_enabled()
    torch._C._jit_set_texpr_fuser_enabled(False)
    try:
        yield
    finally:
        torch._C._jit_set_texpr_fuser_enabled(enabled)


def _simplified(recording, inputs):
    """``recording`` with torch's graph passes applied: casts to the dtype and device a value already
    has removed, constants folded, common subexpressions merged, dead code removed.  The recording
    itself when the passes are unavailable (they are torch internals) or the simplified graph's
    output on ``inputs`` is not identical to the recording's."""
    try:
        graph = recording.graph.copy()
        for node in list(graph.nodes()):
            if node.kind() == 'aten::to':
                source, result = node.inputsAt(0).type(), node.output().type()
                if isinstance(source, torch._C.TensorType) and source.dtype() is not None \
                        and source.dtype() == result.dtype() and source.device() == result.device():
                    node.output().replaceAllUsesWith(node.inputsAt(0))
        for simplify in (torch._C._jit_pass_dce, torch._C._jit_pass_constant_propagation,
                         torch._C._jit_pass_cse, torch._C._jit_pass_dce):
            simplify(graph)
        function = torch._C._create_function_from_graph(f'urdf_dynamics_{id(graph)}', graph)
        with torch.no_grad():
            expected, got = recording(*inputs), function(*inputs)
        if isinstance(expected, torch.Tensor):
            expected, got = (expected,), (got,)
        if all(torch.equal(a, b) for a, b in zip(expected, got)):
            return function
    except (AttributeError, RuntimeError):
        pass
    return recording
