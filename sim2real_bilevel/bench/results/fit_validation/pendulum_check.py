"""actuation_delay_evidence on config/pendulum.yaml with its robot delayed 0, 1 or 2 steps, episodes of the
initial policy with action std ARGV[1] N m, 2 / 5 / 10 episodes.  Usage: pendulum_check.py STD"""
import copy, sys, time, numpy as np
from sim2real_bilevel.core.config import load_yaml
from sim2real_bilevel.core.problems.robot import RobotProblem
import yaml; data = yaml.safe_load(open('config/pendulum.yaml'))
for delay in (0, 1, 2):
    d = copy.deepcopy(data); d['real']['actuation_delay_steps'] = delay; d.setdefault('policy', {})['initial_std'] = float(sys.argv[1])
    p = RobotProblem.from_dict(d, f'pendulum delay {delay}')
    phi = p.policy.init_params(np.random.default_rng(0))
    for n in (2, 5, 10):
        t = time.perf_counter()
        b = p.sample_real(phi, n, np.random.default_rng(1))
        e = p.actuation_delay_evidence([b], p.theta0())
        print(delay, n, e.significant, e.steps, f'{e.gain:+.3g} [{e.low:+.3g}, {e.high:+.3g}] fav {e.favouring}', f'{time.perf_counter()-t:.2f}s', flush=True)
