"""The bi-level loop on a robot problem: outer iterations end to end on the tiny pendulum
(inner L-BFGS on common random numbers, CG sensitivity, pathwise real gradient from pybullet
episodes)."""
import numpy as np

from sim2real_bilevel.core.experiments import make_run
from test_robot_problem import tiny


def test_bilevel_iterations_move_theta_inside_its_bounds_and_count_the_real_data():
    problem = tiny()
    run = make_run(problem, 'bilevel', seed=0, iterations=2, overrides={'real_episodes': 2}, evaluate=True)
    history = run.run()
    assert len(history) == 3
    thetas = np.array([record.theta for record in history])
    lower, upper = problem.theta_bounds()
    assert np.all(np.isfinite(thetas)) and np.all((thetas >= lower) & (thetas <= upper))
    assert np.all(np.linalg.norm(np.diff(thetas, axis=0), axis=1) > 0)       # each step moved theta
    assert [record.real_episodes for record in history] == [0, 2, 4]
    assert history[-1].real_transitions == 4 * problem.horizon
    assert all(np.isfinite(record.normalized_return) for record in history)
    assert np.all(np.isfinite(run.phi)) and run.phi.size == problem.phi_size()
