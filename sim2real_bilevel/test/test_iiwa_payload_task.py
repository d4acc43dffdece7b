"""config/iiwa_payload.yaml (issue 12 task (a)): the 7-DoF iiwa reaching a pose with an unknown
payload loads as a ``kind: urdf`` task, the payload's gravity torque is a real gap, and it rolls
out in the simulator and on the stand-in."""
import math
from pathlib import Path

import numpy as np
import torch
import yaml

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
