"""The simulator-only smoothness check (core/smoothness.py, `sim2real-bilevel smoothness`): a converged warm
solve is called smooth, a solve whose output jumps with theta is not."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sim2real_bilevel.core.smoothness import SMOOTH_LINEARITY, CoordinateResponse, solve_response, summary
from test_robot_problem import tiny


def test_a_converged_warm_solve_is_smooth_in_every_coordinate():
    problem = tiny()
    theta = problem.theta0()
    phi = problem.inner_solve(theta).phi
    responses = solve_response(problem, theta, phi, steps=(0.1, 0.01))
    assert [r.name for r in responses] == problem.theta_names
    for response in responses:
        assert response.distances[0] > 0
        assert 0.8 < response.linearity < 1.25, response       # a differentiable map: 10x less for a 10x smaller step
        assert response.smooth
    assert summary(responses).startswith('every coordinate')


class JumpingSolve:
    """A warm solve that snaps its answer to a grid of 0.05 in theta, with a cell boundary just below 0
    (as a solver whose path switches with theta does), for coordinate 'jumps'; 'smooth' is linear."""
    theta_names = ['smooth', 'jumps']

    def inner_solve(self, theta, phi=None):
        return SimpleNamespace(phi=np.array([2.0 * theta[0], np.floor(theta[1] / 0.05 + 0.9)]))


def test_a_solve_whose_output_jumps_is_called_not_smooth_and_named():
    responses = solve_response(JumpingSolve(), np.array([0.0, 0.0]), None, steps=(0.1, 0.01))
    smooth, jumps = responses
    assert smooth.linearity == pytest.approx(1.0) and smooth.smooth
    assert jumps.distances == (4.0, 1.0)            # the grid point moves 4 cells at +-0.1, 1 at +-0.01
    assert jumps.linearity == pytest.approx(0.4) and jumps.linearity < SMOOTH_LINEARITY and not jumps.smooth
    text = summary(responses)
    assert text.startswith('1 of 2 coordinates (jumps)')


def test_a_coordinate_the_policy_does_not_depend_on_counts_as_smooth():
    response = CoordinateResponse('unused', (0.1, 0.01), (0.0, 0.0))
    assert np.isnan(response.linearity) and response.smooth


@pytest.mark.parametrize('steps', [(0.1,), (0.1, 0.1), (0.1, -0.01), (0.1, float('nan'))])
def test_steps_that_cannot_be_compared_are_refused_with_the_value(steps):
    with pytest.raises(ValueError, match='steps = '):
        solve_response(JumpingSolve(), np.zeros(2), None, steps=steps)


def test_the_command_reports_every_coordinate_and_exits_0_on_a_smooth_problem(tmp_path):
    out = tmp_path / 'lqr.json'
    done = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'smoothness', 'lqr', '--out', str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'every coordinate: consistent with a differentiable warm solve' in done.stdout
    import json
    figures = json.loads(out.read_text())
    assert figures['coordinates'] and all(c['smooth'] for c in figures['coordinates'])


def test_the_command_refuses_a_policy_of_the_wrong_size(tmp_path):
    policy = tmp_path / 'p.npy'
    np.save(policy, np.zeros(3))
    done = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'smoothness', 'lqr', '--policy', str(policy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and '3 values, expected' in done.stderr
