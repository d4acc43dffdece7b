"""The pendulum's nominal policy on the hidden real model, one control period at a time (the
lockstep stand-in of the topic transport), through the bridge's command filter
(``nodes/safety.CommandFilter``: effort clamp, then rate limit from a zero command) at several
limits and without it (what the batched transport of sim-only runs does); the same starts and
the same policy noise for every setting.  Falls: episodes with |angle| > 1.5 rad from upright.

    OMP_NUM_THREADS=1 .venv/bin/python sim2real_bilevel/bench/results/pendulum_command_filter/filter_check.py 32
"""
import sys

import numpy as np

from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.experiments import make_run
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.nodes.safety import CommandFilter

SETTINGS = [('no filter (the batched transport)', None), ('effort 2, rate 1 per step (shipped before)', (2.0, 1.0)),
            ('effort 2, rate 4 per step', (2.0, 4.0)), ('effort 4, rate 1 per step', (4.0, 1.0)),
            ('effort 4, rate 4 per step (shipped now)', (4.0, 4.0))]


def main(episodes: int) -> None:
    problem = load_problem(builtin_config('pendulum'))
    run = make_run(problem, 'bilevel', 0, iterations=0, evaluate=False)
    run.start()                                       # the nominal policy (the inner solve at the nominal theta)
    discount = problem.gamma ** np.arange(problem.horizon)
    for name, limits in SETTINGS:
        system = problem.real_system(np.random.default_rng(5))
        controller = problem.controller(run.phi, np.random.default_rng(6))
        falls = 0
        for _ in range(episodes):
            sample = system.reset()
            command_filter = CommandFilter(*limits) if limits else None
            controller.start_episode()
            largest = 0.0
            for _ in range(problem.horizon):
                controller.observe(sample.position, sample.velocity)
                largest = max(largest, abs(sample.position[0]))
                command = controller.command()
                if command_filter is not None:
                    command = list(command_filter(command))
                controller.record(command, None)
                sample = system.step(command)
            controller.observe(sample.position, sample.velocity)
            falls += largest > 1.5
        returns = np.asarray(controller.batch(1).rewards) @ discount
        print(f'{name:45s} falls {falls:2d}/{episodes}, mean discounted return {returns.mean():6.2f} '
              f'(s.e. {returns.std() / np.sqrt(len(returns)):.2f})', flush=True)


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 32)
