"""The simulator-only smoothness check (core/smoothness.py, `sim2real-bilevel smoothness`): a converged warm
solve is called smooth, a solve whose output jumps with theta is not."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sim2real_bilevel.core.smoothness import LINEAR_RANGE, CoordinateResponse, solve_response, summary
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
    """A warm solve that is linear in 'smooth'; snaps to a grid of 0.05 in theta with a cell boundary just
    below 0 in 'jumps' (as a solver whose path switches with theta does); and in 'far' snaps to a grid of 0.08
    centred at 0, so only the large step crosses a boundary."""
    theta_names = ['smooth', 'jumps', 'far']

    def inner_solve(self, theta, phi=None):
        return SimpleNamespace(phi=np.array([2.0 * theta[0], np.floor(theta[1] / 0.05 + 0.9),
                                             np.floor(theta[2] / 0.08 + 0.5)]))


def test_a_solve_whose_output_jumps_is_called_not_smooth_and_named():
    responses = solve_response(JumpingSolve(), np.zeros(3), None, steps=(0.1, 0.01))
    smooth, jumps, far = responses
    assert smooth.linearity == pytest.approx(1.0) and smooth.smooth
    assert jumps.distances == (4.0, 1.0)            # the grid point moves 4 cells at +-0.1, 1 at +-0.01
    assert jumps.linearity == pytest.approx(0.4) and jumps.linearity < LINEAR_RANGE[0] and not jumps.smooth
    assert far.distances == (2.0, 0.0) and far.linearity > LINEAR_RANGE[1] and not far.smooth
    text = summary(responses)
    assert text.startswith('2 of 3 coordinates (jumps, far)')


def test_a_coordinate_the_policy_does_not_measurably_depend_on_counts_as_smooth():
    for distances in [(0.0, 0.0), (5.7e-7, 3.3e-5)]:        # the second: the iiwa's w_velocity, a solver's noise
        response = CoordinateResponse('unused', (0.1, 0.01), distances, policy_norm=30.0)
        assert np.isnan(response.linearity) and response.smooth
    assert not CoordinateResponse('used', (0.1, 0.01), (1e-3, 1e-3), policy_norm=30.0).smooth


@pytest.mark.parametrize('steps', [(0.1,), (0.1, 0.1), (0.1, -0.01), (0.1, float('nan'))])
def test_steps_that_cannot_be_compared_are_refused_with_the_value(steps):
    with pytest.raises(ValueError, match='steps = '):
        solve_response(JumpingSolve(), np.zeros(3), None, steps=steps)


def test_the_command_reports_every_coordinate_and_exits_0_on_a_smooth_problem(tmp_path):
    out = tmp_path / 'lqr.json'
    done = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'smoothness', 'lqr', '--out', str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'every coordinate: the warm solve is linear in theta' in done.stdout
    import json
    figures = json.loads(out.read_text())
    assert figures['coordinates'] and all(c['linear'] for c in figures['coordinates'])


def test_the_command_refuses_a_policy_of_the_wrong_size(tmp_path):
    policy = tmp_path / 'p.npy'
    np.save(policy, np.zeros(3))
    done = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'smoothness', 'lqr', '--policy', str(policy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and '3 values, expected' in done.stderr


def test_the_command_asks_for_the_key_of_an_npz_policy(tmp_path):
    policy = tmp_path / 'p.npz'
    np.savez(policy, a=np.zeros(3), b=np.ones(3))
    done = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'smoothness', 'lqr', '--policy', str(policy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "FILE.npz:KEY (keys: ['a', 'b'])" in done.stderr
