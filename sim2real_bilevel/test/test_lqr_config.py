"""LQR problem files: one malformed file per validation rule, and the shipped example's
properties (nominal and sysid clearly suboptimal, the optimum reachable inside the bounds)."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import minimize

from sim2real_bilevel.core.config import ProblemConfigError
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.lqr import LQRProblem

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'lqr.yaml'

BASE = {
    'kind': 'lqr', 'gamma': 0.9,
    'real': {'A': [[1.0, 0.1], [-0.3, 0.9]], 'B': [[0.0], [0.1]], 'noise_covariance': [[0.01, 0.0], [0.0, 0.01]]},
    'cost': {'Q': [[1.0, 0.0], [0.0, 0.1]], 'R': [[0.1]]},
    'initial_state': {'mean': [1.0, 0.0], 'covariance': [[0.1, 0.0], [0.0, 0.1]]},
    'policy': {'std': 0.3},
    'simulator': {'A': [[1.0, 0.1], [0.0, 1.0]], 'learn_A': [[0, 0], [0, 1]], 'B': [[0.0], [0.1]], 'learn_B': True,
                  'Q': [[1.0, 0.0], [0.0, 0.1]], 'learn_Q': True, 'R': [[0.1]], 'learn_R': False},
}


def diagonal_problem(size: int, learn_q) -> dict:
    """A stable size-state, 1-input problem (for the cost-parametrisation rules)."""
    eye = np.eye(size).tolist()
    data = copy.deepcopy(BASE)
    data['real'] = {'A': (0.5 * np.eye(size)).tolist(), 'B': np.ones((size, 1)).tolist(),
                    'noise_covariance': (0.01 * np.eye(size)).tolist()}
    data['cost']['Q'] = eye
    data['initial_state'] = {'mean': [1.0] * size, 'covariance': eye}
    data['simulator'] = {'A': (0.5 * np.eye(size)).tolist(), 'B': np.ones((size, 1)).tolist(),
                         'Q': eye, 'learn_Q': learn_q, 'R': [[0.1]]}
    return data


def setting(path: str, value):
    """A mutation that sets the dotted ``path`` ('' = the whole document) to ``value``."""
    def mutate(data):
        *parents, last = path.split('.')
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return mutate


def deleting(path: str):
    def mutate(data):
        *parents, last = path.split('.')
        node = data
        for key in parents:
            node = node[key]
        del node[last]
    return mutate


def replacing(document: dict):
    def mutate(data):
        data.clear()
        data.update(copy.deepcopy(document))
    return mutate


NOT_PSD = [[0.01, 0.0], [0.0, -0.01]]
ASYMMETRIC = [[0.01, 0.005], [0.0, 0.01]]
STABILISABLE_NOT = {'A': [[2.0, 0.0], [0.0, 0.5]], 'B': [[0.0], [1.0]]}

# (rule, mutation, the field the error must name)
CASES = [
    ('unknown top-level field', setting('horizon', 10), 'horizon'),
    ('wrong kind', setting('kind', 'LQR'), 'kind'),
    ('gamma = 1', setting('gamma', 1.0), 'gamma'),
    ('gamma = 0', setting('gamma', 0.0), 'gamma'),
    ('gamma not a number', setting('gamma', 'high'), 'gamma'),
    ('missing section', deleting('cost'), 'cost'),
    ('section not a mapping', setting('cost', [1, 2]), 'cost'),
    ('real.A not square', setting('real.A', [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), 'real.A'),
    ('real.A ragged', setting('real.A', [[1.0, 0.0], [0.0]]), 'real.A'),
    ('real.A not finite', setting('real.A', [[1.0, float('nan')], [0.0, 1.0]]), 'real.A[0][1]'),
    ('real.B wrong rows', setting('real.B', [[0.1]]), 'real.B'),
    ('real.B missing', deleting('real.B'), 'real.B'),
    ('real unknown field', setting('real.C', [[1.0, 0.0]]), 'real.C'),
    ('real noise not symmetric', setting('real.noise_covariance', ASYMMETRIC), 'real.noise_covariance'),
    ('real noise not PSD', setting('real.noise_covariance', NOT_PSD), 'real.noise_covariance'),
    ('real noise wrong shape', setting('real.noise_covariance', [[0.01]]), 'real.noise_covariance'),
    ('real horizon < 1', setting('real.horizon', 0), 'real.horizon'),
    ('real horizon not an integer', setting('real.horizon', 2.5), 'real.horizon'),
    ('real system not stabilisable', lambda d: d['real'].update(STABILISABLE_NOT), 'real.A'),
    ('cost unknown field', setting('cost.S', [[1.0]]), 'cost.S'),
    ('cost Q not PSD', setting('cost.Q', [[1.0, 0.0], [0.0, -0.1]]), 'cost.Q'),
    ('cost Q not symmetric', setting('cost.Q', [[1.0, 0.1], [0.0, 0.1]]), 'cost.Q'),
    ('cost Q wrong shape', setting('cost.Q', [[1.0]]), 'cost.Q'),
    ('cost R singular', setting('cost.R', [[0.0]]), 'cost.R'),
    ('initial mean wrong length', setting('initial_state.mean', [1.0, 0.0, 0.0]), 'initial_state.mean'),
    ('initial covariance not symmetric', setting('initial_state.covariance', ASYMMETRIC), 'initial_state.covariance'),
    ('initial covariance not PSD', setting('initial_state.covariance', NOT_PSD), 'initial_state.covariance'),
    ('initial unknown field', setting('initial_state.std', 1.0), 'initial_state.std'),
    ('policy std = 0', setting('policy.std', 0.0), 'policy.std'),
    ('policy std < 0', setting('policy.std', -0.1), 'policy.std'),
    ('policy unknown field', setting('policy.gain', [[1.0, 1.0]]), 'policy.gain'),
    ('simulator unknown field', setting('simulator.C', 1), 'simulator.C'),
    ('simulator A wrong shape', setting('simulator.A', [[1.0]]), 'simulator.A'),
    ('simulator B wrong shape', setting('simulator.B', [[0.1, 0.0], [0.1, 0.0]]), 'simulator.B'),
    ('mask entry not 0/1', setting('simulator.learn_A', [[0, 2], [0, 1]]), 'simulator.learn_A[0][1]'),
    ('mask wrong shape', setting('simulator.learn_B', [[1, 1]]), 'simulator.learn_B'),
    ('simulator Q not PSD', setting('simulator.Q', [[1.0, 0.0], [0.0, -0.1]]), 'simulator.Q'),
    ('simulator R not PD', setting('simulator.R', [[0.0]]), 'simulator.R'),
    ('cost mask not symmetric', setting('simulator.learn_Q', [[1, 1], [0, 1]]), 'simulator.learn_Q[0][1]'),
    ('learnable diagonal not > 0', setting('simulator.Q', [[0.0, 0.0], [0.0, 0.1]]), 'simulator.Q[0][0]'),
    ('learnable correlation needs positive diagonals',
     lambda d: d['simulator'].update(Q=[[0.0, 0.0], [0.0, 0.1]], learn_Q=[[0, 1], [1, 1]]), 'simulator.Q[0][0]'),
    ('nominal correlation outside its bound',
     lambda d: d['simulator'].update(Q=[[1.0, 0.3], [0.3, 0.1]], correlation_bound=0.5), 'simulator.Q[0][1]'),
    ('simulator noise singular', setting('simulator.noise_covariance', [[0.01, 0.0], [0.0, 0.0]]),
     'simulator.noise_covariance'),
    ('default simulator noise singular', setting('real.noise_covariance', [[0.01, 0.0], [0.0, 0.0]]),
     'simulator.noise_covariance'),
    ('nothing learnable', lambda d: d['simulator'].update(learn_A=False, learn_B=False, learn_Q=False),
     'simulator.learn_A'),
    ('dynamics_bound = 0', setting('simulator.dynamics_bound', 0.0), 'simulator.dynamics_bound'),
    ('dynamics_bound.B < 0', setting('simulator.dynamics_bound', {'A': 0.5, 'B': -0.1}), 'simulator.dynamics_bound.B'),
    ('dynamics_bound unknown matrix', setting('simulator.dynamics_bound', {'C': 0.5}), 'simulator.dynamics_bound.C'),
    ('cost_scale_bound <= 1', setting('simulator.cost_scale_bound', 1.0), 'simulator.cost_scale_bound'),
    ('correlation_bound = 1', setting('simulator.correlation_bound', 1.0), 'simulator.correlation_bound'),
    ('correlation box leaves the PSD cone', replacing(diagonal_problem(3, True) | {'simulator': dict(
        diagonal_problem(3, True)['simulator'], correlation_bound=0.9)}), 'simulator.correlation_bound'),
    ('too many learnable correlations', replacing(diagonal_problem(6, True)), 'simulator.learn_Q'),
    ('nominal simulator not stabilisable', lambda d: d['simulator'].update(STABILISABLE_NOT, learn_A=[[1, 0], [0, 0]]),
     'simulator.A'),
    ('inner unknown field', setting('inner', {'episodes': 10}), 'inner.episodes'),
    ('inner step outside (0, 1]', setting('inner', {'sampled_step': 1.5}), 'inner.sampled_step'),
    ('inner count < 1', setting('inner', {'sensitivity_episodes': 0}), 'inner.sensitivity_episodes'),
    ('inner critic term unknown', setting('inner', {'critic_dynamics_term': 'magic'}), 'inner.critic_dynamics_term'),
    ('outer invalid value', setting('outer', {'step_size': -1.0}), 'outer'),
    ('outer unknown field', setting('outer', {'learning_rate': 0.1}), 'outer'),
    ('outer per-method override invalid', setting('outer', {'methods': {'cmaes': {'cma_sigma': 0.0}}}),
     'outer.methods.cmaes'),
]


def test_base_document_is_valid(tmp_path):
    path = tmp_path / 'base.yaml'
    path.write_text(yaml.safe_dump(BASE))
    problem = load_problem(path)
    assert isinstance(problem, LQRProblem)
    assert problem.theta_names == ['A[1][1]', 'B[0][0]', 'B[1][0]', 'Q[0][0]', 'Q[0][1]', 'Q[1][1]']
    assert problem.theta_coordinates() == ['linear', 'linear', 'linear', 'log', 'correlation', 'log']


def test_from_dict_rejects_another_kind():
    with pytest.raises(ProblemConfigError) as info:
        LQRProblem.from_dict(dict(copy.deepcopy(BASE), kind='tabular'), 'direct.yaml')
    assert info.value.field == 'kind' and info.value.source == 'direct.yaml'


@pytest.mark.parametrize('rule, mutate, field', CASES, ids=[case[0] for case in CASES])
def test_each_malformed_file_is_rejected_naming_file_field_and_expectation(tmp_path, rule, mutate, field):
    data = copy.deepcopy(BASE)
    mutate(data)
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProblemConfigError) as info:
        load_problem(path)
    error = info.value
    assert error.source == str(path)
    assert error.field == field, str(error)
    message = str(error)
    assert message.startswith(str(path)) and repr(field) in message and 'expected' in message


def test_cost_parametrisation_keeps_q_psd_and_r_pd_over_the_whole_box():
    data = diagonal_problem(3, True)
    data['simulator']['correlation_bound'] = 0.45       # 2 * 0.45 < 1: diagonally dominant
    data['simulator']['R'] = [[0.2, 0.05], [0.05, 0.1]]
    data['simulator']['learn_R'] = True
    data['simulator']['B'] = data['real']['B'] = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    data['cost']['R'] = [[0.1, 0.0], [0.0, 0.1]]
    problem = LQRProblem.from_dict(data, '<box>')
    lower, upper = problem.theta_bounds()
    assert np.all(lower <= problem.theta0()) and np.all(problem.theta0() <= upper)
    np.testing.assert_allclose(problem.simulator_matrices(problem.theta0())[3], [[0.2, 0.05], [0.05, 0.1]])
    rng = np.random.default_rng(0)
    for _ in range(200):
        corner = rng.integers(0, 2, lower.size).astype(bool)
        inside = lower + (upper - lower) * rng.random(lower.size)
        theta = np.where(corner, upper, lower) if rng.random() < 0.5 else inside
        _, _, q, r = problem.simulator_matrices(theta)
        assert np.linalg.eigvalsh(q).min() >= -1e-12
        assert np.linalg.eigvalsh(r).min() > 0


# --- the shipped example ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def shipped():
    return load_problem(CONFIG)


def test_shipped_nominal_simulator_is_clearly_suboptimal(shipped):
    phi = shipped.inner_solve(shipped.theta0()).phi
    assert shipped.normalized_return(phi) < 0.8


def test_shipped_system_identification_does_not_recover_the_real_optimum(shipped):
    """Iterated ML fit of the masked family on all real data so far (as the sysid baseline
    does), plenty of data: the missing spring cannot be represented, so the fitted simulator's
    gain stays poor -- projected onto the bounds (as the baseline does) or not."""
    rng = np.random.default_rng(0)
    lower, upper = shipped.theta_bounds()
    phi = shipped.inner_solve(shipped.theta0()).phi
    batches = []
    for _ in range(4):
        batches.append(shipped.sample_real(phi, 50, rng))
        fitted = shipped.system_identification(batches, shipped.theta0())
        unprojected = shipped.normalized_return(shipped.inner_solve(fitted).phi)
        phi = shipped.inner_solve(np.clip(fitted, lower, upper)).phi
        assert unprojected < 0.8 and shipped.normalized_return(phi) < 0.8


def test_shipped_family_contains_a_near_optimal_simulator(shipped):
    lower, upper = shipped.theta_bounds()

    def real_cost_and_gradient(theta):
        phi = shipped.inner_solve(theta).phi
        phi_t = torch.as_tensor(phi).clone().requires_grad_(True)
        cost = -shipped.real_objective(phi_t)
        (gradient,) = torch.autograd.grad(cost, phi_t)
        return cost.item(), shipped.riccati_gain_derivative(theta).T @ gradient.numpy()

    result = minimize(real_cost_and_gradient, shipped.theta0(), jac=True, method='L-BFGS-B',
                      bounds=list(zip(lower, upper)))
    assert np.all(lower <= result.x) and np.all(result.x <= upper)
    assert shipped.normalized_return(shipped.inner_solve(result.x).phi) >= 0.999


def run_bilevel(problem, seed, iterations, **overrides):
    from sim2real_bilevel.core.experiments import make_run
    run = make_run(problem, 'bilevel', seed, iterations=iterations, overrides=overrides or None, evaluate=True)
    return run.run()


def test_shipped_bilevel_loop_with_sampled_real_gradient_improves_quickly(shipped):
    """One seed of the outer loop at the file's defaults (25 real transitions per iteration,
    LSTD-Q real gradient): normalised return >= 0.95 within 25 iterations (measured over 5
    seeds: 7-17)."""
    history = run_bilevel(shipped, 0, 25)
    assert history[0].normalized_return < 0.8
    assert max(r.normalized_return for r in history) >= 0.95
    assert history[-1].real_transitions == 25 * shipped.real_horizon


@pytest.mark.slow
@pytest.mark.parametrize('sensitivity', ['exact', 'sampled'])
def test_shipped_bilevel_loop_converges_on_five_seeds(shipped, sensitivity):
    for seed in range(5):
        history = run_bilevel(shipped, seed, None, sensitivity_method=sensitivity)
        first = next(r.iteration for r in history if r.normalized_return >= 0.95)
        assert first <= 40, (seed, first)
        assert history[-1].normalized_return >= 0.99, seed
