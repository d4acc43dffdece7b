"""Per robot: the URDF simulator's M and h against pybullet at identical parameters (8 random
states), and the 1 s rollout error (the test suite's ``rollout_error``), including two robots this
package was not written for (pybullet_data's Franka Panda and UFactory xarm6).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/urdf_user_robots/figures.py
"""
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'test'))
import test_urdf_robot as cases  # noqa: E402

warnings.simplefilter('ignore')       # the xarm6's repaired inertias warn (tested in the suite)
for robot, (path, joints) in cases.ROBOTS.items():
    errors = cases.errors_against_pybullet(path, joints, states=8)
    print(f'{robot:9s} joints {len(joints)}  M err {errors["mass"]:.1e}  h err {errors["bias"]:.1e}  '
          f'1 s rollout err {cases.rollout_error(robot, 1.0):.1e}', flush=True)
