"""Per robot: the URDF simulator's M and h against pybullet at identical parameters (8 random
states), and the 1 s rollout error (the test suite's ``rollout_error``), including two robots this
package was not written for (pybullet_data's Franka Panda and UFactory xarm6).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/urdf_user_robots/figures.py
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'test'))
import test_urdf_robot as cases  # noqa: E402

warnings.simplefilter('ignore')       # the xarm6's repaired inertias warn (tested in the suite)
for robot, (path, joints) in cases.ROBOTS.items():
    dynamics = cases.RigidBodyDynamics(path, joints)
    reference = cases.PybulletRobot(cases.urdf_with_inertials(path, {}, {}), joints, gravity=9.81, time_step=0.001)
    rng = np.random.default_rng(3)
    q, qd = rng.uniform(-1, 1, (8, len(joints))), rng.uniform(-2, 2, (8, len(joints)))
    mass, bias = dynamics.mass_matrix_and_bias(torch.as_tensor(q), torch.as_tensor(qd))
    mass_error = max(np.abs(mass[i].numpy() - reference.mass_matrix(q[i])).max() for i in range(8))
    bias_error = max(np.abs(bias[i].numpy() - reference.bias(q[i], qd[i])).max() for i in range(8))
    reference.close()
    print(f'{robot:9s} joints {len(joints)}  M err {mass_error:.1e}  h err {bias_error:.1e}  '
          f'1 s rollout err {cases.rollout_error(robot, 1.0):.1e}', flush=True)
