"""Mixed mode vs online-only: real episodes to 0.95 normalised real return (issue 14, must-show).

For each problem (the shipped discrete_3s2a and lqr -- ``--shipped``, e.g. ``pendulum`` for the robot
kind -- and generated problems of both kinds, default options) and run seed:

- mixed: a dataset of N real episodes of the nominal policy (``bench/offline.py``'s ``dataset_of``),
  the offline phase (``--offline-iterations`` outer iterations on it, no new episode), then online
  bi-level iterations with safe improvement until ``--budget`` new real episodes are spent
  (``core/mixed.py``; the real critic keeps the dataset's transitions);
- online-only: bi-level from the nominal simulator with the same budget of real episodes, with safe
  improvement on (``online-safe``, the setting mixed mode uses online) and off (``online``, the
  default of ``solve``).

The normalised real return of every record is read from the hidden real model (reporting only; the
runs themselves never read it).  Episodes to 0.95: the real episodes the run had collected when its
policy first reached 0.95 -- for mixed, the new (online) ones, 0 when the offline phase already
reached it, and, in a second column, with the dataset's N added; "never" within the budget.

    OMP_NUM_THREADS=1 nice -n 12 python sim2real_bilevel/bench/mixed.py --workers 2 \
        --out sim2real_bilevel/bench/results/mixed
    python sim2real_bilevel/bench/mixed.py --quick --out /tmp/mixed-quick
    # the pendulum (robot kind; slow: see bench/results/mixed_pendulum/README.md for the budget used)
    OMP_NUM_THREADS=1 nice -n 15 python sim2real_bilevel/bench/mixed.py --shipped pendulum --generated 0 \
        --seeds 1 --budget 20 --offline-iterations 10 --workers 1 --out sim2real_bilevel/bench/results/mixed_pendulum

Outputs: OUT/jobs.jsonl (one line per job, appended as jobs finish; a rerun skips those done, and
runs at another N reuse the online-only jobs), OUT/mixed_N<N>.md (the table) and OUT/mixed_N<N>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline import dataset_of, problem_files, run_pending, timed_job   # noqa: E402  (bench/offline.py's)

TARGET = 0.95
METHODS = ('mixed', 'online-safe', 'online')


def first_reaching(records, target: float = TARGET):
    """The first record whose normalised return reaches ``target`` (None: none did)."""
    return next((r for r in records if r.normalized_return >= target), None)


def run_job(job: dict) -> dict:
    """One (problem, method, seed): the run's records, episodes to 0.95 and the phases' results."""
    return timed_job(job, _run_job)


def _run_job(problem, result: dict) -> None:
    """Measure one job on ``problem``; what it measured goes into ``result`` (a copy of the job)."""
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.mixed import make_mixed_run

    job = result
    progress = _progress(job)
    if job['method'] == 'mixed':
        dataset = dataset_of(problem, job['episodes'], 'nominal', job['seed'])
        run = make_mixed_run(problem, 'bilevel', dataset, job['seed'], job['budget'],
                             iterations=job['offline_iterations'], evaluate=True, progress=progress)
        run.run()
        phases = run.phase_reports()
        result['offline_phase'] = {k: phases['offline'][k] for k in (
            'normalized_return', 'real_return', 'real_return_estimate', 'real_return_ci_low',
            'real_return_ci_high', 'coverage', 'refused_steps', 'halved_steps')}
        result['online_phase'] = {k: v for k, v in phases['online'].items() if k != 'best'}
        prior = dataset.episodes
    else:
        run = make_run(problem, 'bilevel', job['seed'], iterations=0, evaluate=True, progress=progress,
                       overrides={'safe_improvement': job['method'] == 'online-safe'})
        run.config.iterations = math.ceil(job['budget'] / run.config.real_episodes)
        run.run()
        prior = 0
    hit = first_reaching(run.history)
    result.update(
        online_episodes=run.real_episode_count - prior, backtracks=int(run.backtracks),
        episodes_to_target=None if hit is None else max(0, hit.real_episodes - prior),
        total_episodes_to_target=None if hit is None else hit.real_episodes,
        final=run.history[-1].normalized_return,
        curve=[[r.real_episodes - prior, r.normalized_return] for r in run.history])


def _progress(job: dict):
    """A record callback printing one line per outer iteration on stderr (the pendulum's jobs take minutes)."""
    started = time.perf_counter()
    name = f'{job["problem"]} {job["method"]} seed {job["seed"]}'

    def report(record) -> None:
        print(f'  {name}: iteration {record.iteration}, {record.real_episodes} real episodes, normalised return '
              f'{record.normalized_return:.3f} ({time.perf_counter() - started:.0f} s)', file=sys.stderr, flush=True)
    return report


def jobs_for(files: dict, seeds: int, episodes: int, budget: int, offline_iterations: int) -> list[dict]:
    return [{'problem': name, 'file': file, 'method': method, 'seed': seed, 'episodes': episodes, 'budget': budget,
             'offline_iterations': offline_iterations}
            for name, file in files.items() for method in METHODS for seed in range(seeds)]


def key(job: dict) -> str:
    """What identifies a job's result: the dataset size and offline iterations only for mixed runs (an
    online-only run does not depend on them, so runs at several N share it)."""
    fields = ('problem', 'method', 'seed', 'budget') + (('episodes', 'offline_iterations') if job['method'] == 'mixed'
                                                       else ())
    return json.dumps({k: job.get(k) for k in fields}, sort_keys=True)


def _cell(values) -> str:
    """Per seed, 'never' where the budget was spent first; then the median over seeds."""
    shown = ['never' if v is None else str(v) for v in values]
    finite = [math.inf if v is None else v for v in values]
    median = float(np.median(finite)) if finite else math.nan
    return f'{", ".join(shown)} (median {"never" if math.isinf(median) else f"{median:g}"})'


def tabulate(results: list[dict], episodes: int, budget: int, offline_iterations: int) -> str:
    ok = [r for r in results if r.get('status') == 'ok']
    problems = list(dict.fromkeys(r['problem'] for r in ok))
    lines = [f'# Mixed mode vs online-only: real episodes to normalised real return >= {TARGET}', '',
             f'mixed: N = {episodes} nominal-policy episodes, {offline_iterations} offline iterations, then online '
             f'with safe improvement; every method at most {budget} new real episodes. Cells: per seed (0, 1, ...), '
             'then the median over seeds; "never": not within the budget. Normalised returns from the hidden real '
             'model (reporting only).', '',
             '| problem | mixed: online episodes to 0.95 | mixed: N + online | online-only, safe improvement '
             '| online-only (plain bilevel) | offline phase ends at (mean) | final: mixed / online-safe / online '
             '(mean) |', '|---|---|---|---|---|---|---|']
    wins = {'fewer': 0, 'equal': 0, 'more': 0}
    totals = {'fewer': 0, 'equal': 0, 'more': 0}
    for problem in problems:
        rows = {m: sorted((r for r in ok if r['problem'] == problem and r['method'] == m), key=lambda r: r['seed'])
                for m in METHODS}
        mixed = rows['mixed']
        offline_end = np.mean([r['offline_phase']['normalized_return'] for r in mixed]) if mixed else math.nan
        finals = ' / '.join(f'{np.mean([r["final"] for r in rows[m]]):.3f}' if rows[m] else '-' for m in METHODS)
        lines.append(f'| {problem} | {_cell([r["episodes_to_target"] for r in mixed])} | '
                     f'{_cell([r["total_episodes_to_target"] for r in mixed])} | '
                     f'{_cell([r["episodes_to_target"] for r in rows["online-safe"]])} | '
                     f'{_cell([r["episodes_to_target"] for r in rows["online"]])} | {offline_end:.3f} | {finals} |')
        for m, o in zip(mixed, rows['online-safe']):
            a = math.inf if m['episodes_to_target'] is None else m['episodes_to_target']
            b = math.inf if o['episodes_to_target'] is None else o['episodes_to_target']
            wins['fewer' if a < b else 'equal' if a == b else 'more'] += 1
            a = math.inf if m['total_episodes_to_target'] is None else m['total_episodes_to_target']
            totals['fewer' if a < b else 'equal' if a == b else 'more'] += 1
    lines += ['', f'Per (problem, seed), mixed needs fewer / as many / more online episodes to {TARGET} than online-only '
                  f'with safe improvement: {wins["fewer"]} / {wins["equal"]} / {wins["more"]}; counting the dataset\'s '
                  f'{episodes} episodes too: {totals["fewer"]} / {totals["equal"]} / {totals["more"]}.']
    backtracks = [(r['problem'], r['seed'], r['backtracks']) for r in ok if r['method'] == 'mixed' and r['backtracks']]
    lines += ['', 'Mixed runs whose online phase backtracked (problem, seed, backtracks): '
              + (', '.join(f'{p} {s} ({b})' for p, s, b in backtracks) or 'none')]
    errors = [r for r in results if r.get('status') != 'ok']
    if errors:
        lines += ['', '## Failed jobs', ''] + [f'- {r["problem"]} {r["method"]} seed {r["seed"]}: {r["error"]}'
                                               for r in errors]
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--shipped', default='discrete_3s2a,lqr',
                        help='shipped problems, comma-separated (pendulum: the robot kind)')
    parser.add_argument('--generated', type=int, default=4, help='generated problems per kind')
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--episodes', type=int, default=30, help='dataset size N (nominal-policy episodes)')
    parser.add_argument('--budget', type=int, default=100, help='new real episodes per run')
    parser.add_argument('--offline-iterations', type=int, default=100)
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument('--quick', action='store_true', help='discrete_3s2a only, 1 seed, budget 20, 20 iterations')
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        from sim2real_bilevel.core.config import builtin_config
        files = {'discrete_3s2a': str(builtin_config('discrete_3s2a'))}
        args.seeds, args.budget, args.offline_iterations = 1, 20, 20
    else:
        files = problem_files(out, args.generated, [n for n in args.shipped.split(',') if n])
    wanted = jobs_for(files, args.seeds, args.episodes, args.budget, args.offline_iterations)
    done = run_pending(out / 'jobs.jsonl', wanted, run_job, key, args.workers,
                       lambda r: f'{r["problem"]} {r["method"]} seed {r["seed"]} {r["status"]} '
                                 f'to {TARGET}: {r.get("episodes_to_target")}')
    keys = {key(j) for j in wanted}
    table = tabulate([r for k, r in done.items() if k in keys], args.episodes, args.budget, args.offline_iterations)
    (out / f'mixed_N{args.episodes}.md').write_text(table + '\n')
    (out / f'mixed_N{args.episodes}.json').write_text(json.dumps({'arguments': vars(args), 'jobs': [done[k] for k in keys if k in done]},
                                               indent=1))
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
