"""The URDF tasks' Sim2Real gap (issue 12 item 4): nominal, domain randomisation, sysid and the
oracle on the stand-in robot, per seed, side by side.

Per task and seed k (the problem file with ``inner.seed = k``: its CRN set and initial policy):
- oracle: the inner problem solved cold at the TRUE theta (``oracle_phi``) -- the reference;
- nominal: solved cold at the user's theta (no real data);
- domain randomisation: solved cold on simulators drawn uniformly in the theta bounds (rng k);
- sysid: ``--sysid-episodes`` real episodes of the nominal policy, maximum likelihood of the
  dynamics entries on them, then the inner solve warm-started from the nominal policy.
Each policy's real return is the mean discounted return over the file's fixed evaluation
seeds; normalised = real return / the oracle's (``normalized_return``'s definition).  "Up" is
the fraction of evaluation episodes whose joints stay near the targets (sum_j (1 - cos(q_j -
target_j)) < 0.2) for the episode's last second.

    cd sim2real_bilevel && OMP_NUM_THREADS=1 nice -n 12 ../.venv/bin/python bench/urdf_tasks.py gap \
        --task config/swingup.yaml --seeds 0 1 2 --workers 2 [--sysid-episodes 10] [--out bench/results/urdf_tasks]

    ... bench/urdf_tasks.py figures --task config/swingup.yaml [--seeds 3 --iterations 10 --real-episodes 2]

``figures``: normalised real return vs real episodes (N = 0, 5, 10, 20, 50) for bi-level, domain
randomisation, sysid, nominal and CMA-ES (the experiment runner of ``solve --evaluate``), into
TASK/learning/ (results.json, results.png, learning.md with the seconds per outer iteration by
phase: inner, sensitivity, real).

Jobs (oracle, nominal then sysid, domain randomisation; per seed) run on ``--workers``
processes; results.json, gap.md and the policies (policies.npz) are rewritten after every
finished job, so an interrupted run keeps what it finished; a failed job is reported (with its
traceback) and recorded, and the others go on.  Seconds are wall clock on a shared
machine: upper bounds.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

UP_COST = 0.2
METHODS = ('oracle', 'nominal', 'sysid', 'domain-randomization')


def load(task: str, seed: int):
    from sim2real_bilevel.core.config import load_yaml
    from sim2real_bilevel.core.problems.urdf import UrdfProblem
    data, source = load_yaml(task)
    data['inner'] = dict(data.get('inner', {}), seed=int(seed))
    return UrdfProblem.from_dict(data, source)


def evaluate(problem, phi: np.ndarray) -> dict:
    """Real return on the evaluation seeds and the fraction of episodes that end up (see module)."""
    seeds = problem.evaluation_seed + np.arange(problem.evaluation_episodes)
    states, _, rewards, _ = problem.real_episodes(phi, seeds)
    n = problem.model.n_joints
    targets = np.asarray(problem.settings.reward_targets or (0.0,) * n)
    tail = max(1, int(round(1.0 / problem.control_period)))
    cost = (1.0 - np.cos(states[:, -tail:, :n] - targets)).sum(-1)
    return {'real_return': float(np.mean(rewards @ problem.gamma ** np.arange(problem.horizon))),
            'up': float(np.mean(np.all(cost < UP_COST, axis=1)))}


def run_job(task: str, seed: int, job: str, sysid_episodes: int) -> list[dict]:
    """One job's results: [{'method', 'seed', 'phi', 'seconds', 'real_return', 'up', ...}]."""
    import torch
    torch.set_num_threads(1)
    problem = load(task, seed)
    started = time.perf_counter()
    if job == 'oracle':
        phi = problem.oracle_phi()
        return [dict(method='oracle', seed=seed, phi=phi, seconds=time.perf_counter() - started,
                     **evaluate(problem, phi))]
    if job == 'domain-randomization':
        phi = problem.randomized_inner_solve(np.random.default_rng([seed, 11])).phi
        return [dict(method=job, seed=seed, phi=phi, seconds=time.perf_counter() - started, **evaluate(problem, phi))]
    nominal = problem.inner_solve(problem.theta0()).phi
    results = [dict(method='nominal', seed=seed, phi=nominal, seconds=time.perf_counter() - started,
                    **evaluate(problem, nominal))]
    started = time.perf_counter()
    batch = problem.sample_real(nominal, sysid_episodes, np.random.default_rng([seed, 13]))
    lower, upper = problem.theta_bounds()
    theta = np.clip(problem.system_identification([batch], problem.theta0()), lower, upper)
    phi = problem.inner_solve(theta, nominal).phi
    results.append(dict(method='sysid', seed=seed, phi=phi, seconds=time.perf_counter() - started,
                        real_episodes=sysid_episodes, theta=dict(zip(problem.theta_names, theta.tolist())),
                        **evaluate(problem, phi)))
    return results


def table(results: list[dict], truth: dict) -> str:
    """gap.md: normalised real return and 'up' per method and seed, then the mean over seeds."""
    seeds = sorted({r['seed'] for r in results})
    by = {(r['method'], r['seed']): r for r in results}
    lines = ['| method | ' + ' | '.join(f'seed {s}: normalised, up' for s in seeds) + ' | mean normalised |',
             '|---|' + '---|' * (len(seeds) + 1)]
    for method in METHODS:
        cells, values = [], []
        for seed in seeds:
            r, oracle = by.get((method, seed)), by.get(('oracle', seed))
            if r is None or oracle is None:
                cells.append('-')
                continue
            value = r['real_return'] / oracle['real_return']
            values.append(value)
            cells.append(f"{value:.3f}, {r['up']:.2f} ({r['seconds']:.0f} s)")
        mean = f'{np.mean(values):.3f}' if values else '-'
        lines.append(f'| {method} | ' + ' | '.join(cells) + f' | {mean} |')
    lines.append('')
    lines.append(f'true theta: {json.dumps(truth)}')
    for r in results:
        if r['method'] == 'sysid':
            lines.append(f"sysid seed {r['seed']} ({r['real_episodes']} real episodes): "
                         + json.dumps({k: round(v, 3) for k, v in r['theta'].items()}))
    return '\n'.join(lines) + '\n'


def write(out: Path, task: str, results: list[dict], truth: dict, failures: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plain = [{k: v for k, v in r.items() if k != 'phi'} for r in results]
    (out / 'results.json').write_text(json.dumps({'task': task, 'results': plain, 'true_theta': truth,
                                                  'failures': failures}, indent=1))
    np.savez(out / 'policies.npz', **{f"{r['method']}_seed{r['seed']}": r['phi'] for r in results})
    (out / 'gap.md').write_text(table(results, truth)
                                + ''.join(f"FAILED: seed {f['seed']} {f['job']}: {f['error']}\n" for f in failures))


def gap(args) -> None:
    out = Path(args.out) / Path(args.task).stem
    problem = load(args.task, args.seeds[0])
    truth = dict(zip(problem.theta_names, problem.oracle_theta_full()[problem.learn_index].round(4).tolist()))
    jobs = [(seed, job) for seed in args.seeds for job in ('oracle', 'nominal', 'domain-randomization')]
    results: list[dict] = []
    failures: list[dict] = []
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_job, args.task, seed, job, args.sysid_episodes): (seed, job) for seed, job in jobs}
        for future in as_completed(futures):
            seed, job = futures[future]
            try:
                finished = future.result()
            except Exception as error:         # one failed job must not lose the others' results
                import traceback
                print(f'[gap {time.perf_counter() - started:6.0f} s] seed {seed} {job} FAILED: {error!r}\n'
                      + ''.join(traceback.format_exception(error)), flush=True)
                failures.append({'seed': seed, 'job': job, 'error': repr(error)})
                write(out, args.task, results, truth, failures)
                continue
            for r in finished:
                results.append(r)
                print(f"[gap {time.perf_counter() - started:6.0f} s] seed {seed} {r['method']}: real return "
                      f"{r['real_return']:.3f}, up {r['up']:.2f} ({r['seconds']:.0f} s)", flush=True)
            write(out, args.task, results, truth, failures)
    print((out / 'gap.md').read_text())


FIGURE_METHODS = ('bilevel', 'domain-randomization', 'sysid', 'nominal', 'cmaes')
FIGURE_BUDGETS = (0, 5, 10, 20, 50)


def figures(args) -> None:
    """Learning figures: normalised real return vs real episodes for every method and seed, by
    the project's experiment runner (``solve --evaluate``'s), with the table at the budgets and
    the seconds per outer iteration by phase."""
    from sim2real_bilevel.core.experiments import return_at_episodes, run_experiment, seconds_by_phase, write_results
    out = Path(args.out) / Path(args.task).stem / 'learning'
    started = time.perf_counter()

    def progress(method, seed, record):
        print(f"[figures {time.perf_counter() - started:6.0f} s] {method} seed {seed} iteration {record.iteration}: "
              f"{record.real_episodes} real episodes, normalised {record.normalized_return:.3f}", flush=True)

    document = run_experiment(args.task, list(args.methods), seeds=args.seeds, iterations=args.iterations,
                              overrides={'real_episodes': args.real_episodes}, on_record=progress, evaluate=True)
    write_results(document, out)
    # a budget beyond what a run collected repeats its last policy's value: 'real episodes used' says where
    lines = ['| method | ' + ' | '.join(f'N = {n}' for n in FIGURE_BUDGETS)
             + ' | real episodes used | s per outer iteration (phase) |', '|---|' + '---|' * (len(FIGURE_BUDGETS) + 2)]
    for method, entry in document['methods'].items():
        table = return_at_episodes(entry['seeds'], FIGURE_BUDGETS)
        cells = ['-' if table[str(n)] is None else '{:.3f} [{:.3f}, {:.3f}]'.format(*table[str(n)])
                 for n in FIGURE_BUDGETS]
        phases = ', '.join(f'{k} {v:.0f}' for k, v in seconds_by_phase(entry['seeds']).items())
        used = max(r.get('real_episodes', 0) for seed in entry['seeds'] for r in seed['iterations'])
        lines.append(f'| {method} | ' + ' | '.join(cells) + f' | {used} | {phases or "-"} |')
    (out / 'learning.md').write_text('\n'.join(lines) + '\n')
    print((out / 'learning.md').read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    g = sub.add_parser('gap', help='nominal / domain randomisation / sysid / oracle on the stand-in, per seed')
    g.add_argument('--task', required=True, help='a kind: urdf problem file')
    g.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    g.add_argument('--workers', type=int, default=2)
    g.add_argument('--sysid-episodes', type=int, default=10)
    g.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'urdf_tasks'))
    f = sub.add_parser('figures', help='normalised real return vs real episodes, every method and seed')
    f.add_argument('--task', required=True, help='a kind: urdf problem file')
    f.add_argument('--methods', nargs='+', default=list(FIGURE_METHODS))
    f.add_argument('--seeds', type=int, default=3, help='seeds 0 .. SEEDS-1')
    f.add_argument('--iterations', type=int, default=10, help='outer iterations per method and seed')
    f.add_argument('--real-episodes', type=int, default=2, help='real episodes per outer iteration')
    f.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'urdf_tasks'))
    args = parser.parse_args(argv)
    if args.command == 'figures':
        if min(args.seeds, args.iterations, args.real_episodes) < 1:
            parser.error(f'--seeds {args.seeds}, --iterations {args.iterations}, --real-episodes '
                         f'{args.real_episodes}: expected >= 1')
        figures(args)
        return
    if args.workers < 1 or args.sysid_episodes < 1:
        parser.error(f'--workers {args.workers} and --sysid-episodes {args.sysid_episodes}: expected >= 1')
    gap(args)


if __name__ == '__main__':
    main()
