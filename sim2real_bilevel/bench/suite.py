"""Benchmark suite (issue 11 item 2): every method side by side on generated problems.

For each kind (tabular, lqr), problems 0..N-1 are generated once (``core.generators.generate``,
default options, so no ``inner:``/``outer:`` sections: default settings, no per-problem
tuning) into OUT/problems/; then every (problem, method, run seed) is one job, run in parallel
processes (``--workers``, default the CPU count).  Methods: bilevel, nominal, sysid, cmaes,
spsa, real-rl and the reference ``bilevel-exact-real-gradient`` (REFERENCE ONLY: the bi-level
loop with the exact real policy gradient from the hidden model, ``core.baselines``; it
separates estimator failures -- the reference succeeds where bi-level fails -- from landscape
failures -- both fail).

Each finished job is appended to OUT/jobs.jsonl at once (final and best normalised real
return, the outer iteration / real transitions / real episodes at which 0.95 was first
reached, the curve, wall and CPU seconds, or for a run that raised: status ``abort`` with the
exception text; a raising run never stops the suite).  Started again with the same OUT, the
suite skips the jobs already recorded (``--retry-aborts`` reruns the aborted ones) and
re-tabulates; ``--tabulate-only`` only re-tabulates.  Outputs: OUT/suite.json (settings,
table, bi-level vs reference, failures, timing), OUT/suite.md (the same as tables) and
OUT/suite.png.  Success = final normalised real return >= 0.95.

    python sim2real_bilevel/bench/suite.py --quick --out /tmp/suite-quick
    python sim2real_bilevel/bench/suite.py --kinds tabular --problems 50 --seeds 1 \\
        --methods bilevel,bilevel-exact-real-gradient,nominal,sysid --out runs/suite

The normalised return is evaluated with the hidden real model (reporting only; sim-only).
``RUN_OPTIONS`` holds the keyword arguments given to ``make_run`` (``evaluate=True`` where it
takes that flag).
Set OMP_NUM_THREADS=1: each worker is one single-threaded job at a time.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import inspect
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
if str(PACKAGE_ROOT) not in sys.path:
    sys.path.insert(0, str(PACKAGE_ROOT))
from sim2real_bilevel.core import experiments  # noqa: E402
from sim2real_bilevel.core.generators import KINDS, GenerationFailed, generate  # noqa: E402

REFERENCE = 'bilevel-exact-real-gradient'
METHODS = ('bilevel', REFERENCE, 'bilevel-safe', 'nominal', 'sysid', 'cmaes', 'spsa', 'real-rl')
TARGET = experiments.TARGET
RUN_OPTIONS: dict = {'evaluate': True} if 'evaluate' in inspect.signature(experiments.make_run).parameters else {}
"""Keyword arguments for ``experiments.make_run`` in every job: where make_run takes an
``evaluate`` flag (records carry the normalised return only from a sim-only evaluator), the
suite asks for it; the hidden model is used for reporting only."""

QUICK = {'problems': 4, 'seeds': 1, 'methods': ('bilevel', REFERENCE, 'nominal'), 'iterations': 15}
"""--quick: a small set that runs in well under a minute on two cores."""
JOBS_FILE, JSON_FILE, MD_FILE, PNG_FILE = 'jobs.jsonl', 'suite.json', 'suite.md', 'suite.png'
PROBLEM_CACHE = 4          # problems a worker keeps loaded (their oracle values are cached on them)


# --- jobs ------------------------------------------------------------------------------------------
def problem_path(out: Path, kind: str, seed: int) -> Path:
    return out / 'problems' / f'{kind}-{seed:03d}.yaml'


def job_key(kind: str, problem_seed: int, method: str, run_seed: int) -> str:
    return f'{kind}/{problem_seed:03d}/{method}/{run_seed}'


def job_specs(out: Path, kinds, problems: int, seeds: int, methods, iterations: Optional[int]) -> list[dict]:
    """Every (kind, problem, method, run seed), grouped by problem (a worker then reuses the
    problem it has loaded)."""
    return [{'key': job_key(kind, p, method, s), 'kind': kind, 'problem_seed': p, 'method': method,
             'run_seed': s, 'iterations': iterations, 'path': str(problem_path(out, kind, p))}
            for kind in kinds for p in range(problems) for method in methods for s in range(seeds)]


def generate_problem(kind: str, seed: int, path: str, inject_failure: bool = False) -> dict:
    """Write problem (kind, seed) to ``path`` (atomically); a record of how long it took.
    ``inject_failure``: the generator fails instead of running (tests)."""
    started = time.perf_counter()
    try:
        if inject_failure:
            raise GenerationFailed(f'injected failure: no {kind} candidate for seed {seed}')
        result = generate(kind, seed)
    except Exception as err:        # noqa: BLE001 -- recorded; the problem's jobs become aborts
        return {'type': 'generate', 'kind': kind, 'problem_seed': seed, 'status': 'abort',
                'error': f'{type(err).__name__}: {err}', 'seconds': time.perf_counter() - started}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f'.tmp{os.getpid()}')
    tmp.write_text(result.text)
    tmp.replace(target)
    return {'type': 'generate', 'kind': kind, 'problem_seed': seed, 'status': 'ok', 'draws': result.draws,
            'seconds': time.perf_counter() - started}


_PROBLEMS: dict = {}      # per worker process: path -> loaded problem (least recently used first)


def loaded_problem(path: str):
    """(problem, seconds spent loading it): a worker loads each problem once and reuses it, so
    what the problem caches (the real optimum, the return range) is computed once per worker."""
    from sim2real_bilevel.core.problems import load_problem
    problem = _PROBLEMS.pop(path, None)
    seconds = 0.0
    if problem is None:
        started = time.perf_counter()
        problem = load_problem(path)
        seconds = time.perf_counter() - started
    _PROBLEMS[path] = problem
    while len(_PROBLEMS) > PROBLEM_CACHE:
        _PROBLEMS.pop(next(iter(_PROBLEMS)))
    return problem, seconds


def run_job(spec: dict) -> dict:
    """One (problem, method, run seed) to the end; never raises: a run that raises is
    returned as status 'abort' with the exception text (and what it recorded until then)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    record = {'type': 'job', **{k: spec[k] for k in ('key', 'kind', 'problem_seed', 'method', 'run_seed',
                                                     'iterations')}}
    run, load_s = None, 0.0
    try:
        if spec.get('inject_failure'):
            raise RuntimeError(f'injected failure in {spec["key"]} (test hook)')
        problem, load_s = loaded_problem(spec['path'])
        run = experiments.make_run(problem, spec['method'], spec['run_seed'], iterations=spec['iterations'],
                                   overrides=spec.get('overrides'), **RUN_OPTIONS)
        run.run()
        record['status'] = 'ok'
    except Exception as err:        # noqa: BLE001 -- an aborted run is a result, not a crash
        record.update(status='abort', error=f'{type(err).__name__}: {err}'.strip(),
                      traceback=traceback.format_exc(limit=-4))
    record.update(outcome(run.history if run is not None else []))
    record.update(wall_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0, load_s=load_s,
                  pid=os.getpid())
    return record


BACKTRACK_EVENTS = ('backtracked', 'refused')
"""How safe improvement's record events start (``BilevelOuterLoop.backtrack``)."""


def deployed_drop(curve: list) -> Optional[float]:
    """The worst policy a run deployed, relative to the one it started from, in normalised
    return: min(curve[:-1]) - curve[0].  ``curve[k]`` is the policy held after iteration k, the
    one deployed at iteration k + 1 (the last one is never deployed); None without a deployment."""
    if len(curve) < 2:
        return None
    return float(min(curve[:-1]) - curve[0])


def outcome(history) -> dict:
    """What the tables need from a run's iteration records."""
    if not history:
        return {'final': None, 'best': None, 'outer_iterations': 0, 'curve': []}
    curve = [float(r.normalized_return) for r in history]
    hit = next((r for r in history if r.normalized_return >= TARGET), None)
    phases: dict = {}
    for r in history:
        for phase, seconds in (r.timing or {}).items():
            phases[phase] = phases.get(phase, 0.0) + float(seconds)
    return {'final': curve[-1], 'best': max(curve), 'outer_iterations': history[-1].iteration,
            'real_transitions': history[-1].real_transitions, 'real_episodes': history[-1].real_episodes,
            'iterations_to_target': hit.iteration if hit else None,
            'transitions_to_target': hit.real_transitions if hit else None,
            'episodes_to_target': hit.real_episodes if hit else None,
            'backtracks': sum(1 for r in history if (getattr(r, 'event', '') or '').startswith(BACKTRACK_EVENTS)),
            'phase_s': phases, 'curve': [round(c, 5) for c in curve]}


def read_records(path: Path) -> list[dict]:
    """The JSONL records (a line cut by an interruption is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def latest_jobs(records: Iterable[dict], specs: list[dict]) -> dict:
    """key -> the newest record of each job of ``specs`` run with the same iteration cap."""
    wanted = {s['key']: s['iterations'] for s in specs}
    latest = {}
    for record in records:
        if record.get('type') == 'job' and wanted.get(record['key'], 'x') == record.get('iterations'):
            latest[record['key']] = record
    return latest


# --- running -----------------------------------------------------------------------------------------
def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's: it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)    # not a handler inherited from the forking process
    try:                                             # Linux: a worker dies with its parent (even SIGKILLed)
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.environ['OMP_NUM_THREADS'] = '1'
    import torch
    torch.set_num_threads(1)


def worker_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` processes (0: one per CPU), each one thread, dying with the parent.
    forkserver, not fork: a fork of a process with threads (torch's, DDS's, pytest's) can hang or die
    in the child when a lock was held at the fork; the server forks from a clean process."""
    return cf.ProcessPoolExecutor(max_workers=workers or os.cpu_count(), initializer=_worker_init,
                                  mp_context=multiprocessing.get_context('forkserver'))


class Progress:
    """One line per finished job on stderr: count, job, result, elapsed and an estimate of the rest."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.started = total, 0, stream, time.perf_counter()

    def __call__(self, record: dict) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done)
        if record['status'] == 'ok':
            hit = record['iterations_to_target']
            result = f'final {record["final"]:.3f}' + (f', 0.95 at iteration {hit}' if hit is not None else '')
        else:
            result = f'ABORT {record["error"][:80]}'
        print(f'[{self.done}/{self.total}] {record["key"]}: {result} ({record["wall_s"]:.1f} s); '
              f'elapsed {_clock(elapsed)}, about {_clock(left)} left', file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def run_suite(out, kinds=KINDS, problems: int = 50, seeds: int = 3, methods=METHODS,
              iterations: Optional[int] = None, workers: Optional[int] = None, retry_aborts: bool = False,
              inject_failure: Iterable[str] = (), progress: Optional[Callable[[dict], None]] = None,
              command: str = '') -> dict:
    """Generate what is missing, run every job not yet in OUT/jobs.jsonl, tabulate; returns the
    suite.json document.  ``inject_failure``: job keys that raise instead of running, and
    ``generate:KIND/NNN`` for a problem whose generation fails (tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for method in methods:
        if method not in experiments.METHODS:
            raise ValueError(f'unknown method {method!r}; expected one of {sorted(experiments.METHODS)}')
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f'unknown kind {kind!r}; expected one of {list(KINDS)}')
    settings = {'kinds': list(kinds), 'problems': problems, 'seeds': seeds, 'methods': list(methods),
                'iterations': iterations, 'target': TARGET, 'run_options': RUN_OPTIONS, 'command': command}
    specs = job_specs(out, kinds, problems, seeds, methods, iterations)
    jobs_file = out / JOBS_FILE
    done = latest_jobs(read_records(jobs_file), specs)
    pending = [s for s in specs if s['key'] not in done or (retry_aborts and done[s['key']]['status'] != 'ok')]
    injected = set(inject_failure)
    for spec in pending:
        spec['inject_failure'] = spec['key'] in injected
    by_problem: dict = {}
    for spec in pending:
        by_problem.setdefault((spec['kind'], spec['problem_seed']), []).append(spec)
    if progress is None:
        progress = Progress(len(pending))
        print(f'{len(specs)} jobs, {len(specs) - len(pending)} already in {jobs_file}, {len(pending)} to run '
              f'on {workers or os.cpu_count()} worker(s)', file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(jobs_file, 'a') as log:
        if log.tell() and not jobs_file.read_bytes().endswith(b'\n'):
            log.write('\n')        # a line cut by a kill stays a line of its own (skipped when read)

        def write(record):
            log.write(json.dumps(record, default=_json_default) + '\n')
            log.flush()
            os.fsync(log.fileno())

        count = workers or os.cpu_count()
        pool = worker_pool(count)
        try:
            futures, to_generate, ready = {}, [], []
            for (kind, seed), group in by_problem.items():
                path = problem_path(out, kind, seed)
                if path.exists():
                    ready += group
                else:
                    to_generate.append((kind, seed, str(path), group))
            # run seed by run seed (the pool runs in submission order): a run cut short holds whole
            # seeds of the problems already generated, e.g. all of seed 0 before any of seed 1
            ready.sort(key=lambda spec: spec['run_seed'])
            futures.update({pool.submit(run_job, spec): spec for spec in ready})

            def generate_next():
                # a few generations in flight, the next one queued behind the jobs of the last one
                # generated (the pool runs in submission order): results come from the start
                while to_generate and sum(isinstance(v, list) for v in futures.values()) < max(1, count // 2):
                    kind, seed, path, group = to_generate.pop(0)
                    futures[pool.submit(generate_problem, kind, seed, path,
                                        f'generate:{kind}/{seed:03d}' in injected)] = group

            generate_next()
            while futures:
                finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    item = futures.pop(future)
                    record = future.result()
                    write(record)
                    if record['type'] == 'generate':
                        for spec in item:
                            if record['status'] == 'ok':
                                futures[pool.submit(run_job, spec)] = spec
                            else:
                                job = {'type': 'job', **{k: spec[k] for k in ('key', 'kind', 'problem_seed', 'method',
                                                                              'run_seed', 'iterations')},
                                       'status': 'abort', 'error': f'problem generation failed: {record["error"]}',
                                       'wall_s': 0.0, 'cpu_s': 0.0, 'load_s': 0.0, **outcome([])}
                                write(job)
                                progress(job)
                        generate_next()
                    else:
                        progress(record)
        except BaseException:       # Ctrl-C, a dead worker: stop the jobs in flight, keep what is recorded
            processes = list((getattr(pool, '_processes', None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            raise
        pool.shutdown()
    records = read_records(jobs_file)
    document = tabulate(records, specs, settings)
    document['settings']['wall_s_this_invocation'] = time.perf_counter() - started
    write_outputs(document, out)
    return document


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


# --- tables ----------------------------------------------------------------------------------------
def _median(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def tabulate(records: list[dict], specs: list[dict], settings: dict) -> dict:
    """The suite.json document: per (kind, method) rows, bi-level vs the reference, failures, timing."""
    jobs = latest_jobs(records, specs)
    kinds, methods = settings['kinds'], settings['methods']
    rows = []
    for kind in kinds:
        for method in methods:
            wanted = [s['key'] for s in specs if s['kind'] == kind and s['method'] == method]
            got = [jobs[k] for k in wanted if k in jobs]
            ok = [r for r in got if r['status'] == 'ok']
            success = [r for r in ok if r['final'] >= TARGET]
            reached = [r for r in ok if r['iterations_to_target'] is not None]
            rows.append({
                'kind': kind, 'method': method, 'jobs': len(wanted), 'finished': len(got),
                'aborts': len(got) - len(ok), 'successes': len(success),
                'success_rate': len(success) / len(got) if got else None,
                'reached': len(reached),
                'median_iterations_to_target': _median(r['iterations_to_target'] for r in reached),
                'median_transitions_to_target': _median(r['transitions_to_target'] for r in reached),
                'median_final': _median(r['final'] for r in ok),
                **deployment_row(ok),
                'median_wall_s': _median(r['wall_s'] for r in got),
                'max_wall_s': max((r['wall_s'] for r in got), default=None),
                'total_cpu_s': float(sum(r.get('cpu_s', 0.0) for r in got)),
                'median_phase_s': {phase: _median(r.get('phase_s', {}).get(phase) for r in ok)
                                   for phase in sorted({k for r in ok for k in r.get('phase_s', {})})},
            })
    generation = [r for r in records if r.get('type') == 'generate' and r['kind'] in kinds]
    timing = {kind: {'generate_median_s': _median(r['seconds'] for r in generation if r['kind'] == kind),
                     'generate_max_s': max((r['seconds'] for r in generation if r['kind'] == kind), default=None)}
              for kind in kinds}
    return {'settings': dict(settings), 'target': TARGET, 'rows': rows,
            'bilevel_vs_reference': compare_reference(jobs, specs, kinds),
            'failures': failures(jobs, specs), 'timing': timing,
            'jobs': {'total': len(specs), 'finished': len(jobs)}}


def deployment_row(ok: list[dict]) -> dict:
    """Safe improvement's figures over finished runs: the worst deployed policy relative to the
    starting one (``deployed_drop``; the minimum and median over runs), how many runs deployed a
    policy more than ``DROP_MARGIN`` below their start, and the backtracks."""
    drops = [d for d in (deployed_drop(r.get('curve') or []) for r in ok) if d is not None]
    return {'deployed_runs': len(drops), 'worst_deployed_drop': min(drops) if drops else None,
            'median_deployed_drop': _median(drops),
            'runs_deployed_below_start': sum(1 for d in drops if d < -DROP_MARGIN),
            'backtracks': int(sum(r.get('backtracks', 0) or 0 for r in ok))}


DROP_MARGIN = 0.05
"""A deployed policy counts as worse than the start when its normalised return is this much below."""


def _succeeded(record: Optional[dict]) -> Optional[bool]:
    return None if record is None else (record['status'] == 'ok' and record['final'] >= TARGET)


def compare_reference(jobs: dict, specs: list[dict], kinds) -> dict:
    """Per kind, the (problem, run seed) pairs where both bilevel and the reference finished:
    both succeed / bilevel only / reference only (an estimator failure: the exact real
    gradient gets there, the sampled one does not) / neither (a landscape failure)."""
    comparison = {}
    for kind in kinds:
        counts = {'pairs': 0, 'both': 0, 'bilevel_only': 0, 'estimator_failures': 0, 'landscape_failures': 0}
        for spec in specs:
            if spec['kind'] != kind or spec['method'] != 'bilevel':
                continue
            bilevel = _succeeded(jobs.get(spec['key']))
            reference = _succeeded(jobs.get(job_key(kind, spec['problem_seed'], REFERENCE, spec['run_seed'])))
            if bilevel is None or reference is None:
                continue
            counts['pairs'] += 1
            name = {(True, True): 'both', (True, False): 'bilevel_only', (False, True): 'estimator_failures',
                    (False, False): 'landscape_failures'}[(bilevel, reference)]
            counts[name] += 1
        if counts['pairs']:
            comparison[kind] = counts
    return comparison


def failures(jobs: dict, specs: list[dict]) -> list[dict]:
    """Every finished job that did not end at >= 0.95, with its reason; a bilevel failure is
    classed by the reference run on the same problem and run seed."""
    listed = []
    for spec in specs:
        record = jobs.get(spec['key'])
        if record is None or _succeeded(record):
            continue
        if record['status'] == 'ok':
            reason = f'final {record["final"]:.4f} < {TARGET} (best {record["best"]:.4f}'
            reason += (f', reached {TARGET} at iteration {record["iterations_to_target"]})'
                       if record['iterations_to_target'] is not None else ')')
        else:
            reason = f'abort: {record["error"]}'
            if record.get('curve'):
                reason += f' (after {record["outer_iterations"]} iterations, last {record["final"]:.4f})'
        entry = {'kind': spec['kind'], 'problem_seed': spec['problem_seed'], 'method': spec['method'],
                 'run_seed': spec['run_seed'], 'status': record['status'], 'reason': reason}
        if spec['method'] == 'bilevel':
            other = jobs.get(job_key(spec['kind'], spec['problem_seed'], REFERENCE, spec['run_seed']))
            entry['class'] = {True: 'estimator', False: 'landscape', None: 'no reference run'}[_succeeded(other)]
            if other is not None and other.get('curve'):
                entry['reference'] = reference_note(other['curve'])
        listed.append(entry)
    return listed


def reference_note(curve: list) -> str:
    """The reference run's final return and how much it still rose over its last quarter (a
    landscape failure still rising is short of iterations rather than stuck)."""
    quarter = curve[-1 - max(1, (len(curve) - 1) // 4)] if len(curve) > 1 else curve[-1]
    return f'reference final {curve[-1]:.4f} ({curve[-1] - quarter:+.4f} over the last quarter)'


def _fmt(value, spec: str = '.0f', none: str = '-') -> str:
    return none if value is None else format(value, spec)


def format_markdown(document: dict) -> str:
    settings = document['settings']
    lines = ['# Benchmark suite', '',
             f'Command: `{settings.get("command") or "(python API)"}`', '',
             f'Problems 0..{settings["problems"] - 1} per kind ({", ".join(settings["kinds"])}), run seeds '
             f'0..{settings["seeds"] - 1}, outer iterations: '
             f'{settings["iterations"] if settings["iterations"] is not None else "each problem default"}; '
             f'{document["jobs"]["finished"]} of {document["jobs"]["total"]} jobs finished.  Success: final '
             f'normalised real return >= {document["target"]} (evaluated with the hidden real model, reporting '
             f'only).  Medians "to {document["target"]}" are over the runs that reached it at some iteration.  '
             f'`{REFERENCE}` is a REFERENCE (exact real gradient from the hidden model), not a method.', '',
             '| kind | method | runs | success | success rate | reached 0.95 | median iters to 0.95 | '
             'median real transitions to 0.95 | median final | aborts | median s/run |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in document['rows']:
        runs = f'{r["finished"]}' + (f'/{r["jobs"]}' if r['finished'] != r['jobs'] else '')
        lines.append(f'| {r["kind"]} | {r["method"]} | {runs} | {r["successes"]} | {_fmt(r["success_rate"], ".0%")} | '
                     f'{r["reached"]} | {_fmt(r["median_iterations_to_target"], ".1f")} | '
                     f'{_fmt(r["median_transitions_to_target"], ".0f")} | {_fmt(r["median_final"], ".3f")} | '
                     f'{r["aborts"]} | {_fmt(r["median_wall_s"], ".1f")} |')
    deployed = [r for r in document['rows'] if r.get('deployed_runs')]
    if deployed:
        lines += ['', '## Deployed policies (safe improvement)', '',
                  'Worst deployed = the lowest normalised real return of a policy a run deployed on the real '
                  'system, minus that of the policy it started from (the nominal one); below start = runs that '
                  f'deployed a policy more than {DROP_MARGIN} below it.  `bilevel-safe` is `bilevel` with safe '
                  'improvement on.  Its cost in real data is the transitions-to-0.95 column above.', '',
                  '| kind | method | runs | worst deployed - start (min over runs) | median over runs | '
                  f'runs below start - {DROP_MARGIN} | backtracks (all runs) |',
                  '|---|---|---:|---:|---:|---:|---:|']
        for r in deployed:
            lines.append(f'| {r["kind"]} | {r["method"]} | {r["deployed_runs"]} | {_fmt(r["worst_deployed_drop"], "+.3f")} | '
                         f'{_fmt(r["median_deployed_drop"], "+.3f")} | {r["runs_deployed_below_start"]} | '
                         f'{r["backtracks"]} |')
    comparison = document['bilevel_vs_reference']
    if comparison:
        lines += ['', f'## bilevel vs {REFERENCE}', '',
                  'Same problem, same run seed (same real episodes collected).  Estimator failure: the reference '
                  'ends at >= 0.95 and bilevel does not (the sampled real gradient is to blame); landscape failure: '
                  'neither does (the exact outer gradient from the nominal theta does not get there within the '
                  'iterations: a local optimum, a flat region, or too few iterations -- the failure list says how '
                  'much the reference still rose over its last quarter).', '',
                  '| kind | pairs | both succeed | bilevel only | estimator failures | landscape failures |',
                  '|---|---:|---:|---:|---:|---:|']
        for kind, c in comparison.items():
            lines.append(f'| {kind} | {c["pairs"]} | {c["both"]} | {c["bilevel_only"]} | {c["estimator_failures"]} | '
                         f'{c["landscape_failures"]} |')
    lines += ['', '## Timing', '', '| kind | generate median s | generate max s |', '|---|---:|---:|']
    for kind, t in document['timing'].items():
        lines.append(f'| {kind} | {_fmt(t["generate_median_s"], ".2f")} | {_fmt(t["generate_max_s"], ".2f")} |')
    lines += ['', 'Per run (wall seconds; medians over the finished runs; phases summed over a run\'s iterations):', '',
              '| kind | method | median s/run | max s/run | CPU s (all runs) | median s per phase |',
              '|---|---|---:|---:|---:|---|']
    for r in document['rows']:
        phases = ', '.join(f'{k.removesuffix("_s")} {_fmt(v, ".2f")}' for k, v in r.get('median_phase_s', {}).items())
        lines.append(f'| {r["kind"]} | {r["method"]} | {_fmt(r["median_wall_s"], ".2f")} | {_fmt(r["max_wall_s"], ".1f")} | '
                     f'{r["total_cpu_s"]:.0f} | {phases} |')
    if 'wall_s_this_invocation' in settings:
        lines += ['', f'Wall time of this invocation: {settings["wall_s_this_invocation"]:.0f} s; CPU seconds of '
                      f'the finished runs: {sum(r["total_cpu_s"] for r in document["rows"]):.0f}.']
    listed = document['failures']
    lines += ['', f'## Failures ({len(listed)})', '']
    if listed:
        lines += ['| kind | problem seed | method | run seed | reason | class (bilevel) |', '|---|---:|---|---:|---|---|']
        for f in listed:
            label = f.get('class', '') + (f': {f["reference"]}' if f.get('reference') else '')
            lines.append(f'| {f["kind"]} | {f["problem_seed"]} | {f["method"]} | {f["run_seed"]} | '
                         f'{f["reason"].replace("|", "/")} | {label} |')
    return '\n'.join(lines) + '\n'


def write_outputs(document: dict, out: Path) -> None:
    out = Path(out)
    tmp = out / (JSON_FILE + '.tmp')
    tmp.write_text(json.dumps(document, indent=1, default=_json_default))
    tmp.replace(out / JSON_FILE)
    (out / MD_FILE).write_text(format_markdown(document))
    plot(document, read_records(out / JOBS_FILE), out / PNG_FILE)


def plot(document: dict, records: list[dict], path: Path) -> None:
    """Per kind: success rate per method (bars) and the median normalised real return against
    the outer iteration with the interquartile band (curves)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    kinds, methods = document['settings']['kinds'], document['settings']['methods']
    specs = job_specs(Path('.'), kinds, document['settings']['problems'], document['settings']['seeds'], methods,
                      document['settings']['iterations'])
    jobs = latest_jobs(records, specs)
    fig, axes = plt.subplots(len(kinds), 2, figsize=(13, 4.2 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        bars, curves = axes[row]
        rates = [next(r['success_rate'] for r in document['rows'] if r['kind'] == kind and r['method'] == m) or 0.0
                 for m in methods]
        colors = [plt.cm.tab10(i % 10) for i in range(len(methods))]
        bars.bar(range(len(methods)), rates, color=colors)
        for index, method in enumerate(methods):
            row_of = next(r for r in document['rows'] if r['kind'] == kind and r['method'] == method)
            bars.text(index, rates[index] + 0.01, f'{row_of["successes"]}/{row_of["finished"]}', ha='center',
                      va='bottom', fontsize=8)
        bars.set_xticks(range(len(methods)), [m.replace('-exact-real-gradient', '\n(exact g, ref.)') for m in methods],
                        fontsize=8)
        bars.set_ylim(0, 1.1)
        bars.set_ylabel(f'{kind}: success rate (final >= {TARGET})')
        for index, method in enumerate(methods):
            got = [r['curve'] for k, r in jobs.items() if r['kind'] == kind and r['method'] == method and r['curve']]
            if not got:
                continue
            length = max(len(c) for c in got)
            padded = np.array([c + [c[-1]] * (length - len(c)) for c in got])
            median = np.median(padded, axis=0)
            if length == 1:
                curves.axhline(median[0], color=colors[index], linestyle='--', label=f'{method} ({median[0]:.2f})')
                continue
            low, high = np.percentile(padded, [25, 75], axis=0)
            steps = np.arange(length)
            curves.plot(steps, median, color=colors[index], label=method)
            curves.fill_between(steps, low, high, color=colors[index], alpha=0.15)
        curves.axhline(TARGET, color='grey', linewidth=0.8, linestyle=':')
        curves.set_xlabel('outer iteration')
        curves.set_ylabel('normalised real return (median, IQR)')
        curves.grid(alpha=0.3)
        if curves.get_legend_handles_labels()[0]:
            curves.legend(fontsize=7, loc='lower right')
    fig.suptitle(f'benchmark suite: {document["jobs"]["finished"]}/{document["jobs"]["total"]} jobs')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [t for t in (part.strip() for part in text.split(',')) if t]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[2:]))
    parser.add_argument('--kinds', type=_names, default=None, help=f'comma list (default: {",".join(KINDS)})')
    parser.add_argument('--problems', type=int, default=None, help='problems per kind: seeds 0..N-1 (default 50)')
    parser.add_argument('--seeds', type=int, default=None, help='run seeds per (problem, method) (default 3)')
    parser.add_argument('--methods', type=_names, default=None, help=f'comma list (default: {",".join(METHODS)})')
    parser.add_argument('--iterations', type=int, default=None,
                        help="cap on outer iterations (default: each problem's default)")
    parser.add_argument('--out', default='runs/suite', help='output folder; the same folder resumes (default runs/suite)')
    parser.add_argument('--workers', type=int, default=None, help='parallel processes (default: the CPU count)')
    parser.add_argument('--quick', action='store_true',
                        help=f'a small set: {QUICK["problems"]} problems per kind, {QUICK["seeds"]} seed, '
                             f'{", ".join(QUICK["methods"])}, {QUICK["iterations"]} iterations (options given win)')
    parser.add_argument('--retry-aborts', action='store_true', help='run the aborted jobs of OUT again')
    parser.add_argument('--tabulate-only', action='store_true', help='only tabulate what OUT/jobs.jsonl holds')
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:        # the command: SIGTERM stops it as Ctrl-C does (workers stopped, records kept)
        signal.signal(signal.SIGTERM, _interrupt)
    base = dict(QUICK) if args.quick else {'problems': 50, 'seeds': 3, 'methods': METHODS, 'iterations': None}
    kinds = args.kinds or list(KINDS)
    problems = args.problems if args.problems is not None else base['problems']
    seeds = args.seeds if args.seeds is not None else base['seeds']
    methods = args.methods or list(base['methods'])
    iterations = args.iterations if args.iterations is not None else base['iterations']
    command = 'python sim2real_bilevel/bench/suite.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    if problems < 1 or seeds < 1 or (iterations is not None and iterations < 0) or (args.workers or 1) < 1:
        print('error: --problems, --seeds and --workers must be >= 1, --iterations >= 0', file=sys.stderr)
        return 2
    try:
        if args.tabulate_only:
            settings = {'kinds': kinds, 'problems': problems, 'seeds': seeds, 'methods': methods,
                        'iterations': iterations, 'target': TARGET, 'run_options': RUN_OPTIONS, 'command': command}
            out = Path(args.out)
            document = tabulate(read_records(out / JOBS_FILE),
                                job_specs(out, kinds, problems, seeds, methods, iterations), settings)
            write_outputs(document, out)
        else:
            document = run_suite(args.out, kinds, problems, seeds, methods, iterations, args.workers,
                                 args.retry_aborts, command=command)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    except BrokenProcessPool as err:
        print(f'error: a worker process died ({err}; killed, out of memory?): finished jobs are in '
              f'{Path(args.out) / JOBS_FILE}; the same command resumes', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'interrupted: finished jobs are in {Path(args.out) / JOBS_FILE}; the same command resumes, '
              '--tabulate-only tabulates them', file=sys.stderr)
        return 130
    print(format_markdown(document))
    print(f'wrote {Path(args.out) / JSON_FILE}, {Path(args.out) / MD_FILE}, {Path(args.out) / PNG_FILE}',
          file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
