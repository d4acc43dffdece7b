"""``sim2real-bilevel params PROBLEM``: a starting params file for a robot problem
(``tools/params_file.py``).  The file it writes must pass the checks every shipped params file
passes (``test_graph.assert_the_bridge_fits_the_task``), give the bounds the hand-written shipped
files give, land where ``launch`` looks for it, and configure a real bridge that lets the task end
its episodes at their terminal states."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim2real_bilevel import graph
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.tools.params_file import bridge_limits, params_text
from test_graph import CONFIG, assert_the_bridge_fits_the_task

HERE = Path(__file__).resolve().parent
HANGING = HERE / 'pendulum_hanging.yaml'     # the URDF pendulum hanging, position termination [2.8, 3.5]


def cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'params', *arguments], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize('name', ['pendulum', 'pendulum_urdf', 'swingup', 'iiwa_payload', str(HANGING)],
                         ids=lambda n: Path(n).stem)
def test_a_generated_params_file_fits_the_task_as_the_shipped_ones_must(name):
    problem = load_problem(builtin_config(name))
    document = yaml.safe_load(params_text(problem, name))
    bounds = assert_the_bridge_fits_the_task(problem, document)
    bridge = document['/**/hardware_bridge']['ros__parameters']
    assert bridge['watchdog_timeout_s'] == pytest.approx(10 * problem.control_period)
    for key in ('effort_limit', 'max_effort_rate', 'watchdog_timeout_s', 'position_limit', 'velocity_limit'):
        assert isinstance(bridge[key], float), (key, bridge[key])      # a double parameter refuses an integer
    assert np.array_equal(bounds.effort, np.minimum(problem.actuator_range(), [j.effort for j in problem.joints()]))


@pytest.mark.parametrize('name', ['swingup', 'iiwa_payload'])
def test_the_rules_give_the_bounds_of_the_hand_written_shipped_files(name):
    from sim2real_bilevel.nodes.joints import bridge_joint_bounds, parse_joint_limits
    problem = load_problem(builtin_config(name))

    def bounds(document):
        bridge = document['/**/hardware_bridge']['ros__parameters']
        return bridge_joint_bounds(bridge['joints'], problem.joints(), bridge,
                                   parse_joint_limits(bridge.get('joint_limits', ''), bridge['joints']))
    shipped = bounds(yaml.safe_load((CONFIG / f'{name}_params.yaml').read_text()))
    generated = bounds(yaml.safe_load(params_text(problem, name)))
    for field in ('effort', 'effort_rate', 'lower', 'upper', 'velocity'):
        assert np.array_equal(getattr(shipped, field), getattr(generated, field)), (field, shipped, generated)


def test_a_problem_without_joints_is_refused_by_name():
    with pytest.raises(ValueError, match=r"discrete_3s2a.yaml: the 'tabular' problem has no joints to command"):
        bridge_limits(load_problem(builtin_config('discrete_3s2a')))


def test_limits_the_urdf_makes_fall_inside_the_termination_are_named(tmp_path):
    text = HANGING.read_text()
    assert text.count('termination:') == 1
    problem_path = tmp_path / 'fast_hanging.yaml'
    # the pendulum's joint made revolute with an upper limit at 3.4 rad, inside the task's termination
    # bound (3.5): the bridge's bound (the URDF's) would abort the goal before the task ends an episode
    body = Path(load_problem(HANGING).urdf_path).read_text()
    assert body.count('type="continuous"') == 1 and '<limit ' not in body
    limited = tmp_path / 'pendulum_limited.urdf'
    limited.write_text(body.replace('type="continuous">', 'type="revolute">\n    <limit effort="5" lower="-10" '
                                                          'upper="3.4" velocity="8"/>'))
    problem_path.write_text(text.replace(str(yaml.safe_load(text)['robot']['urdf']), str(limited)))
    notes = bridge_limits(load_problem(problem_path)).notes
    assert notes == ("joint pendulum_joint: the URDF position limits [-10, 3.4] do not clear the task's termination "
                     'bounds [2.8, 3.5]',), notes


def test_the_cli_writes_beside_the_problem_where_launch_looks_and_keeps_an_existing_file(tmp_path):
    problem = tmp_path / 'my_robot.yaml'
    shutil.copy(HANGING, problem)
    done = cli(str(problem), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / 'my_robot_params.yaml'
    assert graph.default_params_file(str(problem), graph.config_directories()) == written.resolve()
    assert '`launch` finds it' in done.stdout, done.stdout
    assert_the_bridge_fits_the_task(load_problem(problem), yaml.safe_load(written.read_text()))
    before = written.read_text()
    again = cli(str(problem), cwd=tmp_path)
    assert again.returncode == 2 and f'{written} exists (--force replaces it)' in again.stderr, again.stderr
    assert written.read_text() == before
    refused = cli('discrete_3s2a', '--out', str(tmp_path / 'd.yaml'), cwd=tmp_path)
    assert refused.returncode == 2 and 'has no joints to command' in refused.stderr
    assert not (tmp_path / 'd.yaml').exists()
    shipped = cli('swingup', cwd=tmp_path)           # a shipped name: the current folder, given as params_file
    assert shipped.returncode == 0 and 'launch with params_file:=swingup_params.yaml' in shipped.stdout, shipped
