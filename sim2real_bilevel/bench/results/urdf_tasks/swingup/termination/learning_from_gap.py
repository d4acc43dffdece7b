"""Bi-level (and other methods) on config/swingup.yaml from the gap run's policies, reduced: the
experiment runner of ``bench/urdf_tasks.py figures`` with the nominal cold solve (the start of every
method) and the oracle preset from that gap run's policies.npz (the same deterministic computations
at the same code, saved ~40 min of this machine each).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 8 ../.venv/bin/python \
        bench/results/urdf_tasks/swingup/termination/learning_from_gap.py GAP_DIR OUT METHOD [METHOD...] [KEY=VALUE...]

KEY=VALUE: outer settings (e.g. solver=first_order), task=PATH (a variant of config/swingup.yaml, the
default), gap_seed=K for the gap run's seed K (the
problem with inner.seed K, its policies *_seedK; default 0), iterations=I (default 4), and
inner_start=cold: every inner solve of the loop cold (from the oracle's initial policy, the cold
budget) instead of warm from the last policy, or inner_start=best: both, keeping the one with the
higher J_sim at theta (OUT/best_of_solves.jsonl logs both; cold_at_fits/README.md).  Runs experiment
seed 0, I outer iterations of 5 real episodes (N = 0, 5, ..., 5 I).
"""
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
import urdf_tasks  # noqa: E402
import sim2real_bilevel.core.experiments as experiments  # noqa: E402
from sim2real_bilevel.core.problem import InnerResult  # noqa: E402

torch.set_num_threads(1)
arguments = [a for a in sys.argv[1:] if '=' not in a]
settings = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)      # outer settings, e.g. solver=first_order
gap_dir, out, methods = Path(arguments[0]), arguments[1], arguments[2:]
seed = int(settings.pop('gap_seed', 0))
task = settings.pop('task', 'config/swingup.yaml')
iterations = int(settings.pop('iterations', 4))
inner_start = settings.pop('inner_start', 'warm')
if inner_start not in ('warm', 'cold', 'best'):
    raise SystemExit(f'inner_start={inner_start!r}: expected warm, cold or best')
if inner_start != 'warm':
    import json
    from sim2real_bilevel.core import outer
    from sim2real_bilevel.core.problems.robot.problem import better_start

    def solve_inner(self, theta, phi_init):
        cold = self.problem.inner_solve(theta, None, method=self.config.inner_method, rng=self.rng)
        if inner_start == 'cold' or phi_init is None:
            return cold
        # best: the warm and the cold solve, the one inner.start: best keeps (the higher simulated
        # objective J_sim on the CRN set at theta; no real data); both logged with their real
        # returns (reporting only)
        warm = self.problem.inner_solve(theta, phi_init, method=self.config.inner_method, rng=self.rng)
        chosen = cold if better_start(warm, cold) == 'cold' else warm
        line = {'method': self.name, 'theta': np.asarray(theta).tolist(),
                'warm_objective': warm.info['objective'], 'cold_objective': cold.info['objective'],
                'warm_real_return': self.problem.real_return(warm.phi),
                'cold_real_return': self.problem.real_return(cold.phi),
                'chosen': 'cold' if chosen is cold else 'warm'}
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / 'best_of_solves.jsonl', 'a') as stream:
            stream.write(json.dumps(line) + '\n')
        return chosen
    outer.MethodRun.solve_inner = solve_inner


def _number(text):
    """A KEY=VALUE value as the config's type: true/false, int, float, else the string."""
    if text in ('true', 'false'):
        return text == 'true'
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


settings = {key: _number(value) for key, value in settings.items()}        # the gap run's seed k: the problem with inner.seed k, policies *_seedk
policies = np.load(gap_dir / 'policies.npz')
original = experiments.load_problem


def preset(path):
    problem = urdf_tasks.load(path, seed) if seed else original(path)
    # without the gap run's oracle yet, normalise by the nominal policy for now: every record keeps its
    # real return, so the table is renormalised by the oracle's real return afterwards (README)
    problem._oracle_phi = policies[f'oracle_seed{seed}' if f'oracle_seed{seed}' in policies.files else f'nominal_seed{seed}']
    key = problem.full_theta(torch.as_tensor(problem.theta0())).detach().numpy().tobytes()
    problem._cold_solves[key] = InnerResult(phi=policies[f'nominal_seed{seed}'].copy(), grad_norm=float('nan'),
                                            iterations=0, info={'preset': str(gap_dir)})
    return problem


experiments.load_problem = preset
if settings:      # the experiment runner takes real_episodes only: pass the rest through its overrides
    original_run = experiments.run_experiment

    def run_experiment(*args, overrides=None, **kwargs):
        return original_run(*args, overrides={**(overrides or {}), **settings}, **kwargs)
    experiments.run_experiment = run_experiment
urdf_tasks.figures(Namespace(task=task, methods=methods, seeds=1, iterations=iterations, real_episodes=5,
                             out=out))
