"""The URDF robot: reading and resolving the file, the rigid-body library (adam-robotics) and its
two fixes, the differentiable simulator against pybullet at identical parameters, and its
gradients against float64 finite differences."""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pybullet_data
import pytest
import torch

from sim2real_bilevel.core.generators.robots import random_robot
from sim2real_bilevel.core.robots.urdf_robot import PybulletRobot, pybullet_urdf_text, urdf_with_inertials
from sim2real_bilevel.core.urdf_model import PhysicalEntry, UrdfModel, UrdfSimulatorSettings
from sim2real_bilevel.core.urdf_robot import (RigidBodyDynamics, UrdfError, _without_gpu_fusion,
                                              normalised_urdf_text, read_urdf, resolve_urdf)

SHARE = Path(__file__).resolve().parents[1] / 'urdf'
DATA = Path(pybullet_data.getDataPath())
ROBOTS = {
    'pendulum': (SHARE / 'pendulum.urdf', ['pendulum_joint']),
    'acrobot': (SHARE / 'acrobot.urdf', ['shoulder', 'elbow']),
    'cartpole': (DATA / 'cartpole.urdf', ['slider_to_cart', 'cart_to_pole']),
    'iiwa': (DATA / 'kuka_iiwa' / 'model.urdf', [f'lbr_iiwa_joint_{i}' for i in range(1, 8)]),
    # robots this package was not written for, as a user brings them: the panda's meshes are
    # package:// URIs of no ROS package, its two finger joints are not controlled and a link is
    # massless; the xarm6 has <transmission> elements and two non-physical inertias (repaired)
    'panda': (DATA / 'franka_panda' / 'panda.urdf', [f'panda_joint{i}' for i in range(1, 8)]),
    'xarm6': (DATA / 'xarm' / 'xarm6_robot.urdf', [f'joint{i}' for i in range(1, 7)]),
}


def make_model(robot, *, physical=(), substeps=10, implicit=False, damping=None, friction=None, dtype=None,
               implicit_friction=True):
    """The simulator of ``robot``: a name of ROBOTS or a (URDF path, joints) pair."""
    path, joints = ROBOTS[robot] if isinstance(robot, str) else robot
    description = read_urdf(path)
    n = len(joints)
    dynamics = RigidBodyDynamics(path, joints)
    settings = UrdfSimulatorSettings(control_period=0.01, physics_substeps=substeps, effort_limit=(1e6,) * n,
                                     implicit_damping=implicit, implicit_friction=implicit_friction)
    return UrdfModel(dynamics, settings, physical, ['angle', 'velocity', 'effort'], [1e-3] * (2 * n),
                     default_damping=damping if damping is not None else [description.joints[j].damping for j in joints],
                     default_friction=friction if friction is not None else [0.0] * n,
                     joint_lower=[-math.inf] * n, joint_upper=[math.inf] * n,
                     angular=[description.joints[j].type != 'prismatic' for j in joints])


def adam_directly(urdf: Path, joints) -> subprocess.CompletedProcess:
    """adam-robotics 0.5.0 on the unmodified file, in a fresh interpreter (our fixes patch it)."""
    code = ('import sys, torch; from adam.pytorch import KinDynComputationsBatch\n'
            f'k = KinDynComputationsBatch({str(urdf)!r}, {list(joints)!r}, device=torch.device("cpu"), dtype=torch.float64)\n'
            'q = torch.zeros(3, len(k.rbdalgos.model.actuated_joints), dtype=torch.float64)\n'
            'k.mass_matrix(torch.eye(4, dtype=torch.float64).expand(3, 4, 4), q)\n')
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)


def test_adam_fails_on_an_inertial_without_origin_and_the_normalised_text_fixes_it():
    # The pendulum's base link has <inertial> without <origin> (legal URDF; the origin is zero).
    assert '<origin' not in (SHARE / 'pendulum.urdf').read_text().split('<link name="pendulum_link">')[0]
    result = adam_directly(SHARE / 'pendulum.urdf', ['pendulum_joint'])
    assert result.returncode != 0 and 'AttributeError' in result.stderr
    assert normalised_urdf_text(SHARE / 'pendulum.urdf').count('<origin xyz="0 0 0" rpy="0 0 0"') == 1
    mass, _ = RigidBodyDynamics(*ROBOTS['pendulum']).mass_matrix_and_bias(torch.zeros(1, 1, dtype=torch.float64),
                                                                          torch.zeros(1, 1, dtype=torch.float64))
    assert mass.shape == (1, 1, 1) and float(mass) > 0


def test_adam_fails_on_a_prismatic_joint_and_the_patch_fixes_it():
    normalised = Path(pybullet_data.getDataPath()) / 'cartpole.urdf'
    result = adam_directly(normalised, ROBOTS['cartpole'][1])
    assert result.returncode != 0 and 'Error' in result.stderr
    dynamics = RigidBodyDynamics(*ROBOTS['cartpole'])
    mass, bias = dynamics.mass_matrix_and_bias(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))
    # the cart and the pole move together along x: M[0, 0] is the total mass 1.1 kg
    assert torch.allclose(mass[:, 0, 0], torch.full((4,), 1.1, dtype=torch.float64))


def errors_against_pybullet(path, joints, states: int = 4, seed: int = 3, mass_scale=None, payloads=None) -> dict:
    """Max |simulator - pybullet| at identical parameters over ``states`` random states: the mass
    matrix, the bias forces, and every link's frame (position and rotation matrix entries; the
    simulator's ``link_poses``, what rviz is sent, against pybullet's URDF link frames).  With
    ``mass_scale``/``payloads``: the simulator's inertia override against the stand-in's rewrite."""
    import pybullet
    mass_scale, payloads = mass_scale or {}, payloads or {}
    dynamics = RigidBodyDynamics(path, joints)
    reference = PybulletRobot(urdf_with_inertials(path, mass_scale, payloads), joints, gravity=9.81, time_step=0.001)
    rng = np.random.default_rng(seed)
    q, qd = rng.uniform(-1, 1, (states, len(joints))), rng.uniform(-2, 2, (states, len(joints)))
    mass, bias = dynamics.mass_matrix_and_bias(torch.as_tensor(q), torch.as_tensor(qd), mass_scale=mass_scale,
                                               payloads=payloads)
    poses = dynamics.link_poses(torch.as_tensor(q))
    errors = {'mass': 0.0, 'bias': 0.0, 'pose': 0.0}
    for i in range(states):
        errors['mass'] = max(errors['mass'], np.abs(mass[i].numpy() - reference.mass_matrix(q[i])).max())
        errors['bias'] = max(errors['bias'], np.abs(bias[i].numpy() - reference.bias(q[i], qd[i])).max())
        reference.set_state(q[i], qd[i])
        for link, index in pybullet_links(reference.body, reference._client).items():
            if index < 0:
                continue
            frame = reference.call(pybullet.getLinkState, reference.body, index, computeForwardKinematics=True)
            rotation = np.reshape(pybullet.getMatrixFromQuaternion(frame[5]), (3, 3))
            pose = poses[link][i].numpy()
            errors['pose'] = max(errors['pose'], np.abs(pose[:3, 3] - frame[4]).max(), np.abs(pose[:3, :3] - rotation).max())
    reference.close()
    return errors


# pybullet reports link frames in single precision (~1e-7); M and h agree to ~1e-10 (random robots)
MASS_ATOL, BIAS_ATOL, POSE_ATOL = 1e-8, 1e-6, 1e-6
ROLLOUT_ATOL = 1e-6          # generated robots, 1 s (measured <= 3e-8 over 40)


@pytest.mark.parametrize('robot', list(ROBOTS))
@pytest.mark.filterwarnings('ignore:.*its inertia is not physical')       # the xarm6's, tested below
def test_mass_matrix_and_bias_match_pybullet(robot):
    errors = errors_against_pybullet(*ROBOTS[robot])
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, errors


@pytest.mark.parametrize('seed, options', [(seed, {}) for seed in range(10)] + [
    (10, {'axis_length': 2.5, 'axisless': 0.5, 'originless': 0.5}),
    (11, {'axis_length': 0.3, 'axisless': 0.5, 'originless': 0.5})])
@pytest.mark.filterwarnings('ignore:.*normalised to unit length')          # axis_length: tested below
def test_generated_robots_match_pybullet(tmp_path, seed, options):
    """Random kinematic trees (``core/generators/robots.py``): revolute, continuous, prismatic and
    fixed joints with rotated origins and random axes, links with rotated inertial frames and
    full inertias -- what users' files have and the shipped robots mostly do not.  Before the
    fixes this caught, 11 of 40 such robots differed from pybullet by up to 3.9 in M (a prismatic
    joint with a rotated origin, adam), and every robot whose base inertial is rotated differed in
    h (pybullet turned the robot) -- ``bench/results/urdf_generated_robots/``."""
    robot = random_robot(seed, **options)
    path = tmp_path / 'robot.urdf'
    path.write_text(robot.text)
    errors = errors_against_pybullet(path, robot.joints)
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, (robot.types, errors)
    # theta's inertia entries: the simulator's override against the stand-in's rewritten file (the
    # first link drawn carries a payload, the last is scaled; rotated inertial frames included)
    errors = errors_against_pybullet(path, robot.joints, mass_scale={robot.links[-1]: 1.4},
                                     payloads={'link1': (0.8, (0.05, -0.1, 0.2))})
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, (robot.types, errors)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
@pytest.mark.filterwarnings('ignore:.*normalised to unit length')
def test_generated_robots_roll_out_as_pybullet(tmp_path, seed):
    """1 s of the simulator's own integrator and joint damping (the file's, random per joint) on a
    generated robot against pybullet's (``rollout_error``)."""
    robot = random_robot(seed)
    path = tmp_path / 'robot.urdf'
    path.write_text(robot.text)
    assert '<dynamics damping=' in robot.text
    assert rollout_error((path, list(robot.joints)), 1.0) < ROLLOUT_ATOL


@pytest.mark.slow
@pytest.mark.parametrize('seed', range(12, 52))
@pytest.mark.filterwarnings('ignore:.*normalised to unit length')
def test_forty_more_generated_robots_match_pybullet_and_roll_out_alike(tmp_path, seed):
    """The fast suite's generated-robot checks at the benchmark's scale (``bench/urdf_generated_robots.py``)."""
    robot = random_robot(seed, axis_length=1.5, axisless=0.25, originless=0.25)
    path = tmp_path / 'robot.urdf'
    path.write_text(robot.text)
    errors = errors_against_pybullet(path, robot.joints)
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, (robot.types, errors)
    assert rollout_error((path, list(robot.joints)), 1.0) < ROLLOUT_ATOL


SLIDE_THEN_TURN = """<?xml version="1.0"?>
<robot name="slide_then_turn">
  <link name="base"><inertial><origin xyz="0.1 0 0" rpy="0.4 -0.3 1.2"/><mass value="2"/>
    <inertia ixx="0.02" ixy="0" ixz="0" iyy="0.03" iyz="0" izz="0.04"/></inertial></link>
  <link name="carriage"><inertial><mass value="1"/><inertia ixx="0.01" ixy="0" ixz="0" iyy="0.01" iyz="0" izz="0.01"/></inertial></link>
  <link name="arm"><inertial><origin xyz="0.3 0 0"/><mass value="0.5"/>
    <inertia ixx="0.001" ixy="0" ixz="0" iyy="0.01" iyz="0" izz="0.01"/></inertial></link>
  <joint name="slide" type="prismatic"><parent link="base"/><child link="carriage"/>
    <origin xyz="0 0 0.2" rpy="0 0 1.5707963267948966"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1" effort="100" velocity="1"/></joint>
  <joint name="turn" type="continuous"><parent link="carriage"/><child link="arm"/><axis xyz="AXIS"/></joint>
</robot>
"""


def test_a_prismatic_joint_slides_along_its_axis_in_the_joint_frame(tmp_path):
    """URDF gives a joint's axis in the joint frame, after its origin's rotation: the slide's
    origin turns x into the world's y, so at slide = 0.5 the arm's pivot is at y = 0.5 and, for an
    arm pointing along x, M[turn, turn] is independent of the slide.  adam translates along the
    unrotated axis (x); its bias then disagreed with pybullet's."""
    path = tmp_path / 'robot.urdf'
    path.write_text(SLIDE_THEN_TURN.replace('AXIS', '0 0 1'))
    dynamics = RigidBodyDynamics(path, ['slide', 'turn'])
    pivot = dynamics.link_poses(torch.tensor([[0.5, 0.0]], dtype=torch.float64))['arm'][0, :3, 3]
    np.testing.assert_allclose(pivot.numpy(), [0.0, 0.5, 0.2], atol=1e-12)
    errors = errors_against_pybullet(path, ['slide', 'turn'])
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, errors


def test_a_rotated_base_inertial_does_not_turn_the_stand_in(tmp_path):
    """pybullet places a fixed base by its inertial frame: a base <inertial> with rpy turned the
    stand-in's whole robot, and gravity against it.  The stand-in's text puts the root's inertial
    in the link's axes (same mass and inertia): the gravity torque is the file's."""
    path = tmp_path / 'robot.urdf'
    path.write_text(SLIDE_THEN_TURN.replace('AXIS', '1 0 0'))
    reference = PybulletRobot(urdf_with_inertials(path, {}, {}), ['slide', 'turn'], gravity=9.81, time_step=0.001)
    # the slide's origin turns x into the world's y: the slide moves along world y, the arm turns
    # about world y with its centre of mass on that axis, so gravity (-z) loads neither joint
    for position in ([0.3, 0.0], [-0.5, 1.0], [0.0, 2.5]):
        np.testing.assert_allclose(reference.bias(position, [0.0, 0.0]), [0.0, 0.0], atol=1e-9)
    reference.close()
    assert '<origin xyz="0.1 0 0" rpy="0.4 -0.3 1.2"/>' not in pybullet_urdf_text(path.read_text(), ['slide', 'turn'])


def test_joint_axes_are_unit_on_both_sides_and_a_zero_axis_is_an_error(tmp_path):
    path = tmp_path / 'robot.urdf'
    path.write_text(SLIDE_THEN_TURN.replace('AXIS', '0 0 2'))
    with pytest.warns(UserWarning, match=r"joint 'turn' axis '0 0 2' has length 2: normalised to unit length"):
        errors = errors_against_pybullet(path, ['slide', 'turn'])
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, errors
    path.write_text(SLIDE_THEN_TURN.replace('<axis xyz="AXIS"/>', ''))            # URDF's default: 1 0 0
    assert re.search(r'<joint name="turn" type="continuous">.*<axis xyz="1.0 0.0 0.0" />', normalised_urdf_text(path),
                     re.S)
    errors = errors_against_pybullet(path, ['slide', 'turn'])
    assert errors['mass'] < MASS_ATOL and errors['bias'] < BIAS_ATOL and errors['pose'] < POSE_ATOL, errors
    path.write_text(SLIDE_THEN_TURN.replace('AXIS', '0 0 0'))
    with pytest.raises(UrdfError, match=r"robot.urdf: joint 'turn' axis xyz: '0 0 0': expected a non-zero direction"):
        read_urdf(path)


def traced_and_eager(robot):
    """The robot's file and joints, its dynamics replayed and eager, a link to scale and one to load."""
    path, joints = ROBOTS[robot]
    traced, eager = RigidBodyDynamics(path, joints), RigidBodyDynamics(path, joints, traced=False)
    links = [name for name in traced.link_names if traced.description.links[name].mass]
    return path, joints, traced, eager, links[-1], links[len(links) // 2]


@pytest.mark.parametrize('robot', ['pendulum', 'cartpole', 'iiwa'])
def test_replayed_recording_equals_the_library_values_and_derivatives(robot):
    """The recorded (torch.jit) M + h equals adam's eager call: values, first and second
    derivatives w.r.t. q, qd, a mass scale and a payload (its mass and centre), shared and per
    sample (a per-sample centre: one replayed call against the eager sum over its moments)."""
    path, joints, traced, eager, scaled, loaded = traced_and_eager(robot)
    n = len(joints)
    rng = np.random.default_rng(7)

    def outputs(dynamics, q, qd, scale, mass, center):
        M, h = dynamics.mass_matrix_and_bias(q, qd, mass_scale={scaled: scale}, payloads={loaded: (mass, center)})
        value = (M * torch.linspace(0.5, 1.5, n * n, dtype=torch.float64).reshape(n, n)).sum() + (h ** 2).sum()
        inputs = (q, qd, scale, mass, center)
        first = torch.autograd.grad(value, inputs, create_graph=True)
        second = torch.autograd.grad(sum((g ** 2).sum() for g in first), inputs)
        return [M, h, *first, *second]

    for batch, per_sample in ((3, False), (4, True)):
        q, qd = (torch.as_tensor(rng.uniform(-1, 1, (batch, n))).requires_grad_(True) for _ in range(2))
        shape = (batch,) if per_sample else ()
        scale = torch.as_tensor(rng.uniform(0.5, 2.0, shape)).requires_grad_(True)
        mass = torch.as_tensor(rng.uniform(0.1, 1.0, shape)).requires_grad_(True)
        center = torch.as_tensor(rng.uniform(-0.05, 0.05, shape + (3,))).requires_grad_(True)
        for _ in range(2):                     # the first call records, the second replays
            got = outputs(traced, q, qd, scale, mass, center)
        expected = outputs(eager, q, qd, scale, mass, center)
        for a, b in zip(got, expected):       # rounding only: relative to the tensor's largest entry
            a, b = a.detach(), b.detach()
            assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-10 * float(b.abs().max()) + 1e-12
    assert set(traced._recordings) == {(3, torch.float64, torch.device('cpu'), False),
                                       (4, torch.float64, torch.device('cpu'), False)}


def test_instances_of_a_robot_share_their_recordings():
    """torch keeps every recording for the life of the process: a second instance of the same
    robot (another node's problem in a container) replays the first one's; another gravity is
    another robot."""
    path, joints = ROBOTS['acrobot']
    first, second = RigidBodyDynamics(path, joints), RigidBodyDynamics(path, joints)
    moon = RigidBodyDynamics(path, joints, gravity=1.62)
    q = torch.as_tensor(np.random.default_rng(2).uniform(-1, 1, (6, 2)))
    at_rest = {name: dynamics.mass_matrix_and_bias(q, torch.zeros_like(q))[1]
               for name, dynamics in (('first', first), ('second', second), ('moon', moon))}
    key = (6, torch.float64, torch.device('cpu'), False)
    assert second._recordings[key] is first._recordings[key]
    assert moon._recordings[key] is not first._recordings[key]
    torch.testing.assert_close(at_rest['second'], at_rest['first'], rtol=0, atol=0)
    torch.testing.assert_close(at_rest['moon'], at_rest['first'] * 1.62 / 9.81)     # gravity alone at rest


@pytest.mark.parametrize('robot', ['acrobot', 'iiwa'])
def test_gravity_torque_is_the_bias_at_rest_from_its_own_recording(robot):
    """``gravity_torque`` (a recording of adam's gravity term alone, used for the controller's
    gravity compensation) equals h at zero velocity from the eager library call and from pybullet:
    values, and first and second derivatives w.r.t. q, a mass scale and a payload."""
    path, joints, traced, eager, scaled, loaded = traced_and_eager(robot)
    n = len(joints)
    rng = np.random.default_rng(11)
    q = torch.as_tensor(rng.uniform(-1, 1, (5, n))).requires_grad_(True)
    scale = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    mass = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    center = torch.tensor([0.01, -0.02, 0.05], dtype=torch.float64, requires_grad=True)
    inputs = (q, scale, mass, center)
    weights = torch.linspace(0.5, 1.5, n, dtype=torch.float64)

    def outputs(g):
        first = torch.autograd.grad(((g * weights) ** 2).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum((d ** 2).sum() for d in first), inputs)
        return [g, *first, *second]

    arguments = dict(mass_scale={scaled: scale}, payloads={loaded: (mass, center)})
    for _ in range(2):                         # the first call records, the second replays
        got = outputs(traced.gravity_torque(q, **arguments))
    expected = outputs(eager.mass_matrix_and_bias(q, torch.zeros_like(q), **arguments)[1])
    for a, b in zip(got, expected):
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-10 * float(b.abs().max()) + 1e-12
    assert (5, torch.float64, torch.device('cpu'), True) in traced._recordings
    reference = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001)
    plain = traced.gravity_torque(q.detach())
    for i in range(len(q)):
        at_rest = reference.bias(q[i].detach().numpy(), np.zeros(n))
        np.testing.assert_allclose(plain[i].numpy(), at_rest, atol=1e-5)
        assert np.abs(at_rest).max() > 0.1          # gravity acts on these poses
    reference.close()


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
def test_model_moved_to_a_device_steps_as_the_original(device):
    """``UrdfModel.to(device)``: the same robot and settings with its dynamics rebuilt there; a
    step with a mass scale and damping entry gives the original's values (CUDA runs where present)."""
    path, joints = ROBOTS['acrobot']
    n = len(joints)
    dynamics = RigidBodyDynamics(path, joints, gravity=9.5)
    physical = [PhysicalEntry('mass_scale', link=dynamics.link_names[-1]), PhysicalEntry('damping', joints=(0, 1))]
    model = UrdfModel(dynamics, UrdfSimulatorSettings(control_period=0.02, physics_substeps=2, effort_limit=(5.0,) * n),
                      physical, [], [1e-3] * (2 * n), default_damping=[0.0] * n, default_friction=[0.0] * n,
                      joint_lower=[-math.inf] * n, joint_upper=[math.inf] * n, angular=[True] * n)
    moved = model.to(device)
    assert moved.dynamics is not dynamics and moved.dynamics.device == torch.device(device)
    assert (moved.dynamics.gravity, moved.dynamics.joint_names, moved.dynamics.traced) == (9.5, tuple(joints), True)
    assert model.dynamics is dynamics                       # the original is untouched
    rng = np.random.default_rng(3)
    state, action = torch.as_tensor(rng.uniform(-1, 1, (5, 2 * n))), torch.as_tensor(rng.uniform(-2, 2, (5, n)))
    theta = torch.log(torch.tensor([1.3, 0.2], dtype=torch.float64))
    expected = model.step_mean(state, action, theta)
    for _ in range(2):                                      # recording, then replay
        got = moved.step_mean(state.to(device), action.to(device), theta.to(device))
    assert got.device.type == device
    assert float((got.cpu() - expected).abs().max()) <= 1e-10


def test_gpu_fusion_switch_is_restored_after_an_error():
    before = torch._C._jit_texpr_fuser_enabled()
    with pytest.raises(RuntimeError, match='inside'):
        with _without_gpu_fusion():
            assert torch._C._jit_texpr_fuser_enabled() is False
            raise RuntimeError('inside')
    assert torch._C._jit_texpr_fuser_enabled() == before


def test_mass_scale_and_payload_match_pybullet_on_the_rewritten_urdf():
    """The simulator's inertia override and the stand-in's URDF rewrite describe the same robot."""
    path, joints = ROBOTS['iiwa']
    dynamics = RigidBodyDynamics(path, joints)
    scale, payload = {'lbr_iiwa_link_3': 1.3}, {'lbr_iiwa_link_7': (1.5, (0.02, -0.01, 0.08))}
    reference = PybulletRobot(urdf_with_inertials(path, scale, payload), joints, gravity=9.81, time_step=0.001)
    plain = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001)
    rng = np.random.default_rng(4)
    q, qd = rng.uniform(-1, 1, (3, 7)), rng.uniform(-1, 1, (3, 7))
    mass, bias = dynamics.mass_matrix_and_bias(torch.as_tensor(q), torch.as_tensor(qd), mass_scale=scale,
                                               payloads=payload)
    # one value per sample (the linear decomposition) gives the same
    batched_mass, batched_bias = dynamics.mass_matrix_and_bias(
        torch.as_tensor(q), torch.as_tensor(qd), mass_scale={k: torch.full((3,), v) for k, v in scale.items()},
        payloads={k: (torch.full((3,), m), c) for k, (m, c) in payload.items()})
    torch.testing.assert_close(batched_mass, mass)
    torch.testing.assert_close(batched_bias, bias)
    for i in range(3):
        np.testing.assert_allclose(mass[i].numpy(), reference.mass_matrix(q[i]), atol=1e-9)
        np.testing.assert_allclose(bias[i].numpy(), reference.bias(q[i], qd[i]), atol=1e-5)
        assert np.abs(mass[i].numpy() - plain.mass_matrix(q[i])).max() > 1e-2     # the payload matters
    reference.close()
    plain.close()


def rollout_error(robot, seconds, seed=0):
    """Max |state error| after ``seconds`` of the simulator (explicit damping, pybullet's scheme, 1 ms)
    against pybullet at identical parameters, under gravity compensation (updated every control
    period) plus a small random torque, so that no joint reaches a position limit (pybullet
    enforces them; without compensation the iiwa falls onto joint 4's limit within 0.9 s)."""
    path, joints = ROBOTS[robot] if isinstance(robot, str) else robot
    # the xarm6's URDF damps its wrist (izz 8e-5 kg m2) by 1 N m s: b dt / I = 12.5 at 1 ms, where
    # the explicit step (both sides') diverges, so it is compared undamped
    model = make_model(robot, damping=[0.0] * len(joints) if robot == 'xarm6' else None)
    damping = model._default['damping'].numpy()
    reference = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001,
                              joint_damping=damping)
    rng = np.random.default_rng(seed)
    n = len(joints)
    # around 0, or the middle of a joint range that keeps 0 within 0.5 of a limit (the xarm6's joint 3)
    limits = [read_urdf(path).joints[name] for name in joints]
    centre = np.array([0.0 if j.lower + 0.5 <= 0.0 <= j.upper - 0.5 else (j.lower + j.upper) / 2 for j in limits])
    q0, qd0 = centre + rng.uniform(-0.4, 0.4, n), rng.uniform(-0.3, 0.3, n)
    # +-0.2 N m, less on a joint moving under 0.1 kg m2 (the xarm6's wrist, 8e-5: 0.2 N m would spin
    # it onto its limit within 0.3 s)
    extra = rng.uniform(-0.2, 0.2, n) * np.minimum(1.0, 10 * np.diag(reference.mass_matrix(q0)))
    reference.set_state(q0, qd0)
    state = torch.as_tensor(np.concatenate([q0, qd0]))[None]
    coefficients = model.coefficients(torch.zeros(0, dtype=torch.float64))
    for _ in range(int(round(seconds / 0.01))):
        # the same torque to both, held for a control period: gravity compensation at the
        # reference's state plus the random part
        torque = reference.bias(reference.state()[0], np.zeros(n)) + extra
        for _ in range(10):
            reference.step(torque)
        state = model.step_mean_with(state, torch.as_tensor(torque)[None], coefficients)
    error = np.abs(state[0].numpy() - np.concatenate(reference.state())).max()
    reference.close()
    return error


@pytest.mark.parametrize('robot', ['pendulum', 'acrobot', 'cartpole'])
def test_short_rollout_matches_pybullet(robot):
    assert rollout_error(robot, 0.2) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize('robot', list(ROBOTS))
@pytest.mark.filterwarnings('ignore:.*its inertia is not physical')
def test_one_second_rollout_matches_pybullet(robot):
    assert rollout_error(robot, 1.0) < 1e-4


def test_implicit_damping_is_stable_where_explicit_euler_diverges():
    """iiwa: URDF damping 0.5 on link 7 (inertia ~1e-3) at dt = 10 ms."""
    q0 = torch.zeros(1, 14, dtype=torch.float64)
    q0[0, 13] = 1.0                        # joint 7 spinning at 1 rad/s
    finals = {}
    for implicit in (False, True):
        model = make_model('iiwa', substeps=1, implicit=implicit)
        coefficients = model.coefficients(torch.zeros(0, dtype=torch.float64))
        state = q0
        for _ in range(50):
            state = model.step_mean_with(state, torch.zeros(1, 7, dtype=torch.float64), coefficients)
        finals[implicit] = float(state[0, 13].abs())
    assert finals[True] < 1.0 and not finals[False] < 10.0      # implicit: decays; explicit: grows (or nan)


def test_implicit_friction_holds_a_joint_at_rest_where_explicit_friction_chatters():
    """iiwa at dt = 10 ms with 1 N m of Coulomb friction on every joint (v_s = 0.05 rad/s): link 7's
    friction slope f / v_s = 20 N m s against its inertia ~1e-3 / dt.  Explicit friction multiplies a
    velocity error at rest by ~1 - dt f / (I v_s) each step, so a 1e-3 rad/s nudge grows into a
    chatter as large as the friction can drive in one step, and the step's Jacobian has eigenvalues far
    outside the unit circle.  The implicit step is no less stable than the frictionless arm (which
    leaves its upright pose under gravity: eigenvalues slightly above 1) and slower than it."""
    nudge = torch.zeros(1, 14, dtype=torch.float64)
    nudge[0, 7:] = 1e-3
    zero = torch.zeros(1, 7, dtype=torch.float64)
    speeds, radii = {}, {}
    for label, friction, implicit_friction in (('explicit', 1.0, False), ('implicit', 1.0, True),
                                               ('frictionless', 0.0, True)):
        model = make_model('iiwa', substeps=1, implicit=True, friction=[friction] * 7, implicit_friction=implicit_friction)
        coefficients = model.coefficients(torch.zeros(0, dtype=torch.float64))
        state = nudge
        for _ in range(20):
            state = model.step_mean_with(state, zero, coefficients)
        speeds[label] = float(state[0, 7:].abs().max())
        jacobian = torch.autograd.functional.jacobian(lambda s: model.step_mean_with(s, zero, coefficients), nudge)
        radii[label] = float(np.abs(np.linalg.eigvals(jacobian[0, :, 0, :].numpy())).max())
    assert radii['explicit'] > 10.0 and speeds['explicit'] > 0.1
    assert radii['implicit'] <= radii['frictionless'] + 1e-9 < 1.1
    assert speeds['implicit'] <= speeds['frictionless']


def test_implicit_friction_solves_its_equation_and_never_reverses_one_joint():
    """The returned velocity zeroes G(v) = E (v - free) / dt + f tanh(v / v_s); for one joint it is the
    root found by bisection, keeps the sign of the frictionless velocity and never exceeds it in size."""
    from sim2real_bilevel.core.urdf_model import implicit_friction_velocity
    generator = torch.Generator().manual_seed(0)
    dt, scale = 0.04, 0.05
    square = torch.randn(16, 3, 3, dtype=torch.float64, generator=generator)
    effective = 0.01 * square @ square.transpose(-1, -2) + 0.02 * torch.eye(3, dtype=torch.float64)
    free = 2.0 * torch.randn(16, 3, dtype=torch.float64, generator=generator)
    friction = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    v = implicit_friction_velocity(free, effective, friction, scale, dt)
    residual = (effective @ (v - free)[..., None])[..., 0] / dt + friction * torch.tanh(v / scale)
    assert float(residual.abs().max()) < 1e-9
    inertia, force = 0.02, 1.0
    one = torch.tensor([[0.5], [-3.0], [20.0], [1e-4]], dtype=torch.float64)      # rad/s without friction
    v1 = implicit_friction_velocity(one, torch.full((4, 1, 1), inertia, dtype=torch.float64),
                                    torch.tensor([force], dtype=torch.float64), scale, dt)
    for free_speed, found in zip(one[:, 0].tolist(), v1[:, 0].tolist()):
        low, high = min(0.0, free_speed), max(0.0, free_speed)        # G is increasing: bisect on [low, high]
        for _ in range(200):
            middle = 0.5 * (low + high)
            if inertia * (middle - free_speed) / dt + force * math.tanh(middle / scale) > 0:
                high = middle
            else:
                low = middle
        assert abs(found - low) < 1e-12 * (1 + abs(low))
        assert found * free_speed >= 0 and abs(found) <= abs(free_speed)


def test_implicit_friction_first_and_second_derivatives_match_float64_finite_differences():
    """The sensitivities differentiate the simulator twice (Hessian-vector products of J_sim, mixed in
    theta): the root's two differentiated Newton steps must carry exact second derivatives too."""
    physical = [PhysicalEntry('coulomb_friction', joints=(0, 1)), PhysicalEntry('damping', joints=(0, 1)),
                PhysicalEntry('motor_gain', joints=(0, 1))]
    model = make_model('acrobot', physical=physical, substeps=2, implicit=True)
    state = torch.tensor([[0.3, -0.2, 0.02, -0.01], [-0.1, 0.4, -0.2, 0.03]], dtype=torch.float64)
    action = torch.tensor([[0.2, -0.1], [0.05, 0.3]], dtype=torch.float64)
    theta = torch.log(torch.tensor([0.5, 0.02, 0.8], dtype=torch.float64)).requires_grad_(True)

    def step(theta, state, action):
        return model.step_mean(state, action, theta)

    inputs = (theta, state.clone().requires_grad_(True), action.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(step, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(step, inputs, eps=1e-6, atol=1e-5)


def test_step_gradients_match_float64_finite_differences():
    physical = [PhysicalEntry('mass_scale', link='upper_link'),
                PhysicalEntry('payload_mass', link='lower_link', center_of_mass=(0.0, 0.0, 0.5)),
                PhysicalEntry('damping', joints=(0, 1)), PhysicalEntry('coulomb_friction', joints=(0, 1)),
                PhysicalEntry('armature', joints=(1,)), PhysicalEntry('motor_gain', joints=(0, 1))]
    model = make_model('acrobot', physical=physical, substeps=2, implicit=True)
    state = torch.tensor([[0.3, -0.2, 0.5, -0.4], [-0.1, 0.4, -0.2, 0.3]], dtype=torch.float64)
    action = torch.tensor([[0.2, -0.1], [0.05, 0.3]], dtype=torch.float64)
    theta = torch.log(torch.tensor([1.2, 0.3, 0.05, 0.02, 0.01, 0.8], dtype=torch.float64)).requires_grad_(True)

    def step(theta, state, action):
        return model.step_mean(state, action, theta)

    assert torch.autograd.gradcheck(step, (theta, state.clone().requires_grad_(True),
                                           action.clone().requires_grad_(True)), eps=1e-6, atol=1e-6)
    # batched theta (one simulator per sample, as domain randomisation uses) == one by one
    batched = torch.stack([theta.detach(), theta.detach() + 0.1])
    together = model.step_mean(state, action, batched)
    alone = torch.cat([model.step_mean(state[i:i + 1], action[i:i + 1], batched[i]) for i in range(2)])
    torch.testing.assert_close(together, alone)


@pytest.mark.filterwarnings('ignore:.*normalised to unit length')
def test_step_gradients_match_float64_finite_differences_on_a_generated_robot(tmp_path):
    """The same on a generated robot (revolute, continuous and prismatic joints, rotated frames):
    every physical entry kind, the payload and the scaled link anywhere in the tree."""
    robot = random_robot(0)
    assert set(robot.types) == {'revolute', 'continuous', 'prismatic'}
    path = tmp_path / 'robot.urdf'
    path.write_text(robot.text)
    n = len(robot.joints)
    physical = [PhysicalEntry('mass_scale', link=robot.links[-1]),
                PhysicalEntry('payload_mass', link='link1', center_of_mass=(0.05, -0.1, 0.2)),
                PhysicalEntry('damping', joints=tuple(range(n))), PhysicalEntry('coulomb_friction', joints=tuple(range(n))),
                PhysicalEntry('armature', joints=(n - 1,)), PhysicalEntry('motor_gain', joints=tuple(range(n)))]
    model = make_model((path, list(robot.joints)), physical=physical, substeps=2, implicit=True)
    rng = np.random.default_rng(5)
    state = torch.as_tensor(rng.uniform(-0.5, 0.5, (2, 2 * n))).requires_grad_(True)
    action = torch.as_tensor(rng.uniform(-0.3, 0.3, (2, n))).requires_grad_(True)
    theta = torch.log(torch.tensor([1.2, 0.3, 0.05, 0.02, 0.01, 0.8], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda theta, state, action: model.step_mean(state, action, theta),
                                    (theta, state, action), eps=1e-6, atol=1e-6)


def delayed_model(substeps, max_delay=0.025):
    physical = [PhysicalEntry('delay'), PhysicalEntry('damping', joints=(0, 1)), PhysicalEntry('motor_gain', joints=(0, 1))]
    path, joints = ROBOTS['acrobot']
    n = len(joints)
    settings = UrdfSimulatorSettings(control_period=0.01, physics_substeps=substeps, effort_limit=(2.0,) * n)
    return UrdfModel(RigidBodyDynamics(path, joints), settings, physical, ['angle'], [1e-3] * (2 * n),
                     default_damping=[0.0] * n, default_friction=[0.0] * n, joint_lower=[-math.inf] * n,
                     joint_upper=[math.inf] * n, angular=[True] * n, max_delay=max_delay)


def test_actuation_delay_gradients_match_float64_finite_differences():
    """d/d(log delay), state, action and the previous commands of one delayed step (fractional
    delays, inside a substep and across command periods) against central finite differences."""
    model = delayed_model(substeps=3)
    assert model.action_history == 3                      # ceil(25 ms / 10 ms)
    state = torch.tensor([[0.3, -0.2, 0.5, -0.4], [-0.1, 0.4, -0.2, 0.3]], dtype=torch.float64)
    action = torch.tensor([[0.9, -0.7], [0.4, 1.1]], dtype=torch.float64)
    history = torch.as_tensor(np.random.default_rng(0).uniform(-1.5, 1.5, (2, 3, 2)))
    for delay in (0.0042, 0.0137, 0.0218):                # d / T = 0.42, 1.37, 2.18; d / dt not whole
        theta = torch.log(torch.tensor([delay, 0.05, 0.8], dtype=torch.float64)).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda th, s, a, h: model.step_mean(s, a, th, h),
                                        (theta, state.clone().requires_grad_(True), action.clone().requires_grad_(True),
                                         history.clone().requires_grad_(True)), eps=1e-7, atol=1e-6)
        # the delay matters: its derivative is not zero
        (gradient,) = torch.autograd.grad(model.step_mean(state, action, theta, history).sum(), theta)
        assert abs(float(gradient[0])) > 1e-4


def test_whole_period_delay_applies_an_earlier_command():
    """d = k T applies the command of k periods ago over the whole period (the stand-in's
    integer delay); a small fraction mixes in the next older command in proportion."""
    model = delayed_model(substeps=2)
    plain = make_model('acrobot', substeps=2, implicit=True, damping=[0.05, 0.05])
    state = torch.tensor([[0.3, -0.2, 0.5, -0.4]], dtype=torch.float64)
    action = torch.tensor([[0.9, -0.7]], dtype=torch.float64)
    history = torch.tensor([[[1.5, 0.2], [-0.6, 1.0], [0.3, -1.2]]], dtype=torch.float64)     # u_{k-3}, u_{k-2}, u_{k-1}
    gain = 0.8
    limit = 2.0

    def undelayed(command):                 # the same step with ``command`` applied throughout, no delay entry
        effort = gain * limit * torch.tanh(command / limit)          # the motor torque (plain: U = 1e6, gain 1)
        return plain.step_mean_with(state, effort, plain.coefficients(torch.zeros(0, dtype=torch.float64)))
    for periods, index in ((1, 2), (2, 1)):
        theta = torch.log(torch.tensor([periods * 0.01, 0.05, gain], dtype=torch.float64))
        torch.testing.assert_close(model.step_mean(state, action, theta, history), undelayed(history[:, index]),
                                   rtol=1e-12, atol=1e-12)
    # no history given = zeros before the episode: with d = 1 period the motor gets nothing
    theta = torch.log(torch.tensor([0.01, 0.05, gain], dtype=torch.float64))
    torch.testing.assert_close(model.step_mean(state, action, theta), undelayed(torch.zeros(1, 2, dtype=torch.float64)),
                               rtol=1e-12, atol=1e-12)
    # half a period (one substep of two): first substep u_{k-1}, second u_k -- differs from both
    theta = torch.log(torch.tensor([0.005, 0.05, gain], dtype=torch.float64))
    half = model.step_mean(state, action, theta, history)
    assert float((half - undelayed(action)).abs().max()) > 1e-5 and float((half - undelayed(history[:, 2])).abs().max()) > 1e-5
    with pytest.raises(ValueError, match=r'history of shape \(1, 2, 2\): expected \(\.\.\., 3, 2\)'):
        model.step_mean(state, action, theta, history[:, 1:])


def test_errors_name_file_element_and_value(tmp_path):
    with pytest.raises(UrdfError, match=r"joints\[1\]: 'wrist'.*one of \['shoulder', 'elbow'\]"):
        RigidBodyDynamics(SHARE / 'acrobot.urdf', ['shoulder', 'wrist'])
    description = read_urdf(SHARE / 'acrobot.urdf')
    broken = tmp_path / 'broken.urdf'
    broken.write_text((SHARE / 'acrobot.urdf').read_text().replace('<mass value="0.4"/>', '<mass value="-1"/>'))
    with pytest.raises(UrdfError, match=r"broken.urdf: link 'lower_link' inertial/mass value: -1.0"):
        read_urdf(broken)
    no_inertial = tmp_path / 'no_inertial.urdf'
    text = (SHARE / 'acrobot.urdf').read_text()
    start = text.index('<inertial>', text.index('<link name="lower_link">'))
    no_inertial.write_text(text[:start] + text[text.index('</inertial>', start) + len('</inertial>'):])
    with pytest.raises(UrdfError, match=r"no_inertial.urdf: link 'lower_link': '<no inertial>'"):
        read_urdf(no_inertial).link('lower_link', 'parameters.mass_scale@lower_link')
    assert description.joints['elbow'].damping == 0.01
    xacro = tmp_path / 'arm.urdf.xacro'          # what a ROS description package holds
    xacro.write_text(ARM.replace('<robot name="arm3">', '<robot name="arm3" xmlns:xacro="http://www.ros.org/wiki/xacro">'
                                 '<xacro:property name="m" value="1.2"/>'))
    with pytest.raises(UrdfError, match=r"arm.urdf.xacro: <file>: 'property': expected a URDF, not xacro"):
        read_urdf(xacro)
    xacro.write_text(ARM.replace('<mass value="1.2"/>', '<mass value="${upper_mass}"/>'))
    with pytest.raises(UrdfError, match=r"<file>: '\$\{upper_mass\}': expected a URDF, not xacro: expand it first"):
        read_urdf(xacro)


def test_resolve_urdf_paths_and_package_uris(tmp_path):
    assert resolve_urdf('package://pybullet_data/kuka_iiwa/model.urdf') == ROBOTS['iiwa'][0]
    assert resolve_urdf('package://sim2real_bilevel/urdf/acrobot.urdf').read_text() == ROBOTS['acrobot'][0].read_text()
    assert resolve_urdf('acrobot.urdf', SHARE) == SHARE / 'acrobot.urdf'
    with pytest.raises(UrdfError, match=r"problem.yaml: robot.urdf: 'package://no_such_package/x.urdf'"):
        resolve_urdf('package://no_such_package/x.urdf', source='problem.yaml')
    with pytest.raises(UrdfError, match=r"robot.urdf: 'missing.urdf': expected an existing URDF file"):
        resolve_urdf('missing.urdf', tmp_path)


ARM = """<?xml version="1.0"?>
<robot name="arm3">
  <link name="base"/>
  <link name="upper">
    <inertial><origin xyz="0 0 0.2" rpy="0.1 0 0"/><mass value="1.2"/>
      <inertia ixx="0.02" ixy="0.001" ixz="0" iyy="0.021" iyz="0" izz="0.004"/></inertial>
    <visual><geometry><mesh filename="package://my_robot_description/meshes/upper.stl"/></geometry></visual>
    <collision><geometry><mesh filename="meshes/upper.stl"/></geometry></collision>
  </link>
  <link name="tool_frame"/>
  <link name="wrist">
    <inertial><origin xyz="0 0 0.05"/><mass value="0.4"/>
      <inertia ixx="0.001" ixy="0" ixz="0" iyy="0.001" iyz="0" izz="0.0005"/></inertial>
  </link>
  <link name="lower">
    <inertial><origin xyz="0 0.02 0.15"/><mass value="0.8"/>
      <inertia ixx="0.008" ixy="0" ixz="0" iyy="0.008" iyz="0" izz="0.001"/></inertial>
  </link>
  <joint name="shoulder" type="revolute"><parent link="base"/><child link="upper"/>
    <origin xyz="0 0 0.1"/><axis xyz="0 1 0"/><limit lower="-3" upper="3" effort="50" velocity="5"/></joint>
  <joint name="wrist_roll" type="revolute"><parent link="upper"/><child link="wrist"/>
    <origin xyz="0 0 0.4"/><axis xyz="0 0 1"/><limit lower="-3" upper="3" effort="10" velocity="5"/></joint>
  <joint name="elbow" type="revolute"><parent link="wrist"/><child link="lower"/>
    <origin xyz="0 0 0.1"/><axis xyz="0 1 0"/><limit lower="-3" upper="3" effort="30" velocity="5"/></joint>
  <joint name="tool_mount" type="revolute"><parent link="lower"/><child link="tool_frame"/>
    <origin xyz="0 0 0.3"/><axis xyz="1 0 0"/><limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <transmission name="shoulder_transmission"><type>transmission_interface/SimpleTransmission</type>
    <joint name="shoulder"><hardwareInterface>hardware_interface/EffortJointInterface</hardwareInterface></joint>
    <actuator name="shoulder_motor"><mechanicalReduction>reduction</mechanicalReduction></actuator></transmission>
  <ros2_control name="arm3" type="system"><hardware><plugin>mock_components/GenericSystem</plugin></hardware>
    <joint name="shoulder"><command_interface name="effort"/><state_interface name="position"/></joint>
  </ros2_control>
  <gazebo reference="upper"><material>Gazebo/Grey</material></gazebo>
</robot>
"""


def test_a_users_urdf_loads_in_the_stand_in_as_the_simulator_reads_it(tmp_path):
    """A user's description as robots ship it, read the same by pybullet and by adam: meshes
    pybullet cannot find (a package:// URI, a path relative to a folder the text is not loaded
    from), ros2_control / transmission / gazebo elements, a link without <inertial> (massless in
    URDF and adam, 1 kg with a unit inertia in pybullet), and moving joints that are not
    controlled (fixed in the simulator, free in pybullet): controlled [shoulder, elbow], with
    wrist_roll between them and tool_mount at the tip left alone."""
    import pybullet
    path = tmp_path / 'arm3.urdf'
    path.write_text(ARM)
    client = pybullet.connect(pybullet.DIRECT)
    try:                                   # why the stand-in rewrites the text: pybullet refuses the file
        with pytest.raises(pybullet.error, match='Cannot load URDF'):
            pybullet.loadURDF(str(path), useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
                              physicsClientId=client)
    finally:
        pybullet.disconnect(client)
    joints = ['shoulder', 'elbow']
    dynamics = RigidBodyDynamics(path, joints)
    reference = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001)
    links = pybullet_links(reference.body, reference._client)
    assert reference.call(pybullet.getDynamicsInfo, reference.body, links['tool_frame'])[0] == 0.0   # massless
    assert reference.call(pybullet.getJointInfo, reference.body, links['tool_frame'])[2] == pybullet.JOINT_FIXED
    assert reference.call(pybullet.getJointInfo, reference.body, links['wrist'])[2] == pybullet.JOINT_FIXED
    rng = np.random.default_rng(5)
    q, qd = rng.uniform(-1, 1, (4, 2)), rng.uniform(-2, 2, (4, 2))
    mass, bias = dynamics.mass_matrix_and_bias(torch.as_tensor(q), torch.as_tensor(qd))
    for i in range(4):
        np.testing.assert_allclose(mass[i].numpy(), reference.mass_matrix(q[i]), atol=1e-12)
        np.testing.assert_allclose(bias[i].numpy(), reference.bias(q[i], qd[i]), atol=1e-10)
    reference.set_state([0.3, -0.4], [1.0, -1.0])
    for _ in range(200):                    # 0.2 s of free motion: only the controlled joints move
        reference.step([0.0, 0.0])
    assert np.abs(reference.state()[0] - [0.3, -0.4]).max() > 0.05
    assert reference.moving == reference.indices          # nothing else moves
    reference.close()


def pybullet_links(body, client) -> dict:
    """pybullet's link index of each link name of ``body``."""
    import pybullet
    return {pybullet.getJointInfo(body, i, physicsClientId=client)[12].decode(): i
            for i in range(pybullet.getNumJoints(body, physicsClientId=client))}


def test_non_physical_inertias_are_refused_or_repaired_alike_in_simulator_and_stand_in(tmp_path):
    """Negative principal moments: an error naming the file, the link and the moments.  Moments
    failing the triangle inequality (as pybullet_data's xarm6 has): pybullet would set the inertia
    to zero, so both sides raise the two smaller moments to the largest, with one warning."""
    import pybullet
    negative = tmp_path / 'negative.urdf'
    negative.write_text(ARM.replace('ixx="0.008" ixy="0"', 'ixx="-0.008" ixy="0"'))
    with pytest.raises(UrdfError, match=r"negative.urdf: link 'lower' inertial/inertia: .*principal moments "
                                        r"\(-0.008, 0.001, 0.008\) must be >= 0"):
        read_urdf(negative)
    flat = tmp_path / 'flat.urdf'                  # 0.001 + 0.008 < 0.02: no rigid body
    flat.write_text(ARM.replace('ixx="0.008" ixy="0" ixz="0" iyy="0.008"', 'ixx="0.008" ixy="0" ixz="0" iyy="0.02"'))
    client = pybullet.connect(pybullet.DIRECT)
    try:                                   # pybullet zeroes it (the text without geometry, so that it loads)
        raw = tmp_path / 'raw.urdf'
        raw.write_text(re.sub(r'<(visual|collision)>.*?</\1>', '', flat.read_text(), flags=re.S))
        body = pybullet.loadURDF(str(raw), useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE,
                                 physicsClientId=client)
        assert pybullet.getDynamicsInfo(body, pybullet_links(body, client)['lower'], physicsClientId=client)[2] \
            == (0.0, 0.0, 0.0)
    finally:
        pybullet.disconnect(client)
    with pytest.warns(UserWarning, match=r"flat.urdf: link 'lower': its inertia is not physical \(the two smaller "
                                         r"principal moments are 0.011 short of the largest, 0.02\)"):
        dynamics = RigidBodyDynamics(flat, ['shoulder', 'elbow'])
    reference = PybulletRobot(urdf_with_inertials(flat, {}, {}), ['shoulder', 'elbow'], gravity=9.81, time_step=0.001)
    q, qd = np.array([[0.4, -0.7]]), np.array([[0.5, 1.5]])
    mass, bias = dynamics.mass_matrix_and_bias(torch.as_tensor(q), torch.as_tensor(qd))
    np.testing.assert_allclose(mass[0].numpy(), reference.mass_matrix(q[0]), atol=1e-9)
    np.testing.assert_allclose(bias[0].numpy(), reference.bias(q[0], qd[0]), atol=1e-9)
    reference.close()


def test_stand_ins_leave_no_file_behind_while_they_live(tmp_path, monkeypatch):
    """pybullet loads files only: the URDF texts go to temporary files that are gone once loaded
    (they were kept for the object's life, and a killed process -- every node at shutdown by
    SIGTERM -- left one folder per emulator in /tmp: 588 on this machine in a day)."""
    import tempfile
    from sim2real_bilevel.core.robots import PendulumEmulator, PendulumParameters
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    pendulum = PendulumEmulator(PendulumParameters(payload_mass=0.5, damping=0.08, coulomb_friction=0.1, motor_gain=0.7))
    pendulum.reset(0)                      # reloads the URDF
    path, joints = ROBOTS['acrobot']
    robot = PybulletRobot(urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001)
    assert list(tmp_path.iterdir()) == []
    pendulum.close()
    robot.close()


def test_a_pickled_dynamics_is_the_same_robot_rebuilt():
    """Solver 'resolve' pickles the problem for its worker processes; adam's model holds modules, so
    the dynamics pickle as their constructor's arguments and rebuild (recordings are per process)."""
    import pickle
    dynamics = RigidBodyDynamics(*ROBOTS['acrobot'])
    q = torch.tensor([[0.3, -0.7], [1.1, 0.2]], dtype=torch.float64)
    qd = torch.tensor([[0.5, 0.1], [-0.4, 2.0]], dtype=torch.float64)
    scale = {dynamics.link_names[-1]: torch.tensor(1.3, dtype=torch.float64)}
    expected = dynamics.mass_matrix_and_bias(q, qd, mass_scale=scale)
    copy = pickle.loads(pickle.dumps(dynamics))
    assert copy.joint_names == dynamics.joint_names and copy.link_names == dynamics.link_names
    assert copy._recordings == {}
    for got, want in zip(copy.mass_matrix_and_bias(q, qd, mass_scale=scale), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
