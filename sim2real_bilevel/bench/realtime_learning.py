"""The pendulum's bi-level learning curve against a real-time robot vs a lockstep one.

Runs the whole sim-only graph (``sim2real-bilevel launch sim_only problem:=pendulum``, the
launcher's processes) once per setting and seed, the bridge on the topic transport (one command
per control step, as on hardware) in every setting:
- ``lockstep``: robot_emulator ``mode: lockstep``, bridge ``loop: lockstep`` (the robot waits);
- ``realtime``: emulator ``mode: realtime`` (50 Hz wall-clock physics, the last command held),
  bridge ``loop: timer`` at the problem's 50 Hz;
- ``realtime_faulty``: as ``realtime`` with joint_states delayed 10 ms +- 5 ms and 5 % of them
  dropped (``state_latency_s``, ``state_jitter_s``, ``state_drop_rate``).
The bridge keeps the pendulum's shipped limits (``config/pendulum_params.yaml``: the simulator's
actuator range, one turn of position), as a user's run would.  Reads each run's results.json and
prints, side by side, mean over seeds:
- the learning curve: normalised real return per outer iteration from the emulator's exact
  evaluator (lockstep physics: the same number for a policy whatever robot collected the data);
- what the robot experienced: each iteration's mean discounted return of the episodes the robot
  ran (``real_return_estimate``, the policy of the record before) minus the exact return of that
  policy (``real_return`` of the record before).  Near 0 in lockstep (sampling noise); below 0 by
  what running against a wall clock (latency, held commands, drops) costs the policy itself.
It also counts the bridge's aborted goals in each run's log, and prints the learned theta.

``--problem`` runs other problems (shipped names or problem files; several are run side by side,
e.g. the same robot with and without a learnable delay entry).  A problem file without a params
file beside it gets one from ``sim2real-bilevel params`` (the problem's joints and actuator range).

    python sim2real_bilevel/bench/realtime_learning.py --seeds 0 1 2 --iterations 15 --out /tmp/rt_learning
    python sim2real_bilevel/bench/realtime_learning.py --problem nodelay.yaml delay.yaml --settings realtime
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_timing import bench_environment  # noqa: E402
from soak import soak_params_file  # noqa: E402
from sim2real_bilevel import graph  # noqa: E402
from sim2real_bilevel.tools import launcher, params_file  # noqa: E402

REALTIME = {'hardware_bridge.transport': 'topics', 'hardware_bridge.loop': 'timer',
            'robot_emulator.mode': 'realtime'}
SETTINGS = {
    'lockstep': {'hardware_bridge.transport': 'topics', 'hardware_bridge.loop': 'lockstep',
                 'robot_emulator.mode': 'lockstep'},
    'realtime': REALTIME,
    'realtime_faulty': {**REALTIME, 'robot_emulator.state_latency_s': 0.01, 'robot_emulator.state_jitter_s': 0.005,
                        'robot_emulator.state_drop_rate': 0.05},
}


def with_params_file(problem: str) -> str:
    """``problem`` as the launcher takes it; a problem file without ``<stem>_params.yaml`` beside
    it gets one written by ``sim2real-bilevel params``."""
    if not graph.is_problem_path(problem):
        return problem
    path = Path(problem).expanduser().resolve()
    if graph.default_params_file(str(path), graph.config_directories()) is None:
        if params_file.cmd_params(argparse.Namespace(config=str(path), out=None, force=False)) != 0:
            raise RuntimeError(f'{path}: no params file could be written for it')
    return str(path)


def label(problem: str) -> str:
    return Path(problem).stem


def run_once(setting: str, seed: int, iterations: int, environment: dict, out: Path, timeout_s: float,
             problem: str = 'pendulum') -> dict:
    """One sim-only run; its per-iteration records (results.json) and wall time."""
    directory = out / f'{label(problem)}_{setting}_seed{seed}'
    directory.mkdir(parents=True, exist_ok=True)
    params = soak_params_file(problem, iterations, SETTINGS[setting], directory)
    arguments = launcher.parse_assignments('sim_only', [f'problem:={problem}', f'params_file:={params}',
                                                        f'seed:={seed}', f'run_dir:={directory / "run"}'])
    plans = launcher.plan('sim_only', arguments)
    optimizer = launcher.optimizer_process(plans)      # its own process, or the learning container
    processes = launcher.GraphProcesses(plans, environment, 10.0)
    started = time.monotonic()
    processes.start()
    log = open(directory / 'graph.log', 'w')
    aborted = 0
    try:
        while optimizer in processes.alive():
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f'{setting} seed {seed}: not finished within {timeout_s:g} s ({directory})')
            try:
                name, line = processes.lines.get(timeout=1.0)
            except Exception:       # queue.Empty
                continue
            if line is not None:
                log.write(f'[{name}] {line}\n')
                aborted += 'run_episodes aborted' in line
    finally:
        wall = time.monotonic() - started
        processes.stop()
        log.close()
    if not (directory / 'run' / 'results.json').exists():
        raise RuntimeError(f'{setting} seed {seed}: {optimizer} ended without results.json (log: {directory}/graph.log)')
    results = json.loads((directory / 'run' / 'results.json').read_text())
    method = next(iter(results['methods'].values()))
    records = method['seeds'][0]['iterations']
    return {'problem': label(problem), 'setting': setting, 'seed': seed, 'wall_s': wall, 'aborted_lines': aborted,
            'theta_names': results.get('theta_names'),
            **{key: [r[key] for r in records] for key in ('real_episodes', 'normalized_return', 'real_return',
                                                          'real_return_estimate', 'theta')}}


def experienced_gaps(run: dict) -> np.ndarray:
    """Per iteration: the robot's mean discounted return of the episodes it ran minus the exact
    return of the policy that ran them (the record before's)."""
    return np.asarray(run['real_return_estimate'][1:]) - np.asarray(run['real_return'][:-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--problem', nargs='+', default=['pendulum'],
                        help='shipped problem names or problem files, run side by side (default: pendulum)')
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--iterations', type=int, default=15)
    parser.add_argument('--timeout-s', type=float, default=1200.0, help='per run')
    parser.add_argument('--out', type=Path, default=Path(tempfile.mkdtemp(prefix='realtime_learning_')))
    parser.add_argument('--tables', type=Path, nargs='+', default=None, metavar='LEARNING_JSON',
                        help='run nothing: print the tables of stored runs (learning.json files, merged)')
    args = parser.parse_args(argv)
    if args.tables:
        print_tables([run for path in args.tables for run in json.loads(path.read_text())])
        return 0
    problems = [with_params_file(p) for p in args.problem]
    environment, _lock = bench_environment(args.out)
    runs = []
    for seed in args.seeds:
        for problem in problems:
            for setting in args.settings:
                run = run_once(setting, seed, args.iterations, environment, args.out, args.timeout_s, problem)
                runs.append(run)
                print(f'[realtime_learning] {label(problem)} {setting} seed {seed}: {run["wall_s"]:.0f} s, final '
                      f'normalised return {run["normalized_return"][-1]:.3f} after {run["real_episodes"][-1]} real '
                      'episodes', flush=True)
                (args.out / 'learning.json').write_text(json.dumps(runs, indent=1))
    print_tables(runs)
    print(f'(runs in {args.out}; learning.json holds every curve)')
    return 0


def print_tables(runs: list) -> None:
    """The learning curves, what the robot experienced and the learned theta, per problem and setting."""
    columns = list(dict.fromkeys((r['problem'], r['setting']) for r in runs))
    several = len({c[0] for c in columns}) > 1
    names = {c: (f'{c[0]} {c[1]}' if several else c[1]) for c in columns}

    def runs_of(column):
        return [r for r in runs if (r['problem'], r['setting']) == column]

    print('normalised real return (mean over seeds [min, max]) vs real episodes')
    print(f'{"real_episodes":>14} ' + ' '.join(f'{names[c]:>30}' for c in columns))
    episodes = max((r['real_episodes'] for r in runs), key=len)
    for i, count in enumerate(episodes):
        cells = []
        for column in columns:      # a run stopped early (e.g. its goals aborted) has fewer records
            of_column = runs_of(column)
            values = np.array([r['normalized_return'][i] for r in of_column if i < len(r['normalized_return'])])
            cell = f'{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]' if len(values) else '-'
            if 0 < len(values) < len(of_column):
                cell += f' ({len(values)} of {len(of_column)} runs)'
            cells.append(cell)
        print(f'{count:>14} ' + ' '.join(f'{c:>30}' for c in cells))
    for run in runs:
        if len(run['real_episodes']) < len(episodes):
            print(f'  {names[(run["problem"], run["setting"])]} seed {run["seed"]} stopped after '
                  f'{run["real_episodes"][-1]} real episodes ({run["aborted_lines"]} aborted goals; its graph.log)')
    print('what the robot experienced: mean episode return minus the exact return of the deployed policy, '
          'pooled over seeds and iterations (mean +- standard error, n); the mean episode return itself')
    for column in columns:
        gaps = np.concatenate([experienced_gaps(r) for r in runs_of(column)])
        returns = np.concatenate([r['real_return_estimate'][1:] for r in runs_of(column)])
        aborted = sum(r['aborted_lines'] for r in runs_of(column))
        print(f'{names[column]:>30}: {gaps.mean():+.3f} +- {gaps.std(ddof=1) / np.sqrt(len(gaps)):.3f} (n {len(gaps)}); '
              f'episode return {returns.mean():.3f} +- {returns.std(ddof=1) / np.sqrt(len(returns)):.3f}; '
              f'goals aborted: {aborted}')
    print('learned theta after the last iteration, per seed (log_ entries as their exponential)')
    for run in runs:
        pairs = ', '.join(f'{n[4:]} {np.exp(v):.4g}' if n.startswith('log_') else f'{n} {v:.4g}'
                          for n, v in zip(run['theta_names'] or [], run['theta'][-1]))
        print(f'  {names[(run["problem"], run["setting"])]} seed {run["seed"]}: {pairs}')


if __name__ == '__main__':
    raise SystemExit(main())
