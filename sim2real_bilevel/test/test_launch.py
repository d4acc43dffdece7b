"""The launch command brings the whole sim-only graph up and down: the outer loop over ROS
matches the in-process core for the same seed, the run is recorded and reported, Ctrl-C
stops every node, and no process of the launch survives it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

pytestmark = pytest.mark.ros

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CONFIG = PACKAGE_ROOT / 'config'
PROBLEM = 'discrete_3s2a'


def _params_file(tmp_path: Path, iterations: int, sensitivity: Optional[dict] = None, **optimizer) -> Path:
    document = yaml.safe_load((CONFIG / f'{PROBLEM}_params.yaml').read_text())
    document['/**/outer_optimizer']['ros__parameters']['iterations'] = iterations
    document['/**/outer_optimizer']['ros__parameters'].update(optimizer)
    document['/**/sensitivity']['ros__parameters'].update(sensitivity or {})
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


def _processes_of(log_dir: Path) -> list[int]:
    """Live processes started with this test's ROS_LOG_DIR (launcher children included)."""
    marker = f'ROS_LOG_DIR={log_dir}'.encode()
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / 'environ').read_bytes().split(b'\0'):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _launch(environment: dict, cwd: Path, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'sim2real_bilevel.cli', 'launch', 'sim_only', *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=cwd)


def test_ros_loop_matches_the_in_process_core_and_records_the_run(tmp_path, ros_env):
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    from sim2real_bilevel.core.provenance import generate_key_file

    iterations, seed = 25, 3
    run_dir = tmp_path / 'run'
    key_file = generate_key_file(tmp_path / 'policy.key')            # goals to the bridge signed, as on a robot
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'seed:={seed}', f'run_dir:={run_dir}',
                      f'params_file:={_params_file(tmp_path, iterations)}', 'namespace:=loop_test',
                      f'policy_key_file:={key_file}')
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    assert f'run_episodes goals are signed with the key in {key_file}' in output
    assert f'only run_episodes goals signed with the key in {key_file} are run' in output
    assert 'first outer iteration done' in output
    assert not _processes_of(Path(ros_env['ROS_LOG_DIR'])), 'processes of the launch outlived it'

    document = json.loads((run_dir / 'results.json').read_text())
    ros_records = document['methods']['bilevel']['seeds'][0]['iterations']
    core = make_run(load_problem(builtin_config(PROBLEM)), 'bilevel', seed, iterations=iterations, evaluate=True)
    core.run()
    assert len(ros_records) == len(core.history) == iterations + 1
    ros_theta = np.array([r['theta'] for r in ros_records])
    core_theta = np.array([r.theta for r in core.history])
    np.testing.assert_allclose(ros_theta, core_theta, rtol=0, atol=1e-9)
    np.testing.assert_allclose([r['normalized_return'] for r in ros_records],
                               [r.normalized_return for r in core.history], rtol=0, atol=1e-9)
    assert [r['real_transitions'] for r in ros_records] == [r.real_transitions for r in core.history]

    metadata = yaml.safe_load((run_dir / 'bag' / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    counts = {t['topic_metadata']['name']: t['message_count'] for t in metadata['topics_with_message_count']}
    assert counts['/loop_test/outer_metrics'] == iterations + 1
    assert counts['/loop_test/metrics/normalized_return'] == iterations + 1
    assert counts['/loop_test/theta'] == iterations + 1
    report = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'report', str(run_dir)],
                            capture_output=True, text=True, env=ros_env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert f'{iterations} outer iterations' in report.stdout and (run_dir / 'report.png').is_file()


def test_containers_run_each_side_in_one_process_with_the_core_s_theta(tmp_path, ros_env):
    """containers:=learning,robot: six nodes in two processes, goals between the learning-side nodes
    handed over in-process, run_episodes still over DDS to the robot side; theta is the core's."""
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    from sim2real_bilevel.core.provenance import generate_key_file

    iterations, seed = 12, 2
    run_dir = tmp_path / 'run'
    key_file = generate_key_file(tmp_path / 'policy.key')      # signed goals cross the learning/robot boundary
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'seed:={seed}', f'run_dir:={run_dir}',
                      f'params_file:={_params_file(tmp_path, iterations)}', 'namespace:=composed',
                      'containers:=learning,robot', f'policy_key_file:={key_file}')
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    assert 'sim_only: 6 nodes in 2 processes (containers: learning (differentiable_simulator, inner_trainer, ' \
           'sensitivity, outer_optimizer); robot (hardware_bridge, robot_emulator))' in output
    assert '[learning] [INFO]' in output and 'composed.inner_trainer]: inner trainer for' in output
    assert '[robot] [INFO]' in output and 'composed.hardware_bridge]: configured' in output
    # every train_policy (iteration 0 and one per iteration) and compute_sensitivity goal in-process
    assert f'0 goal(s) sent again, {2 * iterations + 1} handed over in-process' in output, output
    assert 'all nodes stopped (learning=0, robot=0)' in output
    assert not _processes_of(Path(ros_env['ROS_LOG_DIR'])), 'processes of the launch outlived it'

    seed_entry = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]
    core = make_run(load_problem(builtin_config(PROBLEM)), 'bilevel', seed, iterations=iterations, evaluate=True)
    core.run()
    np.testing.assert_array_equal([r['theta'] for r in seed_entry['iterations']], [r.theta for r in core.history])
    assert 0 < seed_entry['graph_startup_s'] < seed_entry['wall_time_s']
    metadata = yaml.safe_load((run_dir / 'bag' / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    counts = {t['topic_metadata']['name']: t['message_count'] for t in metadata['topics_with_message_count']}
    assert counts['/composed/outer_metrics'] == counts['/composed/theta'] == iterations + 1


def test_resolve_in_the_graph_re_solves_only_what_the_optimizer_learns(tmp_path, ros_env):
    """solver 'resolve' on the sensitivity node, learn: reward on the optimizer: the goals carry the
    optimizer's learn mask, so each sensitivity runs 2 solves per reward entry only, and theta is
    the core's for the same settings."""
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem

    iterations, seed = 3, 1
    problem = load_problem(builtin_config(PROBLEM))
    rewards = int(np.sum(problem.theta_groups()['reward']))
    assert 0 < rewards < problem.theta0().size
    run_dir = tmp_path / 'run'
    params = _params_file(tmp_path, iterations, sensitivity={'solver': 'resolve'}, learn='reward')
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'seed:={seed}', f'run_dir:={run_dir}',
                      f'params_file:={params}', 'namespace:=resolve', 'containers:=learning,robot')
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    assert len(re.findall(rf'{2 * rewards} inner solves continued from it', output)) == iterations, output
    assert f'{2 * problem.theta0().size} inner solves' not in output
    seed_entry = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]
    core = make_run(problem, 'bilevel', seed, iterations=iterations, evaluate=True,
                    overrides={'solver': 'resolve', 'learn': 'reward'})
    core.run()
    np.testing.assert_allclose([r['theta'] for r in seed_entry['iterations']], [r.theta for r in core.history],
                               rtol=0, atol=1e-9)
    moved = np.ptp([r.theta for r in core.history], axis=0)
    assert np.all(moved[~np.asarray(problem.theta_groups()['reward'], dtype=bool)] == 0) and moved.max() > 0


def test_anchored_run_refits_in_the_optimizer_node_with_the_core_s_theta(tmp_path, ros_env):
    """A problem file with ``outer: {anchor: auto}`` (no ROS parameter for it): the optimizer node
    runs the anchored loop, refitting sysid on every kept real batch, and theta is the core's bit for
    bit; the anchor's state is in the checkpoint."""
    from sim2real_bilevel.core import checkpoint
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem

    iterations, seed = 4, 1
    document = yaml.safe_load((CONFIG / f'{PROBLEM}.yaml').read_text())
    document['outer'].update(anchor='auto', real_episodes=5, iterations=iterations)
    problem_file = tmp_path / 'anchored.yaml'
    problem_file.write_text(yaml.safe_dump(document))
    run_dir = tmp_path / 'run'
    process = _launch(ros_env, tmp_path, f'problem:={problem_file}', f'seed:={seed}', f'run_dir:={run_dir}',
                      f'params_file:={_params_file(tmp_path, iterations)}', 'namespace:=anchored',
                      'containers:=learning,robot')
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    records = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]['iterations']
    core = make_run(load_problem(str(problem_file)), 'bilevel', seed, iterations=iterations, evaluate=True)
    assert core.config.anchor == 'auto'
    core.run()
    assert len(records) == iterations + 1 and core.anchored and not core.anchor_released
    np.testing.assert_array_equal([r['theta'] for r in records], [r.theta for r in core.history])
    # every iteration after the first refits: theta's anchored entries are the fit plus the offset
    dynamics = core.anchor_mask()
    assert np.ptp([r.theta for r in core.history][1:], axis=0)[dynamics].max() > 0
    meta, state = checkpoint.load_checkpoint(run_dir)
    assert meta['iteration'] == iterations and meta['anchor_released'] is False, meta
    np.testing.assert_array_equal(state['anchor.offset'], core.offset)


def test_without_an_evaluator_the_run_shows_estimates_and_keeps_the_best_policy(tmp_path, ros_env):
    """As on hardware (evaluator:='' and safe_improvement:=true): nothing asks for the hidden model's
    returns, which stay NaN everywhere; records, metrics, results and report carry the estimated
    real return with its interval, and the result is the best deployed policy."""
    iterations = 5
    run_dir = tmp_path / 'run'
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'run_dir:={run_dir}', 'evaluator:=',
                      'safe_improvement:=true', f'params_file:={_params_file(tmp_path, iterations, real_episodes=3)}')
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    assert 'no evaluator: records carry the estimated real return' in output
    seed = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]
    records = seed['iterations']
    assert len(records) == iterations + 1
    assert all(np.isnan(r['normalized_return']) and np.isnan(r['real_return']) for r in records)
    for record in records[1:]:
        assert record['real_return_ci_low'] <= record['real_return_estimate'] <= record['real_return_ci_high']
    best = seed['best']
    assert best['episodes'] >= 3 and best['real_return_ci_low'] <= best['real_return_estimate']
    assert best['real_return_estimate'] == max(r['real_return_estimate'] for r in records[1:]) or best['episodes'] > 3
    assert np.isnan(best['normalized_return'])
    metadata = yaml.safe_load((run_dir / 'bag' / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    counts = {t['topic_metadata']['name']: t['message_count'] for t in metadata['topics_with_message_count']}
    assert counts['/metrics/real_return_ci_low'] == iterations + 1
    report = subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'report', str(run_dir)],
                            capture_output=True, text=True, env=ros_env, timeout=120)
    assert report.returncode == 0, report.stderr
    assert 'normalised real return: not evaluated' in report.stdout
    assert 'estimated real return (real episodes, confidence interval): last' in report.stdout


@pytest.mark.slow
def test_ros_loop_converges_on_the_discrete_example(tmp_path, ros_env):
    run_dir = tmp_path / 'run'
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'run_dir:={run_dir}')
    output, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, output
    records = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]['iterations']
    assert records[-1]['normalized_return'] >= 0.95 > records[0]['normalized_return']


@pytest.mark.parametrize('containers, processes', [('', 6), ('learning,robot', 2)], ids=['nodes', 'containers'])
def test_ctrl_c_stops_every_node_and_leaves_no_orphans(tmp_path, ros_env, containers, processes):
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'run_dir:={tmp_path / "run"}',
                      f'params_file:={_params_file(tmp_path, 100000)}', f'containers:={containers}')
    lines = []
    deadline = time.monotonic() + 180
    for line in process.stdout:
        lines.append(line)
        if 'first outer iteration done' in line:
            break
        assert time.monotonic() < deadline, ''.join(lines)
    assert len(_processes_of(Path(ros_env['ROS_LOG_DIR']))) >= 1 + processes      # the launcher and its children
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, ''.join(lines) + output
    assert 'all nodes stopped' in output
    assert not _processes_of(Path(ros_env['ROS_LOG_DIR'])), 'processes of the launch outlived it'
    # the interrupted run still leaves its partial results and a readable bag
    assert (tmp_path / 'run' / 'results.json').is_file(), ''.join(lines) + output
    assert (tmp_path / 'run' / 'bag' / 'metadata.yaml').is_file(), ''.join(lines) + output


def test_ctrl_c_with_write_behind_leaves_every_reported_iteration_on_disk(tmp_path, ros_env):
    """The optimizer's write-behind (``write_behind: true``) is flushed at SIGINT before the
    results: the checkpoint and history.jsonl hold every iteration results.json reports."""
    from sim2real_bilevel.core import checkpoint
    run_dir = tmp_path / 'run'
    process = _launch(ros_env, tmp_path, f'problem:={PROBLEM}', f'run_dir:={run_dir}', 'containers:=learning,robot',
                      f'params_file:={_params_file(tmp_path, 100000, write_behind=True)}', 'sync_period_s:=0')
    lines = []
    deadline = time.monotonic() + 180
    for line in process.stdout:
        lines.append(line)
        reported = re.search(r'\] iteration (\d+)/', line)       # printed at most every progress_period_s
        if reported and int(reported.group(1)) >= 3:
            break
        assert time.monotonic() < deadline, ''.join(lines)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, ''.join(lines) + output
    records = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]['iterations']
    meta, _ = checkpoint.load_checkpoint(run_dir)
    assert len(records) >= 4 and meta['history_length'] == len(records), (len(records), meta['history_length'])
    # the checkpoint's iteration is the last record's, or (evaluate_behind) the next one's, whose record
    # still waited for its evaluation: kept in the checkpoint with its policy, for a resume to complete
    pending = meta.get('pending_record')
    assert meta['iteration'] == (records[-1]['iteration'] if pending is None else pending['iteration']), meta
    assert pending is None or pending['iteration'] == records[-1]['iteration'] + 1, pending
    assert len((run_dir / checkpoint.HISTORY).read_text().splitlines()) == len(records)
    assert len(list((run_dir / checkpoint.REAL_DIR).glob('batch_*.npz'))) >= records[-1]['iteration']
