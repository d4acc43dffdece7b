"""The differentiable pendulum model: agreement with pybullet, gradients, torch.func use."""
import math

import numpy as np
import pytest
import torch

from sim2real_bilevel.core.robot_model import PendulumGeometry, PendulumModel
from sim2real_bilevel.core.robots import PendulumEmulator, PendulumParameters

TRUE = dict(payload_mass=0.5, damping=0.08, coulomb_friction=0.1, motor_gain=0.7)
# Model-vs-pybullet tolerances (rad, rad/s).  Without friction both integrate the same
# equations with the same semi-implicit Euler scheme: they agree to pybullet's precision.
# With friction the model's tanh curve differs from pybullet's stiction constraint only at
# |velocity| < a few friction_velocity_scale.
FRICTIONLESS_TOLERANCE = 1e-6
ONE_STEP_FRICTION_TOLERANCE = (5e-4, 0.03)   # measured max: 2.0e-4 rad, 1.1e-2 rad/s


def true_theta(friction: float) -> torch.Tensor:
    values = [TRUE['payload_mass'], TRUE['damping'], max(friction, 1e-300), TRUE['motor_gain']]
    return torch.log(torch.tensor(values, dtype=torch.float64))


def emulator_and_model(friction: float):
    parameters = PendulumParameters(**(TRUE | {'coulomb_friction': friction}))   # no delay, no noise
    emulator = PendulumEmulator(parameters, initial_position_range=(-0.6, 0.6),
                                initial_velocity_range=(-2.0, 2.0))
    # A saturation far above the commands keeps the model's smooth tanh in its linear range;
    # the emulator's limit is infinite.
    model = PendulumModel(PendulumGeometry(effort_limit=1e4), noise_std=[1e-3, 1e-2])
    return emulator, model


def test_frictionless_rollouts_agree_with_pybullet():
    emulator, model = emulator_and_model(friction=0.0)
    theta = true_theta(0.0)
    rng = np.random.default_rng(0)
    worst = 0.0
    with emulator:
        for seed in range(5):
            first = emulator.reset(seed)
            state = torch.tensor([first.position[0], first.velocity[0]], dtype=torch.float64)
            for _ in range(50):   # 1 s of closed-loop-free, unstable dynamics
                command = rng.uniform(-2.0, 2.0)
                emulator.apply_effort(command)
                emulator.step()
                state = model.step_mean(state, torch.tensor([command], dtype=torch.float64), theta)
                worst = max(worst, float(np.abs(emulator.true_state() - state.numpy()).max()))
    assert worst < FRICTIONLESS_TOLERANCE


def test_one_step_predictions_with_friction_agree_with_pybullet():
    emulator, model = emulator_and_model(friction=TRUE['coulomb_friction'])
    theta = true_theta(TRUE['coulomb_friction'])
    rng = np.random.default_rng(1)
    errors = []
    with emulator:
        for seed in range(5):
            emulator.reset(seed)
            for _ in range(50):
                state = torch.tensor(emulator.true_state(), dtype=torch.float64)
                command = rng.uniform(-2.0, 2.0)
                emulator.apply_effort(command)
                emulator.step()
                predicted = model.step_mean(state, torch.tensor([command], dtype=torch.float64), theta)
                errors.append(np.abs(emulator.true_state() - predicted.numpy()))
    errors = np.array(errors)
    assert np.all(errors.max(axis=0) < ONE_STEP_FRICTION_TOLERANCE)
    # most transitions are far from zero velocity, where the two friction laws coincide
    assert np.median(errors[:, 1]) < 1e-6


def test_upright_rest_is_an_equilibrium_and_gravity_tips_the_rod_away():
    model = PendulumModel(PendulumGeometry(), noise_std=[1e-3, 1e-2])
    theta = true_theta(0.1)
    rest = model.step_mean(torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), theta)
    assert torch.allclose(rest, torch.zeros(2, dtype=torch.float64))
    tipped = model.step_mean(torch.tensor([0.2, 0.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                             theta)
    assert tipped[1] > 0 and tipped[0] > 0.2


def test_log_prob_is_the_gaussian_transition_density():
    model = PendulumModel(PendulumGeometry(), noise_std=[2e-3, 3e-2])
    theta = true_theta(0.1)
    generator = torch.Generator().manual_seed(0)
    state = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    action = torch.randn(6, 1, generator=generator, dtype=torch.float64)
    noise = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    next_state = model.sample_next(state, action, theta, noise)
    mean = model.step_mean(state, action, theta)
    expected = torch.distributions.Normal(mean, model.noise_std).log_prob(next_state).sum(-1)
    torch.testing.assert_close(model.log_prob(next_state, state, action, theta), expected)


def test_gradcheck_step_log_prob_and_reward_in_float64():
    model = PendulumModel(PendulumGeometry(effort_limit=2.0), noise_std=[2e-3, 3e-2])
    generator = torch.Generator().manual_seed(1)
    state = (0.5 * torch.randn(4, 2, generator=generator, dtype=torch.float64)).requires_grad_()
    action = torch.randn(4, 1, generator=generator, dtype=torch.float64).requires_grad_()
    theta_phys = (true_theta(0.1) + 0.1 * torch.randn(4, generator=generator, dtype=torch.float64)).requires_grad_()
    theta_reward = torch.log(torch.tensor([3.0, 0.1, 0.05], dtype=torch.float64)).requires_grad_()
    next_state = (model.step_mean(state, action, theta_phys)
                  + 0.01 * torch.randn(4, 2, generator=generator, dtype=torch.float64)).detach()
    assert torch.autograd.gradcheck(model.step_mean, (state, action, theta_phys))
    assert torch.autograd.gradcheck(lambda s, a, t: model.log_prob(next_state, s, a, t),
                                    (state, action, theta_phys))
    assert torch.autograd.gradcheck(model.reward, (state, action, theta_reward))


def test_composes_with_vmap_and_grad():
    """Per-transition score grad_theta log f_theta, batched with vmap, matches a loop."""
    model = PendulumModel(PendulumGeometry(), noise_std=[2e-3, 3e-2])
    theta = true_theta(0.1)
    generator = torch.Generator().manual_seed(2)
    state = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    action = torch.randn(5, 1, generator=generator, dtype=torch.float64)
    next_state = model.sample_next(state, action, theta, torch.randn(5, 2, generator=generator, dtype=torch.float64))
    score = torch.func.vmap(torch.func.grad(lambda t, s2, s, a: model.log_prob(s2, s, a, t)),
                            in_dims=(None, 0, 0, 0))(theta, next_state, state, action)
    for i in range(5):
        t = theta.clone().requires_grad_()
        (expected,) = torch.autograd.grad(model.log_prob(next_state[i], state[i], action[i], t), t)
        torch.testing.assert_close(score[i], expected)
    assert score.shape == (5, 4)


def test_observation_is_continuous_across_a_full_turn():
    model = PendulumModel(PendulumGeometry(), noise_std=[1e-3, 1e-2])
    a = model.observation(torch.tensor([0.3, 1.0], dtype=torch.float64))
    b = model.observation(torch.tensor([0.3 + 2 * math.pi, 1.0], dtype=torch.float64))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize('noise_std', [[0.0, 1e-2], [1e-3], [-1.0, 1.0]])
def test_rejects_non_positive_noise(noise_std):
    with pytest.raises(ValueError, match='noise_std'):
        PendulumModel(PendulumGeometry(), noise_std=noise_std)
