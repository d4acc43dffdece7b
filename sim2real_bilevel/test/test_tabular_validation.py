"""Tabular problem files: every validation rule rejects a malformed file, naming the file,
the field, the bad value and what was expected; a valid file loads into the documented theta."""
import copy
import math

import numpy as np
import pytest
import yaml

from sim2real_bilevel.core.config import ProblemConfigError
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.tabular import TabularProblem

BASE = {
    'kind': 'tabular',
    'gamma': 0.9,
    'initial_distribution': [0.5, 0.5],
    'real': {
        'transitions': [[[0.7, 0.3], [0.2, 0.8]], [[0.5, 0.5], [1.0, 0.0]]],
        'rewards': [[1.0, 0.0], [0.0, 2.0]],
        'horizon': 20,
    },
    'simulator': {
        'transition_logits': [[[0.0, -1.0], [0.0, 1.0]], [[0.5, 0.0], [2.0, 0.0]]],
        'learn_transition_logits': [[[1, 0], [0, 1]], [[0, 0], [1, 0]]],
        'rewards': [[1.0, 0.0], [0.0, 2.0]],
        'learn_rewards': [[0, 1], [1, 0]],
    },
    'inner': {'temperature': 0.5},
}


def setting(path, value):
    """A mutation that sets the dotted ``path`` (creating nothing else) to ``value``."""
    def mutate(data):
        keys = path.split('.')
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return mutate


def removing(path):
    def mutate(data):
        keys = path.split('.')
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return mutate


CASES = [
    # (rule, mutation, field named by the error)
    ('unknown top-level field', setting('discount', 0.9), 'discount'),
    ('gamma missing', removing('gamma'), 'gamma'),
    ('gamma not a number', setting('gamma', 'high'), 'gamma'),
    ('gamma a boolean', setting('gamma', True), 'gamma'),
    ('gamma = 1', setting('gamma', 1.0), 'gamma'),
    ('gamma = 0', setting('gamma', 0.0), 'gamma'),
    ('gamma not finite', setting('gamma', math.nan), 'gamma'),
    ('initial distribution wrong length', setting('initial_distribution', [1.0]), 'initial_distribution'),
    ('initial distribution not summing to 1', setting('initial_distribution', [0.5, 0.4]),
     'initial_distribution'),
    ('initial distribution entry outside [0, 1]', setting('initial_distribution', [1.5, -0.5]),
     'initial_distribution[0]'),
    ('real section missing', removing('real'), 'real'),
    ('real not a mapping', setting('real', [1, 2]), 'real'),
    ('real unknown field', setting('real.noise', 0.1), 'real.noise'),
    ('real transitions ragged', setting('real.transitions', [[[1.0, 0.0], [1.0]], [[1.0, 0.0], [0.0, 1.0]]]),
     'real.transitions'),
    ('real transitions next-state axis of another length',
     setting('real.transitions', [[[1.0], [1.0]], [[1.0], [1.0]]]), 'real.transitions'),
    ('real transitions single action', setting('real.transitions', [[[1.0, 0.0]], [[0.0, 1.0]]]),
     'real.transitions'),
    ('real transitions row not summing to 1', setting('real.transitions', [[[0.7, 0.3], [0.2, 0.8]],
                                                                            [[0.5, 0.4], [1.0, 0.0]]]),
     'real.transitions[1][0]'),
    ('real transitions entry above 1', setting('real.transitions', [[[1.2, -0.2], [0.2, 0.8]],
                                                                    [[0.5, 0.5], [1.0, 0.0]]]),
     'real.transitions[0][0][0]'),
    ('real transitions not finite', setting('real.transitions', [[[math.nan, 0.3], [0.2, 0.8]],
                                                                 [[0.5, 0.5], [1.0, 0.0]]]),
     'real.transitions[0][0][0]'),
    ('real rewards wrong shape', setting('real.rewards', [[1.0, 0.0, 3.0], [0.0, 2.0, 1.0]]), 'real.rewards'),
    ('real rewards not finite', setting('real.rewards', [[1.0, math.inf], [0.0, 2.0]]), 'real.rewards[0][1]'),
    ('real rewards not numbers', setting('real.rewards', [['a', 0.0], [0.0, 2.0]]), 'real.rewards'),
    ('real horizon zero', setting('real.horizon', 0), 'real.horizon'),
    ('real horizon not an integer', setting('real.horizon', 2.5), 'real.horizon'),
    ('simulator missing', removing('simulator'), 'simulator'),
    ('simulator unknown field', setting('simulator.noise', 0.0), 'simulator.noise'),
    ('logits wrong shape', setting('simulator.transition_logits', [[0.0, 1.0], [1.0, 0.0]]),
     'simulator.transition_logits'),
    ('logits not finite', setting('simulator.transition_logits', [[[0.0, -math.inf], [0.0, 1.0]],
                                                                  [[0.5, 0.0], [2.0, 0.0]]]),
     'simulator.transition_logits[0][0][1]'),
    ('learnable logit outside its bound', setting('simulator.transition_logits', [[[11.0, -1.0], [0.0, 1.0]],
                                                                                  [[0.5, 0.0], [2.0, 0.0]]]),
     'simulator.transition_logits[0][0][0]'),
    ('logit mask not 0/1', setting('simulator.learn_transition_logits', [[[2, 0], [0, 1]], [[0, 0], [1, 0]]]),
     'simulator.learn_transition_logits[0][0][0]'),
    ('logit mask wrong shape', setting('simulator.learn_transition_logits', [[1, 0], [0, 1]]),
     'simulator.learn_transition_logits'),
    ('sim rewards wrong shape', setting('simulator.rewards', [1.0, 0.0]), 'simulator.rewards'),
    ('learnable sim reward outside its bound', setting('simulator.rewards', [[1.0, 30.0], [0.0, 2.0]]),
     'simulator.rewards[0][1]'),
    ('reward mask not 0/1', setting('simulator.learn_rewards', [[0, 0.5], [1, 0]]),
     'simulator.learn_rewards[0][1]'),
    ('reward mask a string', setting('simulator.learn_rewards', 'yes'), 'simulator.learn_rewards'),
    ('logit bound not positive', setting('simulator.logit_bound', 0.0), 'simulator.logit_bound'),
    ('reward bound not a number', setting('simulator.reward_bound', 'big'), 'simulator.reward_bound'),
    ('nothing learnable', lambda d: d['simulator'].update(learn_transition_logits=False, learn_rewards=False),
     'simulator.learn_transition_logits'),
    ('inner not a mapping', setting('inner', 0.1), 'inner'),
    ('inner unknown field', setting('inner.entropy', 0.1), 'inner.entropy'),
    ('temperature zero', setting('inner.temperature', 0.0), 'inner.temperature'),
    ('temperature negative', setting('inner.temperature', -1.0), 'inner.temperature'),
    ('sampled step above 1', setting('inner.sampled_step', 1.5), 'inner.sampled_step'),
    ('sampled stop unknown', setting('inner.sampled_stop', 'maybe'), 'inner.sampled_stop'),
    ('sensitivity episodes zero', setting('inner.sensitivity_episodes', 0), 'inner.sensitivity_episodes'),
    ('min pair samples negative', setting('inner.sensitivity_min_pair_samples', -1),
     'inner.sensitivity_min_pair_samples'),
    ('real gradient unknown field', setting('real_gradient', {'baseline': True}), 'real_gradient.baseline'),
    ('real gradient unknown estimator', setting('real_gradient', {'estimator': 'reinforce'}),
     'real_gradient.estimator'),
    ('real gradient negative prior', setting('real_gradient', {'prior_transitions': -1.0}),
     'real_gradient.prior_transitions'),
    ('real gradient negative optimism', setting('real_gradient', {'optimism': -0.5}), 'real_gradient.optimism'),
    ('real gradient infinite optimism', setting('real_gradient', {'optimism': float('inf')}),
     'real_gradient.optimism'),
]

OUTER_CASES = [
    ('outer unknown field', setting('outer', {'learning_rate': 0.1}), 'outer'),
    ('outer invalid value', setting('outer', {'step_size': -1.0}), 'outer'),
    ('outer per-method override invalid', setting('outer', {'methods': {'cmaes': {'cma_sigma': 0.0}}}),
     'outer.methods.cmaes'),
]


def write(tmp_path, data, name='problem.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_document_loads_into_the_documented_theta(tmp_path):
    problem = load_problem(write(tmp_path, BASE))
    assert isinstance(problem, TabularProblem)
    assert problem.theta_names == ['L[0][0][0]', 'L[0][1][1]', 'L[1][1][0]', 'R[0][1]', 'R[1][0]']
    np.testing.assert_array_equal(problem.theta0(), [0.0, 1.0, 2.0, 0.0, 0.0])
    lower, upper = problem.theta_bounds()
    np.testing.assert_array_equal(upper, [10, 10, 10, 10, 10])
    np.testing.assert_array_equal(lower, -upper)
    groups = problem.theta_groups()
    np.testing.assert_array_equal(groups['dynamics'], [True, True, True, False, False])
    np.testing.assert_array_equal(groups['reward'], ~groups['dynamics'])
    assert problem.phi_size() == 2 and problem.temperature == 0.5 and problem.real_horizon == 20
    f, rewards = problem.simulator_model(problem.theta0())
    np.testing.assert_allclose(f.sum(axis=2), 1.0)
    np.testing.assert_allclose(rewards, BASE['simulator']['rewards'])


def test_boolean_masks_stand_for_all_entries(tmp_path):
    data = copy.deepcopy(BASE)
    data['simulator'].update(learn_transition_logits=True, learn_rewards=False)
    problem = load_problem(write(tmp_path, data))
    assert len(problem.theta_names) == 8 and not problem.theta_groups()['reward'].any()


def test_from_dict_rejects_another_kind():
    with pytest.raises(ProblemConfigError) as info:
        TabularProblem.from_dict(dict(copy.deepcopy(BASE), kind='lqr'), 'direct.yaml')
    assert info.value.field == 'kind' and info.value.source == 'direct.yaml'


def check_rejected(tmp_path, mutate, field):
    data = copy.deepcopy(BASE)
    mutate(data)
    path = write(tmp_path, data, 'bad.yaml')
    with pytest.raises(ProblemConfigError) as info:
        load_problem(path)
    error = info.value
    assert error.source == str(path)
    assert error.field == field, str(error)
    message = str(error)
    assert message.startswith(str(path)) and repr(field) in message and 'expected' in message
    return error


@pytest.mark.parametrize('rule, mutate, field', CASES, ids=[case[0] for case in CASES])
def test_each_malformed_file_is_rejected_naming_file_field_and_expectation(tmp_path, rule, mutate, field):
    check_rejected(tmp_path, mutate, field)


@pytest.mark.parametrize('rule, mutate, field', OUTER_CASES, ids=[case[0] for case in OUTER_CASES])
def test_malformed_outer_section_is_rejected(tmp_path, rule, mutate, field):
    pytest.importorskip('sim2real_bilevel.core.outer')
    check_rejected(tmp_path, mutate, field)


def test_error_shows_the_bad_value(tmp_path):
    error = check_rejected(tmp_path, setting('gamma', 1.5), 'gamma')
    assert '1.5' in str(error) and '(0.0, 1.0)' in str(error)
    error = check_rejected(tmp_path, setting('real.transitions', [[[0.7, 0.3], [0.2, 0.8]],
                                                                  [[0.5, 0.4], [1.0, 0.0]]]),
                           'real.transitions[1][0]')
    assert '0.9' in str(error)          # the sum it found
