"""One iiwa control step (the task's 40 ms, one substep, float64, one thread) at batch 1024: transitions
per second forward and forward + backward (gradient in theta), explicit against implicit friction,
interleaved, median of 5.  Friction 0.1 N m (the task's nominal) and 1 N m; states at the task's start
pose with speeds ~N(0, 0.5) rad/s.  From sim2real_bilevel/:

    OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/implicit_friction/throughput.py
"""
import time
from pathlib import Path

import numpy as np
import torch

from sim2real_bilevel.core.problems import load_problem

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
problems = {'explicit': load_problem(HERE / 'iiwa_payload_explicit.yaml'), 'implicit': load_problem('config/iiwa_payload.yaml')}
batch = 1024
rng = np.random.default_rng(0)
pose = np.asarray(problems['implicit'].start_pose())
states = torch.as_tensor(np.concatenate([np.tile(pose, (batch, 1)), 0.5 * rng.standard_normal((batch, 7))], -1))
actions = torch.as_tensor(rng.uniform(-5, 5, (batch, 7)))
friction_index = problems['implicit'].theta_names.index('log_coulomb_friction')
for friction in (0.1, 1.0):
    theta = problems['implicit'].theta0().copy()
    theta[friction_index] = np.log(friction)
    times = {(label, part): [] for label in problems for part in ('fwd', 'fwd+bwd')}
    for _ in range(5):
        for label, problem in problems.items():
            leaf = torch.as_tensor(theta).clone().requires_grad_(True)
            start = time.perf_counter()
            physical = problem.model.split(problem.full_theta(leaf))[0]
            with torch.no_grad():
                problem.model.step_mean(states, actions, physical.detach())
            times[(label, 'fwd')].append(time.perf_counter() - start)
            start = time.perf_counter()
            physical = problem.model.split(problem.full_theta(leaf))[0]
            problem.model.step_mean(states, actions, physical).sum().backward()
            times[(label, 'fwd+bwd')].append(time.perf_counter() - start)
    row = ', '.join(f'{label} {part} {batch / np.median(values):.3g} tr/s' for (label, part), values in times.items())
    print(f'friction {friction} N m: {row}; implicit / explicit time: fwd '
          f'{np.median(times[("implicit", "fwd")]) / np.median(times[("explicit", "fwd")]):.2f}, fwd+bwd '
          f'{np.median(times[("implicit", "fwd+bwd")]) / np.median(times[("explicit", "fwd+bwd")]):.2f}', flush=True)
