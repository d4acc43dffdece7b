"""A design probe, not a package method: bi-level around a refitted anchor.  Each outer iteration
theta's learnable dynamics entries are (sysid's fit on ALL real batches so far) + an offset that the
outer gradient moves (Adam, the file's outer settings); reward entries move by the outer gradient
alone, as in plain bi-level.  The first iteration is sysid's fit (offset 0), as ``theta_start: sysid``.

Runs through ``../iiwa_payload/bilevel_from.py`` (same start from a gap run's nominal policy, same
printout), with this method registered as ``bilevel-anchored``:

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/results/urdf_tasks/anchored/anchored_from.py \
        TASK GAP_DIR ITERATIONS REAL_EPISODES [seed=K] [KEY=VALUE ...]
"""
import runpy
import sys
import time
from pathlib import Path

import numpy as np

from sim2real_bilevel.core import experiments
from sim2real_bilevel.core.outer import BilevelOuterLoop


class AnchoredBilevel(BilevelOuterLoop):
    name = 'bilevel-anchored'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.all_batches = []                       # every real batch (real_batches keeps real_history)
        self.offset = np.zeros(self.theta.size)     # the outer steps' sum on the dynamics entries
        self.dynamics = self.learn_mask & np.asarray(self.problem.theta_groups()['dynamics'], dtype=bool)

    def iterate(self):
        timing = {}
        t0 = time.perf_counter()
        batch = self.collect_real(self.phi)
        self.all_batches.append(batch)
        self.real_batches = self.real_batches[-self.config.real_history:]
        timing['real_s'] = time.perf_counter() - t0
        step = np.zeros(self.theta.size)
        gradient = np.full(self.theta.size, np.nan)
        if self.iteration > 0:                       # the outer gradient at the theta phi was solved for
            t1 = time.perf_counter()
            real_gradient = self.problem.real_policy_gradient(self.phi, self.real_data(), theta=self.theta)
            gradient = np.where(self.learn_mask, self.outer_gradient(self.phi, self.theta, real_gradient), 0.0)
            timing['sensitivity_s'] = time.perf_counter() - t1
            step = self.apply_step(gradient) - self.theta
        t1 = time.perf_counter()
        fit = np.clip(self.problem.system_identification(self.all_batches, self.problem.theta0()), self.lower, self.upper)
        timing['sysid_s'] = time.perf_counter() - t1
        self.offset = np.where(self.dynamics, self.offset + step, 0.0)
        self.theta = np.clip(np.where(self.dynamics, fit + self.offset, self.theta + step), self.lower, self.upper)
        t2 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, self.phi))
        timing['inner_s'] = time.perf_counter() - t2
        return float(np.linalg.norm(gradient)), self.mean_real_return(batch), timing


experiments.METHODS['bilevel-anchored'] = (AnchoredBilevel, {})
sys.argv = [str(Path(__file__).parents[1] / 'iiwa_payload' / 'bilevel_from.py')] + sys.argv[1:] + ['method=bilevel-anchored']
runpy.run_path(sys.argv[0], run_name='__main__')
