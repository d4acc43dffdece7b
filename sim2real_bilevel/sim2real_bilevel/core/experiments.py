"""Run methods x seeds on a problem file; write results.json and results.png; summarise."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import baselines
from .evaluation import oracle_evaluator
from .outer import BilevelOuterLoop, IterationRecord, OuterConfig
from .problems import load_problem

# name -> (run class, config overrides).  Every method sees the same OuterConfig otherwise,
# so real episodes per iteration and the real-gradient estimator are shared.
METHODS: dict[str, tuple[type, dict]] = {
    'bilevel': (BilevelOuterLoop, {}),
    'bilevel-cg': (BilevelOuterLoop, {'solver': 'cg'}),
    'bilevel-first-order': (BilevelOuterLoop, {'solver': 'first_order'}),
    # d phi*/d theta by finite differences of the re-solved inner problem (one inner solve per theta entry)
    'bilevel-resolve': (BilevelOuterLoop, {'solver': 'resolve'}),
    'bilevel-sampled': (BilevelOuterLoop, {'sensitivity_method': 'sampled'}),
    'bilevel-reward': (BilevelOuterLoop, {'learn': 'reward'}),
    'bilevel-dynamics': (BilevelOuterLoop, {'learn': 'dynamics'}),
    # the first iteration fits the simulator to its real batch (sysid's fit), then bi-level steps
    'bilevel-from-sysid': (BilevelOuterLoop, {'theta_start': 'sysid'}),
    # every iteration: sysid's fit on all real data so far + an offset the outer gradient learns, which
    # moves only from policies near stationary (far from it the first-order steps were noise: swing-up)
    'bilevel-anchored': (BilevelOuterLoop, {'anchor': 'sysid', 'far_from_stationary': 'skip'}),
    # anchored until an anchored policy's real return is significantly below the nominal policy's, then bi-level
    # from the nominal policy (the fit hurts where the family cannot represent the robot: an actuation delay);
    # while anchored it skips as 'bilevel-anchored' does (OuterConfig.anchor)
    'bilevel-anchored-auto': (BilevelOuterLoop, {'anchor': 'auto'}),
    # bi-level with safe improvement on (the hardware default; off for ``solve`` unless asked)
    'bilevel-safe': (BilevelOuterLoop, {'safe_improvement': True}),
    # each iteration's outer gradient divided by its norm before Adam (opt-in; bench/results/urdf_tasks/swingup/adam_scale/)
    'bilevel-normalized': (BilevelOuterLoop, {'normalize_gradient': True}),
    # Adam's momentum restarts on a coordinate whose outer gradient turned (opt-in; step_reset_on_reversal)
    'bilevel-reset': (BilevelOuterLoop, {'step_reset_on_reversal': True}),
    'nominal': (baselines.NominalRun, {'iterations': 0}),
    'domain-randomization': (baselines.DomainRandomizationRun, {'iterations': 0}),
    'sysid': (baselines.SysIdRun, {}),
    'cmaes': (baselines.CMAESRun, {}),
    'spsa': (baselines.SPSARun, {}),
    'real-rl': (baselines.RealRLRun, {}),
    # REFERENCE ONLY (reads the hidden real model; benchmark reporting, never a real run): bilevel
    # with the exact real policy gradient, to separate estimator failures from landscape failures
    'bilevel-exact-real-gradient': (baselines.ExactRealGradientRun, {}),
}

# Methods whose state is not plain arrays (the cma package's strategy object): no --run-dir.
NOT_RESUMABLE = {'cmaes': "the cma package's strategy object cannot be saved without pickle"}

TARGET = 0.95
EPISODE_BUDGETS = (0, 10, 20, 30, 100, 300)     # "at equal real data" columns of the summary


def make_run(problem, method: str, seed: int, iterations: Optional[int] = None,
             overrides: Optional[dict] = None, progress=None, evaluate: bool = False):
    """A run of ``method``; with ``evaluate`` (sim-only) its records carry the exact normalised and
    real return from the problem's hidden real model, else those are NaN."""
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r}; expected one of {sorted(METHODS)}')
    cls, method_overrides = METHODS[method]
    config = make_config(problem, method, iterations, overrides, method_overrides)
    return cls(problem, config, seed=seed, progress=progress,
               evaluator=oracle_evaluator(problem) if evaluate else None)


def make_config(problem, method: str, iterations: Optional[int], overrides: Optional[dict],
                method_overrides: dict) -> OuterConfig:
    """The OuterConfig of a run: the problem file's outer defaults, then ``overrides``, then the
    method's own, then ``iterations`` (unless the method fixes it), then the file's per-method section."""
    values = dict(problem.outer_defaults)
    values.update(overrides or {})
    values.update(method_overrides)
    if iterations is not None and 'iterations' not in method_overrides:
        values['iterations'] = iterations
    per_method = values.pop('methods', {}) or {}
    values.update(per_method.get(method, {}))
    return OuterConfig.from_mapping(values)


def run_experiment(config_path: str | Path, methods: list[str], seeds: int = 1,
                   iterations: Optional[int] = None, overrides: Optional[dict] = None,
                   on_record: Optional[Callable[[str, int, IterationRecord], None]] = None,
                   run_dir: Optional[str | Path] = None, evaluate: bool = False,
                   make: Optional[Callable] = None) -> dict:
    """Run every method for every seed; returns the results.json document.  With ``run_dir``
    each (method, seed) persists itself in RUN_DIR/<method>/seed<k>/ and continues from there
    when that folder already holds a checkpoint (``MethodRun.attach_run_dir``).  ``evaluate``: sim-only
    evaluation of every record by the hidden real model (``make_run``).  ``make``: what builds each
    run, with ``make_run``'s arguments (default ``make_run``; ``solve --offline`` binds a dataset)."""
    if run_dir is not None:
        refused = {m: NOT_RESUMABLE[m] for m in methods if m in NOT_RESUMABLE}
        if refused:
            raise ValueError(f'--run-dir: method(s) without crash-safe state: {refused}')
    problem = load_problem(config_path)
    entries = {}
    for method in methods:
        seed_results = []
        for seed in range(seeds):
            callback = (lambda record, m=method, s=seed: on_record(m, s, record)) if on_record else None
            run = (make or make_run)(problem, method, seed, iterations, overrides, progress=callback,
                                     evaluate=evaluate)
            if run_dir is not None:
                wanted = run.config.iterations          # the caller's count wins over the saved one
                if run.attach_run_dir(Path(run_dir) / method / f'seed{seed}'):
                    run.config.iterations = wanted
                    for record in run.history:          # progress bars count the restored records
                        if callback:
                            callback(record)
            started = time.perf_counter()
            run.run()
            seed_results.append(seed_entry(run, seed, time.perf_counter() - started))
        entries[method] = method_entry(run, seed_results)
    return results_document(config_path, problem, entries)


def seed_entry(run, seed: int, wall_time_s: float) -> dict:
    """One seed of a method in results.json: its iteration records and its result, the best policy
    deployed (estimated real return with its interval; None when no policy was deployed)."""
    best = None if run.best is None else run.best.to_json(run.config.confidence, run.evaluator)
    if best is not None:
        best['backtracks'] = int(run.backtracks)
    report = getattr(run, 'final_report', None)
    if best is None and report is not None:      # offline runs deploy nothing: their final policy
        best = report()
    entry = {'seed': seed, 'wall_time_s': wall_time_s, 'best': best,
             'iterations': [r.to_json() for r in run.history]}
    phases = getattr(run, 'phase_reports', None)
    if phases is not None:                       # mixed mode: the offline and the online phase on their own
        entry['phases'] = phases()
    return entry


def method_entry(run, seeds: list[dict]) -> dict:
    """One method in results.json: its configuration (that of ``run``) and its seeds."""
    return {'config': vars(run.config) | {'adam_betas': list(run.config.adam_betas)}, 'seeds': seeds}


def results_document(config, problem, methods: dict, **context) -> dict:
    """The results.json document: the problem, ``context`` (e.g. the graph's ``transport`` and
    ``status``), ``methods`` (name -> ``method_entry``) and their summary."""
    document = {'config': str(config), 'problem_kind': problem.kind, 'theta_names': list(problem.theta_names),
                'target': TARGET, **context, 'methods': methods}
    document['summary'] = summarize(document)
    return document


def first_reaching(iterations: list[dict], target: float) -> Optional[dict]:
    for record in iterations:
        if record['normalized_return'] >= target:      # NaN (no evaluator) never reaches it
            return record
    return None


def _stats(values) -> tuple:
    """(mean, min, max) of the finite values; Nones when there are none (no evaluator)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite or len(finite) < len(values):
        return None, None, None
    return float(np.mean(finite)), float(np.min(finite)), float(np.max(finite))


def best_policies(seeds: list[dict]) -> list:
    """Per seed: [estimated real return, CI low, CI high, episodes, normalised return or None,
    coverage or None] of the best deployed policy -- for offline runs, of the final policy, with
    the dataset's coverage of it -- (None for a seed that deployed none)."""
    rows = []
    for seed in seeds:
        best = seed.get('best')
        if best is None:
            rows.append(None)
            continue
        normalized = best.get('normalized_return')
        rows.append([best['real_return_estimate'], best['real_return_ci_low'], best['real_return_ci_high'],
                     best['episodes'], normalized if normalized is not None and math.isfinite(normalized) else None,
                     best.get('coverage')])
    return rows


def summarize(document: dict) -> dict:
    """Per method: final normalised return and iterations / real transitions to the target (None
    without an evaluator), the final estimated real return and the best deployed policy per seed."""
    target = document.get('target', TARGET)
    summary = {}
    for method, entry in document['methods'].items():
        finals, hit_iterations, hit_transitions, per_iteration_s, estimates = [], [], [], [], []
        for seed in entry['seeds']:
            records = seed['iterations']
            finals.append(records[-1]['normalized_return'])
            measured = [r.get('real_return_estimate', math.nan) for r in records]
            measured = [v for v in measured if v is not None and math.isfinite(v)]
            estimates.append(measured[-1] if measured else None)
            hit = first_reaching(records, target)
            hit_iterations.append(hit['iteration'] if hit else math.inf)
            hit_transitions.append(hit['real_transitions'] if hit else math.inf)
            if len(records) > 1:
                per_iteration_s.append((records[-1]['wall_time_s'] - records[0]['wall_time_s'])
                                       / (len(records) - 1))
        reached = [t for t in hit_transitions if math.isfinite(t)]
        final_mean, final_min, final_max = _stats(finals)
        summary[method] = {
            'evaluated': final_mean is not None,
            'final_mean': final_mean,
            'final_min': final_min,
            'final_max': final_max,
            'final_estimate_mean': _stats(estimates)[0],
            'best': best_policies(entry['seeds']),
            'seeds_reaching_target': len(reached),
            'seeds': len(finals),
            'iterations_to_target_max': _finite_or_none(max(hit_iterations)),
            'iterations_to_target_median': _finite_or_none(float(np.median(hit_iterations))),
            'real_transitions_to_target_median': _finite_or_none(float(np.median(hit_transitions))),
            'real_transitions_to_target_max': _finite_or_none(max(hit_transitions)),
            'seconds_per_iteration': float(np.mean(per_iteration_s)) if per_iteration_s else None,
            'return_at_episodes': return_at_episodes(entry['seeds'], EPISODE_BUDGETS),
            'seconds_by_phase': seconds_by_phase(entry['seeds']),
        }
    return summary


def return_at_episodes(seeds: list[dict], budgets) -> dict:
    """{budget: [mean, min, max]} over seeds of the normalised return of the last policy
    obtained with at most ``budget`` real episodes (None where a seed has no such record,
    e.g. a black-box method whose first iteration already needs more)."""
    table = {}
    for budget in budgets:
        values = []
        for seed in seeds:
            within = [r['normalized_return'] for r in seed['iterations'] if r.get('real_episodes', 0) <= budget]
            values.append(within[-1] if within and math.isfinite(within[-1]) else None)
        if any(v is None for v in values):
            table[str(budget)] = None
        else:
            table[str(budget)] = [float(np.mean(values)), float(np.min(values)), float(np.max(values))]
    return table


def seconds_by_phase(seeds: list[dict]) -> dict:
    """Mean seconds per outer iteration in each timed phase (inner_s, sensitivity_s, real_s, ...)."""
    phases: dict[str, list[float]] = {}
    for seed in seeds:
        for record in seed['iterations'][1:]:
            for phase, seconds in (record.get('timing') or {}).items():
                phases.setdefault(phase, []).append(float(seconds))
    return {phase: float(np.mean(values)) for phase, values in phases.items()}


def _finite_or_none(value):
    return None if not math.isfinite(value) else value


def format_summary(summary: dict, target: float = TARGET) -> str:
    header = (f'{"method":<22}{"final (mean [min,max])":>26}{"seeds>=" + str(target):>11}'
              f'{"iters->" + str(target) + " (med/max)":>22}{"real transitions->" + str(target) + " (med)":>28}'
              f'{"s/iter":>10}')
    lines = [header, '-' * len(header)]
    for method, s in summary.items():
        if s.get('final_mean') is None:        # no evaluator: the target columns say nothing
            final, reached, iters, transitions = 'not evaluated', f'{"-":>6} {"":<4}', '-', '-'
        else:
            final = f'{s["final_mean"]:.4f} [{s["final_min"]:.3f},{s["final_max"]:.3f}]'
            reached = f'{s["seeds_reaching_target"]:>6}/{s["seeds"]:<4}'
            iters = f'{_fmt(s["iterations_to_target_median"])}/{_fmt(s["iterations_to_target_max"])}'
            transitions = _fmt(s["real_transitions_to_target_median"])
        lines.append(f'{method:<22}{final:>26}{reached}{iters:>22}{transitions:>28}'
                     f'{_fmt(s["seconds_per_iteration"], ".4f"):>10}')
    bests = {m: s['best'] for m, s in summary.items() if any(row is not None for row in s.get('best') or [])}
    if bests:
        lines += ['', 'result: the best deployed policy per seed, estimated real return [confidence interval] over '
                      'its real episodes (n) -- and its normalised return where evaluated (sim-only); offline runs: '
                      'the final policy, estimated from the dataset (bootstrap interval), and its coverage']
        for method, rows in bests.items():
            cells = []
            for row in rows:
                if row is None:
                    cells.append('none deployed')
                    continue
                estimate, low, high, episodes, normalized = row[:5]
                cell = f'{estimate:.4g} [{low:.4g}, {high:.4g}] (n={episodes})'
                if len(row) > 5 and row[5] is not None:
                    cell += f' offline, coverage {row[5]:.3g}'
                cells.append(cell + (f' -> {normalized:.4f}' if normalized is not None else ''))
            lines.append(f'{method:<22}' + '; '.join(cells))
    budgets = sorted({int(b) for s in summary.values() for b in (s.get('return_at_episodes') or {})})
    if budgets and any(s.get('final_mean') is not None for s in summary.values()):
        lines += ['', 'normalised real return after at most N real episodes (mean [min,max] over seeds;'
                      ' "-": the method needs more than N for its first step)',
                  f'{"method":<22}' + ''.join(f'{"N=" + str(b):>20}' for b in budgets)]
        for method, s in summary.items():
            cells = []
            for b in budgets:
                cell = (s.get('return_at_episodes') or {}).get(str(b))
                cells.append('-' if cell is None else f'{cell[0]:.3f} [{cell[1]:.2f},{cell[2]:.2f}]')
            lines.append(f'{method:<22}' + ''.join(f'{c:>20}' for c in cells))
    timed = {m: s.get('seconds_by_phase') for m, s in summary.items() if s.get('seconds_by_phase')}
    if timed:
        lines += ['', 'seconds per outer iteration by phase (mean)']
        for method, phases in timed.items():
            lines.append(f'{method:<22}' + '  '.join(f'{k.removesuffix("_s")} {v:.3f}' for k, v in phases.items()))
    return '\n'.join(lines)


def _fmt(value, spec: str = '.0f') -> str:
    return 'never' if value is None else format(value, spec)


def write_results(document: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / 'results.json'
    tmp = json_path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(document, indent=1, default=_json_default))
    tmp.replace(json_path)
    png_path = out / 'results.png'
    plot_results(document, png_path)
    return json_path, png_path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


def plot_results(document: dict, path: str | Path) -> None:
    """Normalised real return vs outer iterations and vs real transitions, mean and
    min-max band over seeds, one curve per method (the paper's Figure 3 with baselines).  Without
    an evaluator (hardware) the estimated real return of each iteration's real episodes instead."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    evaluated = any(math.isfinite(r['normalized_return']) for e in document['methods'].values()
                    for s in e['seeds'] for r in s['iterations'])
    key = 'normalized_return' if evaluated else 'real_return_estimate'
    fig, (ax_iter, ax_data) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (method, entry) in enumerate(document['methods'].items()):
        color = plt.cm.tab10(index % 10)
        curves = [np.array([r.get(key, math.nan) for r in s['iterations']], dtype=float) for s in entry['seeds']]
        data = [np.array([r['real_transitions'] for r in s['iterations']], dtype=float) for s in entry['seeds']]
        length = min(len(c) for c in curves)
        if length == 1:   # no adaptation (nominal): a horizontal reference line
            value = float(np.mean([c[0] for c in curves]))
            if not math.isfinite(value):      # not evaluated and no real data: nothing to draw
                continue
            for ax in (ax_iter, ax_data):
                ax.axhline(value, color=color, linestyle='--', label=f'{method} ({value:.3f})')
            continue
        returns = np.stack([c[:length] for c in curves])
        transitions = np.stack([d[:length] for d in data]).mean(axis=0)
        mean, low, high = returns.mean(axis=0), returns.min(axis=0), returns.max(axis=0)
        steps = np.arange(length)
        ax_iter.plot(steps, mean, color=color, label=method)
        ax_iter.fill_between(steps, low, high, color=color, alpha=0.2)
        ax_data.plot(np.maximum(transitions, 1), mean, color=color, label=method)
        ax_data.fill_between(np.maximum(transitions, 1), low, high, color=color, alpha=0.2)
    target = document.get('target', TARGET)
    for ax in (ax_iter, ax_data):
        if evaluated:
            ax.axhline(target, color='grey', linewidth=0.8, linestyle=':')
        ax.set_ylabel('normalised real return' if evaluated else 'estimated real return (real episodes)')
        ax.grid(alpha=0.3)
    ax_iter.set_xlabel('outer iteration')
    ax_data.set_xlabel('real transitions (log scale)')
    ax_data.set_xscale('log')
    ax_iter.legend(fontsize=8, loc='lower right')
    fig.suptitle(f'{Path(document["config"]).name}: mean and min-max over '
                 f'{max(len(e["seeds"]) for e in document["methods"].values())} seed(s)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
