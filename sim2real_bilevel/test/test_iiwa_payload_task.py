"""config/iiwa_payload.yaml (issue 12 task (a)): the 7-DoF iiwa reaching a pose with an unknown
payload loads as a ``kind: urdf`` task, the payload's gravity torque is a real gap, and it rolls
out in the simulator and on the stand-in; the controller's gravity compensation (its configured
load) holds the arm in both where the load is the configured one."""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sim2real_bilevel.core.config import ProblemConfigError

from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.urdf import UrdfProblem
from test_urdf_problem import small

IIWA = Path(__file__).resolve().parents[1] / 'config' / 'iiwa_payload.yaml'
JOINTS = tuple(f'lbr_iiwa_joint_{i}' for i in range(1, 8))


def test_the_task_loads_with_seven_torque_controlled_joints_and_the_payload_in_theta():
    problem = load_problem(IIWA)
    assert problem.joint_names == JOINTS and problem.model.action_dim == 7
    assert problem.theta_names[:4] == ['log_payload_mass@lbr_iiwa_link_7', 'log_damping', 'log_coulomb_friction',
                                       'log_motor_gain']
    lower, upper = problem.theta_bounds()
    truth = problem.oracle_theta_full()[problem.learn_index]
    assert np.all(lower <= truth) and np.all(truth <= upper)
    assert truth[0] - problem.theta0()[0] > math.log(5)          # the payload is far heavier than believed


def test_the_unknown_payload_changes_the_gravity_torque_by_several_newton_metres():
    """At the target pose, the true payload's gravity torque on the shoulder (joint 2) differs
    from the believed one by more than 5 N m: a policy that holds the believed arm sags."""
    problem = load_problem(IIWA)
    target = torch.tensor([problem.settings.reward_targets], dtype=torch.float64)
    zero = torch.zeros_like(target)
    entry = problem.model.physical[0]
    torques = []
    for mass in (0.2, 1.5):
        _, bias = problem.model.dynamics.mass_matrix_and_bias(
            target, zero, payloads={entry.link: (mass, entry.center_of_mass)})
        torques.append(bias[0].numpy())
    assert abs(torques[1][1] - torques[0][1]) > 5.0


def test_a_short_rollout_in_the_simulator_and_on_the_robot():
    data = small(yaml.safe_load(IIWA.read_text()), horizon=2)
    problem = UrdfProblem.from_dict(data, str(IIWA))
    phi = problem.policy.init_params(np.random.default_rng(0))
    trajectories = problem.simulate(phi, problem.theta0(), 2, problem.horizon, np.random.default_rng(1))
    assert trajectories.states.shape == (2, 3, 14) and trajectories.actions.shape == (2, 2, 7)
    assert np.all(np.isfinite(trajectories.states)) and np.all((trajectories.rewards > 0) & (trajectories.rewards <= 1))
    states, actions, rewards, _ = problem.real_episodes(phi, [3, 4])
    assert states.shape == (2, 3, 14) and np.all(np.isfinite(states))
    low = np.array(problem.initial.position)[:, 0]
    high = np.array(problem.initial.position)[:, 1]
    assert np.all(np.abs(states[:, 0, :7] - np.clip(states[:, 0, :7], low, high)) < 0.01)   # starts in range (+ noise)


def compensated(load_mass, true_mass):
    """The task file with the controller's configured load ``load_mass`` and the true payload
    ``true_mass`` (kg), no friction, unit gain, no noise: only gravity and the compensation differ."""
    data = copy.deepcopy(yaml.safe_load(IIWA.read_text()))
    data['robot']['gravity_compensation']['load']['lbr_iiwa_link_7']['mass'] = load_mass
    data['real'].update(payload_mass={'lbr_iiwa_link_7': {'mass': true_mass, 'center_of_mass': [0.0, 0.0, 0.1]}},
                        coulomb_friction=0.0, stribeck_friction=0.0, motor_gain=1.0,
                        sensor_noise={'position': 0.0, 'velocity': 0.0, 'effort': 0.0})
    return UrdfProblem.from_dict(small(data, horizon=2), str(IIWA))


def drift(problem, seconds=0.6):
    """(simulator, stand-in) joint displacement after ``seconds`` of zero commands from the target
    pose, the simulator at the true payload."""
    start = np.concatenate([problem.settings.reward_targets, np.zeros(7)])
    theta = problem.theta0().copy()
    theta[0] = problem.oracle_theta_full()[0]
    state = torch.as_tensor(start[None])
    physical = problem.model.split(problem.full_theta(torch.as_tensor(theta)))[0]
    emulator = problem.make_emulator()
    emulator.reset(0, start)
    steps = int(round(seconds / problem.control_period))
    with torch.no_grad():
        for _ in range(steps):
            state = problem.model.step_mean(state, torch.zeros(1, 7, dtype=torch.float64), physical)
            emulator.apply_effort(np.zeros(7))
            sample = emulator.step()
    emulator.close()
    return state[0, :7].numpy() - start[:7], np.asarray(sample.position) - start[:7]


def test_gravity_compensation_with_the_true_load_holds_the_arm_in_the_simulator_and_on_the_robot():
    sim, real = drift(compensated(1.5, 1.5))
    assert np.abs(sim).max() < 1e-9 and np.abs(real).max() < 1e-3


def test_the_unconfigured_part_of_the_payload_makes_the_arm_sag_in_both_alike():
    """1.3 kg the controller does not know: the shoulder (joint 2) falls by tenths of a radian in
    0.6 s, in the simulator (at the true payload) and on the stand-in alike."""
    sim, real = drift(compensated(0.2, 1.5))
    assert sim[1] > 0.1 and real[1] > 0.1
    assert np.abs(sim - real).max() < 0.2 * np.abs(real).max()


def test_gravity_compensation_gradient_matches_float64_finite_differences():
    problem = compensated(0.2, 1.5)
    position = torch.tensor([problem.settings.reward_targets], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(problem.model.gravity_compensation, (position,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['robot']['gravity_compensation']['load'].update(no_such_link={'mass': 1.0, 'center_of_mass': [0, 0, 0]}),
     'no_such_link'),
    (lambda d: d['robot']['gravity_compensation']['load']['lbr_iiwa_link_7'].update(mass=-1.0), 'mass'),
    (lambda d: d['robot']['gravity_compensation'].update(loads={}), 'loads'),
])
def test_gravity_compensation_errors_name_the_field_and_the_value(edit, message):
    data = small(yaml.safe_load(IIWA.read_text()), horizon=2)
    edit(data)
    with pytest.raises((ProblemConfigError, ValueError), match=message):
        UrdfProblem.from_dict(data, str(IIWA))

