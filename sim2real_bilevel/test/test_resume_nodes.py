"""Crash-safe runs over ROS: SIGKILL a node of the running graph, start it again, and check
what the run lost.  Every node is its own process on this test's private domain (conftest's
``ros_env``); the discrete example keeps each run to seconds.

Measured per fault: did the run finish, how many completed iterations and collected real
episodes were lost or repeated, and whether theta equals the uninterrupted in-process run's
(which the ROS loop reproduces to 1e-9, test_launch.py) -- see ``fault_table``."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from sim2real_bilevel.core import checkpoint  # noqa: E402
from sim2real_bilevel.core.config import builtin_config  # noqa: E402
from sim2real_bilevel.core.experiments import make_run  # noqa: E402
from sim2real_bilevel.core.problems import load_problem  # noqa: E402
from sim2real_bilevel.core.provenance import generate_key_file  # noqa: E402

pytestmark = pytest.mark.ros

PROBLEM = 'discrete_3s2a'
SEED = 4
ITERATIONS = 12
REAL_EPISODES = 1          # the problem file's
PEERS = ('differentiable_simulator', 'inner_trainer', 'sensitivity', 'hardware_bridge', 'robot_emulator')


class Graph:
    """The six node processes of the sim-only graph, each restartable; logs per incarnation."""

    def __init__(self, environment: dict, run_dir: Path, optimizer: dict = {}):
        self.environment = environment
        self.optimizer = dict(optimizer)
        self.log_dir = Path(environment['ROS_LOG_DIR'])
        self.run_dir = run_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, list[Path]] = {}
        # goals to the bridge are signed, as on a robot (nodes/provenance.py)
        self.key_file = run_dir.parent / 'policy.key'
        if not self.key_file.exists():
            generate_key_file(self.key_file)

    def parameters(self, name: str) -> dict:
        common = {'problem': PROBLEM}
        if name in ('differentiable_simulator', 'inner_trainer', 'sensitivity', 'robot_emulator'):
            common['seed'] = SEED
        if name == 'hardware_bridge':
            common.update(autostart='true', policy_key_file=str(self.key_file))
        if name == 'outer_optimizer':
            common.update(seed=SEED, run_dir=str(self.run_dir), iterations=ITERATIONS, record_bag='false',
                          progress_period_s=0.0, action_timeout_s=3.0, action_retries=5, server_timeout_s=60.0,
                          policy_key_file=str(self.key_file), **self.optimizer)
        return common

    def start(self, name: str) -> None:
        incarnation = len(self.logs.setdefault(name, []))
        log = self.log_dir / f'{name}.{incarnation}.out'
        self.logs[name].append(log)
        command = [sys.executable, '-m', f'sim2real_bilevel.nodes.{name}', '--ros-args', '-r', f'__node:={name}']
        for key, value in self.parameters(name).items():
            command += ['-p', f'{key}:={value}']
        with open(log, 'w') as stream:
            self.processes[name] = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                                    env=self.environment, process_group=0)

    def kill(self, name: str) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def log(self, name: str, incarnation: int = -1) -> str:
        return self.logs[name][incarnation].read_text(errors='replace')

    def optimizer_iteration(self) -> int:
        """Last iteration the running outer_optimizer reported (-1: none yet)."""
        found = re.findall(r'progress iteration=(\d+) ', self.log('outer_optimizer'))
        return int(found[-1]) if found else -1

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out waiting for {what}; outer_optimizer log:\n'
                                     + self.log('outer_optimizer')[-3000:])
            time.sleep(0.02)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def reference_run(events: tuple = ()):
    """The uninterrupted in-process run; ``events``: what happened to the robot during the ROS
    run, as ``emulator_accounting`` found it -- ('lost', k, n): before real batch k, n episodes
    ran whose data never arrived; ('restart', k): the emulator's stream started again before
    batch k.  The core then draws its real data exactly as that emulator did."""
    problem = load_problem(builtin_config(PROBLEM))
    emulator, sample_real, calls = [np.random.default_rng(SEED)], problem.sample_real, [0]

    def emulated(phi, n_episodes, rng):        # exact inner solve and sensitivities: rng is the emulator's only
        calls[0] += 1
        for event in events:
            if event[1] == calls[0] and event[0] == 'restart':
                emulator[0] = np.random.default_rng(SEED)
            elif event[1] == calls[0] and event[0] == 'lost':
                sample_real(phi, event[2], emulator[0])
        return sample_real(phi, n_episodes, emulator[0])
    problem.sample_real = emulated
    run = make_run(problem, 'bilevel', SEED, iterations=ITERATIONS)
    run.run()
    return run


def run_with_fault(environment: dict, run_dir: Path, node: str | None, kill_after: int = 4,
                   delay_s: float = 0.0, optimizer: dict = {}, on_kill=lambda: None) -> dict:
    """Run the graph; SIGKILL ``node`` (``'all'``: every node, i.e. a relaunch of the graph)
    ``delay_s`` after the optimizer reported iteration ``kill_after``, start it again (after
    ``on_kill()``), let the run finish; returns what the optimizer said.  ``optimizer``: more
    outer_optimizer parameters."""
    graph = Graph(environment, run_dir, optimizer)
    try:
        for name in PEERS + ('outer_optimizer',):
            graph.start(name)
        reported_before_kill = resumed_after = None
        if node is not None:
            graph.wait_for(lambda: graph.optimizer_iteration() >= kill_after, 180, f'iteration {kill_after}')
            time.sleep(delay_s)
            victims = PEERS + ('outer_optimizer',) if node == 'all' else (node,)
            for victim in victims:
                graph.kill(victim)
            if 'outer_optimizer' in victims:
                reported_before_kill = graph.optimizer_iteration()
            on_kill()
            time.sleep(0.5)
            for victim in victims:
                graph.start(victim)
        optimizer = graph.processes['outer_optimizer']
        graph.wait_for(lambda: optimizer.poll() is not None, 240, 'the end of the run')
        output = graph.log('outer_optimizer')
        if node in ('outer_optimizer', 'all'):
            found = re.search(r'resuming .* after iteration (\d+)', output)
            resumed_after = int(found.group(1)) if found else None
        retries = len(re.findall(r'sending it again', '\n'.join(graph.log('outer_optimizer', i)
                                                                 for i in range(len(graph.logs['outer_optimizer'])))))
        reused = re.search(r'(\d+) real batch\(es\) reused', output)
        return {'returncode': optimizer.returncode, 'output': output, 'reported_before_kill': reported_before_kill,
                'resumed_after': resumed_after, 'retries': retries, 'batches_reused': int(reused.group(1)) if reused
                else None, 'batches_recovered_from_bridge': output.count('recovered from the bridge')}
    finally:
        graph.close()


def emulator_accounting(stored: list) -> list | None:
    """Replays the robot_emulator's RNG stream (seeded with SEED, drawn from by nothing but
    ``sample_real``) with the policy stored beside each real batch; returns the events that
    explain the stored batches (see ``reference_run``), or None if at most 5 lost batches
    between two stored ones do not explain them."""
    problem = load_problem(builtin_config(PROBLEM))
    rng, events = np.random.default_rng(SEED), []

    def same(a, b):
        return np.array_equal(a.states, b.states) and np.array_equal(a.actions, b.actions)

    for index, (batch, meta) in enumerate(stored, start=1):
        phi, n = meta['policy_phi'], batch.rewards.shape[0]
        for _ in range(6):
            before = rng.bit_generator.state
            if same(problem.sample_real(phi, n, rng), batch):
                break
            fresh = np.random.default_rng(SEED)           # a restarted emulator starts its stream again
            if same(problem.sample_real(phi, n, fresh), batch):
                rng = fresh
                events.append(('restart', index))
                break
            rng.bit_generator.state = before              # or a batch with this policy ran and was lost
            problem.sample_real(phi, n, rng)
            events.append(('lost', index, n))
        else:
            return None
    return events


def measure(run_dir: Path, outcome: dict, reference) -> dict:
    """Iterations and episodes lost or repeated; theta compared with the uninterrupted run, and
    with the uninterrupted run that met the same robot events (episodes lost in transit, an
    emulator restart): the difference that is not the robot's."""
    records = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]['iterations']
    iterations = [r['iteration'] for r in records]
    files = sorted((run_dir / 'real').glob('batch_*.npz'))
    stored_with_meta = [checkpoint.load_real_batch(run_dir, i + 1) for i in range(len(files))]
    stored = [batch for batch, _ in stored_with_meta]
    episodes_stored = sum(b.rewards.shape[0] for b in stored)
    events = emulator_accounting(stored_with_meta)
    same_events = reference_run(tuple(events)) if events else reference
    same_data = len(stored) == len(reference.real_batches) and all(
        np.array_equal(a.states, b.states) and np.array_equal(a.actions, b.actions)
        for a, b in zip(stored, reference.real_batches))
    theta = np.array([r['theta'] for r in records])
    reference_theta = np.array([r.theta for r in reference.history])
    # the checkpoint is written before the progress line: the resumed run may start one iteration
    # after the last one reported (saved, not yet printed), never before it
    lost_iterations = (max(0, outcome['reported_before_kill'] - outcome['resumed_after'])
                       if outcome['resumed_after'] is not None else 0)
    return {
        'finished': iterations == list(range(ITERATIONS + 1)),
        'reported_before_kill': outcome['reported_before_kill'], 'resumed_after': outcome['resumed_after'],
        'iterations_lost': lost_iterations,
        'iterations_repeated': len(iterations) - len(set(iterations)),
        'episodes_counted': records[-1]['real_episodes'],
        'episodes_stored': episodes_stored,
        'episodes_repeated': records[-1]['real_episodes'] - ITERATIONS * REAL_EPISODES,
        'same_real_data': same_data,
        'episodes_lost_in_transit': None if events is None else sum(e[2] for e in events if e[0] == 'lost'),
        'emulator_restarts': None if events is None else sum(e[0] == 'restart' for e in events),
        'theta_max_abs_diff': _max_diff(theta, reference_theta),
        'theta_max_abs_diff_same_robot_events': _max_diff(theta, np.array([r.theta for r in same_events.history])),
        'retries': outcome['retries'],
        'batches_reused': outcome['batches_reused'],
        'batches_recovered_from_bridge': outcome['batches_recovered_from_bridge'],
    }


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.shape == b.shape else float('inf')


def check_lossless(figures: dict) -> None:
    assert figures['finished'], figures
    assert figures['iterations_lost'] == 0 and figures['iterations_repeated'] == 0, figures
    # every episode counted is stored exactly once and none was collected twice
    assert figures['episodes_counted'] == figures['episodes_stored'] == ITERATIONS * REAL_EPISODES, figures
    assert figures['episodes_lost_in_transit'] is not None, figures
    # all that differs from the uninterrupted run is the robot's: the data in flight at a kill
    assert figures['theta_max_abs_diff_same_robot_events'] <= 1e-9, figures


@pytest.fixture(scope='module')
def reference():
    return reference_run()


def test_outer_optimizer_sigkilled_mid_run_resumes_without_loss(tmp_path, ros_env, reference):
    run_dir = tmp_path / 'run'
    outcome = run_with_fault(ros_env, run_dir, 'outer_optimizer', kill_after=4)
    assert outcome['returncode'] == 0, outcome['output'][-3000:]
    assert outcome['resumed_after'] is not None and outcome['resumed_after'] >= 4, outcome['output'][-3000:]
    figures = measure(run_dir, outcome, reference)
    print('FAULT outer_optimizer SIGKILL 0.0s after iteration 4 reported: rc 0', figures)
    check_lossless(figures)
    # the batch in flight at the kill (if any) is taken back from the bridge: nothing lost in transit
    assert figures['emulator_restarts'] == 0 and figures['episodes_lost_in_transit'] == 0, figures
    assert figures['same_real_data'] and figures['theta_max_abs_diff'] <= 1e-9, figures


def test_outer_optimizer_sigkilled_between_syncs_resumes_without_loss(tmp_path, ros_env, reference):
    """sync_period_s 600: nothing of the run is fsync'd before the kill (no checkpoint.durable.npz
    yet); the kernel keeps every file the SIGKILLed optimizer wrote, so the resume is as lossless
    as with each file fsync'd before the loop goes on."""
    run_dir = tmp_path / 'run'
    durable_at_kill = []
    outcome = run_with_fault(ros_env, run_dir, 'outer_optimizer', kill_after=4, optimizer={'sync_period_s': 600.0},
                             on_kill=lambda: durable_at_kill.append((run_dir / checkpoint.DURABLE).exists()))
    assert outcome['returncode'] == 0, outcome['output'][-3000:]
    assert durable_at_kill == [False], 'a sync before the kill: the test would not show the page cache at work'
    assert outcome['resumed_after'] is not None and outcome['resumed_after'] >= 4, outcome['output'][-3000:]
    assert 'checkpoint.durable.npz, the newer checkpoint' not in outcome['output']     # the newest one was whole
    figures = measure(run_dir, outcome, reference)
    print('FAULT outer_optimizer SIGKILL after iteration 4 reported, sync_period_s 600: rc 0', figures)
    check_lossless(figures)
    assert figures['emulator_restarts'] == 0 and figures['episodes_lost_in_transit'] == 0, figures
    assert figures['same_real_data'] and figures['theta_max_abs_diff'] <= 1e-9, figures
    assert (run_dir / checkpoint.DURABLE).is_file()                                   # synced at the end


@pytest.mark.slow
@pytest.mark.parametrize('node,delay_s', [
    ('outer_optimizer', 0.02), ('outer_optimizer', 0.05), ('outer_optimizer', 0.1),   # somewhere in an iteration
    ('differentiable_simulator', 0.0), ('inner_trainer', 0.0), ('sensitivity', 0.0),
    ('hardware_bridge', 0.0), ('robot_emulator', 0.0), ('all', 0.0),
])
def test_node_sigkilled_mid_run(tmp_path, ros_env, reference, node, delay_s):
    run_dir = tmp_path / 'run'
    outcome = run_with_fault(ros_env, run_dir, node, kill_after=4, delay_s=delay_s)
    figures = measure(run_dir, outcome, reference) if (run_dir / 'results.json').exists() else {}
    print(f'FAULT {node} SIGKILL {delay_s}s after iteration 4 reported: rc {outcome["returncode"]}', figures)
    assert outcome['returncode'] == 0, outcome['output'][-3000:]
    check_lossless(figures)
    # a killed bridge's episodes are kept by the emulator (request_id): only a killed robot loses data
    if node in ('differentiable_simulator', 'sensitivity', 'inner_trainer', 'outer_optimizer', 'hardware_bridge'):
        assert figures['same_real_data'] and figures['theta_max_abs_diff'] <= 1e-9, figures
    if node not in ('robot_emulator', 'all'):
        assert figures['emulator_restarts'] == 0, figures
