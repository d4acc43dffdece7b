"""The pybullet pendulum emulator: determinism, actuation chain, sensors, kinematics, speed."""
import math
import time
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from sim2real_bilevel.core.robots import (JOINT_NAME, PendulumEmulator, PendulumParameters, SensorNoise,
                                     angle_about_y, pendulum_urdf)

NOISY = PendulumParameters(payload_mass=0.5, damping=0.08, coulomb_friction=0.1, motor_gain=0.7,
                           actuation_delay_steps=2, effort_limit=2.0,
                           sensor_noise=SensorNoise(position=0.01, velocity=0.05, effort=0.02))


def run(emulator, seed, commands):
    samples = [emulator.reset(seed)]
    for command in commands:
        emulator.apply_effort(command)
        samples.append(emulator.step())
    return np.array([[s.position[0], s.velocity[0], s.effort[0]] for s in samples])


def test_same_seed_same_measurements_other_seed_differs():
    commands = np.linspace(-1.5, 1.5, 30)
    with PendulumEmulator(NOISY) as first, PendulumEmulator(NOISY) as second:
        a = run(first, 7, commands)
        b = run(second, 7, commands)
        c = run(first, 8, commands)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_joint_state_sample_carries_named_joint_and_stamp():
    with PendulumEmulator(NOISY, control_period=0.01) as emulator:
        first = emulator.reset(0)
        emulator.apply_effort([0.3])
        sample = emulator.step()
    assert first.stamp == 0.0 and sample.stamp == pytest.approx(0.01)
    assert sample.name == [JOINT_NAME]
    assert len(sample.position) == len(sample.velocity) == len(sample.effort) == 1


def test_initial_state_drawn_from_the_configured_ranges():
    with PendulumEmulator(NOISY,
                          initial_position_range=(0.2, 0.3), initial_velocity_range=(-0.1, 0.0)) as emulator:
        states = []
        for seed in range(20):
            emulator.reset(seed)
            states.append(emulator.true_state())
    states = np.array(states)
    assert np.all((states[:, 0] >= 0.2) & (states[:, 0] <= 0.3))
    assert np.all((states[:, 1] >= -0.1) & (states[:, 1] <= 0.0))
    assert states[:, 0].std() > 0.01


def test_delay_gain_and_effort_limit_shape_the_applied_torque():
    quiet = PendulumParameters(payload_mass=0.3, damping=0.0, coulomb_friction=0.0, motor_gain=0.7,
                               actuation_delay_steps=2, effort_limit=1.0)
    commands = [1.0, 2.0, -0.5, 0.0, 0.0]
    with PendulumEmulator(quiet) as emulator:
        efforts = run(emulator, 0, commands)[1:, 2]
    # two periods of zero, then gain * command saturated at the limit (2 * 0.7 = 1.4 -> 1.0)
    np.testing.assert_allclose(efforts, [0.0, 0.0, 0.7, 1.0, -0.35], atol=1e-12)


def test_stiction_holds_the_upright_rod_against_a_small_torque():
    sticky = PendulumParameters(payload_mass=0.3, damping=0.0, coulomb_friction=0.3, motor_gain=1.0)
    with PendulumEmulator(sticky) as emulator:
        emulator.reset(0, initial_state=(0.0, 0.0))
        for _ in range(10):
            emulator.apply_effort(0.2)
            emulator.step()
        held = emulator.true_state()
        for _ in range(10):
            emulator.apply_effort(0.6)
            emulator.step()
        moved = emulator.true_state()
    assert np.abs(held).max() < 1e-9
    assert moved[1] > 0.1


def test_sensor_noise_has_the_configured_spread():
    with PendulumEmulator(NOISY) as emulator:
        emulator.reset(1)
        errors = []
        for _ in range(400):
            emulator.apply_effort(0.0)
            sample = emulator.step()
            errors.append(np.array([sample.position[0], sample.velocity[0]]) - emulator.true_state())
    std = np.std(errors, axis=0)
    # 400 draws: the sample std is within ~10 % of the true one with overwhelming probability
    np.testing.assert_allclose(std, [0.01, 0.05], rtol=0.15)


def test_link_orientation_matches_the_joint_angle():
    with PendulumEmulator(NOISY) as emulator:
        emulator.reset(3, initial_state=(0.4, 2.0))
        for _ in range(40):
            emulator.apply_effort(0.0)
            emulator.step()
            angle = emulator.true_state()[0]
            wrapped = math.atan2(math.sin(angle), math.cos(angle))
            assert emulator.link_angle() == pytest.approx(wrapped, abs=1e-5)
            tip = emulator.tip_position()
            np.testing.assert_allclose(tip, 0.5 * np.array([math.sin(angle), 0.0, math.cos(angle)]), atol=1e-5)


def test_angle_about_y_of_known_quaternions():
    assert angle_about_y([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.0)
    half = 0.3
    assert angle_about_y([math.cos(half), 0.0, math.sin(half), 0.0]) == pytest.approx(0.6)
    assert angle_about_y([math.cos(half), 0.0, -math.sin(half), 0.0]) == pytest.approx(-0.6)


def test_runs_much_faster_than_real_time():
    with PendulumEmulator(NOISY) as emulator:
        emulator.reset(0)
        started = time.perf_counter()
        for _ in range(500):
            emulator.apply_effort(0.1)
            emulator.step()
        wall = time.perf_counter() - started
        assert emulator.time == pytest.approx(10.0)
    assert wall < emulator.time / 20


def test_rejects_bad_commands_and_periods():
    with PendulumEmulator(NOISY) as emulator:
        emulator.reset(0)
        with pytest.raises(ValueError, match='finite'):
            emulator.apply_effort(float('nan'))
        with pytest.raises(ValueError, match='joints'):
            emulator.apply_effort([0.1, 0.2])
        with pytest.raises(ValueError, match='fixed control period'):
            emulator.step(0.05)
        emulator.step(0.02)


@pytest.mark.parametrize('field, value', [('payload_mass', -0.1), ('damping', -0.1), ('motor_gain', float('nan')),
                                          ('actuation_delay_steps', -1), ('effort_limit', 0.0)])
def test_rejects_unphysical_parameters(field, value):
    values = dict(payload_mass=0.3, damping=0.1, coulomb_friction=0.1, motor_gain=1.0)
    values[field] = value
    with pytest.raises(ValueError, match=field):
        PendulumParameters(**values)


def test_urdf_describes_one_continuous_joint_with_rod_and_payload():
    root = ElementTree.fromstring(pendulum_urdf(0.5, rod_mass=0.4, payload_mass=1.2))
    joints = root.findall('joint')
    assert [j.get('name') for j in joints] == [JOINT_NAME]
    assert joints[0].get('type') == 'continuous'
    masses = [float(link.find('inertial/mass').get('value')) for link in root.findall('link')]
    assert masses == [0.0, pytest.approx(1.6)]
    center = root.find("link[@name='pendulum_link']/inertial/origin").get('xyz').split()
    assert float(center[2]) == pytest.approx((0.4 * 0.25 + 1.2 * 0.5) / 1.6)
