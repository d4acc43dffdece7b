"""Control-loop timing of the hardware bridge's timer loop against the real-time robot emulator.

For each control rate (``--rates``, Hz) the pendulum problem is run with its control period set
to 1 / rate (the emulator's physics and joint_states at the same rate, the bridge's timer loop
at it), as real node processes: ``robot_emulator`` (``mode: realtime``) and ``hardware_bridge``
(``transport: topics``, ``loop: timer``), the pendulum's MLP policy (its initial parameters,
seed 0), enough episodes for ``--ticks`` control ticks.  The bridge's own figures come back in
the RunEpisodes result: period jitter |dt - period| p50/p99/max, state age at use p50/p99,
deadline misses per 1000 control slots, dropped states, policy evaluation time and the tick's
whole work (tick start to command sent: state checks, policy, filter, publication).

Loads (``--loads``): ``idle`` (only these two nodes), ``busy`` (the whole sim-only learning
graph of the pendulum runs in the same ROS domain under namespace /busy -- simulator, inner
trainer, sensitivity, outer optimizer, its own bridge and lockstep emulator -- started 20 s
before and working while the timing is measured; its outer iterations are printed).  The abort limits are lifted (max_deadline_misses, a 1 s
max_state_age_s) so that the loop is measured, not stopped.

    python sim2real_bilevel/bench/control_timing.py --rates 100 500 --loads idle busy --ticks 2000

``--ref REF`` (with ``--repeat N``) runs the nodes of git ref REF too, alternating with this
checkout's at every rate (column ``code``): before and after out of one run.

Prints one table and writes ``timing.json`` into ``--out``.  Timings are upper bounds on a
shared, loaded machine: the load average at the start of each row is printed with it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import claim_domain_id, graph_environment, soak_params_file  # noqa: E402
from sim2real_bilevel.tools import launcher  # noqa: E402

PENDULUM = PACKAGE_ROOT / 'config' / 'pendulum.yaml'
COLUMNS = ('code', 'load', 'rate_hz', 'ticks', 'jitter_p50_ms', 'jitter_p99_ms', 'jitter_max_ms', 'age_p50_ms',
           'age_p99_ms', 'misses_per_1000', 'dropped', 'policy_p99_ms', 'policy_p99_of_period', 'work_p50_ms',
           'work_p99_ms', 'loadavg')
KEYS = {'ticks': 'ticks', 'jitter_p50_ms': 'period_jitter_p50_ms', 'jitter_p99_ms': 'period_jitter_p99_ms',
        'jitter_max_ms': 'period_jitter_max_ms', 'age_p50_ms': 'state_age_p50_ms',
        'age_p99_ms': 'state_age_p99_ms', 'misses_per_1000': 'misses_per_1000_ticks',
        'dropped': 'dropped_states', 'policy_p99_ms': 'policy_time_p99_ms',
        'policy_p99_of_period': 'policy_time_p99_of_period', 'work_p50_ms': 'tick_work_p50_ms',
        'work_p99_ms': 'tick_work_p99_ms'}


def problem_at_rate(rate: float, directory: Path) -> Path:
    """The pendulum problem file with its control period 1 / rate."""
    document = yaml.safe_load(PENDULUM.read_text())
    document['geometry']['control_period'] = 1.0 / rate
    path = directory / f'pendulum_{rate:g}hz.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


def start_node(executable: str, namespace: str, parameters: dict, environment: dict, log: Path,
               params_file: Optional[Path] = None):
    command = [sys.executable, '-m', f'sim2real_bilevel.nodes.{executable}', '--ros-args',
               '-r', f'__ns:={namespace}', '-r', f'__node:={executable}']
    if params_file is not None:          # first: the -p values below override it
        command += ['--params-file', str(params_file)]
    for key, value in parameters.items():
        command += ['-p', f'{key}:={value}']
    return subprocess.Popen(command, stdout=open(log, 'w'), stderr=subprocess.STDOUT, env=environment,
                            preexec_fn=launcher.die_with_parent)


def stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(2)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def realtime_robot_episodes(name: str, problem_file: Path, phi: np.ndarray, episodes: int, environment: dict,
                            out: Path, node, bridge_parameters: dict, emulator_parameters: Optional[dict] = None,
                            params_file: Optional[Path] = None, timeout_s: float = 600.0):
    """``episodes`` episodes of policy ``phi`` on a real-time robot: a ``robot_emulator``
    (``mode: realtime``) and a ``hardware_bridge`` (``transport: topics``, ``loop: timer``) started
    as processes of their own for this call (logs ``out/bridge_NAME.log``, ``out/emulator_NAME.log``),
    the goal signed with the environment's policy key.  The RunEpisodes result."""
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from sim2real_bilevel_interfaces.action import RunEpisodes
    from sim2real_bilevel.graph import POLICY_KEY_ENV
    from sim2real_bilevel.nodes import conversions, provenance
    from sim2real_bilevel.nodes.action_calls import wait_for_result

    # a namespace of its own per run: a stopped run's server may linger in the ROS graph, and a goal
    # sent to it would never be answered
    realtime_robot_episodes.runs = getattr(realtime_robot_episodes, 'runs', 0) + 1
    namespace = f'/{name}_{realtime_robot_episodes.runs}'
    bridge = start_node('hardware_bridge', namespace, {
        'problem': problem_file, 'autostart': 'true', 'transport': 'topics', 'loop': 'timer', **bridge_parameters},
        environment, out / f'bridge_{name}.log', params_file)
    emulator = start_node('robot_emulator', namespace, {'problem': problem_file, 'mode': 'realtime',
                                                        **(emulator_parameters or {})},
                          environment, out / f'emulator_{name}.log', params_file)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    client = ActionClient(node, RunEpisodes, f'{namespace}/run_episodes')
    try:
        deadline = time.monotonic() + 120
        while not client.server_is_ready():
            if time.monotonic() > deadline or bridge.poll() is not None or emulator.poll() is not None:
                raise RuntimeError(f'the bridge of {name} did not come up (logs in {out})')
            executor.spin_once(timeout_sec=0.1)
        settle = time.monotonic() + 2.0
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.05)
        goal = RunEpisodes.Goal(policy=conversions.policy_to_msg(phi, 1, 0, 0.0), n_episodes=episodes)
        provenance.sign_goal(provenance.load_key(environment[POLICY_KEY_ENV]), goal)   # graph_environment's key
        future = client.send_goal_async(goal)
        while not future.done():
            executor.spin_once(timeout_sec=0.1)
        handle = future.result()
        if not handle.accepted:
            raise RuntimeError(f'goal refused ({name}, logs in {out})')
        result = wait_for_result(executor, handle, timeout_s, f'the episodes of {name}').result
        if not result.success:
            raise RuntimeError(f'episodes of {name} failed: {result.message}')
        return result
    finally:
        client.destroy()
        executor.remove_node(node)
        executor.shutdown()
        stop([bridge, emulator])


def measure(rate: float, ticks: int, problem_file: Path, environment: dict, out: Path, node) -> dict:
    """One run of the timer loop at ``rate``: the bridge's timing figures."""
    from sim2real_bilevel.core.problems import load_problem

    problem = load_problem(problem_file)
    phi = problem.policy.init_params(np.random.default_rng(0))
    result = realtime_robot_episodes(
        f'timing_{int(rate)}', problem_file, phi, math.ceil(ticks / (problem.horizon + 1)), environment, out, node,
        {'position_limit': '100.0', 'velocity_limit': '1000.0', 'max_deadline_misses': str(10 ** 9),
         'max_state_age_s': '1.0', 'max_episodes': '100000', 'reset_timeout_s': '120.0'})
    return {kv.key: float(kv.value) for kv in result.timing}


def start_busy_graph(environment: dict, out: Path, warmup_s: float = 20.0):
    """The pendulum's sim-only learning graph under /busy, its nodes up and working (the inner
    trainer's first solve starts at once) for ``warmup_s``."""
    params = soak_params_file('pendulum', 1_000_000, {}, out)
    # one process per node, as the committed figures were measured (the default, containers:=auto,
    # puts this lockstep graph in two processes)
    arguments = launcher.parse_assignments('sim_only', ['problem:=pendulum', 'namespace:=busy',
                                                        f'params_file:={params}', f'run_dir:={out / "busy_run"}',
                                                        'containers:=none'])
    processes = launcher.GraphProcesses(launcher.plan('sim_only', arguments), environment, 10.0)
    processes.start()
    time.sleep(warmup_s)
    if len(processes.alive()) != len(processes.plans):
        processes.stop()
        raise RuntimeError(f'the busy graph lost nodes at start-up (alive: {processes.alive()})')
    return processes


def drain(processes, progress: list) -> None:
    """Keep the busy graph's output pipes flowing; its outer iterations go to ``progress``."""
    while not processes.lines.empty():
        _, line = processes.lines.get_nowait()
        match = launcher.PROGRESS.match(line or '')
        if match:
            progress.append(int(match.group(1)))


def bench_environment(out: Path) -> tuple[dict, object]:
    """The node processes' environment on a ROS_DOMAIN_ID claimed for this process (its lock,
    to be kept for the run), with soak's policy key and log folder under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    domain, lock = claim_domain_id()
    environment = graph_environment(out)
    environment['ROS_DOMAIN_ID'] = str(domain)
    return environment, lock


def format_table(rows: list[dict]) -> str:
    lines = [' '.join(f'{c:>12}' for c in COLUMNS)]
    for row in rows:
        lines.append(' '.join(f'{row[c]:>12.4g}' if isinstance(row[c], float) else f'{row[c]:>12}' for c in COLUMNS))
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rates', type=float, nargs='+', default=[100.0, 500.0])
    parser.add_argument('--loads', nargs='+', default=['idle', 'busy'], choices=['idle', 'busy'])
    parser.add_argument('--ticks', type=int, default=2000, help='control ticks per rate and load (at least)')
    parser.add_argument('--out', type=Path, default=Path(tempfile.mkdtemp(prefix='control_timing_')))
    parser.add_argument('--ref', action='append', default=[],
                        help='also run the nodes of this git ref, alternating with this checkout\'s at every rate '
                             '(column code), so before and after come out of one run')
    parser.add_argument('--repeat', type=int, default=1, help='runs of each code at each rate, alternating')
    args = parser.parse_args(argv)
    environment, _lock = bench_environment(args.out)
    codes = {'this': environment}
    for ref in args.ref:
        from ros_overhead import extract_ref
        package = extract_ref(ref, args.out)
        codes[ref] = dict(environment, PYTHONPATH=os.pathsep.join([str(package), environment['PYTHONPATH']]))
    os.environ.update({k: environment[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOG_DIR')})
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('control_timing', context=context)
    rows = []
    try:
        for load in args.loads:
            busy = start_busy_graph(environment, args.out) if load == 'busy' else None
            progress: list[int] = []
            try:
                runs = [(rate, code) for rate in args.rates for _ in range(args.repeat) for code in codes]
                for rate, code in runs:           # the codes alternate at each rate
                    if busy is not None:
                        drain(busy, progress)
                    loadavg = os.getloadavg()[0]
                    figures = measure(rate, args.ticks, problem_at_rate(rate, args.out), codes[code], args.out, node)
                    row = {'code': code, 'load': load, 'rate_hz': f'{rate:g}', 'loadavg': loadavg,
                           **{column: figures.get(key, math.nan) for column, key in KEYS.items()}}
                    row['ticks'] = int(row['ticks'])
                    row['dropped'] = int(row['dropped'])
                    rows.append(row)
                    print(f'[control_timing] {code} {load} {rate:g} Hz: {json.dumps(figures)}', flush=True)
                    if busy is not None and len(busy.alive()) != len(busy.plans):
                        raise RuntimeError(f'the busy graph lost nodes: alive {busy.alive()}')
            finally:
                if busy is not None:
                    drain(busy, progress)
                    busy.stop()
                    print(f'[control_timing] busy graph: outer iterations reported {progress}', flush=True)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    (args.out / 'timing.json').write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    print(f'(written to {args.out / "timing.json"}; logs in {args.out})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
