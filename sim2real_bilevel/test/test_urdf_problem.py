"""``kind: urdf``: the pendulum as a URDF and a task file reproduces ``kind: robot``; a two-joint
robot through the contract; every file error names the file, the field and the bad value."""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sim2real_bilevel.core.config import ProblemConfigError
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.urdf import UrdfProblem

CONFIG = Path(__file__).resolve().parents[1] / 'config'
SHARE = Path(__file__).resolve().parents[1] / 'urdf'


@pytest.fixture(scope='module')
def pendulum_data():
    return yaml.safe_load((CONFIG / 'pendulum_urdf.yaml').read_text())


def small(data, horizon=5, episodes=2):
    data = copy.deepcopy(data)
    data['horizon'] = horizon
    data['inner'] = dict(data['inner'], episodes=episodes)
    data['evaluation'] = {'episodes': 2, 'seed': 5}
    return data


def acrobot_data(pendulum_data):
    data = small(pendulum_data)
    data['robot'] = {'urdf': str(SHARE / 'acrobot.urdf'), 'joints': ['shoulder', 'elbow']}
    data['initial_state'] = {'position_range': [[-0.2, 0.2], [-0.2, 0.2]], 'velocity_range': [[0, 0], [0, 0]]}
    data['task'] = {'targets': [0.0, 0.0], 'reward_weights': {'angle': 5.0, 'effort': 0.1}}
    data['real'] = {'payload_mass': {'lower_link': {'mass': 0.2, 'center_of_mass': [0, 0, 0.5]}},
                    'mass_scale': {'upper_link': 1.2}, 'damping': [0.02, 0.03], 'coulomb_friction': 0.01,
                    'stribeck_friction': 0.01, 'armature': 0.001, 'motor_gain': 0.8, 'effort_limit': 3.0,
                    'actuation_delay_steps': 1, 'sensor_noise': {'position': 0.001, 'velocity': 0.01}}
    data['simulator'] = {
        'effort_limit': [4.0, 4.0], 'transition_noise_std': [0.002, 0.002, 0.05, 0.05],
        'parameters': {'payload_mass@lower_link': {'value': 0.1, 'learn': True, 'bounds': [0.01, 1.0],
                                                   'center_of_mass': [0, 0, 0.5]},
                       'mass_scale@upper_link': {'value': 1.0, 'learn': True, 'bounds': [0.5, 2.0]},
                       'damping@elbow': {'value': 0.01, 'learn': True, 'bounds': [0.001, 0.5]},
                       'armature': {'value': 0.0005, 'learn': True, 'bounds': [0.0001, 0.01]}},
        'reward_weights': {'angle': {'value': 5.0}, 'effort': {'value': 0.1, 'learn': True, 'bounds': [0.01, 1.0]}}}
    return data


def test_pendulum_urdf_is_kind_robot_as_data(pendulum_data):
    """The same J_sim on the same random numbers and the same real episodes as config/pendulum.yaml."""
    urdf = UrdfProblem.from_dict(small(pendulum_data, horizon=20), str(CONFIG / 'pendulum_urdf.yaml'))
    robot = load_problem(CONFIG / 'pendulum.yaml')
    assert urdf.kind == 'urdf' and urdf.theta_names[0] == 'log_payload_mass@pendulum_link'
    phi = robot.policy.init_params(np.random.default_rng(0))
    theta = robot.theta0()
    assert urdf.phi_size() == robot.phi_size() and np.allclose(urdf.theta0(), robot.theta0())
    noise = robot._crn
    from sim2real_bilevel.core.problems.robot.simulator import CommonNoise
    short = CommonNoise(noise.initial_states[:4], noise.action_noise[:20, :4], noise.transition_noise[:20, :4])
    values = [float(problem.sim_objective(torch.as_tensor(phi), torch.as_tensor(theta), short))
              for problem in (urdf, robot)]
    assert abs(values[0] - values[1]) < 1e-9 * abs(values[1])
    np.testing.assert_allclose(urdf.oracle_theta_full(), robot.oracle_theta_full())
    robot.horizon = 20
    a = urdf.real_episodes(phi, [11, 12])
    b = robot.real_episodes(phi, [11, 12])
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_mixed_sensitivity_matches_finite_differences(pendulum_data):
    problem = UrdfProblem.from_dict(small(pendulum_data, horizon=4, episodes=2), 'pendulum_urdf.yaml')
    phi = problem.policy.init_params(np.random.default_rng(1))
    theta = problem.theta0()
    terms = problem.sensitivity_terms(phi, theta)
    u = np.random.default_rng(2).standard_normal(phi.size)
    analytic = terms.vjp_theta(torch.as_tensor(u)).numpy()

    def projected_residual(th):
        return float(torch.as_tensor(u) @ problem.inner_gradient(torch.as_tensor(phi), torch.as_tensor(th)))
    step = 1e-5
    numeric = np.array([(projected_residual(theta + step * e) - projected_residual(theta - step * e)) / (2 * step)
                        for e in np.eye(theta.size)])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_two_joint_robot_through_the_contract(pendulum_data):
    problem = UrdfProblem.from_dict(acrobot_data(pendulum_data), 'acrobot.yaml')
    assert problem.model.state_dim == 4 and problem.model.action_dim == 2
    assert problem.theta_names == ['log_payload_mass@lower_link', 'log_mass_scale@upper_link', 'log_damping@elbow',
                                   'log_armature', 'log_w_effort']
    phi = problem.policy.init_params(np.random.default_rng(0))
    batch = problem.sample_real(phi, 2, np.random.default_rng(1))
    assert batch.states.shape == (2, 6, 4) and batch.actions.shape == (2, 5, 2)
    simulated = problem.simulate(phi, problem.theta0(), 3, 5, np.random.default_rng(2))
    assert simulated.score_theta.shape == (3, 5, 5) and np.all(np.isfinite(simulated.score_theta))
    # sysid moves the dynamics entries towards the truth on real data, and stays in bounds
    fitted = problem.system_identification([batch], problem.theta0())
    low, high = problem.theta_bounds()
    assert np.all(fitted >= low - 1e-12) and np.all(fitted <= high + 1e-12)
    assert fitted[-1] == problem.theta0()[-1]                # the reward weight is not a dynamics entry
    system = problem.real_system(np.random.default_rng(3))
    sample = system.reset()
    assert len(sample.position) == len(sample.velocity) == 2
    assert system.command_refusal([0.1]) == "[0.1]: expected 2 finite efforts (joints ['shoulder', 'elbow'])"
    assert system.command_refusal([0.1, -0.2]) is None
    controller = problem.controller(phi, np.random.default_rng(4))
    # the bridge's timer loop runs at the task's rate, the same period the real system steps
    assert controller.control_period == system.control_period == problem.settings.control_period
    controller.start_episode()
    for t in range(problem.horizon + 1):
        controller.observe(sample.position, sample.velocity)
        if t < problem.horizon:
            command = controller.command()
            assert len(command) == 2
            sample = system.step(command)
            controller.record(command, None)
    assert controller.batch(0).states.shape == (1, 6, 4)


def test_actuation_delay_entry_through_the_problem(pendulum_data):
    """A ``delay`` theta entry: the oracle is the stand-in's delay, simulated episodes are
    reproduced by their noise (the previous commands rebuilt from the episode's actions), J_sim
    depends on the delay, and its derivative matches a central finite difference."""
    data = small(pendulum_data, horizon=6, episodes=3)
    data['simulator']['parameters']['delay'] = {'value': 0.013, 'learn': True, 'bounds': [0.001, 0.05]}
    problem = UrdfProblem.from_dict(data, str(CONFIG / 'pendulum_urdf.yaml'))
    assert problem.model.action_history == 3 and problem.theta_names[4] == 'log_delay'
    assert np.isclose(np.exp(problem.oracle_theta_full()[4]), 2 * 0.02)      # real: 2 periods of 20 ms
    phi = problem.policy.init_params(np.random.default_rng(0))
    theta = problem.theta0()
    simulated = problem.simulate(phi, theta, 3, 6, np.random.default_rng(1))
    noise = problem.noise_of(phi, theta, simulated)
    states, _, _ = problem.rollout(torch.as_tensor(phi), problem.full_theta(torch.as_tensor(theta)), noise)
    np.testing.assert_allclose(states.transpose(0, 1).numpy(), simulated.states, atol=1e-10)
    assert np.all(np.isfinite(simulated.score_theta)) and np.abs(simulated.score_theta[..., 4]).max() > 0

    def objective(th):
        return float(problem.sim_objective(torch.as_tensor(phi), torch.as_tensor(th)))
    point = torch.as_tensor(theta).clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(problem.sim_objective(torch.as_tensor(phi), point), point)
    step = 1e-6
    shift = np.eye(theta.size)[4] * step
    numeric = (objective(theta + shift) - objective(theta - shift)) / (2 * step)
    assert abs(numeric) > 1e-6 and abs(float(gradient[4]) - numeric) <= 1e-5 * abs(numeric)
    # system identification reads the previous commands of real episodes too
    batch = problem.sample_real(phi, 2, np.random.default_rng(3))
    identified = problem.system_identification([batch], theta)
    lower, upper = problem.theta_bounds()
    assert np.all(identified >= lower - 1e-12) and np.all(identified <= upper + 1e-12)


@pytest.mark.parametrize('entry, modelled', [(None, False), ({'value': 0.02, 'learn': False}, True),
                                             ({'value': 0.013, 'learn': True, 'bounds': [0.001, 0.05]}, True)])
def test_the_problem_says_whether_its_simulator_delays_commands(pendulum_data, entry, modelled):
    """What the outer loop's unmodelled-delay warning reads: a fixed delay entry counts too."""
    data = small(pendulum_data)
    if entry is not None:
        data['simulator']['parameters']['delay'] = entry
    assert UrdfProblem.from_dict(data, str(CONFIG / 'pendulum_urdf.yaml')).models_actuation_delay() is modelled


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['robot'].update(joints=['shoulder', 'wrist']),
     r"acrobot.yaml: field 'robot.joints\[1\]' = 'wrist': expected a moving joint of .*acrobot.urdf: one of \['shoulder', 'elbow'\]"),
    (lambda d: d['robot'].update(urdf='package://sim2real_bilevel/urdf/no_such.urdf'),
     r"acrobot.yaml: field 'robot.urdf' = 'package://sim2real_bilevel/urdf/no_such.urdf': expected a readable URDF .*looked in"),
    (lambda d: d['simulator']['parameters']['damping@elbow'].update(value=0.9),
     r"field 'simulator.parameters.damping@elbow.value' = 0.9: expected a value inside bounds \[0.001, 0.5\]"),
    (lambda d: d['simulator']['parameters'].update({'mass_scale@base_link': {'value': 1.0}}),
     r"field 'simulator.parameters.mass_scale@base_link' = 'base_link': expected a link of the URDF .*'<no inertial>'"),
    (lambda d: d['simulator']['parameters'].update({'stiffness': {'value': 1.0}}),
     r"field 'simulator.parameters.stiffness' = .*expected KIND, KIND@JOINT or KIND@LINK"),
    (lambda d: d['simulator']['parameters'].update({'damping@wrist': {'value': 0.1}}),
     r"field 'simulator.parameters.damping@wrist' = 'wrist': expected one of the controlled joints"),
    (lambda d: d['initial_state'].update(position_range=[[-0.2, 0.2]]),
     r"field 'initial_state.position_range'"),
    (lambda d: d['simulator']['parameters'].update({'delay@elbow': {'value': 0.01}}),
     r"field 'simulator.parameters.delay@elbow' = 'elbow': expected delay without @: one value for the whole robot"),
    (lambda d: d['real'].update(damping=[0.1, -0.1]),
     r"field 'real.damping' = \[0.1, -0.1\]: expected one number or 2 numbers \(one per joint\), each >= 0.0"),
    (lambda d: d['simulator'].update(implicit_friction='yes'),
     r"field 'simulator.implicit_friction' = 'yes': expected true or false"),
])
def test_file_errors_name_the_field_and_the_value(pendulum_data, tmp_path, edit, message):
    data = acrobot_data(pendulum_data)
    urdf = tmp_path / 'acrobot.urdf'
    text = (SHARE / 'acrobot.urdf').read_text()
    start = text.index('<inertial>')      # the base link's inertial: base_link has none
    urdf.write_text(text[:start] + text[text.index('</inertial>', start) + len('</inertial>'):])
    data['robot']['urdf'] = str(urdf)
    edit(data)
    with pytest.raises(ProblemConfigError, match=message):
        UrdfProblem.from_dict(data, 'acrobot.yaml')


def cartpole_data(pendulum_data, joints=('slider_to_cart', 'cart_to_pole')):
    import pybullet_data
    data = small(pendulum_data)
    n = len(joints)
    data['robot'] = {'urdf': str(Path(pybullet_data.getDataPath()) / 'cartpole.urdf'), 'joints': list(joints)}
    data['initial_state'] = {'position_range': [[-0.1, 0.1]] * n, 'velocity_range': [[0, 0]] * n}
    data['task'] = {'targets': [0.0] * n, 'reward_weights': {'angle': 2.0, 'position': 0.5}}
    data['real'] = {'damping': 0.01, 'sensor_noise': {'position': 0.001, 'velocity': 0.01}}
    data['simulator'] = {'effort_limit': [10.0] * n, 'transition_noise_std': [0.002] * n + [0.05] * n,
                         'parameters': {'damping': {'value': 0.02, 'learn': True, 'bounds': [0.001, 0.5]}},
                         'reward_weights': {'angle': {'value': 2.0}, 'position': {'value': 0.5}}}
    return data


def test_the_angle_term_covers_angular_joints_only(pendulum_data):
    """A cart-pole task with angle and position terms: 1 - cos of the cart's position in metres
    would make x = 2 pi m as good as x = 0 and x = pi m the worst; the angle term leaves the prismatic cart to position."""
    problem = UrdfProblem.from_dict(cartpole_data(pendulum_data), 'cartpole.yaml')
    model, theta_reward = problem.model, torch.log(torch.tensor([2.0, 0.5], dtype=torch.float64))
    state = torch.tensor([[0.0, 0.3, 0.0, 0.0], [math.pi, 0.3, 0.0, 0.0]], dtype=torch.float64)
    reward = model.reward(state, torch.zeros(2, 2, dtype=torch.float64), theta_reward)
    expected = torch.exp(-(2.0 * (1 - math.cos(0.3)) + 0.5 * (state[:, 0] ** 2 + 0.3 ** 2)))
    torch.testing.assert_close(reward, expected)
    with pytest.raises(ProblemConfigError, match=r"cart.yaml: field 'task.reward_weights.angle' = 2.0: expected no angle "
                                                 r"term: the controlled joints \['slider_to_cart'\] are all prismatic"):
        UrdfProblem.from_dict(cartpole_data(pendulum_data, joints=('slider_to_cart',)), 'cart.yaml')


def test_cli_solve_bilevel_evaluate_end_to_end(pendulum_data, tmp_path):
    """`solve FILE --method bilevel --evaluate` on a URDF problem (tiny budgets: a smoke test)."""
    import json
    from sim2real_bilevel.cli import main as cli_main
    data = acrobot_data(pendulum_data)
    data['robot']['urdf'] = 'package://sim2real_bilevel/urdf/acrobot.urdf'
    data['inner'] = {'episodes': 2, 'warmup_iterations': 2, 'cold_iterations': 3, 'max_iterations': 2,
                     'oracle_iterations': 3}
    data['outer'] = dict(data['outer'], cg_maxiter=2)
    problem_file = tmp_path / 'acrobot_tiny.yaml'
    problem_file.write_text(yaml.safe_dump(data))
    out = tmp_path / 'out'
    assert cli_main(['solve', str(problem_file), '--method', 'bilevel', '--method', 'domain-randomization',
                     '--evaluate', '--iterations', '1', '--real-episodes', '1', '--quiet', '--out', str(out)]) == 0
    document = json.loads((out / 'results.json').read_text())
    for method in ('bilevel', 'domain-randomization'):
        records = document['methods'][method]['seeds'][0]['iterations']
        assert records and all(np.isfinite(r['normalized_return']) and r['normalized_return'] > 0 for r in records)
    assert len(document['methods']['bilevel']['seeds'][0]['iterations']) == 2


def test_a_cold_solve_that_ends_far_from_stationary_is_restarted_and_reported_with_the_settings_to_raise(
        pendulum_data, caplog):
    """A cold solve's policy is where every method starts: one that ends far above its tolerance
    (on config/pendulum_urdf.yaml, inner.seed 0 ended at 1 947 x with a normalised return of 0.20)
    is solved again from other initial policies, the best J_sim kept, and reported when still that
    far: in its info and once as a warning naming the file and the budget to raise (the oracle's
    own budget for the oracle's solve, at INFO as a second report).  A converged one is not."""
    import logging
    data = small(pendulum_data, horizon=8)
    data['inner'] = dict(data['inner'], warmup_iterations=0, cold_iterations=1, oracle_iterations=1, tolerance=1e-6)
    problem = UrdfProblem.from_dict(data, 'my_robot.yaml')
    with caplog.at_level(logging.INFO, logger='sim2real_bilevel.core.problems.robot.problem'):
        solved = problem.inner_solve(problem.theta0())
        problem.oracle_phi()
    report = solved.info['unconverged']
    assert report['ratio'] == pytest.approx(solved.grad_norm / 1e-6) and report['ratio'] > 100
    starts = solved.info['cold_starts']
    assert [start['start'] for start in starts] == [0, 1, 2]          # inner.cold_restarts 2 by default
    assert solved.info['objective'] == max(start['objective'] for start in starts)
    assert starts[solved.info['cold_start']]['objective'] == solved.info['objective']
    assert len({start['objective'] for start in starts}) == 3         # three different initial policies
    records = [(r.levelno, r.getMessage()) for r in caplog.records if 'far from a stationary point' in r.getMessage()]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO], records
    first, oracle = records[0][1], records[1][1]
    assert first.startswith('my_robot.yaml: a cold inner solve (inner.seed 0: 0 Adam warm-up steps')
    assert 'the best J_sim of 3 initial policies (inner.cold_restarts 2)' in first
    assert 'Raise inner.warmup_iterations (default 150) or inner.cold_iterations (default 300)' in first
    assert 'inner.oracle_iterations (default 600)' in oracle

    # without restarts: start 0 alone, the first of the three above
    data['inner'] = dict(data['inner'], cold_restarts=0)
    alone = UrdfProblem.from_dict(data, 'my_robot.yaml').inner_solve(problem.theta0())
    assert 'cold_starts' not in alone.info and alone.info['unconverged']['ratio'] > 100
    assert alone.info['objective'] == starts[0]['objective']

    # converged: no restart, nothing reported, the policy of start 0 (as without restarts)
    data['inner'] = dict(data['inner'], tolerance=1e9, cold_restarts=2)
    converged = UrdfProblem.from_dict(data, 'my_robot.yaml').inner_solve(problem.theta0())
    assert 'unconverged' not in converged.info and 'cold_starts' not in converged.info
    data['inner'] = dict(data['inner'], cold_restarts=0)
    np.testing.assert_array_equal(converged.phi, UrdfProblem.from_dict(data, 'my_robot.yaml').inner_solve(
        problem.theta0()).phi)


def test_cold_restarts_stop_at_the_first_solve_near_stationary_and_skip_a_start_without_a_finite_iterate(
        pendulum_data):
    """``_restarted``'s rule on solves given to it: start 1 has no finite iterate (skipped), start 2
    ends within 100 x the tolerance, so start 3 is never solved; the best J_sim of those there is kept."""
    from sim2real_bilevel.core.problem import InnerResult
    from sim2real_bilevel.core.problems.robot.guard import NonFiniteInnerSolve
    data = small(pendulum_data)
    data['inner'] = dict(data['inner'], cold_restarts=5)
    problem = UrdfProblem.from_dict(data, 'my_robot.yaml')

    def result(objective, grad_norm):
        return InnerResult(phi=np.full(3, objective), grad_norm=grad_norm, iterations=1, info={'objective': objective})
    asked = []

    def solve_from(k):
        asked.append(k)
        if k == 1:
            raise NonFiniteInnerSolve('diverged at once')
        return {2: result(30.0, 5.0), 3: result(99.0, 0.1)}[k]
    chosen = problem._restarted(result(10.0, 500.0), 1.0, 'inner.cold_iterations', 4, solve_from)
    assert asked == [1, 2]
    assert chosen.info['objective'] == 30.0 and chosen.info['cold_start'] == 2
    assert [start['start'] for start in chosen.info['cold_starts']] == [0, 1, 2]
    assert np.isnan(chosen.info['cold_starts'][1]['objective']) and 'unconverged' not in chosen.info
    # a far first solve that stays the best: kept, and reported
    chosen = problem._restarted(result(50.0, 500.0), 1.0, 'inner.cold_iterations', 4, lambda k: result(1.0, 0.5))
    assert chosen.info['cold_start'] == 0 and chosen.info['unconverged']['ratio'] == 500.0


@pytest.mark.parametrize('delay', [0, 1])
def test_actuation_delay_evidence_on_a_two_joint_robot_and_none_where_the_family_delays(pendulum_data, delay):
    """The acrobot stand-in with and without one step of actuation delay, episodes of an exciting
    policy (action std 1.5 N m): the one-step-late fit wins on every episode only where the robot
    delays; a simulator with a ``delay`` entry fits the delay itself, so there is nothing to ask."""
    data = acrobot_data(pendulum_data)
    data['horizon'] = 10
    data['real']['actuation_delay_steps'] = delay
    data['policy'] = dict(data.get('policy', {}), initial_std=1.5)
    problem = UrdfProblem.from_dict(data, 'acrobot')
    phi = problem.policy.init_params(np.random.default_rng(0))
    batch = problem.sample_real(phi, 10, np.random.default_rng(2))
    evidence = problem.actuation_delay_evidence([batch], problem.theta0())
    assert evidence.significant is bool(delay)
    assert evidence.favouring == (10 if delay else 0) and evidence.steps == 1
    data['simulator']['parameters']['delay'] = {'value': 0.02, 'learn': False}
    delayed = UrdfProblem.from_dict(data, 'acrobot')
    assert delayed.actuation_delay_evidence([batch], delayed.theta0()) is None
    # the transition model of a delayed family reads the previous commands (what sysid maximises)
    values = delayed.transition_log_likelihoods(batch, delayed.theta0())
    assert values.shape == batch.rewards.shape and np.all(np.isfinite(values))
