"""The ROS loop's overhead over the in-process core, per outer iteration (issue 13, item 5).

For each problem, runs the bi-level loop in-process (``make_run(...).run()``, what
``sim2real-bilevel solve`` runs) and through the sim-only node graph
(``sim2real-bilevel launch sim_only``, batched transport) with the same seed, checks that the
graph's theta trajectory is the core's, and prints the loop times side by side:

    loop time  = results.json ``methods.bilevel.seeds[0].wall_time_s`` (the graph: its wait for
                 the other nodes' servers included) or the seconds of ``run()`` (the core),
                 iteration 0's inner solve included; the fastest of ``--repeat`` interleaved runs;
    overhead   = (graph loop time - core loop time) / iterations, in ms per outer iteration;
    ratio      = graph loop time / core loop time;

both against the core as ``solve`` runs it (no run dir) and as ``solve --run-dir`` runs it (the
same checkpoints and real batches on disk as the graph, which always persists its run; use
``--run-root /dev/shm`` to take the disk's fsync latency out of both).

Each ``--variant NAME=ARGS`` is one graph run per problem with extra launch arguments (e.g.
``--variant separate=containers:=none``: one process per node; without a ``containers`` argument
the launch's default ``auto``, both sides in a container each) and node parameters (``NODE.PARAM:=VALUE``,
e.g. ``outer_optimizer.write_behind:=true``); ``--ref REF`` adds a variant running the code
of git ref REF (``git archive``, on PYTHONPATH ahead of this checkout), so before and after
come out of one run:

    python sim2real_bilevel/bench/ros_overhead.py --ref main --variant separate=containers:=none \\
        --variant composed=containers:=learning,robot --out sim2real_bilevel/bench/results/ros_overhead

``--phases`` also prints (and writes to phases.txt) the per-iteration phase medians of every
configuration's runs, read from their run dirs' history.jsonl (``--phases RUN_ROOT`` alone: those
of an earlier bench's run root, nothing run); ``--profile [NODE]`` runs the optimizer's process
(or NODE's, e.g. ``hardware_bridge``: its own, or its container) under cProfile (profile-NAME.prof
and its top functions in profile-NAME.txt; cProfile's own cost inflates those runs' loop times).

Timings on a shared machine are upper bounds; the core and the graph runs alternate, so
load falls on both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = PACKAGE_ROOT.parent
sys.path.insert(0, str(PACKAGE_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import claim_domain_id, graph_environment  # noqa: E402

DEFAULT_ITERATIONS = {'discrete_3s2a': 200, 'lqr': 100, 'pendulum': 2}
MODE = 'sim_only'


@dataclass
class Variant:
    name: str
    arguments: list[str]
    package_root: Path = PACKAGE_ROOT
    """The sim2real_bilevel package folder whose code (and config) this variant runs."""
    parameters: dict = field(default_factory=dict)
    """``node.parameter`` -> value written into the variant's params file (``NODE.PARAM:=VALUE`` tokens)."""


@dataclass
class Timing:
    loop_s: float
    theta: np.ndarray
    first_iteration_s: Optional[float] = None
    startup_s: Optional[float] = None
    """Of ``loop_s``, the graph's wait for its servers (results.json ``graph_startup_s``, where recorded)."""


def core_run(problem_name: str, seed: int, iterations: int, run_dir: Optional[Path] = None) -> Timing:
    """The in-process loop, as ``solve`` runs it (with the evaluator the sim-only graph has);
    with ``run_dir`` persisted there as ``solve --run-dir`` does (the graph always persists)."""
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    run = make_run(load_problem(builtin_config(problem_name)), 'bilevel', seed, iterations=iterations, evaluate=True)
    if run_dir is not None:
        run.attach_run_dir(run_dir)
    started = time.perf_counter()
    run.run()
    return Timing(time.perf_counter() - started, np.array([r.theta for r in run.history]))


def params_file(variant: Variant, problem: str, iterations: int, directory: Path) -> Path:
    """The variant's shipped parameter file of ``problem`` with the optimizer's iteration count (the
    shipped timeouts hold: ``evaluator_timeout_s`` covers only the evaluator service appearing, its
    answers have ``evaluator_answer_timeout_s``, and the emulator evaluates off its executor, so a
    run_episodes goal is served meanwhile)."""
    import yaml
    document = yaml.safe_load((variant.package_root / 'config' / f'{problem}_params.yaml').read_text())
    document.setdefault('/**/outer_optimizer', {}).setdefault('ros__parameters', {})['iterations'] = iterations
    for key, value in variant.parameters.items():
        node, _, parameter = key.partition('.')
        document.setdefault(f'/**/{node}', {}).setdefault('ros__parameters', {})[parameter] = value
    path = directory / f'{variant.name}_{problem}_params.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


def graph_run(variant: Variant, problem: str, seed: int, iterations: int, work: Path, environment: dict,
              timeout_s: float, run_root: Path, repeat: int = 0, profile: Optional[Path] = None,
              profile_node: str = 'outer_optimizer') -> Timing:
    run_dir = run_root / f'{variant.name}-{problem}-{repeat}'
    if profile is not None:
        environment = profile_environment(environment, work, profile, f'{variant.name}-{problem}-{repeat}',
                                          profile_node)
    command = [sys.executable, '-m', 'sim2real_bilevel.cli', 'launch', MODE, f'problem:={problem}', f'seed:={seed}',
               f'run_dir:={run_dir}', f'params_file:={params_file(variant, problem, iterations, work)}',
               *variant.arguments]
    env = dict(environment)
    env['PYTHONPATH'] = os.pathsep.join([str(variant.package_root), env.get('PYTHONPATH', '')])
    process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             cwd=work, timeout=timeout_s)
    log = work / f'{variant.name}-{problem}-{repeat}.log'
    log.write_text(process.stdout)
    if profile is not None:
        profile_summary(profile / f'profile-{variant.name}-{problem}-{repeat}.prof')
    if process.returncode != 0:
        raise RuntimeError(f'{variant.name} on {problem}: the launch exited with {process.returncode}; its output is '
                           f'in {log}:\n' + process.stdout[-3000:])
    seed_entry = json.loads((run_dir / 'results.json').read_text())['methods']['bilevel']['seeds'][0]
    first = next((line for line in process.stdout.splitlines() if 'first outer iteration done' in line), None)
    return Timing(float(seed_entry['wall_time_s']), np.array([r['theta'] for r in seed_entry['iterations']]),
                  float(first.split('done ')[1].split(' s')[0]) if first else None,
                  seed_entry.get('graph_startup_s'))


PHASES = ('real_s', 'sensitivity_s', 'inner_s')


def phase_medians(run_root: Path, names: list[str], problems: list[str]) -> str:
    """For each problem and configuration (``core``: the core persisting to a run dir, as ``solve
    --run-dir``; the graph variants ``names``: the run dirs RUN_ROOT/NAME-PROBLEM-REPEAT), the smallest over its runs of the median (ms) of each phase
    timed inside the loop (real_s: the real episodes as the optimizer sees them; sensitivity_s;
    inner_s) and of the step (iterate() only: records, evaluator, checkpoint and publishing
    excluded; the difference of successive records' wall_time_s).  Medians are robust to the
    multi-second stalls a loaded machine puts into single iterations."""
    lines = [f'# per-iteration phase medians (ms), best run, from {run_root}/NAME-PROBLEM-*/history.jsonl']
    for problem in problems:
        for name in ['core', *names]:
            rows = []
            for path in sorted(run_root.glob(f'{name}-{problem}-*/history.jsonl')):
                records = [json.loads(line) for line in path.read_text().splitlines()]
                if len(records) < 3:
                    continue
                phases = [np.median([r['timing'].get(k, 0.0) for r in records[1:]]) * 1e3 for k in PHASES]
                rows.append(phases + [np.median(np.diff([r['wall_time_s'] for r in records])) * 1e3])
            if not rows:
                continue
            best = np.min(np.array(rows), axis=0)
            lines.append(f'{problem:14s} {name:22s} runs {len(rows)}  real {best[0]:6.1f}  sensitivity {best[1]:6.1f}  '
                         f'inner {best[2]:6.1f}  step {best[3]:6.1f}')
    return '\n'.join(lines)


PROFILE_HOOK = """import os, sys
_out = os.environ.get('SIM2REAL_BENCH_PROFILE')
if _out and os.environ.get('SIM2REAL_BENCH_PROFILE_NODE', 'outer_optimizer') in sys.argv:   # its process, or container
    import cProfile
    _profile = cProfile.Profile()

    def _exit(status, _exit=os._exit):               # the nodes end with os._exit: no atexit
        _profile.disable()
        _profile.dump_stats(_out)
        _exit(status)
    os._exit = _exit
    _profile.enable()
"""


def profile_environment(environment: dict, work: Path, out: Path, label: str, node: str = 'outer_optimizer') -> dict:
    """``environment`` with the cProfile hook (a sitecustomize.py ahead on PYTHONPATH) writing
    OUT/profile-LABEL.prof when the process of ``node`` (its own, or its container) ends."""
    site = work / 'profile_site'
    site.mkdir(exist_ok=True)
    (site / 'sitecustomize.py').write_text(PROFILE_HOOK)
    env = dict(environment)
    env['PYTHONPATH'] = os.pathsep.join([str(site), env.get('PYTHONPATH', '')])
    env['SIM2REAL_BENCH_PROFILE'] = str(out / f'profile-{label}.prof')
    env['SIM2REAL_BENCH_PROFILE_NODE'] = node
    return env


def profile_summary(path: Path, top: int = 40) -> None:
    """PATH.txt beside PATH: the ``top`` functions by cumulative and by own time."""
    import io
    import pstats
    if not path.is_file():
        return
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.strip_dirs().sort_stats('cumulative').print_stats(top)
    stats.sort_stats('tottime').print_stats(top)
    path.with_suffix('.txt').write_text(text.getvalue())


def extract_ref(ref: str, directory: Path) -> Path:
    """The sim2real_bilevel package folder of git ref ``ref``, extracted under ``directory``."""
    target = directory / f'ref-{ref.replace("/", "_")}'
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(['git', '-C', str(REPOSITORY), 'archive', ref, 'sim2real_bilevel'],
                             check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', str(target)], input=archive, check=True)
    return target / 'sim2real_bilevel'


def parse_variant(text: str) -> Variant:
    """NAME=ARGS: launch arguments (``containers:=learning``) and node parameters for the params
    file (``outer_optimizer.write_behind:=true``, the value read as YAML)."""
    import yaml
    name, separator, arguments = text.partition('=')
    if not separator or not name:
        raise argparse.ArgumentTypeError(f'--variant {text!r}: expected NAME=ARGS (ARGS may be empty)')
    launch, parameters = [], {}
    for token in arguments.split():
        key, _, value = token.partition(':=')
        if '.' in key:
            parameters[key] = yaml.safe_load(value)
        else:
            launch.append(token)
    return Variant(name, launch, parameters=parameters)


def format_table(rows: list[dict], variants: list[str]) -> str:
    """One line per problem and graph variant: its loop time, its overhead per iteration and ratio
    against the core without a run dir (as ``solve``) and against the core persisting to a run
    dir (as ``solve --run-dir``: the same crash safety as the graph), theta identity."""
    width = max([18] + [len(name) + 2 for name in variants])
    header = (f'{"problem":<15}{"iters":>6}{"core s":>9}{"core+dir s":>11}{"graph":>{width}}{"loop s":>9}'
              f'{"ms/it vs core":>15}{"ratio":>7}{"ms/it vs +dir":>15}{"ratio":>7}{"theta":>7}')
    lines = [header, '-' * len(header)]
    for row in rows:
        first = f'{row["problem"]:<15}{row["iterations"]:>6}{row["core_s"]:>9.3f}{row["core_run_dir_s"]:>11.3f}'
        for index, name in enumerate(variants):
            lead = first if index == 0 else ' ' * len(first)
            cell = row['graph'].get(name)
            if cell is None:
                lines.append(f'{lead}{name:>{width}}{"failed":>9}')
                continue
            lines.append(f'{lead}{name:>{width}}{cell["loop_s"]:>9.3f}{cell["overhead_ms_per_iteration"]:>15.2f}'
                         f'{cell["ratio"]:>7.3f}{cell["overhead_vs_run_dir_ms_per_iteration"]:>15.2f}'
                         f'{cell["ratio_vs_run_dir"]:>7.3f}{"same" if cell["theta_identical"] else "DIFF":>7}')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--problems', nargs='+', default=list(DEFAULT_ITERATIONS))
    parser.add_argument('--iterations', type=int, default=None,
                        help=f'outer iterations of every run (default per problem: {DEFAULT_ITERATIONS})')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--variant', type=parse_variant, action='append', default=[],
                        help='NAME=LAUNCH ARGS: a graph run per problem (default: graph=, the plain launch)')
    parser.add_argument('--ref', action='append', default=[], metavar='REF[:LABEL=ARGS]',
                        help='also run the graph of this git ref (named after it, plain launch); with :LABEL=ARGS named '
                             'REF-LABEL, with those launch arguments / NODE.PARAM:=VALUE (e.g. '
                             'main:composed=containers:=learning,robot)')
    parser.add_argument('--out', type=Path, default=None, help='folder for summary.json, table.txt and the logs')
    parser.add_argument('--repeat', type=int, default=3,
                        help='runs of each configuration, interleaved; the fastest counts (the least disturbed by '
                             'other load)')
    parser.add_argument('--timeout', type=float, default=1800.0, help='seconds one launch may take')
    parser.add_argument('--run-root', type=Path, default=None,
                        help='folder for the run dirs of the graph and of the persisting core (default: a temporary '
                             'folder; a tmpfs such as /dev/shm takes the disk\'s fsync latency out of both)')
    parser.add_argument('--phases', nargs='?', type=Path, const=True, default=None, metavar='RUN_ROOT',
                        help='also print and write phases.txt: per-iteration phase medians of every configuration; '
                             'with RUN_ROOT: only those of the run dirs there (an earlier bench), nothing run')
    parser.add_argument('--profile', nargs='?', const='outer_optimizer', default=None, metavar='NODE',
                        help="run the process of NODE (default outer_optimizer; its own, or its container) of every "
                             'graph run under cProfile (profile-*.prof/.txt)')
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix='ros_overhead-'))
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(args.phases, Path):
        names = sorted({path.name.rsplit('-', 2)[0] for path in args.phases.iterdir()} - {'core'})
        table = phase_medians(args.phases, names, args.problems)
        print(table)
        (out / 'phases.txt').write_text(table + '\n')
        return 0
    work = Path(tempfile.mkdtemp(prefix='ros_overhead-work-'))
    variants = []
    for text in args.ref:
        head, separator, arguments = text.partition('=')
        ref, _, label = head.partition(':')
        variant = parse_variant(f'{ref}-{label}={arguments}' if label else f'{ref}={arguments}')
        variant.package_root = extract_ref(ref, work)
        variants.append(variant)
    variants += args.variant or ([] if args.ref else [Variant('graph', [])])
    run_root = Path(tempfile.mkdtemp(prefix='ros_overhead-runs-', dir=args.run_root))
    domain, lock = claim_domain_id()
    environment = graph_environment(work)
    environment['ROS_DOMAIN_ID'] = str(domain)
    rows = []
    for problem in args.problems:
        iterations = args.iterations or DEFAULT_ITERATIONS.get(problem, 50)
        print(f'[bench] {problem}: {iterations} iterations, seed {args.seed}, best of {args.repeat}', flush=True)
        core_run(problem, args.seed, 1)          # warm-up: lazy imports and first calls out of the timing
        cores, persisted, graphs = [], [], {v.name: [] for v in variants}
        for repeat in range(args.repeat):
            cores.append(core_run(problem, args.seed, iterations))
            persisted.append(core_run(problem, args.seed, iterations, run_root / f'core-{problem}-{repeat}'))
            print(f'[bench]   core: {cores[-1].loop_s:.3f} s, with a run dir {persisted[-1].loop_s:.3f} s', flush=True)
            for variant in variants:
                try:
                    graphs[variant.name].append(graph_run(variant, problem, args.seed, iterations, work, environment,
                                                          args.timeout, run_root, repeat,
                                                          out if args.profile else None,
                                                          args.profile or 'outer_optimizer'))
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    print(f'[bench]   {variant.name}: {err}', flush=True)
                    continue
                print(f'[bench]   {variant.name}: {graphs[variant.name][-1].loop_s:.3f} s', flush=True)
        core = min(cores, key=lambda t: t.loop_s)
        core_dir = min(persisted, key=lambda t: t.loop_s)
        row = {'problem': problem, 'iterations': iterations, 'seed': args.seed, 'repeats': args.repeat,
               'core_s': core.loop_s, 'core_run_dir_s': core_dir.loop_s,
               'core_s_all': [t.loop_s for t in cores], 'core_run_dir_s_all': [t.loop_s for t in persisted],
               'graph': {}}
        for variant in variants:
            runs = graphs[variant.name]
            if len(runs) < args.repeat:
                continue
            graph = min(runs, key=lambda t: t.loop_s)
            difference = max(float(np.max(np.abs(t.theta - core.theta))) if t.theta.shape == core.theta.shape
                             else float('inf') for t in runs + persisted)
            row['graph'][variant.name] = {
                'arguments': variant.arguments, 'loop_s': graph.loop_s, 'loop_s_all': [t.loop_s for t in runs],
                'overhead_ms_per_iteration': 1e3 * (graph.loop_s - core.loop_s) / iterations,
                'ratio': graph.loop_s / core.loop_s,
                'overhead_vs_run_dir_ms_per_iteration': 1e3 * (graph.loop_s - core_dir.loop_s) / iterations,
                'ratio_vs_run_dir': graph.loop_s / core_dir.loop_s, 'theta_max_abs_difference': difference,
                'theta_identical': bool(difference <= 1e-9), 'first_iteration_after_launch_s': graph.first_iteration_s,
                'startup_s': graph.startup_s}
            print(f'[bench]   {variant.name}: best {graph.loop_s:.3f} s, theta max |diff| {difference:.3g}', flush=True)
        rows.append(row)
    lock.close()
    names = [v.name for v in variants]
    table = format_table(rows, names)
    command = ' '.join(['python', 'sim2real_bilevel/bench/ros_overhead.py', *(argv or sys.argv[1:])])
    print(table)
    (out / 'table.txt').write_text(f'$ {command}\n{table}\n')
    if args.phases:
        phases = phase_medians(run_root, names, args.problems)
        print(phases)
        (out / 'phases.txt').write_text(f'$ {command}\n{phases}\n')
    (out / 'summary.json').write_text(json.dumps({'command': command, 'rows': rows}, indent=1))
    for log in work.glob('*.log'):
        (out / log.name).write_text(log.read_text())
    print(f'[bench] wrote {out / "table.txt"}, {out / "summary.json"} and the launch logs')
    failed = any(len(row['graph']) < len(names) or not all(c['theta_identical'] for c in row['graph'].values())
                 for row in rows)
    return 1 if failed else 0


if __name__ == '__main__':
    raise SystemExit(main())
