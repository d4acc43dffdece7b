"""The learnable payload centre (``payload_distance@LINK``: the payload's centre at a learnable
distance along a fixed direction): against pybullet, one centre per sample against one at a time,
its gradients against float64 central finite differences, the oracle's value and the file errors."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sim2real_bilevel.core.config import ProblemConfigError
from sim2real_bilevel.core.problems.urdf import UrdfProblem
from sim2real_bilevel.core.robots.urdf_robot import PybulletRobot, urdf_with_inertials
from sim2real_bilevel.core.urdf_model import PhysicalEntry, payload_center
from sim2real_bilevel.core.urdf_robot import RigidBodyDynamics, payload_moments, point_mass_inertia
from test_urdf_problem import small
from test_urdf_robot import ROBOTS, make_model

IIWA_CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'iiwa_payload.yaml'
LINK = 'lbr_iiwa_link_7'
DIRECTION = (0.0, 0.0, 2.0)          # along the tool axis (not unit: the model normalises it)


def test_payload_moments_sum_to_the_point_mass_inertia():
    rng = np.random.default_rng(0)
    mass = torch.as_tensor(rng.uniform(0.1, 2.0, 5))
    for center in (torch.as_tensor(rng.uniform(-0.2, 0.2, (5, 3))),                       # 10 terms
                   torch.as_tensor(np.c_[np.zeros(5), np.zeros(5), rng.uniform(0, 0.2, 5)])):    # 3 terms
        terms = payload_moments(mass, center)
        total = sum(weight[:, None, None] * inertia for weight, inertia in terms)
        torch.testing.assert_close(total, point_mass_inertia(mass, center), rtol=0, atol=1e-14)
        assert len(terms) == (3 if bool(torch.all(center[:, :2] == 0)) else 10)


def test_a_payload_at_a_learned_distance_matches_pybullet_and_per_sample_centres_match_one_at_a_time():
    path, joints = ROBOTS['iiwa']
    dynamics = RigidBodyDynamics(path, joints)
    rng = np.random.default_rng(3)
    q, qd = torch.as_tensor(rng.uniform(-1, 1, (3, 7))), torch.as_tensor(rng.uniform(-1, 1, (3, 7)))
    mass, distances = torch.tensor([1.5, 0.7, 2.0], dtype=torch.float64), torch.tensor([0.05, 0.12, 0.2],
                                                                                         dtype=torch.float64)
    centers = payload_center(distances, DIRECTION)
    batched = dynamics.mass_matrix_and_bias(q, qd, payloads={LINK: (mass, centers)})
    for i in range(3):
        single = dynamics.mass_matrix_and_bias(q[i:i + 1], qd[i:i + 1], payloads={LINK: (mass[i], centers[i])})
        torch.testing.assert_close(batched[0][i], single[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(batched[1][i], single[1][0], rtol=0, atol=1e-10)
        center = (0.0, 0.0, float(distances[i]))
        reference = PybulletRobot(urdf_with_inertials(path, {}, {LINK: (float(mass[i]), center)}), joints,
                                  gravity=9.81, time_step=0.001)
        np.testing.assert_allclose(batched[0][i].numpy(), reference.mass_matrix(q[i].numpy()), atol=1e-9)
        np.testing.assert_allclose(batched[1][i].numpy(), reference.bias(q[i].numpy(), qd[i].numpy()), atol=1e-5)
        reference.close()
    # one mass for the batch with a centre per sample (the replay broadcasts the mass over the centres)
    shared = dynamics.mass_matrix_and_bias(q, qd, payloads={LINK: (mass[0], centers)})
    for i in range(3):
        single = dynamics.mass_matrix_and_bias(q[i:i + 1], qd[i:i + 1], payloads={LINK: (mass[0], centers[i])})
        torch.testing.assert_close(shared[0][i], single[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(shared[1][i], single[1][0], rtol=0, atol=1e-10)


@pytest.mark.parametrize('batched', [False, True])
def test_gradient_of_a_control_step_in_the_payload_distance_matches_finite_differences(batched):
    """d(next state)/d(log mass, log distance) of the acrobot's lower link payload, float64, one
    theta for the batch and one per sample (a per-sample link inertia in the replayed dynamics)."""
    model = make_model('acrobot', substeps=2, implicit=True, physical=(
        PhysicalEntry('payload_mass', link='lower_link', center_of_mass=(0.0, 0.0, 0.5)),
        PhysicalEntry('payload_distance', link='lower_link', center_of_mass=(0.0, 0.0, 1.0))))
    rng = np.random.default_rng(5)
    state = torch.as_tensor(rng.uniform(-1, 1, (2, 4)))
    action = torch.as_tensor(rng.uniform(-1, 1, (2, 2)))
    theta = torch.tensor([math.log(0.3), math.log(0.4)], dtype=torch.float64)
    theta = theta.expand(2, 2).clone() if batched else theta.clone()
    weights = torch.as_tensor(rng.standard_normal((2, 4)))

    def value(t):
        return (weights * model.step_mean(state, action, t)).sum()

    point = theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(value(point), point)
    step = 1e-6
    numeric = torch.zeros_like(theta)
    for index in np.ndindex(*theta.shape):
        plus, minus = theta.clone(), theta.clone()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (value(plus) - value(minus)) / (2 * step)
    torch.testing.assert_close(gradient, numeric, rtol=1e-6, atol=1e-9)
    assert float(gradient.abs().min()) > 1e-4          # both entries move the step


def iiwa_data(**distance):
    data = small(yaml.safe_load(IIWA_CONFIG.read_text()), horizon=2)
    parameters = data['simulator']['parameters']
    parameters[f'payload_distance@{LINK}'] = dict({'value': 0.05, 'learn': True, 'bounds': [0.01, 0.3],
                                                   'direction': [0.0, 0.0, 1.0]}, **distance)
    return data


def test_the_oracle_takes_the_true_distance_and_the_simulator_uses_the_learned_centre():
    problem = UrdfProblem.from_dict(iiwa_data(), str(IIWA_CONFIG))
    index = problem.theta_names.index(f'log_payload_distance@{LINK}')
    assert problem.oracle_theta_full()[problem.learn_index][index] == pytest.approx(math.log(0.1))
    theta = torch.as_tensor(problem.full_theta(torch.as_tensor(problem.theta0())))
    coefficients = problem.model.coefficients(problem.model.split(theta)[0])
    mass, center = coefficients.inertias['payloads'][LINK]
    assert float(mass) == pytest.approx(0.2)
    torch.testing.assert_close(center, torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64))


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['simulator']['parameters'].pop(f'payload_mass@{LINK}'),
     rf"field 'simulator.parameters.payload_distance@{LINK}' = .*expected a payload_mass@{LINK} entry too"),
    (lambda d: d['simulator']['parameters'][f'payload_distance@{LINK}'].update(direction=[0, 0, 0]),
     rf"field 'simulator.parameters.payload_distance@{LINK}.direction' = \[0.0, 0.0, 0.0\]: expected a non-zero vector"),
    (lambda d: d['simulator']['parameters'][f'payload_distance@{LINK}'].update(value=0.5),
     rf"field 'simulator.parameters.payload_distance@{LINK}.value' = 0.5: expected a value inside bounds"),
])
def test_file_errors_name_the_field_and_the_value(edit, message):
    data = iiwa_data()
    edit(data)
    with pytest.raises(ProblemConfigError, match=message):
        UrdfProblem.from_dict(data, str(IIWA_CONFIG))
