"""The offline outer loop through the node graph (issue 14 item 2): ``launch sim_only real_data:=PATH``
starts only the simulator, inner trainer, sensitivity and outer optimizer (no bridge, no emulator),
asks for no real episode, follows the in-process offline core, and records the offline report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

pytestmark = pytest.mark.ros

CONFIG = Path(__file__).resolve().parents[1] / 'config'
PROBLEM = 'discrete_3s2a'


def _params_file(tmp_path: Path, iterations: int) -> Path:
    document = yaml.safe_load((CONFIG / f'{PROBLEM}_params.yaml').read_text())
    document['/**/outer_optimizer']['ros__parameters']['iterations'] = iterations
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


def _launch(environment: dict, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'launch', 'sim_only', *arguments],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=cwd,
                          timeout=240)


def test_the_graph_learns_offline_without_a_bridge_and_matches_the_core(tmp_path, ros_env):
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.datasets import save_dataset
    from sim2real_bilevel.core.offline import generate_dataset, make_offline_run
    from sim2real_bilevel.core.problems import load_problem

    problem = load_problem(builtin_config(PROBLEM))
    dataset, phi = generate_dataset(problem, 20, np.random.default_rng(0), 'noisy', 2.0)
    save_dataset(dataset, tmp_path / 'data', policy_phi=phi)
    iterations, seed = 6, 2
    run_dir = tmp_path / 'run'
    done = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'seed:={seed}', f'run_dir:={run_dir}',
                   f'params_file:={_params_file(tmp_path, iterations)}', f'real_data:={tmp_path / "data"}')
    output = done.stdout
    assert done.returncode == 0, output
    # containers:=auto: the four learning-side nodes in one process
    assert '4 nodes in 1 process (containers: learning (differentiable_simulator, inner_trainer, sensitivity, '\
           'outer_optimizer))' in output and 'no bridge, no emulator' in output
    assert 'offline: real data 20 episodes' in output
    assert '[hardware_bridge]' not in output and '[robot_emulator]' not in output
    assert 'no evaluator: records carry the estimated real return' in output

    document = json.loads((run_dir / 'results.json').read_text())
    seed_entry = document['methods']['bilevel']['seeds'][0]
    records = seed_entry['iterations']
    core = make_offline_run(problem, 'bilevel', dataset, seed, iterations=iterations)
    core.run()
    assert len(records) == len(core.history) == iterations + 1
    np.testing.assert_allclose([r['theta'] for r in records], [r.theta for r in core.history], rtol=0, atol=1e-9)
    assert {r['real_episodes'] for r in records} == {20}          # the dataset's; none collected
    assert not (run_dir / 'real').exists()
    report = seed_entry['best']                                  # the offline report of the final policy
    expected = core.final_report()
    assert report['offline'] and report['coverage'] == pytest.approx(expected['coverage'], abs=1e-9)
    assert report['real_return_ci_low'] <= report['real_return_estimate'] <= report['real_return_ci_high']
    assert report['real_return_estimate'] == pytest.approx(expected['real_return_estimate'], abs=1e-9)
    assert np.isnan(report['normalized_return'])
    assert document['offline']['dataset'].startswith('20 episodes')


def test_a_bag_folder_or_a_missing_dataset_stops_the_optimizer_with_the_reason(tmp_path, ros_env):
    """The outer_optimizer checks real_data when it starts, before it waits for any other node."""
    def optimizer(real_data: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.nodes.outer_optimizer', '--ros-args',
                               '-p', f'problem:={PROBLEM}', '-p', f'run_dir:={tmp_path / "run"}',
                               '-p', f"real_data:='{real_data}'", '-p', 'server_timeout_s:=1.0'],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ros_env,
                              cwd=tmp_path, timeout=120)
    bag = tmp_path / 'bag'
    bag.mkdir()
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: {}\n')
    done = optimizer(bag)
    assert done.returncode != 0
    assert f'real_data: {bag} is a bag folder' in done.stdout and 'dataset --from' in done.stdout
    missing = tmp_path / 'nothing'
    done = optimizer(missing)
    assert done.returncode != 0 and f'{missing}: no such file or folder' in done.stdout
    assert 'waiting for the graph' not in done.stdout


@pytest.mark.parametrize('generated', [3, 0], ids=['warned', 'improving'])
def test_the_offline_warning_reaches_results_and_the_optimizer_log(generated, tmp_path, ros_env):
    """Generated tabular 3 from 10 nominal-policy episodes (test_offline.py's warned case): the graph's
    results.json carries the core's ``warning`` word for word and the outer optimizer logs it; generated
    tabular 0 from the same kind of data improves, and neither carries a warning."""
    from sim2real_bilevel.core.datasets import save_dataset
    from sim2real_bilevel.core.generators import generate
    from sim2real_bilevel.core.offline import generate_dataset, make_offline_run
    from sim2real_bilevel.core.problems import load_problem

    path = tmp_path / f'tabular_{generated:03d}.yaml'
    path.write_text(generate('tabular', generated).text)
    problem = load_problem(path)
    dataset, phi = generate_dataset(problem, 10, np.random.default_rng([0, 10, 0]))
    save_dataset(dataset, tmp_path / 'data', policy_phi=phi)
    iterations, seed = 5, 0
    core = make_offline_run(problem, 'bilevel', dataset, seed, iterations=iterations)
    core.run()
    expected = core.final_report()['warning']
    assert bool(expected) == (generated == 3)          # the case is what its name says (the core decides)

    run_dir = tmp_path / 'run'
    done = _launch(ros_env, tmp_path, f'problem:={path}', f'seed:={seed}', f'run_dir:={run_dir}',
                   f'params_file:={_params_file(tmp_path, iterations)}', f'real_data:={tmp_path / "data"}')
    output = done.stdout
    assert done.returncode == 0, output
    document = json.loads((run_dir / 'results.json').read_text())
    seed_entry = document['methods']['bilevel']['seeds'][0]
    assert len(seed_entry['iterations']) == iterations + 1       # the run finished: its report is the final one
    warning = seed_entry['best']['warning']
    assert warning == expected
    logged = [line for line in output.splitlines() if '[outer_optimizer]' in line and 'offline: ' in line
              and 'WARN' in line]
    if generated == 3:
        assert warning.startswith('no further supported improvement: ') and 'tried fewer than 3 times' in warning
        assert len(logged) == 1 and logged[0].endswith(f'offline: {warning}'), output
    else:
        assert warning == '' and logged == [], output
