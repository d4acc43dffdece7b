"""Generated URDF tasks (``sim2real-bilevel generate urdf``): a random robot, a reaching task and a
hidden gap, written as a task file and its URDF, at default learning settings.

What is checked here is what holds by construction, on a sample of seeds: the files are a
function of the seed, load like hand-written ones with the default inner/outer settings, the
true value of every theta entry lies inside its bounds (so the oracle is a theta the methods
can reach), the robot can hold its targets with its weak motors and payload, and the
simulator rolls out finite.  Whether the gap is real and the methods close it is measured by
``bench/urdf_generated_tasks.py`` (minutes per task), not here."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sim2real_bilevel.cli import main
from sim2real_bilevel.core.generators.urdf_tasks import EFFORT_MARGIN, random_urdf_task, with_payload
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.core.problems.robot.config import InnerSettings
from sim2real_bilevel.core.robots.urdf_robot import PybulletRobot

SEEDS = range(6)


def written(task, folder):
    path = folder / f'task_{task.seed}.yaml'
    for file, text in task.files(path).items():
        file.write_text(text)
    return path


@pytest.mark.parametrize('seed', SEEDS)
def test_a_generated_task_is_its_seeds_and_loads_with_default_settings(seed, tmp_path):
    task = random_urdf_task(seed)
    assert random_urdf_task(seed) == task
    data = yaml.safe_load(task.text)
    assert not {'inner', 'outer', 'policy'} & set(data)
    problem = load_problem(written(task, tmp_path))
    assert problem.inner == InnerSettings()
    assert len(problem.joint_names) == task.info['joints'] in (1, 2)
    # the true theta (what the oracle is solved at) lies inside the bounds the methods search
    lower, upper = problem._lower_full, problem._upper_full
    truth = problem.oracle_theta_full()
    assert np.all((lower - 1e-9 <= truth) & (truth <= upper + 1e-9)), (truth, lower, upper)
    # ... and differs from what the user believes in every learnable physical entry and the shaped reward
    believed = problem.nominal_full
    assert np.all(np.abs(truth - believed)[problem.learn_mask] > 0.1)


@pytest.mark.parametrize('seed', SEEDS)
def test_the_robot_holds_its_targets_with_its_weak_motors_and_payload(seed):
    task = random_urdf_task(seed)
    data = yaml.safe_load(task.text)
    joints = data['robot']['joints']
    (link, payload), = data['real']['payload_mass'].items()
    robot = PybulletRobot(with_payload(task.urdf_text, link, payload['mass'], payload['center_of_mass']), joints,
                          gravity=data['gravity'], time_step=0.01)
    try:
        needed = np.abs(robot.bias(data['task']['targets'], np.zeros(len(joints))))
    finally:
        robot.close()
    limit = np.array(data['real']['effort_limit'])
    # the limit is EFFORT_MARGIN x the largest gravity torque over random poses (the targets are
    # not among them): a target pose needs at most 1 / EFFORT_MARGIN of it, up to that sampling
    assert np.all(needed <= limit * (1.0 + EFFORT_MARGIN) / (2.0 * EFFORT_MARGIN)), (needed, limit)
    # the simulator believes the rated torque: the motor gain is the only reason the robot has less
    assert np.allclose(limit, np.array(data['simulator']['effort_limit']) * data['real']['motor_gain'], rtol=1e-3)


def test_the_nominal_simulator_rolls_out_finite_from_the_start_range(tmp_path):
    task = random_urdf_task(0)
    problem = load_problem(written(task, tmp_path))
    phi = np.zeros(problem.phi_size())
    value = problem.sim_objective(torch.as_tensor(phi), torch.as_tensor(problem.theta0()))
    assert math.isfinite(float(value))


def test_generate_urdf_writes_the_task_and_its_urdf_and_refuses_what_it_cannot_do(tmp_path, capsys):
    out = tmp_path / 'task.yaml'
    assert main(['generate', 'urdf', '--seed', '2', '--joints', '2', '--out', str(out)]) == 0
    problem = load_problem(out)
    assert len(problem.joint_names) == 2
    assert (tmp_path / random_urdf_task(2, joints=2).urdf_name).read_text() == random_urdf_task(2, joints=2).urdf_text
    capsys.readouterr()
    for argv, named in ((['generate', 'urdf', '--seed', '2'], '--out -'),
                        (['generate', 'urdf', '--states', '3', '--out', str(out)], '--states'),
                        (['generate', 'urdf', '--joints', '4', '--out', str(out)], 'joints=4'),
                        (['generate', 'lqr', '--joints', '2'], '--joints 2')):
        assert main(argv) == 2
        assert named in capsys.readouterr().err


def test_the_bench_keeps_a_methods_overrides_together():
    """bench/urdf_generated_tasks.py --methods: the commas between one method's KEY=VALUE
    overrides do not start new methods."""
    import importlib.util
    import sys
    bench = Path(__file__).resolve().parents[1] / 'bench'
    saved = list(sys.path)                               # the bench puts its folder on sys.path
    try:
        spec = importlib.util.spec_from_file_location('urdf_generated_tasks_bench', bench / 'urdf_generated_tasks.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    methods = module.split_methods('nominal,bilevel:optimizer=sgd,normalize_gradient=true,sysid,bilevel:real_episodes=2')
    assert methods == ['nominal', 'bilevel:optimizer=sgd,normalize_gradient=true', 'sysid', 'bilevel:real_episodes=2']
    assert module.parse_method(methods[1]) == ('bilevel', {'optimizer': 'sgd', 'normalize_gradient': True})
