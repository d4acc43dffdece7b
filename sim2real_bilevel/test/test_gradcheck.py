"""``gradcheck``: the sensitivity estimators against central finite differences (float64) on
the shipped tabular and LQR problems, and a clear refusal where no exact reference exists."""
from pathlib import Path

import pytest

from sim2real_bilevel.core.gradcheck import GradcheckUnavailable, gradcheck
from sim2real_bilevel.core.problems import load_problem

CONFIG = Path(__file__).resolve().parents[1] / 'config'


@pytest.mark.parametrize('name', ['discrete_3s2a', 'lqr'])
def test_exact_sensitivities_match_finite_differences(name):
    rows, context = gradcheck(load_problem(CONFIG / f'{name}.yaml'), estimators=('exact', 'sampled'),
                              solvers=('dense', 'cg'))
    by = {(r.estimator, r.solver): r for r in rows}
    for solver in ('dense', 'cg'):
        exact = by['exact', solver]
        assert exact.phi_error < 1e-6 and exact.objective_error < 1e-6, exact
        sampled = by['sampled', solver]          # sampled from a few hundred simulated episodes
        assert sampled.phi_error < 0.1 and sampled.cosine > 0.99, sampled
    assert len(context['fd_objective']) == context['theta_size']


def test_robot_problems_are_refused_with_the_reason_before_any_work():
    problem = load_problem(CONFIG / 'pendulum.yaml')
    with pytest.raises(GradcheckUnavailable, match=r'pendulum\.yaml: .*Monte-Carlo estimate'):
        gradcheck(problem)


def test_the_command_exits_2_with_the_reason(capsys):
    from sim2real_bilevel.cli import main
    assert main(['gradcheck', 'pendulum']) == 2
    assert 'no finite-difference reference' in capsys.readouterr().err
