"""Spectral radius of one control step's Jacobian d s' / d s at the task's start pose (q at the middle of
the initial range), at rest and at random speeds of ~0.5 rad/s, zero command, at the file's theta with
the Coulomb friction x1, x10 and x0.1: explicit friction (the file with `implicit_friction: false`)
against implicit (the default).  Usage, from sim2real_bilevel/:

    OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/implicit_friction/jacobian_at_rest.py TASK.yaml ...
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from sim2real_bilevel.core.problems import load_problem

torch.set_num_threads(1)


def load_with_friction_integration(task: str, implicit: bool):
    """The task with ``simulator.implicit_friction`` set, from a temporary file beside it (relative URDF
    paths resolve as for the task)."""
    data = yaml.safe_load(Path(task).read_text())
    data['simulator']['implicit_friction'] = implicit
    with tempfile.NamedTemporaryFile('w', suffix='.yaml', dir=Path(task).resolve().parent) as file:
        file.write(yaml.safe_dump(data))
        file.flush()
        return load_problem(file.name)


for task in sys.argv[1:]:
    for implicit in (False, True):
        problem = load_with_friction_integration(task, implicit)
        pose = problem.start_pose()
        n = len(pose)
        friction = [k for k, name in enumerate(problem.theta_names) if 'coulomb' in name][0]
        rng = np.random.default_rng(0)
        for factor in (1.0, 10.0, 0.1):
            theta = problem.theta0().copy()
            theta[friction] += np.log(factor)
            physical = problem.model.split(problem.full_theta(torch.as_tensor(theta, dtype=torch.float64)))[0]
            for speed in (0.0, 0.5):
                radii = []
                for _ in range(5):
                    state = torch.as_tensor(np.concatenate([pose, speed * rng.standard_normal(n)]), dtype=torch.float64)
                    command = torch.zeros(n, dtype=torch.float64)
                    jacobian = torch.autograd.functional.jacobian(
                        lambda s: problem.model.step_mean(s, command, physical), state)
                    radii.append(float(np.abs(np.linalg.eigvals(jacobian.numpy())).max()))
                print(f'{Path(task).name:20s} {"implicit" if implicit else "explicit"} friction '
                      f'x{factor:<4g} (f = {np.exp(theta[friction]):.3g} N m) speeds ~{speed}: spectral radius '
                      + ' '.join(f'{r:.3g}' for r in radii), flush=True)
