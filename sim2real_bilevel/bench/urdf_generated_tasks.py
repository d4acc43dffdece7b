"""Generated URDF tasks (``core/generators/urdf_tasks.py``) through the methods, at default settings.

The robot-task analogue of ``suite.py``: for each task seed, the task file and its URDF are written
to OUT/problems/, then one worker process runs every method on it in turn (the worker loads the
task once, so the oracle of the normalised return is solved once per task).  Each finished
(task, method) is appended to OUT/jobs.jsonl as ``suite.run_job`` records it; a rerun with the
same OUT skips what is recorded.  OUT/tasks.md tabulates the normalised real return after each
outer iteration per task and method, and the drawn gap.  The normalised return uses the hidden
real model (reporting only; sim-only).

    cd sim2real_bilevel && OMP_NUM_THREADS=1 ../.venv/bin/python bench/urdf_generated_tasks.py \\
        --tasks 0 1 2 3 --methods nominal,sysid,bilevel --iterations 3 --workers 2 --out /tmp/urdf-tasks
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
if str(PACKAGE_ROOT) not in sys.path:
    sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from sim2real_bilevel.core import experiments  # noqa: E402
from sim2real_bilevel.core.generators.urdf_tasks import random_urdf_task  # noqa: E402


def write_task(out: Path, seed: int, joints=None) -> tuple[Path, dict]:
    task = random_urdf_task(seed, joints=joints)
    path = out / 'problems' / f'task-{seed:03d}.yaml'
    path.parent.mkdir(parents=True, exist_ok=True)
    for file, text in task.files(path).items():
        file.write_text(text)
    return path, task.info


def parse_method(text: str) -> tuple[str, dict]:
    """'bilevel' or 'bilevel:real_episodes=2,step_size=0.1': a method and OuterConfig overrides."""
    name, _, rest = text.partition(':')
    overrides = {}
    for item in filter(None, rest.split(',')):
        key, _, value = item.partition('=')
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def split_methods(text: str) -> list:
    """'nominal,bilevel:optimizer=sgd,normalize_gradient=true,sysid' -> ['nominal',
    'bilevel:optimizer=sgd,normalize_gradient=true', 'sysid']: a KEY=VALUE item after a method's
    ':' belongs to that method."""
    methods = []
    for item in text.split(','):
        if '=' in item and ':' not in item and methods and ':' in methods[-1]:
            methods[-1] += ',' + item
        else:
            methods.append(item)
    return methods


def run_task(path: str, seed: int, methods: list, iterations: int, done: set) -> list:
    """Every method not yet done on one task, in order, in this process.  ``iterations``: the
    iterative methods' real-episode budget is iterations x the task's default real_episodes; a
    method with other real_episodes gets as many iterations as keep that budget."""
    suite._worker_init()
    problem, _ = suite.loaded_problem(path)       # the runs below reuse it (suite.run_job)
    oracle = Path(path).with_suffix('.oracle.npy')    # the oracle policy, solved once per task (reporting only)
    if oracle.exists():
        problem._oracle_phi = np.load(oracle)
    default_episodes = experiments.make_config(problem, 'bilevel', None, None, {}).real_episodes
    records = []
    for method in methods:
        key = f'urdf/{seed:03d}/{method}/0'
        if key in done:
            continue
        name, overrides = parse_method(method)
        budget = iterations * default_episodes // int(overrides.get('real_episodes', default_episodes))
        spec = {'key': key, 'kind': 'urdf', 'problem_seed': seed, 'method': name, 'run_seed': 0,
                'iterations': None if name == 'nominal' else budget, 'path': path, 'overrides': overrides}
        record = suite.run_job(spec)
        records.append(record)
        if problem._oracle_phi is not None and not oracle.exists():
            np.save(oracle, problem._oracle_phi)
        with open(Path(path).parents[1] / suite.JOBS_FILE, 'a') as stream:
            stream.write(json.dumps(record) + '\n')
        status = f'final {record["final"]:.3f}' if record['status'] == 'ok' else f'ABORT {record["error"][:100]}'
        print(f'{key}: {status}, curve {record["curve"]} ({record["wall_s"]:.0f} s)', file=sys.stderr, flush=True)
    return records


BUDGETS = (0, 10, 20, 30)


def at_budget(record: dict, episodes: int) -> str:
    """The curve's value after ``episodes`` real episodes ('' past the run's end; a one-point curve
    -- nominal -- holds throughout)."""
    curve = record['curve']
    if len(curve) == 1:
        return f'{curve[0]:.3f}'
    per_iteration = record['real_episodes'] / (len(curve) - 1)
    index = episodes / per_iteration
    return f'{curve[int(index)]:.3f}' if index == int(index) and index < len(curve) else ''


def tabulate(out: Path, infos: dict, methods: list) -> str:
    jobs = {}
    for record in suite.read_records(out / suite.JOBS_FILE):
        if record.get('type') == 'job':
            jobs[(record['problem_seed'], record['key'].split('/')[2])] = record
    lines = ['| task | joints | gain, payload kg, delay, shaping | ' + ' | '.join(methods) + ' |',
             '|---|---|---|' + '---|' * len(methods)]
    for seed, info in sorted(infos.items()):
        cells = []
        for method in methods:
            record = jobs.get((seed, method))
            if record is None:
                cells.append('-')
            elif record['status'] != 'ok':
                cells.append('abort: ' + record['error'][:60].replace('|', '/'))
            else:
                cells.append(' → '.join(f'{c:.3f}' for c in record['curve'])
                             + f' ({record.get("real_episodes", 0)} ep., {record["wall_s"]:.0f} s)')
        lines.append(f'| {seed} | {info["joints"]} | {info["motor_gain"]}, {info["payload_mass"]}, '
                     f'{info["delay_steps"]}, {info["reward_shaping"]} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Normalised real return after N real episodes (the policy held then):', '',
              '| task | method | ' + ' | '.join(f'N = {n}' for n in BUDGETS) + ' |', '|---|---|' + '---|' * len(BUDGETS)]
    for seed in sorted(infos):
        for method in methods:
            record = jobs.get((seed, method))
            if record is None or record['status'] != 'ok':
                continue
            lines.append(f'| {seed} | {method} | ' + ' | '.join(at_budget(record, n) for n in BUDGETS) + ' |')
    text = '\n'.join(lines) + '\n'
    (out / 'tasks.md').write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', type=int, nargs='+', default=[0, 1, 2, 3])
    parser.add_argument('--joints', type=int, default=None, help='1-3 (default: drawn per task)')
    parser.add_argument('--methods', default='nominal,sysid,bilevel')
    parser.add_argument('--iterations', type=int, default=3, help='outer iterations of the iterative methods')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--out', required=True)
    parser.add_argument('--tabulate-only', action='store_true')
    args = parser.parse_args(argv)
    out = Path(args.out)
    methods = split_methods(args.methods)
    if args.tabulate_only:
        infos = {seed: random_urdf_task(seed, joints=args.joints).info for seed in args.tasks}
    else:
        paths, infos = {}, {}
        for seed in args.tasks:
            paths[seed], infos[seed] = write_task(out, seed, args.joints)
        (out / 'infos.json').write_text(json.dumps(infos, indent=1))
        done = {r['key'] for r in suite.read_records(out / suite.JOBS_FILE) if r.get('status') == 'ok'}
        started = time.perf_counter()
        with suite.worker_pool(args.workers) as pool:
            futures = [pool.submit(run_task, str(paths[s]), s, methods, args.iterations, done) for s in args.tasks]
            for future in cf.as_completed(futures):
                future.result()
        print(f'done in {time.perf_counter() - started:.0f} s', file=sys.stderr)
    print(tabulate(out, infos, methods))
    return 0


if __name__ == '__main__':
    sys.exit(main())
