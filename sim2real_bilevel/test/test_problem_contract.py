"""The part of the problem contract the ROS nodes use (core/problem.py): trajectory_sizes,
default_sim_horizon, real_system (robot emulator, topic transport) and controller (hardware
bridge, topic transport), for every problem kind, and warm_up (what the sensitivity node calls)
-- without a ROS graph or node processes (the warm-up check runs a fresh plain interpreter)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim2real_bilevel.core.problem import BilevelProblem, EpisodeController, RealSystem, Sample
from sim2real_bilevel.core.problems import load_problem

CONFIG = Path(__file__).resolve().parents[1] / 'config'


@pytest.fixture(scope='module')
def tabular():
    return load_problem(CONFIG / 'discrete_3s2a.yaml')


@pytest.fixture(scope='module')
def lqr():
    return load_problem(CONFIG / 'lqr.yaml')


@pytest.fixture(scope='module')
def pendulum():
    return load_problem(CONFIG / 'pendulum.yaml')


def run_controller(controller: EpisodeController, system: RealSystem, episodes: int):
    """What the topic transport does, without waits or safety (the system answers at once)."""
    for _ in range(episodes):
        sample = system.reset()
        controller.start_episode()
        for t in range(controller.horizon + 1):
            controller.observe(sample.position, sample.velocity or [0.0])
            if t == controller.horizon:
                break
            command = controller.command()
            assert system.command_refusal(command) is None
            sample = system.step(command)
            assert (sample.reward is not None) == controller.needs_reward
            controller.record(command, sample.reward)


def check_batch(problem, batch, episodes):
    from sim2real_bilevel.nodes import conversions
    assert batch.source == 'real' and batch.policy_version == 7 and batch.rewards.shape[0] == episodes
    assert np.all(np.isfinite(batch.rewards)) and np.all(np.isfinite(batch.log_probs))
    received = conversions.trajectories_from_msg(conversions.trajectories_to_msg(batch), **problem.trajectory_sizes())
    assert np.array_equal(received.states, batch.states) and np.array_equal(received.actions, batch.actions)


def test_defaults_of_the_base_class():
    assert BilevelProblem.default_sim_horizon.fget(None) == 50
    assert BilevelProblem.trajectory_sizes(None) == {}
    assert dict(BilevelProblem.outer_defaults) == {}


def test_sizes_and_horizons(tabular, lqr, pendulum):
    assert tabular.trajectory_sizes() == {'n_states': tabular.n_states, 'n_actions': tabular.n_actions}
    assert lqr.trajectory_sizes() == {} and pendulum.trajectory_sizes() == {}
    assert tabular.default_sim_horizon == tabular.inner.sensitivity_horizon
    assert lqr.default_sim_horizon == lqr.inner.sensitivity_horizon
    assert pendulum.default_sim_horizon == pendulum.horizon


def test_tabular_real_system_steps_and_refuses(tabular):
    system = tabular.real_system(np.random.default_rng(0))
    assert system.control_period is None
    sample = system.reset()
    assert system.describe(sample) == f'state {int(sample.position[0])}' and sample.reward is None
    assert system.link_pose(sample) is None
    n = tabular.n_actions
    assert system.command_refusal([0.5]) == f'0.5: expected an integer in 0..{n - 1}'
    assert system.command_refusal([float(n)]) == f'{float(n)}: expected an integer in 0..{n - 1}'
    assert system.command_refusal([0.0, 1.0]) == '[0.0, 1.0]: expected one finite action index'
    assert system.command_refusal([float('nan')]) == '[nan]: expected one finite action index'
    state = int(sample.position[0])
    stepped = system.step([1.0])
    assert stepped.reward == tabular.real_rewards[state, 1]
    assert 0 <= stepped.position[0] < tabular.n_states and stepped.velocity == [] and stepped.effort == []


def test_tabular_real_system_draws_like_the_emulator_did(tabular):
    """The emulator's former sampling (one uniform per state, inverse CDF): the same states
    from the same seed, and the stream left at the same place."""
    rng_old, rng_new = np.random.default_rng(5), np.random.default_rng(5)

    def old_draw(probabilities):
        return int(min(np.searchsorted(np.cumsum(probabilities), rng_old.random(), side='right'),
                       len(probabilities) - 1))
    system = tabular.real_system(rng_new)
    for episode in range(20):
        state = old_draw(tabular.initial_distribution)
        assert system.reset().position == [float(state)]
        for t in range(10):
            action = (episode + t) % tabular.n_actions
            state = old_draw(tabular.real_transitions[state, action])
            assert system.step([float(action)]).position == [float(state)]
    assert rng_old.random() == rng_new.random()


def test_tabular_controller_batch(tabular):
    phi = np.random.default_rng(1).standard_normal(tabular.phi_size())
    controller = tabular.controller(phi, np.random.default_rng(2))
    assert not controller.commands_are_efforts and controller.needs_reward
    assert controller.horizon == tabular.real_horizon
    run_controller(controller, tabular.real_system(np.random.default_rng(3)), 2)
    batch = controller.batch(7)
    assert batch.states.shape == (2, tabular.real_horizon + 1) and batch.states.dtype == np.int64
    assert batch.actions.shape == (2, tabular.real_horizon) and batch.actions.dtype == np.int64
    _, log_pi = tabular.policy_table(phi)
    assert np.array_equal(batch.log_probs, log_pi[batch.states[:, :-1], batch.actions])
    assert np.array_equal(batch.rewards, tabular.real_rewards[batch.states[:, :-1], batch.actions])
    check_batch(tabular, batch, 2)


def test_pendulum_real_system_steps_and_refuses(pendulum):
    system = pendulum.real_system(np.random.default_rng(0))
    assert system.control_period == pendulum.geometry.control_period
    sample = system.reset()
    assert len(sample.position) == len(sample.velocity) == len(sample.effort) == 1 and sample.reward is None
    assert system.describe(sample) == f'position {sample.position[0]:.3f} rad'
    assert system.command_refusal([float('inf')]) == '[inf]: expected one finite effort'
    assert system.command_refusal([]) == '[]: expected one finite effort'
    assert system.command_refusal([0.3]) is None
    stepped = system.step([0.3])
    position, orientation, frame = system.link_pose(stepped)
    length, angle = pendulum.geometry.link_length, stepped.position[0]
    assert frame == 'pendulum_base'
    assert position == pytest.approx([length * np.sin(angle), 0.0, length * np.cos(angle)])
    assert orientation == pytest.approx([np.cos(angle / 2), 0.0, np.sin(angle / 2), 0.0])


def test_pendulum_controller_batch(pendulum):
    phi = pendulum.policy.init_params(np.random.default_rng(1))
    controller = pendulum.controller(phi, np.random.default_rng(2))
    assert controller.commands_are_efforts and not controller.needs_reward
    assert controller.horizon == pendulum.horizon
    run_controller(controller, pendulum.real_system(np.random.default_rng(3)), 1)
    batch = controller.batch(7)
    assert batch.states.shape == (1, pendulum.horizon + 1, 2) and batch.actions.shape == (1, pendulum.horizon, 1)
    rewards, log_probs = pendulum.score_episodes(phi, batch.states, batch.actions)
    assert np.array_equal(batch.rewards, rewards) and np.array_equal(batch.log_probs, log_probs)
    assert batch.dones[:, -1].all() and not batch.dones[:, :-1].any()
    check_batch(pendulum, batch, 1)


def test_lqr_has_no_step_by_step_system_and_says_why(lqr):
    with pytest.raises(NotImplementedError, match="the lqr problem has no step-by-step real system"):
        lqr.real_system(np.random.default_rng(0))
    with pytest.raises(NotImplementedError, match='the lqr problem has no step-by-step controller .*sample_real'):
        lqr.controller(np.zeros(lqr.phi_size()), np.random.default_rng(0))


def test_samples_default_to_no_velocity_effort_or_reward():
    assert Sample(position=[1.0]) == Sample(position=[1.0], velocity=[], effort=[], reward=None)


WARM_UP_CHECK = """
import json, sys
import numpy as np
from sim2real_bilevel.core.problems import load_problem
problem = load_problem(sys.argv[1])
theta = np.asarray(problem.theta0(), dtype=float)
phi = problem.inner_solve(theta, None).phi if problem.kind == 'lqr' else np.zeros(problem.phi_size())
loaded_before = 'torch._dynamo' in sys.modules
problem.warm_up()
modules = set(sys.modules)
problem.sensitivity_terms(phi, theta, method='exact')
print(json.dumps({'loaded_before': loaded_before, 'new': sorted(set(sys.modules) - modules)}))
"""


@pytest.mark.parametrize('name', ['lqr.yaml', 'pendulum.yaml'])
def test_warm_up_leaves_the_first_exact_sensitivity_nothing_to_import(name):
    """``warm_up`` (what the sensitivity node calls before it is ready) pays the lazy imports of
    torch.func's transforms, ~2 s, that the first exact sensitivity would otherwise pay inside the
    first outer iteration.  A fresh interpreter each, so no other test has imported them yet."""
    done = subprocess.run([sys.executable, '-c', WARM_UP_CHECK, str(CONFIG / name)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report['loaded_before'] is False         # the check below is not vacuous
    assert report['new'] == []
