"""Offline bi-level vs online bi-level vs sysid vs nominal at equal real data (issue 14, must-show table).

For each problem (the shipped discrete_3s2a and lqr, and generated problems of both kinds,
default options) and dataset size N, per run seed:

- offline bi-level: a dataset of N real episodes of a behaviour policy, then ``OfflineBilevelRun``
  (``--iterations`` outer iterations, default settings, no new real episode);
- sysid on the same dataset (``OfflineSysIdRun``);
- online bi-level with the same N real episodes (N / real_episodes outer iterations);
- the nominal policy (no data).
Behaviours: 'nominal' (the inner optimum at the nominal theta), 'noisy' (temperature / action std
x 2) and 'sharp' (temperature x 0.1, tabular only: a near-deterministic behaviour that rarely
tries other actions -- the failure case where the data never visit the better actions).

The normalised real return of each final policy is read from the hidden real model (reporting
only; the runs themselves never read it).  Goal (issue 14): offline from N = 30 nominal episodes
reaches >= 90 % of the improvement over nominal that online bi-level reaches with 30:
ratio = (offline - nominal) / (online - nominal), per problem, mean over seeds.

    OMP_NUM_THREADS=1 python sim2real_bilevel/bench/offline.py --out /tmp/offline-bench
    python sim2real_bilevel/bench/offline.py --quick --out /tmp/offline-quick

Outputs: OUT/jobs.jsonl (one line per job, appended as jobs finish; a rerun skips those done),
OUT/offline.md (the tables) and OUT/offline.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

BEHAVIOURS = {'nominal': 1.0, 'noisy': 2.0, 'sharp': 0.1}


def problem_files(out: Path, generated: int, shipped=('discrete_3s2a', 'lqr')) -> dict[str, str]:
    """name -> problem file: the ``shipped`` ones, then generated tabular / lqr seeds 0..generated-1."""
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.generators import generate

    files = {name: str(builtin_config(name)) for name in shipped}
    folder = out / 'problems'
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ('tabular', 'lqr'):
        for seed in range(generated):
            path = folder / f'{kind}_{seed:03d}.yaml'
            if not path.exists():
                path.write_text(generate(kind, seed).text)
            files[f'{kind}_{seed:03d}'] = str(path)
    return files


def dataset_of(problem, episodes: int, behaviour: str, seed: int):
    from sim2real_bilevel.core.datasets import Dataset
    from sim2real_bilevel.core.offline import offline_module

    phi = problem.inner_solve(problem.theta0(), None, method='exact').phi
    sampler, behaviour_phi, words = offline_module(problem).behaviour_sampler(problem, phi, BEHAVIOURS[behaviour])
    rng = np.random.default_rng([seed, episodes, list(BEHAVIOURS).index(behaviour)])
    return Dataset(batches=[sampler.sample_real(behaviour_phi, episodes, rng)], behaviour=words)


def timed_job(job: dict, body) -> dict:
    """``job`` with what ``body(problem, result)`` adds to it, its status and its seconds; a failing job
    is recorded ('error' and why), never stops the bench."""
    from sim2real_bilevel.core.problems import load_problem

    started = time.perf_counter()
    result = dict(job)
    try:
        body(load_problem(job['file']), result)
        result['status'] = 'ok'
    except Exception as err:
        result.update(status='error', error=f'{type(err).__name__}: {err}')
    result['seconds'] = time.perf_counter() - started
    return result


def run_pending(log: Path, wanted: list[dict], run_job, key, workers: int, describe) -> dict:
    """Run the jobs of ``wanted`` not yet in ``log`` (jobs.jsonl: one line per finished job, appended as
    jobs finish) on ``workers`` processes; returns key -> result of every job in the log."""
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            done[key(record)] = record
    jobs = [j for j in wanted if key(j) not in done]
    print(f'{len(jobs)} jobs to run ({len(done)} already in {log}), {workers} worker(s)', file=sys.stderr)
    started = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=workers) as pool, open(log, 'a') as stream:
        for finished, result in enumerate(pool.map(run_job, jobs), start=1):
            stream.write(json.dumps(result) + '\n')
            stream.flush()
            done[key(result)] = result
            print(f'[{finished}/{len(jobs)} {time.perf_counter() - started:.0f}s] {describe(result)}', file=sys.stderr)
    return done


def run_job(job: dict) -> dict:
    """One job: 'offline' (offline bi-level and sysid on one dataset), 'online' or 'nominal'."""
    return timed_job(job, _run_job)


def _run_job(problem, result: dict) -> None:
    """Measure one job on ``problem``; what it measured goes into ``result`` (a copy of the job)."""
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.offline import OfflineSettings, make_offline_run

    job = result
    if job['type'] == 'nominal':
        result['nominal'] = float(problem.normalized_return(problem.inner_solve(problem.theta0()).phi))
    elif job['type'] == 'online':
        run = make_run(problem, 'bilevel', job['seed'], iterations=0, evaluate=True)
        per_iteration = run.config.real_episodes
        run.config.iterations = max(1, job['episodes'] // per_iteration)
        run.run()
        result.update(online=run.history[-1].normalized_return, real_episodes=run.real_episode_count)
    else:
        dataset = dataset_of(problem, job['episodes'], job['behaviour'], job['seed'])
        for method in ('bilevel', 'sysid'):
            run = make_offline_run(problem, method, dataset, job['seed'], iterations=job['iterations'],
                                   evaluate=True, settings=OfflineSettings(min_coverage=job.get('min_coverage')))
            run.run()
            report = run.final_report()
            result[method] = report['normalized_return']
            result[f'{method}_coverage'] = report['coverage']
            result[f'{method}_estimate'] = [report['real_return_estimate'], report['real_return_ci_low'],
                                            report['real_return_ci_high'], report['real_return']]
            if method == 'bilevel':
                result['refused_steps'] = report['refused_steps']
                result['warning'] = report['warning']
                result['start_coverage'] = float(run.estimator.coverage(
                    problem.inner_solve(problem.theta0(), None, method='exact').phi))


def jobs_for(files: dict, sizes, seeds: int, iterations: int, min_coverage=None, behaviours=tuple(BEHAVIOURS)) -> list[dict]:
    jobs = []
    for name, file in files.items():
        kind = 'tabular' if name.startswith(('tabular', 'discrete')) else 'lqr'
        jobs.append({'type': 'nominal', 'problem': name, 'file': file, 'seed': 0})
        for episodes in sizes:
            for seed in range(seeds):
                jobs.append({'type': 'online', 'problem': name, 'file': file, 'episodes': episodes, 'seed': seed})
                for behaviour in behaviours:
                    if behaviour == 'sharp' and kind != 'tabular':
                        continue
                    job = {'type': 'offline', 'problem': name, 'file': file, 'episodes': episodes,
                           'behaviour': behaviour, 'seed': seed, 'iterations': iterations}
                    if min_coverage is not None:
                        job['min_coverage'] = min_coverage
                    jobs.append(job)
    return jobs


def key(job: dict) -> str:
    return json.dumps({k: job.get(k) for k in ('type', 'problem', 'episodes', 'behaviour', 'seed', 'iterations',
                                              'min_coverage')}, sort_keys=True)


def mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def tabulate(results: list[dict], sizes, behaviours=tuple(BEHAVIOURS)) -> tuple[str, dict]:
    ok = [r for r in results if r.get('status') == 'ok']
    problems = list(dict.fromkeys(r['problem'] for r in ok))
    nominal = {r['problem']: r['nominal'] for r in ok if r['type'] == 'nominal'}
    lines = ['# Offline bi-level at equal real data (normalised real return, mean over seeds; evaluator: reporting only)',
             '', 'offline / sysid: from a dataset of N episodes of the behaviour; online: bi-level with the same N real '
             'episodes; cov: the dataset\'s coverage of offline bi-level\'s final policy', '']
    header = '| problem | nominal | N | online | ' + ' | '.join(
        f'offline {b} | sysid {b} | cov {b}' for b in behaviours) + ' |'
    lines += [header, '|' + '---|' * (header.count('|') - 1)]
    ratios = {}
    for problem in problems:
        for episodes in sizes:
            cells = [problem, f'{nominal.get(problem, math.nan):.3f}', str(episodes)]
            online = mean(r['online'] for r in ok if r['type'] == 'online' and r['problem'] == problem
                          and r['episodes'] == episodes)
            cells.append(f'{online:.3f}')
            for behaviour in behaviours:
                rows = [r for r in ok if r['type'] == 'offline' and r['problem'] == problem
                        and r['episodes'] == episodes and r['behaviour'] == behaviour]
                if not rows:
                    cells += ['-', '-', '-']
                    continue
                offline, sysid = mean(r['bilevel'] for r in rows), mean(r['sysid'] for r in rows)
                cells += [f'{offline:.3f}', f'{sysid:.3f}', f'{mean(r["bilevel_coverage"] for r in rows):.2f}']
                if episodes == 30 and behaviour == 'nominal' and problem in nominal:
                    gain = online - nominal[problem]
                    ratios[problem] = (offline - nominal[problem]) / gain if gain > 1e-9 else math.nan
            lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', '## Goal: offline (N = 30, nominal behaviour) improvement / online bi-level improvement (>= 0.9)', '',
              '| problem | ratio |', '|---|---|']
    lines += [f'| {p} | {r:.3f} |' for p, r in ratios.items()]
    reached = [r for r in ratios.values() if math.isfinite(r)]
    lines += ['', f'{sum(r >= 0.9 for r in reached)} of {len(reached)} problems reach 0.9 '
              f'(median ratio {float(np.median(reached)) if reached else math.nan:.3f})']
    offline = [r for r in ok if r['type'] == 'offline']
    held = sum(low <= true <= high for _, low, high, true in (r['bilevel_estimate'] for r in offline))
    lines += ['', f'The final policy\'s 95 % bootstrap interval held its true real return in {held} of {len(offline)} '
                  'offline bi-level runs (the interval is conditional on the policy the run chose from the same data, '
                  'so it is optimistic where the optimisation exploited estimation errors).']
    failures = [r for r in offline if r['bilevel'] < 0.9]
    lines += ['', '## Where offline bi-level ends below 0.9 (per seed): what the coverage and the estimate said', '',
              '| problem | N | behaviour | seed | offline | online | coverage start -> final | refused steps '
              '| estimated return [95 % CI] | true return |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in failures:
        online = mean(o['online'] for o in ok if o['type'] == 'online' and o['problem'] == r['problem']
                      and o['episodes'] == r['episodes'] and o['seed'] == r['seed'])
        estimate, low, high, true = r['bilevel_estimate']
        lines.append(f'| {r["problem"]} | {r["episodes"]} | {r["behaviour"]} | {r["seed"]} | {r["bilevel"]:.3f} | '
                     f'{online:.3f} | {r["start_coverage"]:.2f} -> {r["bilevel_coverage"]:.2f} | {r["refused_steps"]} | '
                     f'{estimate:.4g} [{low:.4g}, {high:.4g}] | {true:.4g} |')
    if not failures:
        lines.append('| none | | | | | | | | | |')
    warned = [r for r in offline if r.get('warning')]
    lines += ['', f'## The report\'s warning (no supported improvement): {len(warned)} of {len(offline)} offline bi-level runs',
              ''] + [f'- {r["problem"]} N={r["episodes"]} {r["behaviour"]} seed {r["seed"]} ({r["bilevel"]:.3f}): '
                     f'{r["warning"]}' for r in warned]
    errors = [r for r in results if r.get('status') != 'ok']
    if errors:
        lines += ['', '## Failed jobs', ''] + [f'- {r["problem"]} {r["type"]} N={r.get("episodes")} '
                                               f'{r.get("behaviour", "")} seed {r["seed"]}: {r["error"]}' for r in errors]
    return '\n'.join(lines), {'ratios': ratios}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--generated', type=int, default=3, help='generated problems per kind')
    parser.add_argument('--shipped', default='discrete_3s2a,lqr',
                        help='shipped problems (comma-separated; pendulum: the robot kind, slow)')
    parser.add_argument('--sizes', default='10,30,100', help='dataset sizes N (episodes)')
    parser.add_argument('--seeds', type=int, default=2)
    parser.add_argument('--iterations', type=int, default=100, help='offline outer iterations')
    parser.add_argument('--min-coverage', type=float, default=None,
                        help='offline bi-level\'s min_coverage (default: the kind\'s; 0: no coverage constraint)')
    parser.add_argument('--behaviours', default=','.join(BEHAVIOURS), help='behaviour policies of the datasets')
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument('--quick', action='store_true', help='discrete_3s2a only, N = 30, 1 seed, 20 iterations')
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(',')]
    if args.quick:
        from sim2real_bilevel.core.config import builtin_config
        files, sizes, args.seeds, args.iterations = {'discrete_3s2a': str(builtin_config('discrete_3s2a'))}, [30], 1, 20
    else:
        files = problem_files(out, args.generated, [n for n in args.shipped.split(',') if n])
    behaviours = [b for b in args.behaviours.split(',') if b]
    unknown = [b for b in behaviours if b not in BEHAVIOURS]
    if unknown:
        parser.error(f'--behaviours {",".join(unknown)}: expected some of {",".join(BEHAVIOURS)}')
    wanted = jobs_for(files, sizes, args.seeds, args.iterations, args.min_coverage, behaviours)
    done = run_pending(out / 'jobs.jsonl', wanted, run_job, key,
                       args.workers, lambda r: f'{r["problem"]} {r["type"]} N={r.get("episodes")} '
                                               f'{r.get("behaviour", "")} {r["status"]}')
    table, summary = tabulate([r for r in done.values() if key(r) in {key(j) for j in wanted}], sizes, behaviours)
    (out / 'offline.md').write_text(table + '\n')
    (out / 'offline.json').write_text(json.dumps({'summary': summary, 'jobs': list(done.values())}, indent=1))
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
