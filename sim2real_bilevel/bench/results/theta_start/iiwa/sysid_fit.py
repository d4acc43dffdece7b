"""The iiwa run `bilevel_from.py ... method=bilevel-from-sysid` replayed to its first iteration (sysid's
fit to 5 real episodes from the gap run's nominal policy): shared by hypergradient_at_sysid.py and
real_gradient_at_sysid.py.

$S2R_TASK: the task file (default config/iiwa_payload.yaml); $S2R_OUT: the folder the scripts write to (default
this one); $S2R_LABEL: a suffix of their file names (default none).  The files here predate implicit friction
(2026-12-03): S2R_TASK=bench/results/implicit_friction/iiwa_payload_explicit.yaml reproduces them."""
import os
from pathlib import Path

import numpy as np

from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.problems import load_problem

GAP = Path(__file__).resolve().parents[2] / 'urdf_tasks' / 'iiwa_payload'
TASK = os.environ.get('S2R_TASK', 'config/iiwa_payload.yaml')
OUT = Path(os.environ.get('S2R_OUT', Path(__file__).resolve().parent))
LABEL = f"_{os.environ['S2R_LABEL']}" if os.environ.get('S2R_LABEL') else ''


def replay_to_sysid_fit(further_iterations=None):
    """(problem, run) after the run's first iteration: run.theta is sysid's fit, run.phi the policy there
    (solved ``further_iterations`` more warm iterations at that theta when given, run.inner_grad_norm its ||F||)."""
    problem = load_problem(TASK)
    run = make_run(problem, 'bilevel-from-sysid', seed=0, iterations=1, overrides={'real_episodes': 5})
    run.phi = np.load(GAP / 'policies.npz')['nominal_seed0']
    run.inner_grad_norm = float('nan')
    run.step()
    if further_iterations:
        further = problem.inner_solve(run.theta, run.phi, max_iterations=further_iterations)
        run.phi, run.inner_grad_norm = further.phi.copy(), further.grad_norm
    return problem, run
