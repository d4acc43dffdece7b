"""The graph split over two "hosts": two network namespaces joined by a veth pair (each has
only its loopback and its end of the pair).  Robot side: hardware_bridge + robot_emulator;
compute side: simulator, trainer, sensitivity, outer_optimizer.  Discovery is explicit: the
same ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET and ROS_STATIC_PEERS = the other
host's address.  The loop must give the same theta trajectory as the in-process core (which
the one-host launch test already matches).  Needs root (ip netns); skipped otherwise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

pytestmark = [pytest.mark.ros]

PROBLEM = 'discrete_3s2a'
ROBOT_HOST, COMPUTE_HOST = ('10.200.0.1', '10.200.0.2')


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['ip', *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """(robot namespace, compute namespace), joined by a veth pair; removed afterwards."""
    import shutil
    if shutil.which('ip') is None:
        pytest.skip('the ip command (iproute2) is not installed')
    tag = f'{os.getpid() % 100000}'
    robot, compute = f's2r_robot_{tag}', f's2r_compute_{tag}'
    probe = _ip('netns', 'add', robot)
    if probe.returncode != 0:
        pytest.skip(f'cannot create network namespaces here (ip netns add: {probe.stderr.strip()})')
    try:
        steps = [('netns', 'add', compute),
                 ('link', 'add', f'veth_r{tag}', 'type', 'veth', 'peer', 'name', f'veth_c{tag}'),
                 ('link', 'set', f'veth_r{tag}', 'netns', robot),
                 ('link', 'set', f'veth_c{tag}', 'netns', compute),
                 ('-n', robot, 'addr', 'add', f'{ROBOT_HOST}/24', 'dev', f'veth_r{tag}'),
                 ('-n', compute, 'addr', 'add', f'{COMPUTE_HOST}/24', 'dev', f'veth_c{tag}')]
        for namespace in (robot, compute):
            steps += [('-n', namespace, 'link', 'set', 'lo', 'up')]
        steps += [('-n', robot, 'link', 'set', f'veth_r{tag}', 'up'),
                  ('-n', compute, 'link', 'set', f'veth_c{tag}', 'up')]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f'cannot build the two-host network (ip {" ".join(step)}: {done.stderr.strip()})')
        yield robot, compute
    finally:
        for namespace in (robot, compute):
            _ip('netns', 'del', namespace)


def _start(namespace, executable: str, environment: dict, log_dir: Path, **parameters) -> subprocess.Popen:
    prefix = ['ip', 'netns', 'exec', namespace] if namespace else []
    command = prefix + [sys.executable, '-m', f'sim2real_bilevel.nodes.{executable}',
                        '--ros-args', '-r', f'__node:={executable}']
    for key, value in parameters.items():
        command += ['-p', f'{key}:={value}']
    stream = open(log_dir / f'{executable}.out', 'w')
    return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=environment)


def test_graph_split_over_two_hosts_matches_the_in_process_core(two_hosts, ros_env, tmp_path):
    robot, compute = two_hosts
    base = dict(ros_env, ROS_AUTOMATIC_DISCOVERY_RANGE='SUBNET')
    run_graph(tmp_path, robot, compute, dict(base, ROS_STATIC_PEERS=COMPUTE_HOST),
              dict(base, ROS_STATIC_PEERS=ROBOT_HOST), 'two hosts')


def test_the_same_graph_on_one_host_for_comparison(ros_env, tmp_path):
    run_graph(tmp_path, None, None, ros_env, ros_env, 'one host')


def run_graph(tmp_path, robot, compute, robot_env, compute_env, label):
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    from sim2real_bilevel.core.provenance import generate_key_file

    iterations, seed = 15, 2
    key_file = str(generate_key_file(tmp_path / 'policy.key'))     # on real hosts: a copy on each
    run_dir = tmp_path / 'run'
    problem = str(builtin_config(PROBLEM))
    started = time.monotonic()
    processes = [
        _start(robot, 'robot_emulator', robot_env, tmp_path, problem=problem, seed=seed),
        _start(robot, 'hardware_bridge', robot_env, tmp_path, problem=problem, autostart='true',
               policy_key_file=key_file),
        _start(compute, 'differentiable_simulator', compute_env, tmp_path, problem=problem, seed=seed),
        _start(compute, 'inner_trainer', compute_env, tmp_path, problem=problem, seed=seed),
        _start(compute, 'sensitivity', compute_env, tmp_path, problem=problem, seed=seed),
    ]
    optimizer = _start(compute, 'outer_optimizer', compute_env, tmp_path, problem=problem, seed=seed,
                       iterations=iterations, run_dir=str(run_dir), record_bag='false', policy_key_file=key_file,
                       evaluator='robot_emulator/evaluate')
    try:
        optimizer.wait(timeout=240)
    finally:
        for process in processes + [optimizer]:
            if process.poll() is None:
                process.terminate()
        for process in processes + [optimizer]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    wall = time.monotonic() - started
    log = (tmp_path / 'outer_optimizer.out').read_text(errors='replace')
    assert optimizer.returncode == 0, log[-3000:]
    records = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]['iterations']
    core = make_run(load_problem(problem), 'bilevel', seed, iterations=iterations, evaluate=True)
    core.run()
    np.testing.assert_allclose(np.array([r['theta'] for r in records]), np.array([r.theta for r in core.history]),
                               rtol=0, atol=1e-9)
    print(f'\n[{label}] {iterations} iterations, final normalised return '
          f'{records[-1]["normalized_return"]:.4f}, same theta as the in-process core; wall {wall:.1f} s')
