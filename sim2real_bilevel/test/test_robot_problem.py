"""RobotProblem: config validation, the CRN objective and its derivatives, the implicit
function theorem against re-solved inner optima, real episodes, sysid, the oracle."""
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sim2real_bilevel.core import implicit
from sim2real_bilevel.core.config import ProblemConfigError, load_yaml
from sim2real_bilevel.core.problems.robot import CommonNoise, RobotProblem

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'pendulum.yaml'

TINY = {
    'kind': 'robot', 'gamma': 0.95, 'horizon': 12,
    'initial_state': {'position_range': [-0.3, 0.3], 'velocity_range': [-0.3, 0.3]},
    'task': {'reward_weights': {'angle': 5.0, 'velocity': 0.1, 'effort': 0.05}},
    'real': {'payload_mass': 0.5, 'damping': 0.1, 'coulomb_friction': 0.05, 'motor_gain': 0.7,
             'actuation_delay_steps': 1, 'effort_limit': 2.0,
             'sensor_noise': {'position': 0.005, 'velocity': 0.05, 'effort': 0.0}},
    'simulator': {
        'physics_substeps': 1, 'effort_limit': 2.5, 'transition_noise_std': [0.002, 0.05],
        'parameters': {'payload_mass': {'value': 0.2, 'learn': True, 'bounds': [0.02, 2.0]},
                       'damping': {'value': 0.02, 'learn': True, 'bounds': [0.002, 1.0]},
                       'coulomb_friction': {'value': 0.02, 'learn': False},
                       'motor_gain': {'value': 1.0, 'learn': True, 'bounds': [0.2, 3.0]}},
        'reward_weights': {'angle': {'value': 5.0},
                           'velocity': {'value': 0.3, 'learn': True, 'bounds': [0.01, 2.0]},
                           'effort': {'value': 0.2, 'learn': True, 'bounds': [0.01, 2.0]}}},
    'policy': {'hidden_sizes': [4], 'initial_std': 0.3},
    'inner': {'episodes': 6, 'entropy': 0.01, 'l2': 0.1, 'tolerance': 1e-7, 'max_iterations': 300,
              'warmup_iterations': 100, 'oracle_iterations': 200},
    'evaluation': {'episodes': 8, 'seed': 5},
}


def tiny(**changes) -> RobotProblem:
    data = copy.deepcopy(TINY)
    for path, value in changes.items():
        node = data
        keys = path.split('.')
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return RobotProblem.from_dict(data, '<tiny>')


@pytest.fixture(scope='module')
def problem():
    return tiny()


def newton(problem, phi: np.ndarray, theta: np.ndarray, steps: int) -> np.ndarray:
    """Polish an inner optimum to machine precision with dense Newton steps (the tiny
    problem's Hessian is cheap to form from the problem's own Hessian-vector products)."""
    for _ in range(steps):
        terms = problem.sensitivity_terms(phi, theta)
        hessian = -implicit.DenseSolver().matrix(implicit.operators(terms))
        residual = problem.inner_gradient(torch.as_tensor(phi), torch.as_tensor(theta))
        phi = phi - torch.linalg.solve(hessian, residual).numpy()
    return phi


@pytest.fixture(scope='module')
def solved(problem):
    """(theta, L-BFGS result, phi*(theta) polished by Newton to ||F|| ~ 1e-15)."""
    theta = problem.theta0()
    result = problem.inner_solve(theta)
    return theta, result, newton(problem, result.phi, theta, steps=3)


def central_difference(function, x: torch.Tensor, direction: torch.Tensor, step: float = 1e-5):
    return (function(x + step * direction) - function(x - step * direction)) / (2 * step)


# --- loading and validation ----------------------------------------------------------------------
def test_shipped_config_loads_with_learnable_dynamics_and_reward():
    data, source = load_yaml(CONFIG)
    problem = RobotProblem.from_dict(data, source)
    lower, upper = problem.theta_bounds()
    assert np.all(lower <= problem.theta0()) and np.all(problem.theta0() <= upper)
    groups = problem.theta_groups()
    assert groups['dynamics'].any() and groups['reward'].any()
    assert np.array_equal(groups['dynamics'], ~groups['reward'])
    assert problem.phi_size() == problem.policy.num_params
    assert len(problem.theta_names) == problem.theta0().size


@pytest.mark.parametrize('path, value, field', [
    ('real.motor_gain', -1.0, 'real.motor_gain'),
    ('gamma', 1.0, 'gamma'),
    ('simulator.parameters.damping.value', 5.0, 'simulator.parameters.damping.value'),
    ('simulator.parameters.damping.learn', 'yes', 'simulator.parameters.damping.learn'),
    ('simulator.parameters.damping.bounds', [0.5, 0.1], 'simulator.parameters.damping.bounds'),
    ('simulator.transition_noise_std', [0.0, 0.1], 'simulator.transition_noise_std'),
    ('initial_state.position_range', [0.2], 'initial_state.position_range'),
    ('policy.hidden_sizes', [4, 0], 'policy.hidden_sizes'),
    ('real.actuation_delay_steps', 1.5, 'real.actuation_delay_steps'),
])
def test_malformed_fields_are_reported_by_name(path, value, field):
    with pytest.raises(ProblemConfigError) as error:
        tiny(**{path: value})
    assert error.value.field == field
    assert '<tiny>' in str(error.value)


def test_unknown_fields_and_outer_typos_are_rejected():
    with pytest.raises(ProblemConfigError, match='real.mass'):
        tiny(**{'real.mass': 1.0})
    with pytest.raises(ProblemConfigError, match='outer'):
        tiny(outer={'step_sise': 0.1})


def test_without_an_outer_section_the_sensitivity_is_cg_with_few_hessian_products(problem, solved):
    """OuterConfig's general default (dense) would form the Hessian from one product per policy
    parameter; the robot kinds default to damped CG (``OUTER_DEFAULTS``), and the file's own
    values win over it."""
    from sim2real_bilevel.core.experiments import make_config
    from sim2real_bilevel.core.outer import make_solver
    config = make_config(problem, 'bilevel', None, None, {})
    assert (config.solver, config.damping, config.cg_maxiter, config.cg_tol) == ('cg', 1.0, 10, 1e-3)
    theta, _, phi = solved
    products = {}
    for name, solver in (('default', make_solver(config)), ('dense', implicit.dense_solver(damping=1.0))):
        terms = problem.sensitivity_terms(phi, theta)
        count = [0]

        def counted(v, hvp=terms.hvp, count=count):
            count[0] += 1
            return hvp(v)
        implicit.outer_gradient(dataclasses.replace(terms, hvp=counted), np.ones(problem.phi_size()), solver)
        products[name] = count[0]
    assert products['dense'] == problem.phi_size() > 10 and products['default'] <= 11, products
    written = make_config(tiny(outer={'solver': 'dense', 'damping': 1e-6}), 'bilevel', None, None, {})
    assert (written.solver, written.damping) == ('dense', 1e-6)


def test_nothing_learnable_is_rejected():
    data = copy.deepcopy(TINY)
    for section in ('parameters', 'reward_weights'):
        for entry in data['simulator'][section].values():
            entry['learn'] = False
    with pytest.raises(ProblemConfigError, match='learn'):
        RobotProblem.from_dict(data, '<tiny>')


# --- the in-sim objective and its derivatives --------------------------------------------------------
def test_inner_gradient_is_the_pure_gradient_of_the_crn_objective(problem):
    phi = torch.as_tensor(problem.policy.init_params(np.random.default_rng(3)))
    theta = torch.as_tensor(problem.theta0())
    gradient = problem.inner_gradient(phi, theta)
    direction = torch.as_tensor(np.random.default_rng(4).standard_normal(phi.numel()))
    expected = central_difference(lambda p: problem.sim_objective(p, theta), phi, direction)
    assert float(gradient @ direction) == pytest.approx(float(expected), rel=1e-6)
    # deterministic (fixed common random numbers) and batched-safe under vmap
    torch.testing.assert_close(problem.inner_gradient(phi, theta), gradient)
    batched = torch.func.vmap(problem.inner_gradient, in_dims=(0, None))(torch.stack([phi, phi]), theta)
    torch.testing.assert_close(batched[1], gradient)


def test_sensitivity_operators_match_finite_differences_of_F(problem, solved):
    theta, _, phi = solved
    terms = problem.sensitivity_terms(phi, theta)
    rng = np.random.default_rng(5)
    phi_t, theta_t = torch.as_tensor(phi), torch.as_tensor(theta)
    v = torch.as_tensor(rng.standard_normal(phi_t.numel()))
    w = torch.as_tensor(rng.standard_normal(theta_t.numel()))
    u = torch.as_tensor(rng.standard_normal(phi_t.numel()))
    hvp_fd = central_difference(lambda p: problem.inner_gradient(p, theta_t), phi_t, v)
    torch.testing.assert_close(terms.hvp(v), hvp_fd, rtol=1e-5, atol=1e-7)
    jvp_fd = central_difference(lambda t: problem.inner_gradient(phi_t, t), theta_t, w)
    torch.testing.assert_close(terms.info['jvp_theta'](w), jvp_fd, rtol=1e-5, atol=1e-7)
    # <u, dF/dtheta w> two ways: the VJP is the transpose of the JVP
    assert float(terms.vjp_theta(u) @ w) == pytest.approx(float(u @ jvp_fd), rel=1e-5)
    # F is a gradient: its Jacobian is symmetric
    assert float(terms.hvp(v) @ u) == pytest.approx(float(terms.hvp(u) @ v), rel=1e-9)
    assert terms.info['symmetric'] and terms.info['theta_size'] == theta.size


def test_inner_solve_converges_and_warm_start_is_cheap(problem, solved):
    theta, result, phi = solved
    assert result.grad_norm < 1e-6
    assert np.abs(result.phi - phi).max() < 1e-3                 # the same optimum Newton polishes
    assert float(problem.inner_gradient(torch.as_tensor(phi), torch.as_tensor(theta)).norm()) < 1e-12
    again = problem.inner_solve(theta, phi)
    assert again.iterations <= 2
    np.testing.assert_allclose(again.phi, phi, atol=1e-8)


def test_start_best_keeps_the_cold_solve_where_a_warm_chain_is_stuck_below_it():
    """inner.start: best -- a warm start that its budget cannot bring to the optimum (1 L-BFGS
    iteration from a policy far off) loses to the cold solve at the same theta, by J_sim."""
    warm_start = np.full(tiny().phi_size(), 2.0)
    stuck, best = tiny(**{'inner.max_iterations': 1}), tiny(**{'inner.max_iterations': 1, 'inner.start': 'best'})
    theta = stuck.theta0()
    warm = stuck.inner_solve(theta, warm_start)
    cold = stuck.inner_solve(theta)
    assert warm.info['objective'] < cold.info['objective'] - 1e-3
    chosen = best.inner_solve(theta, warm_start)
    assert chosen.info['start'] == 'cold'
    np.testing.assert_array_equal(chosen.phi, cold.phi)
    assert chosen.info['warm_objective'] == pytest.approx(warm.info['objective'])
    assert chosen.info['cold_objective'] == pytest.approx(cold.info['objective'])
    # a warm solve that reaches the higher J_sim is kept
    better = best.inner_solve(theta, cold.phi)
    assert better.info['objective'] >= better.info['cold_objective']
    assert better.info['start'] == ('warm' if better.info['warm_objective'] >= better.info['cold_objective'] else 'cold')
    assert 'start' not in warm.info                          # the default ('warm') solves warm only


def test_the_continued_solve_is_the_warm_one_whatever_inner_start_says():
    """Solver 'resolve' differentiates ``continued_solve``: under ``inner.start: best`` it is still the
    warm solve from phi (where ``inner_solve`` keeps the cold one), so its finite differences do not
    jump between basins."""
    warm_start = np.full(tiny().phi_size(), 2.0)
    best = tiny(**{'inner.max_iterations': 1, 'inner.start': 'best'})
    theta = best.theta0()
    assert best.inner_solve(theta, warm_start).info['start'] == 'cold'
    continued = best.continued_solve(theta, warm_start)
    warm = tiny(**{'inner.max_iterations': 1}).inner_solve(theta, warm_start)
    assert 'start' not in continued.info
    np.testing.assert_array_equal(continued.phi, warm.phi)


def test_a_pickled_problem_solves_as_the_original_and_leaves_its_emulators_behind():
    """Solver 'resolve' sends the problem to worker processes (core/solve_pool.py): the copy's
    continued solve is the original's, bit for bit, after real episodes made pybullet emulators
    (connections that cannot be pickled; the copy makes its own on first use).  The copy also
    solves in a worker process."""
    import pickle

    from sim2real_bilevel.core.solve_pool import SolvePool
    problem = tiny(**{'inner.max_iterations': 20})
    theta, phi = problem.theta0(), np.full(problem.phi_size(), 0.1)
    problem.real_episodes(phi, [0, 1])
    assert problem._emulators
    copy_ = pickle.loads(pickle.dumps(problem))
    assert copy_._emulators == []
    expected = problem.continued_solve(theta, phi).phi
    np.testing.assert_array_equal(copy_.continued_solve(theta, phi).phi, expected)
    np.testing.assert_array_equal(copy_.real_episodes(phi, [0, 1])[2], problem.real_episodes(phi, [0, 1])[2])
    pool = SolvePool(1)
    try:
        [solved] = pool.continued_solves(problem, [(theta, phi)])
    finally:
        pool.close()
    np.testing.assert_allclose(solved, expected, rtol=1e-12, atol=1e-14)


def test_an_unknown_inner_start_is_refused_naming_the_field():
    with pytest.raises(ProblemConfigError, match='inner.start') as error:
        tiny(**{'inner.start': 'bset'})
    assert 'bset' in str(error.value)


def test_implicit_sensitivity_matches_resolved_inner_optima(problem, solved):
    """d phi*/d theta from the IFT (dense, and CG that never forms the Hessian) against
    central differences of phi*(theta +- h e_j) re-solved by Newton to machine precision."""
    theta, _, phi = solved
    terms = problem.sensitivity_terms(phi, theta)
    dense = implicit.sensitivity_matrix(terms, implicit.dense_solver())
    cg = implicit.sensitivity_matrix(terms, implicit.cg_solver(maxiter=2000, tol=1e-13))
    step = 1e-5
    columns = []
    for j in range(theta.size):
        offset = np.zeros_like(theta)
        offset[j] = step
        plus = newton(problem, phi, theta + offset, steps=2)
        minus = newton(problem, phi, theta - offset, steps=2)
        columns.append((plus - minus) / (2 * step))
    finite = np.stack(columns, axis=1)
    assert np.linalg.norm(dense - finite) / np.linalg.norm(finite) < 1e-6
    assert np.linalg.norm(cg - dense) / np.linalg.norm(dense) < 1e-6


def test_sampled_terms_use_the_trajectories_random_numbers(problem, solved):
    theta, result, _ = solved
    trajectories = problem.simulate(result.phi, theta, 5, problem.horizon, np.random.default_rng(6))
    noise = problem.noise_of(result.phi, theta, trajectories)
    states, actions, rewards = problem.rollout(torch.as_tensor(result.phi),
                                               problem.full_theta(torch.as_tensor(theta)), noise)
    np.testing.assert_allclose(states.transpose(0, 1).numpy(), trajectories.states, atol=1e-10)
    np.testing.assert_allclose(rewards.T.numpy(), trajectories.rewards, atol=1e-12)
    sampled = problem.sensitivity_terms(result.phi, theta, method='sampled', trajectories=trajectories)
    exact = problem.sensitivity_terms(result.phi, theta)
    v = torch.as_tensor(np.random.default_rng(7).standard_normal(result.phi.size))
    expected = torch.func.jvp(lambda p: torch.func.grad(problem.sim_objective)(p, torch.as_tensor(theta), noise),
                              (torch.as_tensor(result.phi),), (v,))[1]
    torch.testing.assert_close(sampled.hvp(v), expected)
    assert not torch.allclose(sampled.hvp(v), exact.hvp(v))


def test_simulate_scores_are_gradients_of_the_transition_log_density(problem):
    phi = problem.policy.init_params(np.random.default_rng(8))
    theta = problem.theta0()
    batch = problem.simulate(phi, theta, 3, 7, np.random.default_rng(9))
    assert batch.states.shape == (3, 8, 2) and batch.actions.shape == (3, 7, 1)
    assert batch.score_theta.shape == (3, 7, theta.size)
    i, t = 2, 4
    theta_t = torch.as_tensor(theta).requires_grad_(True)
    log_density = problem.model.log_prob(torch.as_tensor(batch.states[i, t + 1]), torch.as_tensor(batch.states[i, t]),
                                         torch.as_tensor(batch.actions[i, t]),
                                         problem.model.split(problem.full_theta(theta_t))[0])
    (expected,) = torch.autograd.grad(log_density, theta_t)
    np.testing.assert_allclose(batch.score_theta[i, t], expected.numpy(), rtol=1e-10, atol=1e-12)
    reward_entries = problem.theta_groups()['reward']
    assert np.all(batch.score_theta[..., reward_entries] == 0.0)


# --- real system --------------------------------------------------------------------------------------
def test_real_episodes_are_reproducible_and_consistent(problem):
    phi = problem.policy.init_params(np.random.default_rng(10))
    first = problem.sample_real(phi, 3, np.random.default_rng(11))
    second = problem.sample_real(phi, 3, np.random.default_rng(11))
    np.testing.assert_array_equal(first.states, second.states)
    assert first.source == 'real' and first.states.shape == (3, problem.horizon + 1, 2)
    observations = problem.model.observation(torch.as_tensor(first.states[:, :-1]))
    log_probs = problem.policy.log_prob(torch.as_tensor(phi), observations, torch.as_tensor(first.actions))
    np.testing.assert_allclose(first.log_probs, log_probs.numpy())
    assert np.all((first.rewards > 0) & (first.rewards <= 1))


def test_real_policy_gradient_baseline_absorbs_returns_it_can_represent(problem):
    phi = problem.policy.init_params(np.random.default_rng(12))
    batch = problem.sample_real(phi, 4, np.random.default_rng(13))
    batch.rewards[:] = 0.5     # the reward-to-go is then a function of time only: the baseline is exact
    assert np.abs(problem.likelihood_ratio_real_gradient(phi, [batch])).max() < 1e-6
    batch.rewards[:] = np.random.default_rng(0).uniform(size=batch.rewards.shape)
    assert np.abs(problem.likelihood_ratio_real_gradient(phi, [batch])).max() > 1e-3


def test_real_policy_gradient_is_unbiased_on_a_known_objective(problem):
    """Exogenous i.i.d. states and reward -(a - c)^2: the expected gradient is
    sum_t gamma^t grad_phi E[-(a_t - c)^2] = sum_t gamma^t grad_phi [-(mu(o_t) - c)^2 - sigma^2]."""
    from sim2real_bilevel.core.problem import Trajectories
    rng = np.random.default_rng(18)
    phi = problem.policy.init_params(rng) + 0.3 * rng.standard_normal(problem.phi_size())
    n, horizon, target = 3000, 4, 0.4
    states = rng.uniform(-0.5, 0.5, size=(n, horizon + 1, 2))
    phi_t = torch.as_tensor(phi)
    observations = problem.model.observation(torch.as_tensor(states[:, :-1]))
    with torch.no_grad():
        actions = (problem.policy.mean(phi_t, observations)
                   + torch.exp(problem.policy.log_std(phi_t)) * torch.as_tensor(rng.standard_normal((n, horizon, 1))))
    rewards = -(actions[..., 0].numpy() - target) ** 2
    batch = Trajectories(states=states, actions=actions.numpy(), rewards=rewards,
                         dones=np.zeros((n, horizon), dtype=bool), log_probs=np.zeros((n, horizon)), source='real')
    problem_gamma = problem.gamma
    estimate = problem.likelihood_ratio_real_gradient(phi, [batch])

    def expected_return(p):
        mean = problem.policy.mean(p, observations)[..., 0]
        per_step = -(mean - target) ** 2 - torch.exp(2 * problem.policy.log_std(p)).sum()
        return (per_step * problem_gamma ** torch.arange(horizon, dtype=torch.float64)).sum(1).mean()

    expected = torch.func.grad(expected_return)(phi_t).numpy()
    assert np.linalg.norm(estimate - expected) / np.linalg.norm(expected) < 0.1


def test_generalised_advantages_interpolate_between_td_and_monte_carlo():
    from sim2real_bilevel.core.problems.robot.estimators import gae as _gae
    rng = np.random.default_rng(19)
    rewards, values, gamma = rng.standard_normal((3, 5)), rng.standard_normal((3, 6)), 0.9
    values[:, -1] = 0.0
    td = rewards + gamma * values[:, 1:] - values[:, :-1]
    np.testing.assert_allclose(_gae(rewards, values, gamma, 0.0), td)
    discounts = gamma ** np.arange(5)
    to_go = np.array([[rewards[i, t:] @ discounts[:5 - t] for t in range(5)] for i in range(3)])
    np.testing.assert_allclose(_gae(rewards, values, gamma, 1.0), to_go - values[:, :-1])


def test_real_episodes_do_not_depend_on_which_run_beside_them(problem):
    phi = problem.policy.init_params(np.random.default_rng(20))
    together = problem.real_episodes(phi, [3, 4, 5])
    alone = problem.real_episodes(phi, [4])
    for part_together, part_alone in zip(together, alone):
        np.testing.assert_allclose(part_together[1], part_alone[0], rtol=0, atol=1e-12)


def test_system_identification_recovers_a_well_specified_robot():
    """No delay, no noise, no clipping, the model's friction and integration step: ML lands
    near the true parameters (the model only differs in its smooth friction curve)."""
    problem = tiny(**{'real.actuation_delay_steps': 0, 'real.sensor_noise': {}, 'real.coulomb_friction': 0.02,
                      'real.effort_limit': 1e6, 'simulator.effort_limit': 1e6,
                      'real.physics_substeps': 4, 'simulator.physics_substeps': 4,
                      'initial_state.velocity_range': [-2.0, 2.0]})
    phi = problem.policy.init_params(np.random.default_rng(16))
    phi[-1] = np.log(1.0)                     # wide exploration makes the gain identifiable
    batch = problem.sample_real(phi, 6, np.random.default_rng(17))
    theta = problem.system_identification([batch], problem.theta0())
    fitted = dict(zip(problem.theta_names, np.exp(theta)))
    assert fitted['log_payload_mass'] == pytest.approx(0.5, rel=0.02)     # measured: 0.503
    assert fitted['log_motor_gain'] == pytest.approx(0.7, rel=0.02)       # 0.703
    assert fitted['log_damping'] == pytest.approx(0.1, rel=0.05)          # 0.1002
    reward = problem.theta_groups()['reward']
    np.testing.assert_array_equal(theta[reward], problem.theta0()[reward])


def test_oracle_is_normalised_to_one_and_cached(problem):
    oracle = problem.oracle_phi()
    assert problem.oracle_phi() is oracle
    assert problem.normalized_return(oracle) == pytest.approx(1.0)
    nominal = problem.inner_solve(problem.theta0()).phi
    assert problem.normalized_return(nominal) != pytest.approx(1.0)
    assert float(problem.real_objective(torch.as_tensor(nominal))) == pytest.approx(problem.real_return(nominal))


def test_common_noise_is_deterministic_in_its_generator():
    from sim2real_bilevel.core.problems.robot import InitialStateRange
    initial = InitialStateRange((-0.1, 0.2), (0.0, 0.5))
    a = CommonNoise.draw(4, 3, initial, np.random.default_rng(0))
    b = CommonNoise.draw(4, 3, initial, np.random.default_rng(0))
    torch.testing.assert_close(a.transition_noise, b.transition_noise)
    assert float(a.initial_states[:, 0].min()) >= -0.1 and float(a.initial_states[:, 1].max()) <= 0.5


def test_domain_randomisation_optimises_the_average_over_drawn_simulators(problem):
    result = problem.randomized_inner_solve(np.random.default_rng(3), episodes=12)
    assert np.all(np.isfinite(result.phi))
    # the solution is stationary for the randomised objective it was trained on, and that
    # objective is not the nominal one: the nominal inner gradient at it is clearly non-zero
    assert result.grad_norm <= 1e-3
    nominal_gradient = problem.inner_gradient(torch.as_tensor(result.phi), torch.as_tensor(problem.theta0()))
    assert float(nominal_gradient.norm()) > 100 * result.grad_norm
    # the same generator state gives the same policy; the CRN set of the problem is untouched
    again = problem.randomized_inner_solve(np.random.default_rng(3), episodes=12)
    np.testing.assert_array_equal(result.phi, again.phi)
    assert problem._crn.initial_states.shape[0] == problem.inner.episodes
    with pytest.raises(ValueError, match='episodes'):
        problem.randomized_inner_solve(np.random.default_rng(0), episodes=0)


def test_domain_randomisation_method_runs_and_needs_a_robot_problem(problem):
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    run = make_run(problem, 'domain-randomization', seed=0, evaluate=True)
    history = run.run()
    assert len(history) == 1 and history[0].real_episodes == 0
    # the tiny problem has almost no gap: a policy trained on randomised physics is near the oracle
    # (1.003-1.006 over seeds 0-2), not a policy that fails to balance
    assert 0.9 < history[0].normalized_return < 1.1
    tabular = load_problem(str(Path(__file__).resolve().parents[1] / 'config' / 'discrete_3s2a.yaml'))
    with pytest.raises(ValueError, match='randomized_inner_solve'):
        make_run(tabular, 'domain-randomization', seed=0).run()


def test_pathwise_real_gradient_reproduces_the_real_trajectory_and_matches_finite_differences(problem):
    """The recovered noise replays the measured episode exactly at phi, and the estimator is
    the exact derivative (float64 central differences) of the task return of that replay."""
    rng = np.random.default_rng(21)
    phi = problem.policy.init_params(rng) + 0.2 * rng.standard_normal(problem.phi_size())
    theta = problem.theta0() + 0.1
    batch = problem.sample_real(phi, 3, np.random.default_rng(22))
    noise = problem.noise_of(phi, theta, batch)
    theta_phys = problem.model.split(problem.full_theta(torch.as_tensor(theta)))[0]
    task_theta = torch.cat([theta_phys, torch.as_tensor(np.log(problem.task_weights))])
    states, actions, rewards = problem.rollout(torch.as_tensor(phi), task_theta, noise)
    np.testing.assert_allclose(states.transpose(0, 1).numpy(), batch.states, atol=1e-12)
    np.testing.assert_allclose(rewards.T.numpy(), batch.rewards, atol=1e-12)

    def replayed_return(p):
        r = problem.rollout(p, task_theta, noise)[2]
        return (problem._discounts[:, None] * r).sum(0).mean()

    gradient = problem.pathwise_real_gradient(phi, batch, theta)
    for seed in range(3):
        direction = torch.as_tensor(np.random.default_rng(seed).standard_normal(phi.size))
        numeric = central_difference(replayed_return, torch.as_tensor(phi), direction)
        assert float(numeric) == pytest.approx(float(gradient @ direction.numpy()), rel=1e-6, abs=1e-9)


def test_real_gradient_estimator_is_chosen_in_the_problem_file():
    assert tiny().real_gradient_estimator == 'pathwise'
    assert tiny(**{'real_gradient.estimator': 'reinforce'}).real_gradient_estimator == 'reinforce'
    with pytest.raises(ProblemConfigError, match='estimator'):
        tiny(**{'real_gradient.estimator': 'magic'})
    assert tiny().real_gradient_model == 'identified'
    assert tiny(**{'real_gradient.model': 'simulator'}).real_gradient_model == 'simulator'
    with pytest.raises(ProblemConfigError, match=r"model.*'exact'.*identified"):
        tiny(**{'real_gradient.model': 'exact'})


def test_pathwise_real_gradient_differentiates_through_the_model_its_setting_names(problem):
    """'identified' (default): the simulator at the dynamics entries' maximum-likelihood fit to
    every batch given, the same fit from whatever theta the outer loop holds; 'simulator': the
    simulator at the outer loop's theta."""
    rng = np.random.default_rng(31)
    phi = problem.policy.init_params(rng) + 0.2 * rng.standard_normal(problem.phi_size())
    batches = [problem.sample_real(phi, 3, np.random.default_rng(seed)) for seed in (32, 33)]
    dynamics = np.asarray(problem.theta_groups()['dynamics'], dtype=bool)
    assert dynamics.any() and not dynamics.all()
    lower, upper = problem.theta_bounds()
    here, there = problem.theta0(), np.clip(problem.theta0() + 0.3, lower, upper)
    fitted = problem.gradient_model_theta(batches, here)
    np.testing.assert_array_equal(fitted[~dynamics], here[~dynamics])
    np.testing.assert_array_equal(problem.gradient_model_theta(batches, there)[dynamics], fitted[dynamics])
    np.testing.assert_array_equal(fitted[dynamics], np.clip(problem.system_identification(batches, here),
                                                            lower, upper)[dynamics])
    assert not np.allclose(fitted[dynamics], here[dynamics])     # the fit moved: the test can tell them apart
    identified = problem.real_policy_gradient(phi, batches, theta=there)
    np.testing.assert_array_equal(identified, problem.pathwise_real_gradient(phi, batches[-1], fitted))
    simulator = tiny(**{'real_gradient.model': 'simulator'})
    np.testing.assert_array_equal(simulator.real_policy_gradient(phi, batches, theta=there),
                                  simulator.pathwise_real_gradient(phi, batches[-1], there))
    assert not np.allclose(identified, simulator.real_policy_gradient(phi, batches, theta=there))


def test_ppo_inner_learner_improves_the_in_sim_return_and_warm_starts(problem):
    theta = problem.theta0()
    theta_full = problem.full_theta(torch.as_tensor(theta))
    start = problem.policy.init_params(np.random.default_rng([problem.inner.seed, 2]))
    before = float(problem.sim_objective(torch.as_tensor(start), theta_full, full=True))
    cold = problem.inner_solve(theta, None, method='ppo', rng=np.random.default_rng(0), max_iterations=80)
    after = float(problem.sim_objective(torch.as_tensor(cold.phi), theta_full, full=True))
    optimum = float(problem.sim_objective(torch.as_tensor(problem.inner_solve(theta).phi), theta_full, full=True))
    assert after - before > 0.5 * (optimum - before)          # most of the way from the start to the optimum
    assert cold.info['method'] == 'ppo' and np.all(np.isfinite(cold.phi))
    # warm-started at the optimum, a short run stays near it
    exact = problem.inner_solve(theta)
    warm = problem.inner_solve(theta, exact.phi, method='ppo', rng=np.random.default_rng(1), max_iterations=10)
    value = float(problem.sim_objective(torch.as_tensor(warm.phi), theta_full, full=True))
    assert optimum - value < 0.1 * (optimum - before)
    with pytest.raises(ValueError, match='ppo'):
        problem.inner_solve(theta, method='reinforce')


# --- inner.randomize: J_sim over simulators around theta --------------------------------------------
def test_randomize_runs_each_crn_rollout_at_theta_plus_its_fixed_offset():
    plain, spread = tiny(), tiny(**{'inner.randomize': 0.2})
    phi = torch.as_tensor(plain.policy.init_params(np.random.default_rng(3)))
    theta = torch.as_tensor(plain.theta0())
    offsets = spread._crn_offsets
    physical = np.arange(plain.nominal_full.size) < plain.model.n_physical
    moved = plain.learn_mask & physical
    # only learnable physical entries are offset, within +- 0.2 of their bound range, and not all alike
    assert offsets.shape == (6, plain.nominal_full.size)
    np.testing.assert_array_equal(offsets.numpy()[:, ~moved], 0.0)
    ranges = (plain._upper_full - plain._lower_full)[moved]
    assert np.all(np.abs(offsets.numpy()[:, moved]) <= 0.2 * ranges)
    assert np.all(offsets.numpy()[:, moved].std(axis=0) > 0.02 * ranges)
    # J_sim = the mean over rollouts, each at its own simulator (the per-rollout theta path of DR)
    per_rollout = plain.full_theta(theta)[None, :] + offsets
    expected = plain.sim_objective(phi, per_rollout, full=True)
    torch.testing.assert_close(spread.sim_objective(phi, theta), expected, rtol=1e-12, atol=1e-12)
    assert float(spread.sim_objective(phi, theta)) != pytest.approx(float(plain.sim_objective(phi, theta)), rel=1e-6)
    # the same CRN noise, and other noise sets are not offset
    noise = CommonNoise.draw(4, plain.horizon, plain.initial, np.random.default_rng(9))
    torch.testing.assert_close(spread.sim_objective(phi, theta, noise), plain.sim_objective(phi, theta, noise))


def test_randomize_sensitivities_match_float64_finite_differences():
    problem = tiny(**{'inner.randomize': 0.2})
    rng = np.random.default_rng(5)
    phi = torch.as_tensor(problem.policy.init_params(np.random.default_rng(3)))
    theta = torch.as_tensor(problem.theta0())
    terms = problem.sensitivity_terms(phi.numpy(), theta.numpy())
    w = torch.as_tensor(rng.standard_normal(theta.numel()))
    v = torch.as_tensor(rng.standard_normal(phi.numel()))
    jvp_fd = central_difference(lambda t: problem.inner_gradient(phi, t), theta, w)
    torch.testing.assert_close(terms.info['jvp_theta'](w), jvp_fd, rtol=1e-5, atol=1e-7)
    hvp_fd = central_difference(lambda p: problem.inner_gradient(p, theta), phi, v)
    torch.testing.assert_close(terms.hvp(v), hvp_fd, rtol=1e-5, atol=1e-7)


def test_randomize_outside_zero_to_one_is_rejected_by_name():
    with pytest.raises(ProblemConfigError, match='randomize'):
        tiny(**{'inner.randomize': 1.5})


@pytest.mark.parametrize('delay', [0, 1, 2])
def test_actuation_delay_evidence_finds_the_robots_delay_in_its_transitions(delay):
    """Commands that act 1 or 2 control periods late on the robot (a family without a delay entry):
    sysid's fit with the commands shifted that many steps explains every real episode better, and
    the interval lies above 0; on a robot without a delay the shifted fits lose.  The episodes come
    from a policy that excites the pendulum (action std 1.5 N m)."""
    problem = tiny(**{'real.actuation_delay_steps': delay, 'policy.initial_std': 1.5})
    phi = problem.policy.init_params(np.random.default_rng(0))
    batch = problem.sample_real(phi, 10, np.random.default_rng(2))
    evidence = problem.actuation_delay_evidence([batch], problem.theta0())
    assert evidence.episodes == 10 and evidence.confidence == 0.95
    if delay:
        assert evidence.significant and evidence.steps == delay and evidence.favouring == 10
        assert f'act {delay} control period' in evidence.describe(problem.control_period)
    else:
        assert not evidence.significant and evidence.high < 0 and evidence.favouring <= 1
    single = dataclasses.replace(batch, **{name: getattr(batch, name)[:1] for name in
                                           ('states', 'actions', 'rewards', 'dones', 'log_probs')})
    assert problem.actuation_delay_evidence([single], problem.theta0()) is None     # no interval from one episode
